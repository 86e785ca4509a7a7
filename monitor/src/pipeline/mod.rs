//! The per-record road, in one place: kernel events and sweeps → flow updates (the flow table)
//! → destination (enrich) → verdict (policy) → flow record and, when due, alert → outputs. Loss
//! counters become loss records on the same road. Nothing here touches the kernel or the
//! sinks: it is fed kernel events and a view of the kernel flow map, and hands back
//! [`Output`]s, so it is tested without either.

mod losses;
mod records;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Instant};

use tracing::warn;

use losses::LossReporter;
pub use records::{Clock, RecordContext, comm, flow_id, ip_of, monotonic_ns};

use crate::{
    alerts::AlertBook,
    enrich::Enricher,
    flows::{FlowTable, FlowUpdate, KernelFlows},
    metrics::{ClassLabel, ClassSeverity, ClassVerdict, Metrics},
    names::NameTable,
    policy::Policy,
    probe::{KernelBatch, KernelEvent, KernelStats, Retired},
    record::{Action, FlowState, Output, OverflowCount, Timestamp, VerdictKind},
    status::{self, Status},
};

/// The stages of the road, built by the caller.
pub struct Pipeline {
    table: FlowTable,
    records: RecordContext,
    /// Names of destinations, from the DNS answers the kernel copies.
    pub names: NameTable,
    pub enricher: Enricher,
    policy: Policy,
    pub alerts: AlertBook,
    metrics: Arc<Metrics>,
    /// Metric labels by class id (0: unclassified) and verdict, built once.
    labels: Vec<[ClassVerdict; 3]>,
    losses: LossReporter,
    updates: Vec<FlowUpdate>,
    /// Failed reads of the kernel maps (retried), and sweeps failed in a row.
    kernel_read_errors: u64,
    failing_sweeps: u64,
    /// Final counters of the program sets replaced at start, added to the current set's.
    kernel_base: KernelStats,
    /// Flows carried over from replaced program sets.
    pub carried_flows: u64,
    /// Attempts the kernel refused, by class id.
    blocks: std::collections::HashMap<u32, u64>,
    /// The configured cgroup paths, and when the kernel's class maps last changed
    /// (CLOCK_MONOTONIC ns; see [`Pipeline::classes_changed`]).
    class_paths: crate::classes::ClassPaths,
    classes_changed_ns: u64,
}

impl Pipeline {
    pub fn new(
        table: FlowTable,
        records: RecordContext,
        names: NameTable,
        enricher: Enricher,
        policy: Policy,
        alerts: AlertBook,
        metrics: Arc<Metrics>,
    ) -> Pipeline {
        let labels = metric_labels(&records.classes);
        Pipeline {
            table,
            records,
            names,
            enricher,
            policy,
            alerts,
            metrics,
            labels,
            losses: LossReporter::default(),
            updates: Vec::new(),
            kernel_read_errors: 0,
            failing_sweeps: 0,
            kernel_base: KernelStats::default(),
            carried_flows: 0,
            blocks: Default::default(),
            class_paths: Default::default(),
            classes_changed_ns: 0,
        }
    }

    /// Starts from an adopted kernel flow map: `reported` is what the previous agent reported
    /// of its flows (see [`FlowTable::adopt`]).
    pub fn adopt(&mut self, reported: Vec<(monitor_common::FlowKey, monitor_common::Reported)>) {
        self.table.adopt(reported);
    }

    /// Puts a new policy in force (a configuration reload) and returns the one it replaces.
    /// Flows are judged by it from their next update on.
    pub fn replace_policy(&mut self, policy: Policy) -> Policy {
        std::mem::replace(&mut self.policy, policy)
    }

    /// A reload added classes (`names`: every class's, in class-id order; the existing ones
    /// keep their ids): records and metrics name the new ones from now on.
    pub fn set_class_names(&mut self, names: Vec<Arc<str>>) {
        self.labels = metric_labels(&names);
        self.records.classes = names;
    }

    /// The residency policy compiled for the kernel's verdict tables, from the places in
    /// force now.
    pub fn compile_policy(&mut self) -> Result<crate::policy::compile::Compiled, String> {
        crate::policy::compile::compile(&mut self.enricher, &self.policy)
    }

    /// The sockets open before the agent started (see [`crate::sockets`]): their flows get
    /// the process and direction found, where the kernel could not record them.
    pub fn seed_sockets(&mut self, sockets: &[crate::sockets::OpenSocket]) {
        for s in sockets {
            self.table.seed(s.cookie, s.process, s.direction);
        }
    }

    /// Reports what a replaced program set counted that no agent reported: the events left in
    /// its ring buffer, then every flow in its map (see [`FlowTable::carry_over`]); its final
    /// failure and overflow counters are added to the current set's from now on.
    pub fn carry_over(&mut self, retired: &mut Retired, out: &mut Vec<Output>) -> anyhow::Result<()> {
        // What was reported first: the events left in its ring must not report it again.
        self.table.adopt(retired.reported.collect()?);
        let (batch, malformed) = retired.drain_events();
        self.on_events(batch, malformed, out);
        let now = Instant::now();
        self.carried_flows += self.table.carry_over(&mut retired.flows, now, &mut self.updates)?;
        self.kernel_base.add(&retired.stats.read()?);
        self.emit(out);
        Ok(())
    }

    /// Adopted entries of the kernel's record of what was reported whose flow is gone.
    pub fn take_stale(&mut self) -> Vec<monitor_common::FlowKey> {
        self.table.take_stale()
    }

    pub fn host(&self) -> &Arc<str> {
        &self.records.host
    }

    pub fn table(&self) -> &FlowTable {
        &self.table
    }

    /// What the kernel handed over: DNS answers first (they name the flows announced after
    /// them), then events.
    pub fn on_kernel(&mut self, batch: KernelBatch, out: &mut Vec<Output>) {
        for p in &batch.dns {
            self.names.on_packet(p);
        }
        self.on_events(batch.events, batch.malformed, out);
    }

    /// Kernel events: a new flow is reported at once. `malformed` counts ring-buffer records the
    /// probe could not decode.
    pub fn on_events(&mut self, batch: Vec<KernelEvent>, malformed: u64, out: &mut Vec<Output>) {
        if malformed > 0 {
            warn!(malformed, "malformed ring-buffer records: agent and kernel object disagree");
        }
        let now = Instant::now();
        for e in batch {
            match e {
                KernelEvent::Blocked(b) => self.blocked(&b, out),
                e => self.table.on_event(e, now, &mut self.updates),
            }
        }
        self.emit(out);
    }

    /// An attempt the kernel refused: counted for its class, and alerted with the action
    /// `blocked` (deduplicated like other alerts). It is no flow: nothing left, or the packet
    /// was dropped on its way in.
    fn blocked(&mut self, e: &monitor_common::BlockEvent, out: &mut Vec<Output>) {
        *self.blocks.entry(e.class_id).or_default() += 1;
        let u = crate::flows::FlowUpdate::refused(e, monotonic_ns());
        let ip = ip_of(&u.key, &u.key.daddr);
        let name = self.names.name_of(u.key.cgroup_id, ip, u.flow.first_seen_ns);
        let place = self.enricher.locate(ip);
        let verdict = self.policy.evaluate(e.class_id, &place);
        let record = self.records.flow_record(
            &u,
            name.as_deref(),
            place,
            verdict.kind,
            &Clock::sample(),
            Timestamp::now(),
        );
        let class_name = record.class.as_deref().unwrap_or_default().to_owned();
        self.metrics.blocked.get_or_create(&ClassLabel { class: class_name }).inc();
        let Some(class) = self.policy.class(e.class_id) else { return };
        if let Some(alert) =
            self.alerts.observe_as(&u.key, &record, class, &verdict, Instant::now(), Action::Blocked)
        {
            let labels =
                ClassSeverity { class: alert.class.to_string(), severity: alert.severity.name().into() };
            self.metrics.alerts.get_or_create(&labels).inc();
            out.push(Output::Alert(alert));
        }
    }

    /// Attempts the kernel refused since start, by class id.
    pub fn blocks(&self) -> &std::collections::HashMap<u32, u64> {
        &self.blocks
    }

    /// The kernel's class maps were just written: corrects the class of known flows, and from
    /// now on of flows first found that sent nothing since (see [`Pipeline::correct_classes`]).
    /// A socket is classified again on its next packet, but a flow that sends nothing more
    /// keeps the class it had before its cgroup was known.
    pub fn classes_changed(&mut self, paths: &crate::classes::ClassPaths) {
        self.class_paths = paths.clone();
        self.classes_changed_ns = monotonic_ns();
        let (records, paths) = (&mut self.records, &self.class_paths);
        self.table.reclassify(|id| records.cgroup_path(id).and_then(|p| paths.class_of(&p)));
    }

    /// Flows found by a sweep whose last packet came before the class maps last changed carry
    /// the class the kernel gave them then: corrected as [`Pipeline::classes_changed`] does.
    fn correct_classes(&mut self) {
        let changed = self.classes_changed_ns;
        let (records, paths) = (&mut self.records, &self.class_paths);
        for u in self.updates.iter_mut().filter(|u| u.flow.last_seen_ns < changed) {
            if let Some(class) = records.cgroup_path(u.key.cgroup_id).and_then(|p| paths.class_of(&p))
                && class != u.flow.class_id
            {
                u.flow.class_id = class;
                self.table.pin_class(&u.key, class);
            }
        }
    }

    /// Reads the whole kernel flow map: new, changed and ended flows are reported, and alerts
    /// whose totals changed get an update. A failed read of the map (a transient bpf() error)
    /// is counted and logged, never fatal: the kernel keeps counting, and the next sweep reads
    /// what this one could not (counts arrive late, none is lost).
    pub fn sweep(&mut self, map: &mut dyn KernelFlows, out: &mut Vec<Output>) {
        let now = Instant::now();
        self.swept(map, now);
        self.emit(out);
        let host = self.records.host.clone();
        out.extend(self.alerts.updates(&host, Instant::now(), false).into_iter().map(Output::AlertUpdate));
    }

    /// One sweep of the table, its failure counted.
    fn swept(&mut self, map: &mut dyn KernelFlows, now: Instant) {
        match self.table.sweep(map, now, monotonic_ns(), &mut self.updates) {
            Ok(()) => {
                self.failing_sweeps = 0;
                self.correct_classes();
            }
            Err(e) => {
                self.kernel_read_errors += 1;
                self.failing_sweeps += 1;
                // The first failure, then every 60th in a row: one line a minute at most.
                if self.failing_sweeps % 60 == 1 {
                    warn!(error = %e, in_a_row = self.failing_sweeps, "reading the kernel flow map failed; retrying at the next sweep (the kernel keeps counting)");
                }
            }
        }
    }

    /// Counts a failed read of the kernel's other maps (counters, class maps).
    pub fn kernel_read_failed(&mut self) {
        self.kernel_read_errors += 1;
    }

    /// A loss record when a loss counter grew since the last call.
    pub fn check_losses(&mut self, kernel: &KernelStats, out: &mut Vec<Output>) {
        let mut kernel = kernel.clone();
        kernel.add(&self.kernel_base);
        if let Some(mut loss) = self.losses.check(kernel, self.table.counters, &self.records.host) {
            let k = &self.losses.last;
            let records = &mut self.records;
            loss.overflow_by_class = k
                .overflow_by_class
                .iter()
                .map(|(class, o)| OverflowCount {
                    class: records.class_name(*class),
                    cgroup: None,
                    cgroup_id: None,
                    packets: o.packets,
                    bytes: o.bytes,
                })
                .collect();
            loss.overflow_by_cgroup = k
                .overflow_by_cgroup
                .iter()
                .map(|(id, o)| OverflowCount {
                    class: records.class_name(o.class_id),
                    cgroup: records.cgroup_path(*id),
                    cgroup_id: Some(*id),
                    packets: o.packets,
                    bytes: o.bytes,
                })
                .collect();
            out.push(Output::Loss(loss));
        }
    }

    /// After a sweep: reports every flow whose counts changed since its last report, whatever
    /// the flush interval (a question wants live totals).
    pub fn report_changed(&mut self, out: &mut Vec<Output>) {
        self.table.flush_all(Instant::now(), &mut self.updates);
        self.emit(out);
    }

    /// Reads the kernel flow map and reports every flow whose counts changed since its last
    /// report, whatever the flush interval: at shutdown, so that nothing counted is left
    /// unsaid.
    pub fn report_all(&mut self, map: &mut dyn KernelFlows, out: &mut Vec<Output>) {
        let now = Instant::now();
        self.swept(map, now);
        self.table.flush_all(now, &mut self.updates);
        self.emit(out);
    }

    /// At shutdown, once every chunk of [`Pipeline::report_all`] was handed over: the last totals
    /// of every alert that changed.
    pub fn final_alert_updates(&mut self, out: &mut Vec<Output>) {
        let host = self.records.host.clone();
        out.extend(self.alerts.updates(&host, Instant::now(), true).into_iter().map(Output::AlertUpdate));
    }

    /// Whether flow updates wait for [`Pipeline::emit_more`] (a sweep found more than one
    /// chunk of them).
    pub fn pending(&self) -> bool {
        !self.updates.is_empty()
    }

    /// Reports the next chunk of pending flow updates. The caller hands each chunk to the
    /// outputs before asking for the next, so a sweep that finds 100,000 new flows never holds
    /// 100,000 records at once.
    pub fn emit_more(&mut self, out: &mut Vec<Output>) {
        self.emit(out);
    }

    /// Places, judges and reports the pending flow updates, at most [`EMIT_CHUNK`] of them.
    fn emit(&mut self, out: &mut Vec<Output>) {
        if self.updates.is_empty() {
            return;
        }
        let clock = Clock::sample();
        let time = Timestamp::now();
        let now = Instant::now();
        let n = self.updates.len().min(EMIT_CHUNK);
        for u in self.updates.drain(..n) {
            let ip = ip_of(&u.key, &u.key.daddr);
            // Named once, when first reported: the answers valid when the flow started.
            let name = match &u.flow.name {
                Some(name) => name.clone(),
                None => {
                    let name = self.names.name_of(u.key.cgroup_id, ip, u.flow.first_seen_ns);
                    self.table.set_name(&u.key, name.clone());
                    name
                }
            };
            let place = self.enricher.locate(ip);
            let verdict = self.policy.evaluate(u.flow.class_id, &place);
            let record = self.records.flow_record(&u, name.as_deref(), place, verdict.kind, &clock, time);
            count(&self.metrics, &self.labels, u.flow.class_id, &record);
            let alert = match self.policy.class(u.flow.class_id) {
                Some(class) if verdict.kind == VerdictKind::Violation => {
                    self.alerts.observe(&u.key, &record, class, &verdict, now)
                }
                _ => None,
            };
            out.push(Output::Flow(record));
            if let Some(alert) = alert {
                let labels =
                    ClassSeverity { class: alert.class.to_string(), severity: alert.severity.name().into() };
                self.metrics.alerts.get_or_create(&labels).inc();
                out.push(Output::Alert(alert));
            }
        }
    }

    /// Brings this road's part of the status document up to date.
    pub fn fill_status(&self, s: &mut Status, kernel: &KernelStats) {
        let mut kernel = kernel.clone();
        kernel.add(&self.kernel_base);
        let c = self.table.counters;
        let e = self.enricher.counters;
        s.flows_tracked = self.table.len() as u64;
        s.databases.sources = self
            .enricher
            .sources()
            .into_iter()
            .map(|(kind, description)| status::SourceStatus { kind, description })
            .collect();
        s.events = status::EventCounts {
            new_flow: c.new_flow_events,
            close: c.close_events,
            found_by_sweep: c.found_by_sweep,
        };
        s.losses.ringbuf_drops = kernel.ringbuf_drops;
        s.losses.flow_insert_failed = kernel.flow_insert_failed;
        s.losses.sock_storage_failed = kernel.sock_storage_failed;
        s.losses.unparsed_packets = kernel.unparsed_packets;
        s.losses.flows_evicted = c.flows_evicted;
        let overflow = kernel.overflow_total();
        s.losses.overflow_packets = overflow.packets;
        s.losses.overflow_bytes = overflow.bytes;
        s.losses.kernel_read_errors = self.kernel_read_errors;
        s.losses.dns_answers_lost = kernel.dns_lost;
        s.losses.dns_answers_lost_bytes = kernel.dns_lost_bytes;
        s.dns = self.names.counters();
        s.alerts = status::AlertCounts {
            raised: self.alerts.counters.raised,
            open: self.alerts.open_alerts() as u64,
        };
        s.geolocation = status::LookupCounts {
            lookups: e.lookups,
            cache_hits: e.cache_hits,
            decode_errors: e.decode_errors,
            reloads: e.reloads,
            reload_failures: e.reload_failures,
        };
    }

    /// The totals logged when the agent stops.
    pub fn log_totals(&self) {
        let c = self.table.counters;
        tracing::info!(
            new_flow_events = c.new_flow_events,
            close_events = c.close_events,
            found_by_sweep = c.found_by_sweep,
            flows_evicted = c.flows_evicted,
            ringbuf_drops = self.losses.last.ringbuf_drops,
            alerts_raised = self.alerts.counters.raised,
            lookups = self.enricher.counters.lookups,
            lookup_cache_hits = self.enricher.counters.cache_hits,
            "totals"
        );
    }
}

/// Flow updates turned into records at a time.
const EMIT_CHUNK: usize = 4096;

/// The labels of every (class, verdict) pair, indexed by class id.
fn metric_labels(class_names: &[Arc<str>]) -> Vec<[ClassVerdict; 3]> {
    std::iter::once("")
        .chain(class_names.iter().map(|n| &**n))
        .map(|class| {
            ["allowed", "violation", "unclassified"]
                .map(|verdict| ClassVerdict { class: class.to_owned(), verdict: verdict.to_owned() })
        })
        .collect()
}

/// Adds a record's new bytes and packets to the metrics.
fn count(metrics: &Metrics, labels: &[[ClassVerdict; 3]], class_id: u32, r: &crate::record::FlowRecord) {
    let v = match r.verdict {
        VerdictKind::Allowed => 0,
        VerdictKind::Violation => 1,
        VerdictKind::Unclassified => 2,
    };
    let Some(labels) = labels.get(class_id as usize).map(|l| &l[v]) else { return };
    if r.state == FlowState::New {
        metrics.flows.get_or_create(labels).inc();
    }
    metrics.flow_bytes.get_or_create(labels).inc_by(r.delta_bytes);
    metrics.flow_packets.get_or_create(labels).inc_by(r.delta_packets);
}
