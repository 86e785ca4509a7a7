//! Loss counters become loss records: a warning and a `loss` record whenever one grows, so
//! nothing is dropped silently.

use std::sync::Arc;

use tracing::warn;

use crate::{
    flows::TableCounters,
    probe::KernelStats,
    record::{LossRecord, Timestamp},
};

/// Turns growing loss counters into a warning and a `loss` record.
#[derive(Default)]
pub(super) struct LossReporter {
    pub(super) last: KernelStats,
    last_evicted: u64,
}

impl LossReporter {
    pub(super) fn check(&mut self, k: KernelStats, t: TableCounters, host: &Arc<str>) -> Option<LossRecord> {
        if k == self.last && t.flows_evicted == self.last_evicted {
            return None;
        }
        let k = &k;
        let overflow = k.overflow_total();
        warn!(
            ringbuf_drops = k.ringbuf_drops - self.last.ringbuf_drops,
            flow_insert_failed = k.flow_insert_failed - self.last.flow_insert_failed,
            sock_storage_failed = k.sock_storage_failed - self.last.sock_storage_failed,
            unparsed_packets = k.unparsed_packets - self.last.unparsed_packets,
            dns_answers_lost = k.dns_lost - self.last.dns_lost,
            flows_evicted = t.flows_evicted - self.last_evicted,
            overflow_bytes = overflow.bytes - self.last.overflow_total().bytes,
            "losses since the last report (ring-buffer drops are recovered by the sweep; \
             overflow and evictions mean agent.max_flows is too small)"
        );
        self.last = k.clone();
        self.last_evicted = t.flows_evicted;
        Some(LossRecord {
            kind: "loss",
            time: Timestamp::now(),
            host: host.clone(),
            ringbuf_drops: k.ringbuf_drops,
            flow_insert_failed: k.flow_insert_failed,
            sock_storage_failed: k.sock_storage_failed,
            unparsed_packets: k.unparsed_packets,
            dns_answers_lost: k.dns_lost,
            dns_answers_lost_bytes: k.dns_lost_bytes,
            flows_evicted: t.flows_evicted,
            overflow_packets: overflow.packets,
            overflow_bytes: overflow.bytes,
            overflow_by_class: Vec::new(),
            overflow_by_cgroup: Vec::new(),
        })
    }
}
