//! Socket-level state shared by every hook: the socket-local storage, the process that owns a
//! socket, and the class of a socket (cgroup ancestors first, then uid).

use aya_ebpf::{
    bindings::{__sk_buff, BPF_SK_STORAGE_GET_F_CREATE, bpf_sock, bpf_sock_addr},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_task, bpf_get_socket_uid, bpf_sk_storage_get, bpf_skb_ancestor_cgroup_id,
        },
    },
};
use aya_log_ebpf::debug;
use monitor_common::{
    CLASS_NONE, CONFIG_GENERATION, FAMILY_V4, MAX_CGROUP_DEPTH, ProcessInfo, SockInfo, stat,
};

use crate::maps::{CGROUP_CLASSES, CONFIG, SOCKS, UID_CLASSES, count};

/// The socket's storage, created (zeroed) when it does not exist yet. `sk` must be a full socket.
#[inline(always)]
pub fn storage(sk: *mut bpf_sock) -> Option<&'static mut SockInfo> {
    // SAFETY: `sk` comes from the kernel (context or bpf_sk_fullsock); the helper checks it.
    let p = unsafe {
        bpf_sk_storage_get(
            SOCKS.as_ptr(),
            sk.cast(),
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    } as *mut SockInfo;
    if p.is_null() {
        count(stat::SOCK_STORAGE_FAILED);
        // Rare: shown at debug level when the agent's RUST_LOG asks for kernel messages.
        debug!(&sk, "a socket got no storage (memory?): its process and class are unknown");
        None
    } else {
        // SAFETY: non-null storage returned by the kernel, valid while the program runs.
        Some(unsafe { &mut *p })
    }
}

/// Offsets of `task_struct.group_leader` and `task_struct.comm` in this kernel, set by the
/// agent at load from the kernel's BTF (0: unknown, the thread's own name is used).
#[unsafe(no_mangle)]
static TASK_GROUP_LEADER_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static TASK_COMM_OFFSET: u32 = 0;

/// The task running this hook (only meaningful in hooks that run in process context). `comm`
/// is the process's name (its thread-group leader's), not the calling thread's.
#[inline(always)]
pub fn current_process() -> ProcessInfo {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, pid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let mut comm = bpf_get_current_comm().unwrap_or([0; 16]);
    if pid != tgid {
        leader_comm(&mut comm);
    }
    ProcessInfo { tgid, pid, uid: bpf_get_current_uid_gid() as u32, _pad: 0, comm }
}

/// Replaces `comm` with the thread-group leader's, when the agent could tell where it is.
#[inline(never)]
fn leader_comm(comm: &mut [u8; 16]) {
    // SAFETY: constants the loader patched; volatile so the compiler keeps the loads.
    let (leader_off, comm_off) = unsafe {
        (core::ptr::read_volatile(&TASK_GROUP_LEADER_OFFSET), core::ptr::read_volatile(&TASK_COMM_OFFSET))
    };
    if leader_off == 0 || comm_off == 0 {
        return;
    }
    // SAFETY: the current task is live while the hook runs; both reads go through the
    // fault-safe helper.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let Ok(leader) = bpf_probe_read_kernel(task.add(leader_off as usize) as *const *const u8) else {
            return;
        };
        if let Ok(name) = bpf_probe_read_kernel(leader.add(comm_off as usize) as *const [u8; 16]) {
            *comm = name;
        }
    }
}

/// Current configuration generation (0 until the agent has filled the class maps).
#[inline(always)]
pub fn generation() -> u32 {
    CONFIG.get(CONFIG_GENERATION).copied().unwrap_or(0)
}

/// Class of the socket that sent `skb`: the deepest configured ancestor cgroup of the
/// socket's cgroup, else its uid, else none. Runs once per socket and configuration
/// generation; the answer is cached in the socket's storage.
#[inline(always)]
pub fn classify(skb: *mut __sk_buff) -> u32 {
    let mut class = CLASS_NONE;
    let mut level = 0;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: skb is the program's context.
        let id = unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) };
        if id == 0 {
            break; // deeper than the socket's own cgroup
        }
        // SAFETY: plain value read from a hash map entry.
        if let Some(c) = unsafe { CGROUP_CLASSES.get(&id) } {
            class = *c;
        }
        level += 1;
    }
    if class == CLASS_NONE {
        // SAFETY: skb is the program's context.
        let uid = unsafe { bpf_get_socket_uid(skb) };
        if let Some(c) = unsafe { UID_CLASSES.get(&uid) } {
            class = *c;
        }
    }
    class
}

/// The address the caller of a sock_addr hook gave (to connect or sendto): IPv4 in the first
/// 4 bytes, network order.
#[inline(always)]
pub fn user_addr(sa: &bpf_sock_addr, family: u8) -> [u8; 16] {
    let mut addr = [0u8; 16];
    if family == FAMILY_V4 {
        addr[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    } else {
        let ip6 = sa.user_ip6;
        addr[0..4].copy_from_slice(&ip6[0].to_ne_bytes());
        addr[4..8].copy_from_slice(&ip6[1].to_ne_bytes());
        addr[8..12].copy_from_slice(&ip6[2].to_ne_bytes());
        addr[12..16].copy_from_slice(&ip6[3].to_ne_bytes());
    }
    addr
}
