//! `egress-monitor run`: load and attach the kernel programs, then turn kernel events and
//! sweeps into records until SIGINT/SIGTERM, and detach everything on the way out.

use std::{sync::Arc, time::Instant};

use anyhow::Context;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval},
};
use tracing::{debug, info, warn};

use crate::{
    alerts::AlertBook,
    cgroup::{self, CgroupNames},
    classes::ClassSelectors,
    config::Config,
    enrich::Enricher,
    flows::{
        FlowTable, FlowUpdate, TableCounters, TableSettings,
        record::{Clock, LossRecord, RecordContext, Timestamp, ip_of, monotonic_ns},
    },
    policy::{Policy, VerdictKind},
    probe::{KernelStats, Probe, ProbeOptions},
    sinks::{self, Output, Sinks},
};

pub fn run(config: Config) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(agent(config))
}

async fn agent(config: Config) -> anyhow::Result<()> {
    let root = match &config.agent.cgroup_root {
        Some(p) => p.clone(),
        None => cgroup::detect_root()?,
    };
    // Open the databases, range files and sink files first: a bad file stops the agent before
    // it attaches.
    let enricher = Enricher::from_config(&config)?;
    let prepared = sinks::prepare(&config)?;
    for (kind, source) in enricher.sources() {
        info!(kind, %source, "geolocation source");
    }
    let mut probe = Probe::load(&ProbeOptions {
        max_flows: config.agent.max_flows(),
        ring_buffer_size: config.agent.ring_buffer_size.0,
    })?;

    // Fill the class maps before attaching, so the first packets are already classified.
    let mut selectors = ClassSelectors::new(&config, &root);
    let cgroups = selectors.rescan().cloned().unwrap_or_default();
    probe.classes.replace(&cgroups, selectors.uids())?;

    // Register signals before attaching: a signal during attach still detaches cleanly.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    probe.attach(&root)?;
    for p in probe.attached() {
        info!(program = p.name, hook = p.hook, id = p.id, cgroup = %root.display(), "attached");
    }
    let mut events = probe.take_events()?;

    let sinks = Sinks::start(&config, prepared)?;
    let a = &config.agent;
    let mut stages = Stages {
        ctx: RecordContext {
            host: host_name(&config).into(),
            classes: config.class_names().into_iter().map(Arc::from).collect(),
            cgroups: CgroupNames::new(&root)?,
        },
        enricher,
        policy: Policy::from_config(&config),
        alerts: AlertBook::new(config.alerts.cooldown.0, a.flush_interval()),
    };
    let mut table = FlowTable::new(TableSettings {
        flush_interval: a.flush_interval(),
        idle_timeout: a.idle_timeout.0,
        close_grace: a.close_grace.0,
    });
    let mut losses = LossReporter::default();
    let mut sweep = interval(a.sweep_interval.0);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reload = interval(config.geoip.reload_interval.0);
    reload.set_missed_tick_behavior(MissedTickBehavior::Delay);
    reload.tick().await; // the first tick is immediate; the files were just loaded
    info!(classes = config.classes.len(), host = %stages.ctx.host, "agent running; stop with SIGINT or SIGTERM");

    let mut updates: Vec<FlowUpdate> = Vec::new();
    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                batch = events.next_batch() => {
                    let (batch, malformed) = batch?;
                    if malformed > 0 {
                        warn!(malformed, "malformed ring-buffer records: agent and kernel object disagree");
                    }
                    let now = Instant::now();
                    for e in batch {
                        table.on_event(e, now, &mut updates);
                    }
                }
                _ = sweep.tick() => {
                    // Cgroups first: a flow ends at least one sweep after its socket closed, so
                    // a cgroup created while it ran is known before its final record.
                    if let Some(cgroups) = selectors.rescan().cloned() {
                        probe.classes.replace(&cgroups, selectors.uids())?;
                        let names = &mut stages.ctx.cgroups;
                        table.reclassify(|id| names.path(id).and_then(|p| selectors.class_of_path(&p)));
                    }
                    let started = Instant::now();
                    table.sweep(&mut probe.flows, started, monotonic_ns(), &mut updates)
                        .context("reading the kernel flow map")?;
                    debug!(flows = table.len(), took = ?started.elapsed(), "sweep");
                    stages.emit(&mut updates, &sinks).await;
                    for u in stages.alerts.updates(&stages.ctx.host, Instant::now(), false) {
                        sinks.send(Output::AlertUpdate(u)).await;
                    }
                    if let Some(loss) = losses.check(probe.stats.read()?, table.counters, &stages.ctx) {
                        sinks.send(Output::Loss(loss)).await;
                    }
                }
                _ = reload.tick() => {
                    stages.enricher.reload_replaced();
                }
                _ = sigterm.recv() => { info!("SIGTERM: stopping"); break }
                _ = sigint.recv() => { info!("SIGINT: stopping"); break }
            }
            stages.emit(&mut updates, &sinks).await;
        }
        // Report what was counted up to now, so nothing is left unsaid.
        let now = Instant::now();
        table.sweep(&mut probe.flows, now, monotonic_ns(), &mut updates)?;
        table.flush_all(now, &mut updates);
        stages.emit(&mut updates, &sinks).await;
        for u in stages.alerts.updates(&stages.ctx.host, now, true) {
            sinks.send(Output::AlertUpdate(u)).await;
        }
        if let Some(loss) = losses.check(probe.stats.read()?, table.counters, &stages.ctx) {
            sinks.send(Output::Loss(loss)).await;
        }
        Ok(())
    }
    .await;

    let detached = probe.detach();
    info!(programs = detached, "detached");
    let c = table.counters;
    info!(
        new_flow_events = c.new_flow_events,
        connect_events = c.connect_events,
        close_events = c.close_events,
        found_by_sweep = c.found_by_sweep,
        flows_evicted = c.flows_evicted,
        ringbuf_drops = losses.last.ringbuf_drops,
        alerts_raised = stages.alerts.counters.raised,
        lookups = stages.enricher.counters.lookups,
        lookup_cache_hits = stages.enricher.counters.cache_hits,
        "totals"
    );
    sinks.close().await.context("flushing the sinks")?;
    result
}

/// Flow updates on their way to the sinks: placed on the map, judged, and alerted on.
struct Stages {
    ctx: RecordContext,
    enricher: Enricher,
    policy: Policy,
    alerts: AlertBook,
}

impl Stages {
    async fn emit(&mut self, updates: &mut Vec<FlowUpdate>, sinks: &Sinks) {
        if updates.is_empty() {
            return;
        }
        let clock = Clock::sample();
        let time = Timestamp::now();
        let now = Instant::now();
        for u in updates.drain(..) {
            let ip = ip_of(&u.key, &u.key.daddr);
            let place = self.enricher.locate(ip);
            let verdict = self.policy.evaluate(u.flow.class_id, &place);
            let record = self.ctx.flow_record(&u, place, verdict.kind, &clock, time);
            let alert = match self.policy.class(u.flow.class_id) {
                Some(class) if verdict.kind == VerdictKind::Violation => {
                    self.alerts.observe(&u.key, &record, class, &verdict, now)
                }
                _ => None,
            };
            sinks.send(Output::Flow(record)).await;
            if let Some(alert) = alert {
                sinks.send(Output::Alert(alert)).await;
            }
        }
    }
}

fn host_name(config: &Config) -> String {
    if let Some(h) = &config.agent.host {
        return h.clone();
    }
    let mut buf = [0u8; 256];
    // SAFETY: buffer and its length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        return String::from_utf8_lossy(&buf[..n]).into_owned();
    }
    "localhost".into()
}

/// Turns growing loss counters into a warning and a `loss` record.
#[derive(Default)]
struct LossReporter {
    last: KernelStats,
    last_evicted: u64,
}

impl LossReporter {
    fn check(&mut self, k: KernelStats, t: TableCounters, ctx: &RecordContext) -> Option<LossRecord> {
        if k == self.last && t.flows_evicted == self.last_evicted {
            return None;
        }
        warn!(
            ringbuf_drops = k.ringbuf_drops - self.last.ringbuf_drops,
            flow_insert_failed = k.flow_insert_failed - self.last.flow_insert_failed,
            sock_storage_failed = k.sock_storage_failed - self.last.sock_storage_failed,
            unparsed_packets = k.unparsed_packets - self.last.unparsed_packets,
            flows_evicted = t.flows_evicted - self.last_evicted,
            "losses since the last report (ring-buffer drops are recovered by the sweep; \
             evictions mean agent.max_flows is too small)"
        );
        self.last = k;
        self.last_evicted = t.flows_evicted;
        Some(LossRecord {
            kind: "loss",
            time: Timestamp::now(),
            host: ctx.host.clone(),
            ringbuf_drops: k.ringbuf_drops,
            flow_insert_failed: k.flow_insert_failed,
            sock_storage_failed: k.sock_storage_failed,
            unparsed_packets: k.unparsed_packets,
            flows_evicted: t.flows_evicted,
        })
    }
}
