//! Enforcement: the only programs that refuse anything. The agent attaches them to the cgroups
//! of enforcing classes alone, never to the cgroup v2 root. For a socket of an enforcing class
//! they look the other side's address up in the verdict tables the agent compiled from the
//! residency policy (one longest-prefix-match lookup) and refuse what is not approved:
//! `connect()` and unconnected `sendto()`/`sendmsg()` fail with EPERM before any packet leaves,
//! and an incoming SYN or UDP datagram is dropped before the socket sees it. Each refusal is
//! an event for the agent, which raises a `blocked` alert.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_socket_cookie,
        bpf_sk_fullsock, bpf_skb_cgroup_id,
    },
    macros::{cgroup_skb, cgroup_sock_addr},
    programs::{SkBuffContext, SockAddrContext},
};
use monitor_common::{
    BlockEvent, CLASS_NONE, EVENT_BLOCKED, FAMILY_V4, FAMILY_V6, FlowKey, MAX_CGROUP_DEPTH, ProcessInfo,
    SOCK_HAS_PROCESS, blocked,
};

use crate::{
    egress::{self, IPPROTO_TCP, IPPROTO_UDP, TCP_FLAG_ACK, TCP_FLAG_SYN},
    maps::{CGROUP_CLASSES, active, send_event},
    sock, verdict,
};

#[cgroup_sock_addr(connect4)]
pub fn enforce_connect4(ctx: SockAddrContext) -> i32 {
    if !active() { 1 } else { judge_call(&ctx, FAMILY_V4, blocked::CONNECT) }
}

#[cgroup_sock_addr(connect6)]
pub fn enforce_connect6(ctx: SockAddrContext) -> i32 {
    if !active() { 1 } else { judge_call(&ctx, FAMILY_V6, blocked::CONNECT) }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn enforce_sendmsg4(ctx: SockAddrContext) -> i32 {
    if !active() { 1 } else { judge_call(&ctx, FAMILY_V4, blocked::SENDMSG) }
}

#[cgroup_sock_addr(sendmsg6)]
pub fn enforce_sendmsg6(ctx: SockAddrContext) -> i32 {
    if !active() { 1 } else { judge_call(&ctx, FAMILY_V6, blocked::SENDMSG) }
}

/// Returns 0 (drop) for a SYN or datagram from an address the receiving socket's class may
/// not exchange data with; 1 (pass) for everything else.
#[cgroup_skb(ingress)]
pub fn enforce_ingress(ctx: SkBuffContext) -> i32 {
    if !active() { 1 } else { judge_packet(&ctx) }
}

/// Whether class `class_id` may exchange data with `addr`: true unless the class enforces and
/// the tables in force do not approve the address.
#[inline(always)]
fn approved(class_id: u32, family: u8, addr: &[u8; 16]) -> bool {
    !verdict::enforcing(class_id) || verdict::table_approves(class_id, family, addr).unwrap_or(true)
}

/// The class of the calling task's cgroup: its deepest configured ancestor (enforcing classes
/// are selected by cgroup only).
#[inline(always)]
fn current_class() -> u32 {
    let mut class = CLASS_NONE;
    let mut level = 0;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: helper without pointer arguments.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            break;
        }
        // SAFETY: plain value read from a hash map entry.
        if let Some(c) = unsafe { CGROUP_CLASSES.get(&id) } {
            class = *c;
        }
        level += 1;
    }
    class
}

/// connect and sendmsg: 0 (EPERM) when the destination is not approved for the caller's class.
#[inline(always)]
fn judge_call(ctx: &SockAddrContext, family: u8, hook: u8) -> i32 {
    // SAFETY: the context's fields, readable in every sock_addr hook.
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let remote = sock::user_addr(sa, family);
    let class_id = current_class();
    if approved(class_id, family, &remote) {
        return 1;
    }
    send_event(BlockEvent {
        kind: EVENT_BLOCKED,
        class_id,
        // SAFETY: helpers on the program's context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        remote,
        local: [0; 16],
        remote_port: u16::from_be(sa.user_port as u16),
        local_port: 0,
        family,
        proto: sa.protocol as u8,
        hook,
        _pad: 0,
        bytes: 0,
        _pad2: 0,
        process: sock::current_process(),
    });
    0
}

/// Ingress: a TCP SYN (no ACK) or a UDP datagram from an unapproved address is dropped.
#[inline(always)]
fn judge_packet(ctx: &SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    let mut slot = core::mem::MaybeUninit::uninit();
    let key: &mut FlowKey = egress::zeroed(&mut slot);
    let parsed = match egress::parse_direct(skb, key) {
        Some(p) => p,
        None => egress::parse(ctx, key),
    };
    let Some(headers) = parsed else { return 1 };
    let opening = match key.proto {
        IPPROTO_TCP => headers.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN,
        IPPROTO_UDP => true,
        _ => false,
    };
    if !opening {
        return 1;
    }
    let class_id = sock::classify(skb);
    if approved(class_id, key.family, &key.saddr) {
        return 1;
    }
    // The receiving socket's recorded process (a listener's: whoever called listen()).
    let mut process = ProcessInfo::EMPTY;
    // SAFETY: context field read; the verifier tracks it as a nullable socket pointer.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if !sk.is_null() {
        // SAFETY: sk is a non-null socket pointer from the context.
        let full = unsafe { bpf_sk_fullsock(sk) };
        if !full.is_null()
            && let Some(info) = sock::storage(full)
            && info.flags & SOCK_HAS_PROCESS != 0
        {
            process = info.process;
        }
    }
    send_event(BlockEvent {
        kind: EVENT_BLOCKED,
        class_id,
        // SAFETY: helpers on the program's context.
        cookie: unsafe { bpf_get_socket_cookie(skb.cast()) },
        cgroup_id: unsafe { bpf_skb_cgroup_id(skb) },
        remote: key.saddr,
        local: key.daddr,
        remote_port: key.sport,
        local_port: key.dport,
        family: key.family,
        proto: key.proto,
        hook: blocked::INGRESS,
        _pad: 0,
        // SAFETY: context field read.
        bytes: unsafe { (*skb).len },
        _pad2: 0,
        process,
    });
    0
}
