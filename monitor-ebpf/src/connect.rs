//! cgroup sock_addr hooks: they run in the calling process's context, so they record which
//! process owns each socket (connect, unconnected sendto) and whether a UDP socket is a server.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use monitor_common::{
    DIRECTION_INBOUND, DIRECTION_OUTBOUND, DIRECTION_UNKNOWN, EVENT_CONNECT, FAMILY_V4, FAMILY_V6,
    SOCK_HAS_PROCESS, SockEvent,
};

use crate::{
    maps::{active, send_event},
    sock,
};

// Observe mode: every hook returns 1 (allow) and never rewrites the address.

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    if active() {
        on_send(&ctx, FAMILY_V4, true);
    }
    1
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    if active() {
        on_send(&ctx, FAMILY_V6, true);
    }
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    if active() {
        on_send(&ctx, FAMILY_V4, false);
    }
    1
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    if active() {
        on_send(&ctx, FAMILY_V6, false);
    }
    1
}

/// A UDP socket that receives before it ever sends is a server: its flows are inbound.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    if active() {
        on_recv(&ctx);
    }
    1
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    if active() {
        on_recv(&ctx);
    }
    1
}

#[inline(always)]
fn sock_of(ctx: &SockAddrContext) -> *mut aya_ebpf::bindings::bpf_sock {
    // SAFETY: the context's socket is always a full socket in sock_addr hooks.
    unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk }
}

/// connect (always) and sendmsg (first time per socket): record the process and direction,
/// and tell the agent which process owns the socket.
#[inline(always)]
fn on_send(ctx: &SockAddrContext, family: u8, connect: bool) {
    let Some(info) = sock::storage(sock_of(ctx)) else { return };
    if !connect && info.flags & SOCK_HAS_PROCESS != 0 {
        return; // sendto on a socket already attributed: nothing to do per datagram
    }
    info.process = sock::current_process();
    info.flags |= SOCK_HAS_PROCESS;
    if info.direction == DIRECTION_UNKNOWN || connect {
        info.direction = DIRECTION_OUTBOUND;
    }
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let daddr = sock::user_addr(sa, family);
    let event = SockEvent {
        kind: EVENT_CONNECT,
        _pad: 0,
        // SAFETY: helpers on the program's context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        daddr,
        dport: u16::from_be(sa.user_port as u16),
        family,
        proto: sa.protocol as u8,
        _pad2: 0,
        process: info.process,
    };
    send_event(event);
}

#[inline(always)]
fn on_recv(ctx: &SockAddrContext) {
    let Some(info) = sock::storage(sock_of(ctx)) else { return };
    if info.direction == DIRECTION_UNKNOWN {
        info.direction = DIRECTION_INBOUND;
    }
    if info.flags & SOCK_HAS_PROCESS == 0 {
        info.process = sock::current_process();
        info.flags |= SOCK_HAS_PROCESS;
    }
}
