//! cgroup_skb ingress: the DNS answers any socket receives (packets from port 53, UDP or TCP)
//! are copied, bounded, to the agent, which names flows with them. Every other packet costs a
//! few header reads and compares. Observe only: always returns 1 (allow).

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use monitor_common::{DNS_CAPTURE_MAX, DNS_PORT, DnsHeader, FAMILY_V4, FAMILY_V6, FlowKey, dns_stat};

use crate::{
    egress::{IPPROTO_TCP, IPPROTO_UDP, parse, zeroed},
    maps::{DNS_ANSWERS, DNS_SCRATCH, active, count_dns},
};

/// Observe mode: always returns 1 (allow). Never drops or delays a packet.
#[cgroup_skb(ingress)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    if active() {
        watch(&ctx);
    }
    1
}

#[inline(always)]
fn watch(ctx: &SkBuffContext) {
    let skb = ctx.skb.skb;
    // SAFETY: every read below is bounds-checked against data_end first (the verifier checks it).
    unsafe {
        let data = (*skb).data as usize as *const u8;
        let end = (*skb).data_end as usize as *const u8;
        if data.add(44) > end {
            // Headers not all in the linear data (or a packet shorter than 44 bytes).
            return watch_slow(ctx);
        }
        let b0 = *data;
        let (family, proto, l4) = match b0 >> 4 {
            4 => (FAMILY_V4, *data.add(9), ((b0 & 0x0f) as usize * 4) & 0x3c),
            6 => (FAMILY_V6, *data.add(6), 40),
            _ => return,
        };
        if proto != IPPROTO_UDP && proto != IPPROTO_TCP {
            if family == FAMILY_V6 && matches!(proto, 0 | 43 | 60) {
                // IPv6 extension headers before the transport header (rare).
                return watch_slow(ctx);
            }
            return;
        }
        let ports = data.add(l4);
        if ports.add(2) > end {
            return watch_slow(ctx);
        }
        if u16::from_be_bytes([*ports, *ports.add(1)]) != DNS_PORT {
            return;
        }
        capture(ctx, family, proto, l4);
    }
}

/// The same through the load helper, for packets whose headers are not in the linear data.
#[inline(never)]
fn watch_slow(ctx: &SkBuffContext) {
    let mut slot = core::mem::MaybeUninit::uninit();
    let key: &mut FlowKey = zeroed(&mut slot);
    let Some(h) = parse(ctx, key) else { return };
    if (key.proto == IPPROTO_UDP || key.proto == IPPROTO_TCP) && key.sport == DNS_PORT && h.has_ports() {
        capture(ctx, key.family, key.proto, h.l4());
    }
}

/// Copies one packet from port 53: its addresses, ports, socket and, at most
/// `DNS_CAPTURE_MAX` bytes of its payload, as one ring-buffer record of its own length.
#[inline(never)]
fn capture(ctx: &SkBuffContext, family: u8, proto: u8, l4: usize) {
    let skb = ctx.skb.skb;
    let Some(c) = DNS_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: the per-CPU scratch value is this program run's alone.
    let c = unsafe { &mut *c };
    let h: &mut DnsHeader = &mut c.header;
    let l4 = l4 & 0x1ff;
    let payload = if proto == IPPROTO_UDP {
        h.tcp_seq = 0;
        l4 + 8
    } else {
        let Ok(t) = ctx.load::<[u8; 13]>(l4) else { return };
        h.tcp_seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
        l4 + ((t[12] >> 4) as usize) * 4
    };
    // SAFETY: context field read.
    let len = unsafe { (*skb).len } as usize;
    if payload >= len {
        // A TCP segment without data (an ACK, a FIN).
        return;
    }
    let payload_len = (len - payload) as u32;
    h.saddr = [0; 16];
    h.daddr = [0; 16];
    if family == FAMILY_V4 {
        let Ok(a) = ctx.load::<[u8; 8]>(12) else { return };
        h.saddr[..4].copy_from_slice(&a[..4]);
        h.daddr[..4].copy_from_slice(&a[4..]);
    } else {
        let Ok(s) = ctx.load::<[u8; 16]>(8) else { return };
        let Ok(d) = ctx.load::<[u8; 16]>(24) else { return };
        h.saddr = s;
        h.daddr = d;
    }
    let Ok(ports) = ctx.load::<[u8; 4]>(l4) else { return };
    h.sport = u16::from_be_bytes([ports[0], ports[1]]);
    h.dport = u16::from_be_bytes([ports[2], ports[3]]);
    h.family = family;
    h.proto = proto;
    h._pad = 0;
    h._pad2 = 0;
    h.payload_len = payload_len;
    // SAFETY: helpers on the program's context.
    unsafe {
        h.ktime_ns = bpf_ktime_get_ns();
        h.cgroup_id = bpf_skb_cgroup_id(skb);
        h.cookie = bpf_get_socket_cookie(skb.cast());
    }
    let n = if payload_len > DNS_CAPTURE_MAX as u32 { DNS_CAPTURE_MAX as u32 } else { payload_len };
    // Through the stack, so the compiler cannot drop the mask the verifier needs to see.
    // SAFETY: a local.
    let n = unsafe { core::ptr::read_volatile(&n) } & DNS_CAPTURE_MAX as u32;
    if n == 0 {
        return;
    }
    h.captured = n;
    // SAFETY: `n` is within 1..=DNS_CAPTURE_MAX, the size of `data`; the helper checks the
    // packet's bounds.
    let loaded = unsafe { bpf_skb_load_bytes(skb.cast(), payload as u32, c.data.as_mut_ptr().cast(), n) };
    if loaded != 0 {
        return;
    }
    let size = size_of::<DnsHeader>() + n as usize;
    // SAFETY: `c` holds `size` initialised bytes (the header, then `n` loaded).
    let record = unsafe { core::slice::from_raw_parts(core::ptr::from_mut(c).cast::<u8>(), size) };
    // As events: no wakeup unless the ring is an eighth full (the agent drains it on a timer).
    let flags =
        if DNS_ANSWERS.query(BPF_RB_AVAIL_DATA as u64) * 8 >= DNS_ANSWERS.query(BPF_RB_RING_SIZE as u64) {
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        };
    if DNS_ANSWERS.output::<[u8]>(record, flags as u64).is_err() {
        count_dns(dns_stat::LOST, 1);
        count_dns(dns_stat::LOST_BYTES, payload_len as u64);
    }
}
