//! Every map the kernel programs share with the agent, named for what it holds.
//! Sizes here are defaults; the agent resizes FLOWS and EVENTS from its config at load time.

use aya_ebpf::{
    bindings::{
        BPF_F_CLONE, BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP,
        BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE, bpf_map_type::BPF_MAP_TYPE_SK_STORAGE,
    },
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
};
use monitor_common::{
    CONFIG_ACTIVE_EPOCH, CONFIG_SLOTS, DnsCapture, FlowKey, FlowValue, MAX_CLASSES, Overflow, Reported,
    SockInfo, agent_slot, dns_stat, policy_slot, stat,
};

/// Per-flow counters: one entry per (cgroup, 5-tuple). The agent sweeps it and removes the
/// flows that ended. Not an LRU map: an entry is never evicted with counts the agent has not
/// read; when the map is full, new flows are counted in the overflow maps instead.
#[map]
pub static FLOWS: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(65536, 0);

/// What the agent last reported of each flow (written by the agent only), pinned with FLOWS
/// so that an agent that restarts reports only what the previous one did not.
#[map]
pub static REPORTED: HashMap<FlowKey, Reported> = HashMap::with_max_entries(65536, 0);

/// Packets and bytes of flows that found the flow map full, per class id.
#[map]
pub static OVERFLOW_CLASSES: Array<Overflow> = Array::with_max_entries(MAX_CLASSES, 0);

/// The same per cgroup (best effort: the per-class counter always has them).
#[map]
pub static OVERFLOW_CGROUPS: HashMap<u64, Overflow> = HashMap::with_max_entries(4096, 0);

/// The agent's heartbeat and this program set's attach time (`monitor_common::agent_slot`).
#[map]
pub static AGENT: Array<u64> = Array::with_max_entries(agent_slot::COUNT, 0);

/// This program set's epoch, set by the agent at load (see `CONFIG_ACTIVE_EPOCH`).
#[unsafe(no_mangle)]
static EPOCH: u32 = 0;

/// cgroup id -> class id, for every configured cgroup that exists (filled by the agent).
#[map]
pub static CGROUP_CLASSES: HashMap<u64, u32> = HashMap::with_max_entries(4096, 0);

/// socket uid -> class id (filled by the agent).
#[map]
pub static UID_CLASSES: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// `CONFIG[CONFIG_GENERATION]`: bumped by the agent whenever the class maps change, so
/// sockets whose cached class is older are classified again. `CONFIG[CONFIG_ACTIVE_EPOCH]`:
/// the program set that counts. Shared by every program set; its layout is frozen.
#[map]
pub static CONFIG: Array<u32> = Array::with_max_entries(CONFIG_SLOTS, 0);

/// The residency policy compiled for the kernel: per network, the classes that may send there
/// (bit `id - 1` for class `id`), by longest prefix match. Two pairs, A and B: the agent fills
/// the pair not in force and then switches `POLICY[ACTIVE]` (see `monitor_common::policy_slot`).
/// Sizes are set by the agent at load. IPv4-mapped and NAT64 addresses are looked up as IPv4.
#[map]
pub static VERDICTS_V4_A: LpmTrie<[u8; 4], u64> = LpmTrie::with_max_entries(1024, 0);
#[map]
pub static VERDICTS_V4_B: LpmTrie<[u8; 4], u64> = LpmTrie::with_max_entries(1024, 0);
#[map]
pub static VERDICTS_V6_A: LpmTrie<[u8; 16], u64> = LpmTrie::with_max_entries(1024, 0);
#[map]
pub static VERDICTS_V6_B: LpmTrie<[u8; 16], u64> = LpmTrie::with_max_entries(1024, 0);

/// Which verdict tables are in force and which classes enforce (`monitor_common::policy_slot`).
#[map]
pub static POLICY: Array<u64> = Array::with_max_entries(policy_slot::COUNT, 0);

/// Whether this program set is the one that counts. A set the agent has loaded but not yet
/// switched to, or one it is replacing, lets every packet and socket through untouched.
#[inline(always)]
pub fn active() -> bool {
    // SAFETY: a constant the loader patched; volatile so the compiler keeps the load.
    let epoch = unsafe { core::ptr::read_volatile(&EPOCH) };
    CONFIG.get(CONFIG_ACTIVE_EPOCH).is_some_and(|e| *e == epoch)
}

/// Adds a packet of a flow that found the flow map full to its class's and cgroup's overflow.
#[inline(never)]
pub fn overflow(class_id: u32, cgroup_id: u64, packets: u64, bytes: u64) {
    if let Some(o) = OVERFLOW_CLASSES.get_ptr_mut(if class_id < MAX_CLASSES { class_id } else { 0 }) {
        add_overflow(o, packets, bytes);
    }
    let o = match OVERFLOW_CGROUPS.get_ptr_mut(&cgroup_id) {
        Some(o) => o,
        None => {
            let first = Overflow { packets, bytes, class_id, _pad: 0 };
            if OVERFLOW_CGROUPS.insert(&cgroup_id, &first, BPF_NOEXIST as u64).is_ok() {
                return;
            }
            // Another CPU created it first.
            let Some(o) = OVERFLOW_CGROUPS.get_ptr_mut(&cgroup_id) else { return };
            o
        }
    };
    add_overflow(o, packets, bytes);
    // SAFETY: live map value.
    unsafe { (*o).class_id = class_id };
}

#[inline(always)]
fn add_overflow(o: *mut Overflow, packets: u64, bytes: u64) {
    // SAFETY: a live map value; atomic adds, as several CPUs may count into it.
    unsafe {
        crate::atomic::add(&raw mut (*o).packets, packets);
        crate::atomic::add(&raw mut (*o).bytes, bytes);
    }
}

/// Per-CPU drop and failure counters, indexed by `monitor_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// New-flow, connect and close events for the agent.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// DNS answers received by any socket (see `dns.rs`), each a `DnsHeader` and its payload.
/// Apart from the events ring, so that a burst of answers never costs a new-flow event.
#[map]
pub static DNS_ANSWERS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Where one answer is assembled before it is copied to `DNS_ANSWERS` at its own length.
#[map]
pub static DNS_SCRATCH: PerCpuArray<DnsCapture> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU DNS counters, indexed by `monitor_common::dns_stat`.
#[map]
pub static DNS_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(dns_stat::COUNT, 0);

/// Adds `n` to a `DNS_STATS` counter.
#[inline(always)]
pub fn count_dns(index: u32, n: u64) {
    if let Some(c) = DNS_STATS.get_ptr_mut(index) {
        // SAFETY: live per-CPU slot; atomic as in `count`.
        unsafe { crate::atomic::add(c, n) };
    }
}

/// Socket-local storage with `BPF_F_CLONE`, so an accepted socket starts with a copy of its
/// listener's storage (class, process). aya-ebpf's own `SkStorage` fixes the flags to
/// `BPF_F_NO_PREALLOC` alone, hence this definition in the same BTF layout.
#[btf_map]
pub static SOCKS: SockStorage = SockStorage::new();

const SOCK_STORAGE_FLAGS: usize = (BPF_F_NO_PREALLOC | BPF_F_CLONE) as usize;

#[repr(C)]
pub struct SockStorage {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const SockInfo,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; SOCK_STORAGE_FLAGS],
}

// SAFETY: the fields are placeholders the loader patches; they are never dereferenced.
unsafe impl Sync for SockStorage {}

impl SockStorage {
    pub const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    #[inline(always)]
    pub fn as_ptr(&self) -> *mut core::ffi::c_void {
        core::ptr::from_ref(self).cast_mut().cast()
    }
}

/// Adds one to a `STATS` counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = STATS.get_ptr_mut(index) {
        // SAFETY: live per-CPU slot. Atomic because a softirq run can nest over a
        // process-context run on the same CPU.
        unsafe { crate::atomic::add(c, 1) };
    }
}

/// Sends an event to the agent, counting it when the ring buffer is full. Submitting without a
/// wakeup spares the sender a costly irq_work per event; the agent drains the ring on a short
/// timer, and is woken at once only when the ring is an eighth full.
#[inline(always)]
pub fn send_event<T: 'static>(event: T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut e) => {
            e.write(event);
            let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) * 8 >= EVENTS.query(BPF_RB_RING_SIZE as u64)
            {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            e.submit(flags as u64);
        }
        None => count(stat::RINGBUF_DROPS),
    }
}
