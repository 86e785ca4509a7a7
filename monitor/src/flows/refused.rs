//! Attempts the kernel refused (enforcing classes), described as the flows they would have
//! been, so that their alerts read like any other.

use std::time::Instant;

use monitor_common::{BlockEvent, DIRECTION_INBOUND, DIRECTION_OUTBOUND, FlowKey, blocked};

use super::{Flow, FlowState, FlowUpdate};

impl FlowUpdate {
    /// An attempt the kernel refused, as the flow it would have been, to describe its alert:
    /// from the socket's side (the unapproved address as destination), with what was refused
    /// as its counts (the dropped packet of an incoming SYN or datagram; nothing for a connect
    /// or sendto, which failed before a packet left).
    pub fn refused(e: &BlockEvent, now_ns: u64) -> FlowUpdate {
        let key = FlowKey {
            cgroup_id: e.cgroup_id,
            saddr: e.local,
            daddr: e.remote,
            sport: e.local_port,
            dport: e.remote_port,
            proto: e.proto,
            family: e.family,
            _pad: [0; 2],
        };
        let packets = (e.bytes > 0) as u64;
        let flow = Flow {
            first_seen_ns: now_ns,
            last_seen_ns: now_ns,
            packets,
            bytes: e.bytes as u64,
            class_id: e.class_id,
            direction: if e.hook == blocked::INGRESS { DIRECTION_INBOUND } else { DIRECTION_OUTBOUND },
            cookie: e.cookie,
            sock_uid: e.process.uid,
            process: (e.process.tgid != 0).then_some(e.process),
            name: None,
            class_pinned: true,
            entry_id: now_ns,
            entry_packets: packets,
            entry_bytes: e.bytes as u64,
            emitted_packets: packets,
            emitted_bytes: e.bytes as u64,
            emitted_class: e.class_id,
            last_emit: Instant::now(),
            closed_at: None,
            seen_sweep: 0,
            carried: false,
        };
        FlowUpdate {
            key,
            flow,
            state: FlowState::Ended,
            delta_bytes: e.bytes as u64,
            delta_packets: packets,
            mark: None,
        }
    }
}
