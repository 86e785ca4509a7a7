//! cgroup_skb egress: every packet a socket sends is counted against its flow, tagged with the
//! socket's data class. The hot path is one socket-storage lookup and one flow-map update; a
//! new classified flow also costs one verdict lookup, and an event unless the tables approve it.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST, bpf_sock},
    helpers::generated::{
        bpf_get_listener_sock, bpf_get_socket_cookie, bpf_get_socket_uid, bpf_ktime_get_coarse_ns,
        bpf_ktime_get_ns, bpf_sk_fullsock, bpf_skb_cgroup_id,
    },
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use aya_log_ebpf::debug;
use monitor_common::{
    CLASS_NONE, DIRECTION_INBOUND, DIRECTION_OUTBOUND, DIRECTION_UNKNOWN, EVENT_NEW_FLOW, FAMILY_V4,
    FAMILY_V6, FlowKey, FlowValue, NewFlowEvent, ProcessInfo, SOCK_HAS_FLOW, SOCK_LISTENER, SOCK_MANY_FLOWS,
    SockInfo, stat,
};

use crate::{
    atomic::add,
    maps::{FLOWS, active, count, overflow, send_event},
    sock, verdict,
};

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;
/// `bpf_sock.state` of a request socket (the SYN-ACK of a connection being accepted).
const TCP_NEW_SYN_RECV: u32 = 12;

/// Observe mode: always returns 1 (allow). Never drops or delays a packet.
#[cgroup_skb(egress)]
pub fn flow_egress(ctx: SkBuffContext) -> i32 {
    if active() {
        count_packet(&ctx);
    }
    1
}

/// What the socket contributes to a flow: class, direction hint, process and cookie.
struct Owner {
    class_id: u32,
    direction: u8,
    sock_flags: u8,
    process: ProcessInfo,
}

#[inline(always)]
fn count_packet(ctx: &SkBuffContext) {
    let skb = ctx.skb.skb;
    let mut slot = core::mem::MaybeUninit::uninit();
    let key: &mut FlowKey = zeroed(&mut slot);
    // Headers straight from the packet's linear data; through the load helper only when they
    // are not all there.
    let parsed = match parse_direct(skb, key) {
        Some(p) => p,
        None => parse(ctx, key),
    };
    let Some(headers) = parsed else {
        count(stat::UNPARSED_PACKETS);
        return;
    };
    let sender = sender(skb);
    key.cgroup_id = sender.cgroup_id;
    if !sender.request && !sender.info.is_null() {
        // SAFETY: storage returned by the kernel, valid while the program runs.
        let info = unsafe { &mut *sender.info };
        if info.flags & SOCK_HAS_FLOW == 0 {
            info.flow = *key;
            info.flags |= SOCK_HAS_FLOW;
        }
    }
    // SAFETY: plain context field reads.
    let (len, segs) = unsafe { ((*skb).len as u64, (*skb).gso_segs as u64) };
    let packets = if segs > 1 { segs } else { 1 };
    let len = wire_bytes(&headers, len, segs);

    if let Some(v) = FLOWS.get_ptr_mut(&*key) {
        // SAFETY: v points at a live map value; counters use atomic adds.
        unsafe {
            add(&raw mut (*v).packets, packets);
            add(&raw mut (*v).bytes, len);
            (*v).last_seen_ns = bpf_ktime_get_coarse_ns();
            if (*v).class_id != sender.class_id {
                (*v).class_id = sender.class_id;
            }
        }
        return;
    }
    new_flow(skb, &*key, &owner(&sender, &*key, headers.tcp_flags), packets, len);
}

#[inline(never)]
fn new_flow(skb: *mut __sk_buff, key: &FlowKey, owner: &Owner, packets: u64, len: u64) {
    // SAFETY: helpers on the program's context.
    let now = unsafe { bpf_ktime_get_ns() };
    let value = FlowValue {
        packets,
        bytes: len,
        first_seen_ns: now,
        last_seen_ns: now,
        cookie: unsafe { bpf_get_socket_cookie(skb.cast()) },
        class_id: owner.class_id,
        direction: owner.direction,
        sock_flags: owner.sock_flags,
        closed: 0,
        _pad: 0,
        sock_uid: unsafe { bpf_get_socket_uid(skb) },
        _pad2: 0,
        process: owner.process,
    };
    if FLOWS.insert(key, &value, BPF_NOEXIST as u64).is_err() {
        // Another CPU created it first: add to theirs.
        match FLOWS.get_ptr_mut(key) {
            Some(v) => unsafe {
                add(&raw mut (*v).packets, packets);
                add(&raw mut (*v).bytes, len);
            },
            None => {
                count(stat::FLOW_INSERT_FAILED);
                overflow(owner.class_id, key.cgroup_id, packets, len);
                // Rare: shown at debug level when the agent's RUST_LOG asks for kernel messages.
                debug!(&skb, "a new flow to port {} got no slot in the flow map", key.dport);
            }
        }
        return;
    }
    // A classified flow is announced at once (its alert cannot wait) unless the verdict tables
    // approve it; they are in force only while a class enforces. The agent's sweep finds every
    // other flow within a sweep interval.
    if owner.class_id != CLASS_NONE
        && verdict::table_approves(owner.class_id, key.family, &key.daddr) != Some(true)
    {
        send_event(NewFlowEvent { kind: EVENT_NEW_FLOW, _pad: 0, key: *key, value });
    }
}

/// The socket that sent a packet, as far as every packet needs it: its class (computed once
/// per configuration generation and cached in its storage) and that storage.
struct Sender {
    class_id: u32,
    /// The sending socket's cgroup.
    cgroup_id: u64,
    /// The socket's storage (the listener's for a request socket); null when there is none.
    info: *mut SockInfo,
    /// A request socket: the SYN-ACK of a connection being accepted (inbound).
    request: bool,
}

#[inline(always)]
fn sender(skb: *mut __sk_buff) -> Sender {
    // SAFETY: context field read; the verifier tracks it as a nullable socket pointer.
    let sk: *mut bpf_sock = unsafe { (*skb).__bindgen_anon_2.sk };
    // SAFETY (helpers below): skb is the program's context.
    let none = |request| Sender {
        class_id: sock::classify(skb),
        cgroup_id: unsafe { bpf_skb_cgroup_id(skb) },
        info: core::ptr::null_mut(),
        request,
    };
    if sk.is_null() {
        return none(false);
    }
    // SAFETY: sk is a non-null socket pointer from the context.
    let full = unsafe { bpf_sk_fullsock(sk) };
    let (target, request) = if !full.is_null() {
        (full, false)
    } else {
        // A request socket: its listener carries the class and process; the flow is inbound.
        // SAFETY: as above.
        let state = unsafe { (*sk).state };
        let listener = unsafe { bpf_get_listener_sock(sk) };
        if listener.is_null() {
            return none(state == TCP_NEW_SYN_RECV);
        }
        (listener, true)
    };
    let Some(info) = sock::storage(target) else { return none(false) };
    let generation = sock::generation();
    if info.generation != generation {
        info.class_id = sock::classify(skb);
        info.generation = generation;
    }
    if info.cgroup_id == 0 || request {
        // A listener's storage is the listener's; the request socket has its own cgroup id.
        // SAFETY: skb is the program's context.
        let id = unsafe { bpf_skb_cgroup_id(skb) };
        if !request {
            info.cgroup_id = id;
        }
        return Sender { class_id: info.class_id, cgroup_id: id, info, request };
    }
    Sender { class_id: info.class_id, cgroup_id: info.cgroup_id, info, request }
}

/// Class, direction and process of a new flow's socket. Only the first packet of a flow needs
/// them; the first packet of a connection (its SYN) also fixes the socket's direction.
#[inline(always)]
fn owner(s: &Sender, key: &FlowKey, tcp_flags: u8) -> Owner {
    let mut owner = Owner {
        class_id: s.class_id,
        direction: if s.request { DIRECTION_INBOUND } else { DIRECTION_UNKNOWN },
        sock_flags: 0,
        process: ProcessInfo::EMPTY,
    };
    if s.info.is_null() {
        return owner;
    }
    // SAFETY: storage returned by the kernel, valid while the program runs.
    let info = unsafe { &mut *s.info };
    if info.direction == DIRECTION_UNKNOWN && !s.request {
        if info.flags & SOCK_LISTENER != 0 {
            info.direction = DIRECTION_INBOUND;
        } else if key.proto == IPPROTO_TCP && tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
            info.direction = DIRECTION_OUTBOUND;
        }
    }
    if !s.request {
        owner.direction = info.direction;
        // A second flow of one socket: its release must be an event (it cannot mark them all).
        if info.flags & SOCK_HAS_FLOW != 0 && info.flow != *key {
            info.flags |= SOCK_MANY_FLOWS;
        }
    }
    owner.sock_flags = info.flags;
    owner.process = info.process;
    owner
}

/// Zeroes `slot` in place, padding included (a hash key is compared bytewise), with one 8-byte
/// store per word. A zeroed value built any other way (`FlowKey::ZERO`, returning it by value)
/// becomes a call to a byte-at-a-time memset, since the linker expands no memset inline: 48
/// rounds of a loop, about 60 ns on every packet.
#[inline(always)]
pub fn zeroed<T>(slot: &mut core::mem::MaybeUninit<T>) -> &mut T {
    const { assert!(core::mem::size_of::<T>() % 8 == 0 && core::mem::align_of::<T>() >= 8) };
    let words = slot.as_mut_ptr().cast::<u64>();
    for i in 0..core::mem::size_of::<T>() / 8 {
        // SAFETY: within the slot, 8-aligned; volatile so LLVM keeps the stores and does not
        // recognise a memset.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // SAFETY: every byte written above; callers use types for which all-zero is valid.
    unsafe { slot.assume_init_mut() }
}

/// What the flow key does not hold but counting needs.
pub struct Headers {
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// Offset of the transport header (the network header's length).
    l4: usize,
    /// Length of the transport header (TCP data offset; 8 for UDP; 0 when unknown).
    l4_len: usize,
}

impl Headers {
    /// Offset of the transport header.
    #[inline(always)]
    pub fn l4(&self) -> usize {
        self.l4
    }

    /// Whether the transport header (and so its ports) was found.
    #[inline(always)]
    pub fn has_ports(&self) -> bool {
        self.l4_len != 0
    }
}

/// 16 bytes from a packet as four 4-byte loads (the linker would make a plain 16-byte copy a
/// call to a byte-at-a-time memmove).
///
/// # Safety
/// `p..p + 16` must be within the packet, checked against its end.
#[inline(always)]
unsafe fn read16(p: *const u8) -> [u8; 16] {
    let mut out = [0u32; 4];
    for (i, w) in out.iter_mut().enumerate() {
        // SAFETY: within the checked range (the caller's contract).
        *w = unsafe { core::ptr::read_unaligned(p.add(i * 4).cast::<u32>()) };
    }
    // SAFETY: [u32; 4] and [u8; 16] have the same size; the words hold the bytes in order.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(out) }
}

/// Reads the headers by direct packet access. `None` when the linear data is too short to
/// hold them (then the caller reads through the helper); `Some(None)` for a packet that is
/// neither IPv4 nor IPv6.
#[inline(always)]
pub fn parse_direct(skb: *mut __sk_buff, key: &mut FlowKey) -> Option<Option<Headers>> {
    // SAFETY: every read below is bounds-checked against data_end first (the verifier checks it).
    unsafe {
        let data = (*skb).data as usize as *const u8;
        let end = (*skb).data_end as usize as *const u8;
        if data.add(1) > end {
            return None;
        }
        let b0 = *data;
        let l4: usize;
        match b0 >> 4 {
            4 => {
                if data.add(20) > end {
                    return None;
                }
                key.family = FAMILY_V4;
                key.proto = *data.add(9);
                let s: [u8; 4] = core::ptr::read_unaligned(data.add(12).cast());
                let d: [u8; 4] = core::ptr::read_unaligned(data.add(16).cast());
                key.saddr[..4].copy_from_slice(&s);
                key.daddr[..4].copy_from_slice(&d);
                l4 = ((b0 & 0x0f) as usize * 4) & 0x3c;
            }
            6 => {
                if data.add(40) > end {
                    return None;
                }
                key.family = FAMILY_V6;
                key.proto = *data.add(6);
                key.saddr = read16(data.add(8));
                key.daddr = read16(data.add(24));
                let mut off = 40usize;
                // Extension headers (hop-by-hop, routing, fragment, destination options), walked
                // to the transport header; a few at most, as the verifier wants loops bounded.
                for _ in 0..MAX_EXT_HEADERS {
                    if !is_ext_header(key.proto) {
                        break;
                    }
                    let h = data.add(off & 0x1ff);
                    if h.add(8) > end {
                        return None;
                    }
                    let (next, len, later_fragment) =
                        ext_header(key.proto, [*h, *h.add(1), *h.add(2), *h.add(3)]);
                    key.proto = next;
                    off = (off & 0x1ff) + len;
                    if later_fragment || off > 0x1ff {
                        // No transport header in this fragment, or beyond what is walked: its
                        // ports are unknown.
                        return Some(Some(Headers { tcp_flags: 0, l4: off & 0x1ff, l4_len: 0 }));
                    }
                }
                if is_ext_header(key.proto) || off > 0x1ff {
                    return Some(Some(Headers { tcp_flags: 0, l4: off & 0x1ff, l4_len: 0 }));
                }
                l4 = off & 0x1ff;
            }
            _ => return Some(None),
        }
        match key.proto {
            IPPROTO_TCP => {
                let t = data.add(l4);
                if t.add(14) > end {
                    return None;
                }
                key.sport = u16::from_be_bytes([*t, *t.add(1)]);
                key.dport = u16::from_be_bytes([*t.add(2), *t.add(3)]);
                let l4_len = ((*t.add(12) >> 4) as usize) * 4;
                Some(Some(Headers { tcp_flags: *t.add(13), l4, l4_len }))
            }
            IPPROTO_UDP => {
                let u = data.add(l4);
                if u.add(4) > end {
                    return None;
                }
                key.sport = u16::from_be_bytes([*u, *u.add(1)]);
                key.dport = u16::from_be_bytes([*u.add(2), *u.add(3)]);
                Some(Some(Headers { tcp_flags: 0, l4, l4_len: 8 }))
            }
            _ => Some(Some(Headers { tcp_flags: 0, l4, l4_len: 0 })),
        }
    }
}

/// Fills the 5-tuple of `key` from the packet (network header at offset 0). None when the
/// packet is neither IPv4 nor IPv6.
#[inline(always)]
pub fn parse(ctx: &SkBuffContext, key: &mut FlowKey) -> Option<Headers> {
    let b0: u8 = ctx.load(0).ok()?;
    let l4: usize;
    match b0 >> 4 {
        4 => {
            key.family = FAMILY_V4;
            key.proto = ctx.load(9).ok()?;
            let addrs: [u8; 8] = ctx.load(12).ok()?;
            key.saddr[..4].copy_from_slice(&addrs[..4]);
            key.daddr[..4].copy_from_slice(&addrs[4..]);
            l4 = ((b0 & 0x0f) as usize) * 4;
        }
        6 => {
            key.family = FAMILY_V6;
            key.proto = ctx.load(6).ok()?;
            key.saddr = ctx.load(8).ok()?;
            key.daddr = ctx.load(24).ok()?;
            let mut off = 40usize;
            for _ in 0..MAX_EXT_HEADERS {
                if !is_ext_header(key.proto) {
                    break;
                }
                let (next, len, later_fragment) = ext_header(key.proto, ctx.load(off & 0x1ff).ok()?);
                key.proto = next;
                off = (off & 0x1ff) + len;
                if later_fragment || off > 0x1ff {
                    return Some(Headers { tcp_flags: 0, l4: off & 0x1ff, l4_len: 0 });
                }
            }
            if is_ext_header(key.proto) || off > 0x1ff {
                return Some(Headers { tcp_flags: 0, l4: off & 0x1ff, l4_len: 0 });
            }
            l4 = off;
        }
        _ => return None,
    }
    // Bounded for the verifier: an IPv4 header is at most 60 bytes, IPv6 ones as walked above.
    let l4 = l4 & 0x1ff;
    if key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP {
        return Some(Headers { tcp_flags: 0, l4, l4_len: 0 });
    }
    let ports: [u8; 4] = ctx.load(l4).ok()?;
    key.sport = u16::from_be_bytes([ports[0], ports[1]]);
    key.dport = u16::from_be_bytes([ports[2], ports[3]]);
    if key.proto == IPPROTO_UDP {
        return Some(Headers { tcp_flags: 0, l4, l4_len: 8 });
    }
    let [off, flags]: [u8; 2] = ctx.load(l4 + 12).unwrap_or([0, 0]);
    Some(Headers { tcp_flags: flags, l4, l4_len: ((off >> 4) as usize) * 4 })
}

/// IPv6 extension headers walked at most, before the transport header.
const MAX_EXT_HEADERS: usize = 4;

/// Hop-by-hop options, routing, fragment, destination options.
#[inline(always)]
fn is_ext_header(proto: u8) -> bool {
    matches!(proto, 0 | 43 | 44 | 60)
}

/// An extension header's next header, its length, and whether it is a fragment other than the
/// first, from its first four bytes.
#[inline(always)]
fn ext_header(proto: u8, h: [u8; 4]) -> (u8, usize, bool) {
    if proto == 44 {
        let offset = u16::from_be_bytes([h[2], h[3]]) & 0xfff8;
        (h[0], 8, offset != 0)
    } else {
        (h[0], (h[1] as usize + 1) * 8, false)
    }
}

/// Bytes on the wire at L3. A GSO packet is one skb holding several segments; each segment
/// carries its own network and transport headers, which `skb->len` holds only once.
#[inline(always)]
fn wire_bytes(h: &Headers, len: u64, segs: u64) -> u64 {
    if segs <= 1 {
        return len;
    }
    len + (segs - 1) * (h.l4 as u64 + h.l4_len as u64)
}
