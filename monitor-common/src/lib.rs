//! The types the kernel programs and the agent share, one definition each.
//! Everything here is `#[repr(C)]` with explicit padding, so both sides agree byte for byte.
#![no_std]

/// Length of a task's `comm` (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;

/// Class id 0 means "no data class".
pub const CLASS_NONE: u32 = 0;

/// Deepest cgroup level the kernel walks when it looks for a classified ancestor.
/// Level 0 is the cgroup v2 root; a socket whose cgroup sits deeper is still matched
/// on its first `MAX_CGROUP_DEPTH` levels.
pub const MAX_CGROUP_DEPTH: u32 = 16;

/// Address families as stored in [`FlowKey::family`].
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Direction of a socket's connection, stored in [`SockInfo::direction`] and [`FlowValue::direction`].
pub const DIRECTION_UNKNOWN: u8 = 0;
/// The local side opened the connection (connect, or sendto first).
pub const DIRECTION_OUTBOUND: u8 = 1;
/// The remote side opened it (accepted TCP connection, or UDP socket that received first).
pub const DIRECTION_INBOUND: u8 = 2;

/// [`SockInfo::flags`]: the process fields are filled.
pub const SOCK_HAS_PROCESS: u8 = 1;
/// [`SockInfo::flags`]: the socket is (or was cloned from) a TCP listener.
pub const SOCK_LISTENER: u8 = 2;
/// [`SockInfo::flags`]: [`SockInfo::flow`] holds the flow the socket sends on.
pub const SOCK_HAS_FLOW: u8 = 4;
/// [`SockInfo::flags`]: the socket sent on more than one flow (unconnected UDP to several
/// peers): its release is reported by an event, not by marking one flow.
pub const SOCK_MANY_FLOWS: u8 = 8;

/// Identity of a flow in the kernel's flow map: the sending socket's cgroup and the 5-tuple
/// of the packet as it leaves. IPv4 addresses occupy the first 4 bytes (network order), the
/// rest is zero. Ports are in host order; 0 for protocols without ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub cgroup_id: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// All fields zero (a starting value to fill in).
    pub const ZERO: Self = Self {
        cgroup_id: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        proto: 0,
        family: 0,
        _pad: [0; 2],
    };
}

/// Process that owns a socket, as seen by the hook that ran in its context.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Thread group id (what userspace calls the pid).
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    pub uid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

impl ProcessInfo {
    pub const EMPTY: Self = Self { tgid: 0, pid: 0, uid: 0, _pad: 0, comm: [0; COMM_LEN] };
}

/// Counters and attributes of one flow. `packets` and `bytes` are updated with atomic adds,
/// so counts are exact when several CPUs send on the same flow. Everything else is written
/// when the flow is created, except `last_seen_ns` (each packet) and `class_id` (when the
/// socket's class changes because the agent's class maps changed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowValue {
    pub packets: u64,
    pub bytes: u64,
    /// `bpf_ktime_get_ns` of the first packet.
    pub first_seen_ns: u64,
    /// `bpf_ktime_get_coarse_ns` of the latest packet.
    pub last_seen_ns: u64,
    /// Socket cookie of the sending socket (0 when the packet had no full socket).
    pub cookie: u64,
    pub class_id: u32,
    pub direction: u8,
    /// `SOCK_*` flags copied from the socket when the flow was created.
    pub sock_flags: u8,
    /// Set by sock_release when the socket of this flow (its only flow) was closed.
    pub closed: u8,
    pub _pad: u8,
    /// Owner uid of the socket (`sk_uid`), known even when the process is not.
    pub sock_uid: u32,
    pub _pad2: u32,
    pub process: ProcessInfo,
}

/// Socket-local storage (BPF_MAP_TYPE_SK_STORAGE): the socket's class, cached once per
/// configuration generation, its direction and the process that opened it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockInfo {
    /// Configuration generation the class was computed for; 0 = never classified.
    pub generation: u32,
    pub class_id: u32,
    pub direction: u8,
    pub flags: u8,
    pub _pad: [u8; 6],
    /// The socket's cgroup (fixed for its life), cached so packets need not ask; 0 = not yet.
    pub cgroup_id: u64,
    pub process: ProcessInfo,
    /// The flow the socket sends on (see `SOCK_HAS_FLOW`), so that its release can mark the
    /// flow closed in the kernel instead of sending an event.
    pub flow: FlowKey,
}

/// Ring-buffer records. Every record starts with a `u32` kind.
pub const EVENT_NEW_FLOW: u32 = 1;
/// A process connected a socket, or sent its first datagram with sendto (sent by program sets
/// of earlier versions only; the process now travels in the socket storage).
pub const EVENT_CONNECT: u32 = 2;
/// A socket was released (closed by its last owner).
pub const EVENT_SOCK_CLOSED: u32 = 3;

/// A flow's first packet: its key and the value as created.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NewFlowEvent {
    pub kind: u32,
    pub _pad: u32,
    pub key: FlowKey,
    pub value: FlowValue,
}

/// Process attribution of one socket, from connect/sendmsg (kind `EVENT_CONNECT`) or its
/// release (kind `EVENT_SOCK_CLOSED`, only `cookie` set).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockEvent {
    pub kind: u32,
    pub _pad: u32,
    pub cookie: u64,
    pub cgroup_id: u64,
    pub daddr: [u8; 16],
    pub dport: u16,
    pub family: u8,
    pub proto: u8,
    pub _pad2: u32,
    pub process: ProcessInfo,
}

/// A connection, datagram or SYN of an enforcing class to or from an unapproved address was
/// refused (see [`BlockEvent`]).
pub const EVENT_BLOCKED: u32 = 4;

/// [`BlockEvent::hook`]: where the attempt was refused.
pub mod blocked {
    /// `connect()` failed with EPERM before any packet left.
    pub const CONNECT: u8 = 1;
    /// An unconnected `sendto()`/`sendmsg()` failed with EPERM.
    pub const SENDMSG: u8 = 2;
    /// An incoming SYN or datagram was dropped before the socket saw it.
    pub const INGRESS: u8 = 3;
}

/// An attempt of an enforcing class's socket the kernel refused.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockEvent {
    pub kind: u32,
    pub class_id: u32,
    pub cookie: u64,
    pub cgroup_id: u64,
    /// The unapproved address (the destination, or the sender of a dropped packet), and the
    /// local one (zero when not bound yet). IPv4 in the first 4 bytes.
    pub remote: [u8; 16],
    pub local: [u8; 16],
    pub remote_port: u16,
    pub local_port: u16,
    pub family: u8,
    pub proto: u8,
    /// `blocked::*`.
    pub hook: u8,
    pub _pad: u8,
    /// Length of the dropped packet (ingress); 0 when nothing was sent.
    pub bytes: u32,
    pub _pad2: u32,
    /// The calling process (connect, sendmsg), or the socket's recorded one (ingress: the
    /// listener's); tgid 0 when unknown.
    pub process: ProcessInfo,
}

/// DNS answers: the most bytes of one answer's DNS payload the kernel copies to the agent (an
/// EDNS answer over UDP is rarely over 1232 bytes; one cut short is counted as truncated). One
/// less than a power of two, so that the kernel can bound a length with a mask.
pub const DNS_CAPTURE_MAX: usize = 2047;

/// The DNS port: packets received from it (UDP or TCP) are answers.
pub const DNS_PORT: u16 = 53;

/// What precedes the copied payload of one received DNS packet in the `DNS_ANSWERS` ring
/// buffer (a record is this header, then `captured` bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsHeader {
    /// `bpf_ktime_get_ns` when the packet reached the socket.
    pub ktime_ns: u64,
    /// The receiving socket's cgroup.
    pub cgroup_id: u64,
    /// The receiving socket's cookie (with the addresses, the key of a TCP stream).
    pub cookie: u64,
    /// The answering server (source) and the receiver (destination), IPv4 in the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub proto: u8,
    pub _pad: u16,
    /// TCP: the segment's sequence number (host order); 0 for UDP.
    pub tcp_seq: u32,
    /// Length of the DNS payload in the packet (UDP payload, TCP segment data).
    pub payload_len: u32,
    /// Bytes of it that follow this header (at most `DNS_CAPTURE_MAX`).
    pub captured: u32,
    pub _pad2: u32,
}

/// Per-CPU scratch space where the kernel assembles one DNS record before copying it to the
/// ring buffer (a record of its exact length, not of the largest).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsCapture {
    pub header: DnsHeader,
    pub data: [u8; DNS_CAPTURE_MAX + 1],
}

/// Indexes of the per-CPU `DNS_STATS` counters.
pub mod dns_stat {
    /// Answers lost because the ring buffer was full, and their payload bytes.
    pub const LOST: u32 = 0;
    pub const LOST_BYTES: u32 = 1;
    pub const COUNT: u32 = 4;
}

/// Slots of each program set's `POLICY` array, written by the agent only.
pub mod policy_slot {
    /// Which pair of verdict tables is in force: 0 none (nothing is refused), 1 the `_A`
    /// tables, 2 the `_B` tables. The agent fills the other pair, then switches with this one
    /// write, so a half-built table is never in force.
    pub const ACTIVE: u32 = 0;
    /// Bit `id - 1` set: class `id` enforces (classes 1 to 64 can).
    pub const ENFORCING: u32 = 1;
    pub const COUNT: u32 = 4;
}

/// Indexes of the per-CPU `STATS` counters the agent reads and reports.
pub mod stat {
    /// Ring-buffer reservations that failed (event lost; the flow is still found by the sweep).
    pub const RINGBUF_DROPS: u32 = 0;
    /// Packets of flows that could not be inserted into the flow map (it was full): their
    /// bytes are in the overflow counters.
    pub const FLOW_INSERT_FAILED: u32 = 1;
    /// Socket storage that could not be created (the socket is classified per packet instead).
    pub const SOCK_STORAGE_FAILED: u32 = 2;
    /// Packets whose headers could not be parsed (not IPv4/IPv6, truncated).
    pub const UNPARSED_PACKETS: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Index of the configuration generation in the `CONFIG` array.
pub const CONFIG_GENERATION: u32 = 0;
/// Index of the active program set's epoch in the `CONFIG` array. Every program compares it
/// with its own `EPOCH` (set by the agent at load) and does nothing when they differ: the one
/// map write that changes it hands counting from an old program set to a new one at once.
pub const CONFIG_ACTIVE_EPOCH: u32 = 1;
/// Slots of the `CONFIG` array. `CONFIG` is the one map every program set shares (pinned
/// outside the sets), so its layout never changes: unused slots are reserved.
pub const CONFIG_SLOTS: u32 = 8;

/// Indexes of the `AGENT` array, written only by the agent, pinned with its program set.
pub mod agent_slot {
    /// CLOCK_REALTIME nanoseconds of the agent's latest sweep (its heartbeat).
    pub const HEARTBEAT_NS: u32 = 0;
    /// CLOCK_REALTIME nanoseconds when this program set was attached.
    pub const ATTACHED_NS: u32 = 1;
    /// The set's epoch (see `CONFIG_ACTIVE_EPOCH`).
    pub const EPOCH: u32 = 2;
    pub const COUNT: u32 = 4;
}

/// `REPORTED` value: what the agent last reported of one kernel flow entry, so that an agent
/// adopting the pinned maps reports only the rest.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Reported {
    /// `first_seen_ns` of the kernel entry the counts belong to.
    pub entry_id: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Packets and bytes the kernel could not give a flow of their own (the flow map was full):
/// per class in `OVERFLOW_CLASSES` (index = class id), per cgroup in `OVERFLOW_CGROUPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Overflow {
    pub packets: u64,
    pub bytes: u64,
    /// Class of the latest packet counted here (per-cgroup entries only).
    pub class_id: u32,
    pub _pad: u32,
}

/// Highest class id the kernel counts overflow for; the configuration allows no more classes.
pub const MAX_CLASSES: u32 = 1024;

#[cfg(feature = "user")]
mod user {
    use super::*;
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for ProcessInfo {}
    unsafe impl aya::Pod for SockInfo {}
    unsafe impl aya::Pod for NewFlowEvent {}
    unsafe impl aya::Pod for SockEvent {}
    unsafe impl aya::Pod for Reported {}
    unsafe impl aya::Pod for Overflow {}
    unsafe impl aya::Pod for BlockEvent {}
    unsafe impl aya::Pod for DnsHeader {}
    unsafe impl aya::Pod for DnsCapture {}
}

// Layout guards: both sides compile these, so a field change that shifts bytes fails the build.
const _: () = assert!(core::mem::size_of::<FlowKey>() == 48);
const _: () = assert!(core::mem::size_of::<ProcessInfo>() == 32);
const _: () = assert!(core::mem::size_of::<FlowValue>() == 88);
const _: () = assert!(core::mem::size_of::<SockInfo>() == 104);
const _: () = assert!(core::mem::size_of::<NewFlowEvent>() == 144);
const _: () = assert!(core::mem::size_of::<SockEvent>() == 80);
const _: () = assert!(core::mem::size_of::<Reported>() == 24);
const _: () = assert!(core::mem::size_of::<Overflow>() == 24);
const _: () = assert!(core::mem::size_of::<BlockEvent>() == 104);
const _: () = assert!(core::mem::size_of::<DnsHeader>() == 80);
