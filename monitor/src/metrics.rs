//! Prometheus metrics (`GET /metrics`): flows, bytes and packets by class and verdict, alerts,
//! losses, sink deliveries and failures, geolocation lookups and cache hits. The agent adds to
//! them as it goes; totals it keeps elsewhere are folded in from each status snapshot.

use std::sync::Mutex;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::status::Status;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassVerdict {
    /// "" for unclassified flows.
    pub class: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassSeverity {
    pub class: String,
    pub severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LossKind {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

pub struct Metrics {
    registry: Registry,
    pub flows: Family<ClassVerdict, Counter>,
    pub flow_bytes: Family<ClassVerdict, Counter>,
    pub flow_packets: Family<ClassVerdict, Counter>,
    pub alerts: Family<ClassSeverity, Counter>,
    /// Attempts the kernel refused, by class.
    pub blocked: Family<ClassLabel, Counter>,
    flows_tracked: Gauge,
    losses: Family<LossKind, Counter>,
    sink_delivered: Family<SinkLabel, Counter>,
    sink_failed: Family<SinkLabel, Counter>,
    sink_retries: Family<SinkLabel, Counter>,
    sink_backlog: Family<SinkLabel, Gauge>,
    lookups: Counter,
    lookup_cache_hits: Counter,
    lookup_errors: Counter,
    /// The snapshot the counters were last brought up to.
    last: Mutex<Status>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("egress_monitor");
        let m = Metrics {
            registry: Registry::default(),
            flows: Family::default(),
            flow_bytes: Family::default(),
            flow_packets: Family::default(),
            alerts: Family::default(),
            blocked: Family::default(),
            flows_tracked: Gauge::default(),
            losses: Family::default(),
            sink_delivered: Family::default(),
            sink_failed: Family::default(),
            sink_retries: Family::default(),
            sink_backlog: Family::default(),
            lookups: Counter::default(),
            lookup_cache_hits: Counter::default(),
            lookup_errors: Counter::default(),
            last: Mutex::new(Status::default()),
        };
        registry.register("flows", "Flows seen, by class and verdict", m.flows.clone());
        registry.register("flow_bytes", "Bytes sent (layer 3), by class and verdict", m.flow_bytes.clone());
        registry.register("flow_packets", "Packets sent, by class and verdict", m.flow_packets.clone());
        registry.register("alerts", "Alerts raised, by class and severity", m.alerts.clone());
        registry.register(
            "blocked",
            "Connections, datagrams and SYNs of enforcing classes the kernel refused, by class",
            m.blocked.clone(),
        );
        registry.register("flows_tracked", "Flows the agent is tracking now", m.flows_tracked.clone());
        registry.register("losses", "Data lost, by kind (nothing is dropped silently)", m.losses.clone());
        registry.register("sink_delivered", "Alerts delivered, by sink", m.sink_delivered.clone());
        registry.register("sink_failures", "Alerts a sink refused for good, by sink", m.sink_failed.clone());
        registry.register(
            "sink_retries",
            "Failed delivery attempts that are retried, by sink",
            m.sink_retries.clone(),
        );
        registry.register("sink_backlog", "Alerts waiting in the outbox, by sink", m.sink_backlog.clone());
        registry.register("geolocation_lookups", "Destination lookups", m.lookups.clone());
        registry.register(
            "geolocation_errors",
            "Destination lookups that failed (unreadable database record): judged as unknown",
            m.lookup_errors.clone(),
        );
        registry.register(
            "geolocation_cache_hits",
            "Destination lookups answered from the cache",
            m.lookup_cache_hits.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Brings the counters kept as totals elsewhere up to a new status snapshot.
    pub fn observe(&self, now: &Status) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        self.flows_tracked.set(now.flows_tracked as i64);
        let l = (&now.losses, &last.losses);
        for (kind, new, old) in [
            ("ringbuf_drops", l.0.ringbuf_drops, l.1.ringbuf_drops),
            ("flow_insert_failed", l.0.flow_insert_failed, l.1.flow_insert_failed),
            ("sock_storage_failed", l.0.sock_storage_failed, l.1.sock_storage_failed),
            ("unparsed_packets", l.0.unparsed_packets, l.1.unparsed_packets),
            ("flows_evicted", l.0.flows_evicted, l.1.flows_evicted),
            ("overflow_packets", l.0.overflow_packets, l.1.overflow_packets),
            ("overflow_bytes", l.0.overflow_bytes, l.1.overflow_bytes),
            ("kernel_read_errors", l.0.kernel_read_errors, l.1.kernel_read_errors),
            ("store_dropped", l.0.store_dropped, l.1.store_dropped),
            ("store_write_errors", l.0.store_write_errors, l.1.store_write_errors),
            ("outbox_dropped", l.0.outbox_dropped, l.1.outbox_dropped),
            ("dns_answers_lost", l.0.dns_answers_lost, l.1.dns_answers_lost),
            ("dns_answers_lost_bytes", l.0.dns_answers_lost_bytes, l.1.dns_answers_lost_bytes),
            ("dns_malformed", now.dns.malformed, last.dns.malformed),
            ("dns_truncated", now.dns.truncated, last.dns.truncated),
            ("dns_tcp_dropped", now.dns.tcp_dropped, last.dns.tcp_dropped),
            ("dns_names_evicted", now.dns.evicted, last.dns.evicted),
        ] {
            // Every kind is shown, at zero too.
            self.losses.get_or_create(&LossKind { kind: kind.into() }).inc_by(new.saturating_sub(old));
        }
        for s in &now.sinks {
            let old = last.sinks.iter().find(|o| o.name == s.name).cloned().unwrap_or_default();
            let label = SinkLabel { sink: s.name.clone() };
            self.sink_delivered.get_or_create(&label).inc_by(s.delivered.saturating_sub(old.delivered));
            self.sink_failed.get_or_create(&label).inc_by(s.failed.saturating_sub(old.failed));
            self.sink_retries.get_or_create(&label).inc_by(s.retries.saturating_sub(old.retries));
            self.sink_backlog.get_or_create(&label).set(s.backlog as i64);
        }
        self.lookups.inc_by(now.geolocation.lookups.saturating_sub(last.geolocation.lookups));
        self.lookup_cache_hits.inc_by(now.geolocation.cache_hits.saturating_sub(last.geolocation.cache_hits));
        self.lookup_errors
            .inc_by(now.geolocation.decode_errors.saturating_sub(last.geolocation.decode_errors));
        *last = now.clone();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
