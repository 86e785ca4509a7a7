//! cgroup sock_addr hooks: they run in the calling process's context, so they record which
//! process owns each socket (connect, unconnected sendto) and whether a UDP socket is a server.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use monitor_common::{DIRECTION_INBOUND, DIRECTION_OUTBOUND, DIRECTION_UNKNOWN, SOCK_HAS_PROCESS};

use crate::{maps::active, sock};

// Observe mode: every hook returns 1 (allow) and never rewrites the address.

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    if active() {
        on_send(&ctx, true);
    }
    1
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    if active() {
        on_send(&ctx, true);
    }
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    if active() {
        on_send(&ctx, false);
    }
    1
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    if active() {
        on_send(&ctx, false);
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

/// connect (always) and sendmsg (first time per socket): record the process and direction in
/// the socket's storage, which the socket's flows copy when the egress program creates them.
#[inline(always)]
fn on_send(ctx: &SockAddrContext, connect: bool) {
    let Some(info) = sock::storage(sock_of(ctx)) else { return };
    if !connect && info.flags & SOCK_HAS_PROCESS != 0 {
        return; // sendto on a socket already attributed: nothing to do per datagram
    }
    info.process = sock::current_process();
    info.flags |= SOCK_HAS_PROCESS;
    if info.direction == DIRECTION_UNKNOWN || connect {
        info.direction = DIRECTION_OUTBOUND;
    }
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
