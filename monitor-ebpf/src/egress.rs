//! cgroup_skb egress: every packet a socket sends is counted against its flow, tagged with the
//! socket's data class. The hot path is one socket-storage lookup and one flow-map update.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST, bpf_sock},
    helpers::generated::{
        bpf_get_listener_sock, bpf_get_socket_cookie, bpf_get_socket_uid, bpf_ktime_get_coarse_ns,
        bpf_ktime_get_ns, bpf_sk_fullsock,
    },
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use monitor_common::{
    CLASS_NONE, DIRECTION_INBOUND, DIRECTION_OUTBOUND, DIRECTION_UNKNOWN, EVENT_NEW_FLOW, FAMILY_V4,
    FAMILY_V6, FlowKey, FlowValue, NewFlowEvent, ProcessInfo, SOCK_LISTENER, stat,
};

use crate::{
    atomic::add,
    maps::{EVENTS, FLOWS, count},
    sock,
};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;
/// `bpf_sock.state` of a request socket (the SYN-ACK of a connection being accepted).
const TCP_NEW_SYN_RECV: u32 = 12;

/// Observe mode: always returns 1 (allow). Never drops or delays a packet.
#[cgroup_skb(egress)]
pub fn flow_egress(ctx: SkBuffContext) -> i32 {
    count_packet(&ctx);
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
    let mut key = FlowKey::ZERO;
    let Some(headers) = parse(ctx, &mut key) else {
        count(stat::UNPARSED_PACKETS);
        return;
    };
    // SAFETY: skb is the program's context.
    key.cgroup_id = unsafe { aya_ebpf::helpers::generated::bpf_skb_cgroup_id(skb) };
    let owner = owner(skb, &key, headers.tcp_flags);
    // SAFETY: plain context field reads.
    let (len, segs) = unsafe { ((*skb).len as u64, (*skb).gso_segs as u64) };
    let packets = if segs > 1 { segs } else { 1 };
    let len = wire_bytes(ctx, &key, &headers, len, segs);

    if let Some(v) = FLOWS.get_ptr_mut(&key) {
        // SAFETY: v points at a live map value; counters use atomic adds.
        unsafe {
            add(&raw mut (*v).packets, packets);
            add(&raw mut (*v).bytes, len);
            (*v).last_seen_ns = bpf_ktime_get_coarse_ns();
            if (*v).class_id != owner.class_id {
                (*v).class_id = owner.class_id;
            }
        }
        return;
    }
    new_flow(skb, &key, &owner, packets, len);
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
        _pad: [0; 2],
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
            None => count(stat::FLOW_INSERT_FAILED),
        }
        return;
    }
    match EVENTS.reserve::<NewFlowEvent>(0) {
        Some(mut e) => {
            e.write(NewFlowEvent { kind: EVENT_NEW_FLOW, _pad: 0, key: *key, value });
            e.submit(0);
        }
        None => count(stat::RINGBUF_DROPS),
    }
}

/// Class, direction and process of the socket that sent this packet, from its storage
/// (classified on first use per configuration generation).
#[inline(always)]
fn owner(skb: *mut __sk_buff, key: &FlowKey, tcp_flags: u8) -> Owner {
    // SAFETY: context field read; the verifier tracks it as a nullable socket pointer.
    let sk: *mut bpf_sock = unsafe { (*skb).__bindgen_anon_2.sk };
    let mut owner = Owner {
        class_id: CLASS_NONE,
        direction: DIRECTION_UNKNOWN,
        sock_flags: 0,
        process: ProcessInfo::EMPTY,
    };
    if sk.is_null() {
        owner.class_id = sock::classify(skb);
        return owner;
    }
    // SAFETY: sk is a non-null socket pointer from the context.
    let full = unsafe { bpf_sk_fullsock(sk) };
    let (target, request) = if !full.is_null() {
        (full, false)
    } else {
        // A request socket: the SYN-ACK of a connection being accepted. Its listener carries
        // the class and process; the flow is inbound.
        // SAFETY: as above.
        let state = unsafe { (*sk).state };
        let listener = unsafe { bpf_get_listener_sock(sk) };
        if listener.is_null() {
            owner.class_id = sock::classify(skb);
            if state == TCP_NEW_SYN_RECV {
                owner.direction = DIRECTION_INBOUND;
            }
            return owner;
        }
        (listener, true)
    };
    let Some(info) = sock::storage(target) else {
        owner.class_id = sock::classify(skb);
        return owner;
    };
    let generation = sock::generation();
    if info.generation != generation {
        info.class_id = sock::classify(skb);
        info.generation = generation;
    }
    if info.direction == DIRECTION_UNKNOWN && !request {
        if info.flags & SOCK_LISTENER != 0 {
            info.direction = DIRECTION_INBOUND;
        } else if key.proto == IPPROTO_TCP && tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
            info.direction = DIRECTION_OUTBOUND;
        }
    }
    owner.class_id = info.class_id;
    owner.direction = if request { DIRECTION_INBOUND } else { info.direction };
    owner.sock_flags = info.flags;
    owner.process = info.process;
    owner
}

/// What the flow key does not hold but counting needs.
struct Headers {
    /// TCP flags (0 for other protocols).
    tcp_flags: u8,
    /// Offset of the transport header (the network header's length).
    l4: usize,
}

/// Fills the 5-tuple of `key` from the packet (network header at offset 0). None when the
/// packet is neither IPv4 nor IPv6.
#[inline(always)]
fn parse(ctx: &SkBuffContext, key: &mut FlowKey) -> Option<Headers> {
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
            l4 = 40;
        }
        _ => return None,
    }
    // Bounded for the verifier: an IPv4 header is at most 60 bytes.
    let l4 = l4 & 0x3f;
    if key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP {
        return Some(Headers { tcp_flags: 0, l4 });
    }
    let ports: [u8; 4] = ctx.load(l4).ok()?;
    key.sport = u16::from_be_bytes([ports[0], ports[1]]);
    key.dport = u16::from_be_bytes([ports[2], ports[3]]);
    let tcp_flags = if key.proto == IPPROTO_TCP { ctx.load::<u8>(l4 + 13).unwrap_or(0) } else { 0 };
    Some(Headers { tcp_flags, l4 })
}

/// Bytes on the wire at L3. A GSO packet is one skb holding several segments; each segment
/// carries its own network and transport headers, which `skb->len` holds only once.
#[inline(always)]
fn wire_bytes(ctx: &SkBuffContext, key: &FlowKey, h: &Headers, len: u64, segs: u64) -> u64 {
    if segs <= 1 {
        return len;
    }
    let transport = match key.proto {
        IPPROTO_TCP => match ctx.load::<u8>(h.l4 + 12) {
            Ok(off) => ((off >> 4) as u64) * 4,
            Err(_) => return len,
        },
        IPPROTO_UDP => 8,
        _ => 0,
    };
    len + (segs - 1) * (h.l4 as u64 + transport)
}
