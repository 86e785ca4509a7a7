//! Socket lifecycle: listen (sock_ops, in the listening process's context) marks a socket as a
//! listener and records its process, which accepted sockets inherit through BPF_F_CLONE storage;
//! release (cgroup_sock) marks the socket's flow closed (or tells the agent), so its flows end promptly.

use aya_ebpf::{
    bindings::bpf_sock,
    bindings::{BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_TCP_LISTEN_CB},
    helpers::generated::{bpf_get_socket_cookie, bpf_sk_storage_get},
    macros::{cgroup_sock, sock_ops},
    programs::{SockContext, SockOpsContext},
};
use monitor_common::{
    DIRECTION_INBOUND, EVENT_SOCK_CLOSED, ProcessInfo, SOCK_HAS_FLOW, SOCK_HAS_PROCESS, SOCK_LISTENER,
    SOCK_MANY_FLOWS, SockEvent, SockInfo,
};

use crate::{
    maps::{FLOWS, SOCKS, active, send_event},
    sock,
};

/// Always returns 1: sock_ops in observe mode changes nothing.
#[sock_ops]
pub fn sock_lifecycle(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if !active() || op != BPF_SOCK_OPS_TCP_LISTEN_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        return 1;
    }
    // SAFETY: ops->sk is a full socket for these callbacks (nullable to the verifier).
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return 1;
    }
    let Some(info) = sock::storage(sk) else { return 1 };
    if op == BPF_SOCK_OPS_TCP_LISTEN_CB {
        // listen() runs in the process's context.
        info.flags |= SOCK_LISTENER | SOCK_HAS_PROCESS;
        info.process = sock::current_process();
    } else {
        // An accepted connection: inbound, whatever it inherited, and its own flow to come.
        info.direction = DIRECTION_INBOUND;
        info.flags &= !(SOCK_HAS_FLOW | SOCK_MANY_FLOWS);
    }
    1
}

/// A socket was released by its last owner. Its flows may still send a few packets (FIN,
/// retransmissions), so the agent ends them after a grace period, not at once. A socket that
/// sent on one flow (every TCP socket) marks that flow closed in the flow map, which the
/// agent's next sweep reads; others send an event (events cost the closing task far more).
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    if !active() || mark_flow_closed(ctx.sock) {
        return 1;
    }
    let event = SockEvent {
        kind: EVENT_SOCK_CLOSED,
        _pad: 0,
        // SAFETY: helper on the program's context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.sock.cast()) },
        cgroup_id: 0,
        daddr: [0; 16],
        dport: 0,
        family: 0,
        proto: 0,
        _pad2: 0,
        process: ProcessInfo::EMPTY,
    };
    send_event(event);
    1
}

#[inline(always)]
fn mark_flow_closed(sk: *mut bpf_sock) -> bool {
    // SAFETY: the context's socket; no storage is created here.
    let p =
        unsafe { bpf_sk_storage_get(SOCKS.as_ptr(), sk.cast(), core::ptr::null_mut(), 0) } as *mut SockInfo;
    if p.is_null() {
        return false;
    }
    // SAFETY: non-null storage returned by the kernel.
    let info = unsafe { &*p };
    if info.flags & (SOCK_HAS_FLOW | SOCK_MANY_FLOWS) != SOCK_HAS_FLOW {
        return false;
    }
    match FLOWS.get_ptr_mut(&info.flow) {
        Some(v) => {
            // SAFETY: live map value.
            unsafe { (*v).closed = 1 };
            true
        }
        None => false,
    }
}
