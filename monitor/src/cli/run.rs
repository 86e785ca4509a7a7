//! `egress-monitor run`: load and attach the kernel programs, then turn kernel events and
//! sweeps into records until SIGINT/SIGTERM, and detach everything on the way out.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval},
};
use tracing::{debug, info, warn};

use crate::{
    alerts::AlertBook,
    api::{
        self, ApiState,
        metrics::{ClassSeverity, ClassVerdict, Metrics},
        status::{self, Status},
    },
    cgroup::{self, CgroupNames},
    classes::ClassSelectors,
    config::Config,
    enrich::Enricher,
    export::clickhouse::{self, ClickHouse},
    flows::{
        FlowState, FlowTable, FlowUpdate, TableCounters, TableSettings,
        record::{Clock, FlowRecord, LossRecord, RecordContext, Timestamp, ip_of, monotonic_ns},
    },
    policy::{Policy, VerdictKind},
    probe::{DRAIN_INTERVAL, KernelEvent, KernelStats, Probe, ProbeOptions},
    sinks::{self, Output, Sinks},
    state,
    store::{Store, StoreCounters, StoreSettings},
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
    let token = api::read_token(&config.api).map_err(|e| anyhow::anyhow!("{}: {e:#}", config.origin))?;
    let clickhouse = config
        .export
        .clickhouse
        .as_ref()
        .map(ClickHouse::new)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", config.origin))?;
    let _state_lock = state::lock(&config.agent.state_dir)?;
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

    let a = &config.agent;
    let store = Store::start(
        &a.state_dir,
        StoreSettings {
            bucket: config.store.bucket.get_ref().0,
            retention: config.store.retention.0,
            prune_every: PRUNE_EVERY,
        },
    )?;
    let store_counters = store.counters.clone();
    let sinks = Sinks::start(&config, prepared, Some(store.writer))?;
    let host: Arc<str> = host_name(&config).into();
    let started = Instant::now();
    let status = Arc::new(Mutex::new(Status {
        version: env!("CARGO_PKG_VERSION"),
        host: host.to_string(),
        started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        cgroup_root: root.display().to_string(),
        programs: probe
            .attached()
            .iter()
            .map(|p| status::ProgramStatus { name: p.name, hook: p.hook, id: p.id })
            .collect(),
        databases: status::Databases {
            store_path: store.reader.path().display().to_string(),
            ..Default::default()
        },
        ..Default::default()
    }));
    let metrics = Arc::new(Metrics::new());
    let api = api::serve(
        &config.api,
        token,
        ApiState { store: store.reader.clone(), status: status.clone(), metrics: metrics.clone(), started },
    )
    .await?;
    let (stop_export, stop_export_rx) = tokio::sync::watch::channel(false);
    let mut export = Vec::new();
    if let (Some(ch), Some(c)) = (clickhouse, &config.export.clickhouse) {
        let st =
            Arc::new(Mutex::new(status::ExportStatus { name: "clickhouse".into(), ..Default::default() }));
        let (dir, bucket, every) = (a.state_dir.clone(), config.store.bucket.get_ref().0, c.interval.0);
        let rx = stop_export_rx.clone();
        let st2 = st.clone();
        export
            .push((st, tokio::spawn(async move { clickhouse::run(ch, &dir, bucket, every, st2, rx).await })));
    }
    let mut stages = Stages {
        ctx: RecordContext {
            host: host.clone(),
            classes: config.class_names().into_iter().map(Arc::from).collect(),
            cgroups: CgroupNames::new(&root)?,
        },
        enricher,
        policy: Policy::from_config(&config),
        alerts: AlertBook::new(config.alerts.cooldown.0, a.flush_interval()),
        metrics: metrics.clone(),
        labels: Vec::new(),
    };
    stages.labels = metric_labels(&stages.ctx.classes);
    let mut table = FlowTable::new(TableSettings {
        flush_interval: a.flush_interval(),
        idle_timeout: a.idle_timeout.0,
        close_grace: a.close_grace.0,
    });
    let mut losses = LossReporter::default();
    let mut drain = interval(DRAIN_INTERVAL);
    drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
                    take_events(&mut table, batch, malformed, &mut updates);
                }
                _ = drain.tick() => {
                    let (batch, malformed) = events.drain();
                    take_events(&mut table, batch, malformed, &mut updates);
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
                    let kernel = probe.stats.read()?;
                    if let Some(loss) = losses.check(kernel, table.counters, &stages.ctx) {
                        sinks.send(Output::Loss(loss)).await;
                    }
                    refresh_status(&status, &metrics, &table, kernel, &stages, &sinks, &store_counters);
                    status.lock().unwrap_or_else(|e| e.into_inner()).export =
                        export.iter().map(|(s, _)| s.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect();
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
        let (batch, malformed) = events.drain();
        take_events(&mut table, batch, malformed, &mut updates);
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

    api.stop().await;
    let _ = stop_export.send(true);
    for (_, task) in export {
        let _ = task.await;
    }
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

fn take_events(
    table: &mut FlowTable,
    batch: Vec<KernelEvent>,
    malformed: u64,
    updates: &mut Vec<FlowUpdate>,
) {
    if malformed > 0 {
        warn!(malformed, "malformed ring-buffer records: agent and kernel object disagree");
    }
    let now = Instant::now();
    for e in batch {
        table.on_event(e, now, updates);
    }
}

/// How often the store prunes rows past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Flow updates on their way to the sinks: placed on the map, judged, and alerted on.
struct Stages {
    ctx: RecordContext,
    enricher: Enricher,
    policy: Policy,
    alerts: AlertBook,
    metrics: Arc<Metrics>,
    /// Metric labels by class id (0: unclassified) and verdict, built once.
    labels: Vec<[ClassVerdict; 3]>,
}

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
            self.count(u.flow.class_id, &record);
            let alert = match self.policy.class(u.flow.class_id) {
                Some(class) if verdict.kind == VerdictKind::Violation => {
                    self.alerts.observe(&u.key, &record, class, &verdict, now)
                }
                _ => None,
            };
            sinks.send(Output::Flow(record)).await;
            if let Some(alert) = alert {
                let labels =
                    ClassSeverity { class: alert.class.to_string(), severity: alert.severity.name().into() };
                self.metrics.alerts.get_or_create(&labels).inc();
                sinks.send(Output::Alert(alert)).await;
            }
        }
    }

    /// Adds a record's new bytes and packets to the metrics.
    fn count(&self, class_id: u32, r: &FlowRecord) {
        let v = match r.verdict {
            VerdictKind::Allowed => 0,
            VerdictKind::Violation => 1,
            VerdictKind::Unclassified => 2,
        };
        let Some(labels) = self.labels.get(class_id as usize).map(|l| &l[v]) else { return };
        if r.state == FlowState::New {
            self.metrics.flows.get_or_create(labels).inc();
        }
        self.metrics.flow_bytes.get_or_create(labels).inc_by(r.delta_bytes);
        self.metrics.flow_packets.get_or_create(labels).inc_by(r.delta_packets);
    }
}

/// Brings the status document (and the metrics kept as totals) up to date.
fn refresh_status(
    status: &Mutex<Status>,
    metrics: &Metrics,
    table: &FlowTable,
    kernel: KernelStats,
    stages: &Stages,
    sinks: &Sinks,
    store: &StoreCounters,
) {
    let c = table.counters;
    let e = stages.enricher.counters;
    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
    s.flows_tracked = table.len() as u64;
    s.events = status::EventCounts {
        new_flow: c.new_flow_events,
        connect: c.connect_events,
        close: c.close_events,
        found_by_sweep: c.found_by_sweep,
    };
    s.losses = status::Losses {
        ringbuf_drops: kernel.ringbuf_drops,
        flow_insert_failed: kernel.flow_insert_failed,
        sock_storage_failed: kernel.sock_storage_failed,
        unparsed_packets: kernel.unparsed_packets,
        flows_evicted: c.flows_evicted,
        store_dropped: StoreCounters::get(&store.dropped),
        store_write_errors: StoreCounters::get(&store.write_errors),
        outbox_dropped: sinks.outbox_dropped(),
    };
    s.alerts = status::AlertCounts {
        raised: stages.alerts.counters.raised,
        open: stages.alerts.open_alerts() as u64,
    };
    s.geolocation = status::LookupCounts {
        lookups: e.lookups,
        cache_hits: e.cache_hits,
        decode_errors: e.decode_errors,
        reloads: e.reloads,
        reload_failures: e.reload_failures,
    };
    s.sinks = sinks
        .alert_sink_stats()
        .into_iter()
        .map(|(name, backlog, st)| status::SinkStatus {
            name,
            backlog,
            delivered: st.delivered,
            retries: st.retries,
            failed: st.failed,
            last_error: st.last_error,
        })
        .collect();
    s.databases.outbox_bytes = sinks.outbox_size();
    metrics.observe(&s);
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
