//! `egress-monitor run`: load and attach the kernel programs, then turn kernel events and
//! sweeps into records until SIGINT/SIGTERM, and detach everything on the way out.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::Context;
use monitor_common::{FlowKey, Reported};
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval},
};
use tracing::{debug, info, warn};

use crate::{
    api::{
        self, ApiState,
        live::{LiveTotals, ReadQueue},
    },
    cgroup::{self, CgroupNames},
    classes::{ClassDescription, ClassSelectors},
    cli::{
        enforcing::{Enforcer, attach_enforcement},
        prepare::{Places, Prepared, prepare},
        reload::{Reloaded, reload},
        start::{record_configuration, seed_open_sockets, store_runs},
        systemd::ServiceManager,
    },
    config::Config,
    export::clickhouse,
    flows::FlowTable,
    metrics::Metrics,
    names::NameTable,
    pipeline::{Pipeline, RecordContext},
    probe::{self, DRAIN_INTERVAL, Probe, ProbeOptions, ReportedMap},
    record::KernelMark,
    record::Output,
    reports::{self, key::HostKey},
    sinks::Sinks,
    state,
    status::{self, CgroupSelector, ClassStatus, Status},
    store::{CommittedMarks, Store},
};

pub fn run(config: Config) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(agent(config))
}

async fn agent(mut config: Config) -> anyhow::Result<()> {
    // Everything the agent creates (state directory, store, outbox) is private to it; the API
    // socket's mode is set explicitly.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
    let manager = ServiceManager::new();
    let root = match &config.agent.cgroup_root {
        Some(p) => p.clone(),
        None => cgroup::detect_root()?,
    };
    // Open the databases, range files and sink files first: a bad file stops the agent before
    // it attaches.
    let Prepared { places: Places { enricher, policy }, sinks: prepared, token, clickhouse } =
        prepare(&config)?;
    let _state_lock = state::lock(&config.agent.state_dir)?;
    for (kind, source) in enricher.sources() {
        info!(kind, %source, "geolocation source");
    }
    // RUST_LOG=debug (or kernel=debug) also turns the kernel programs' messages on.
    let kernel_log = tracing::enabled!(target: "kernel", tracing::Level::DEBUG);
    let mut probe = Probe::open(&ProbeOptions { kernel_log, ..config.probe_options(&root) })?;
    if let Some(log) = probe.take_kernel_log()? {
        tokio::spawn(log.run());
    }

    // Fill the class maps before attaching, so the first packets are already classified.
    let mut selectors = ClassSelectors::new(&config.class_selectors(), &root);
    let cgroups = selectors.rescan().cloned().unwrap_or_default();
    probe.classes.replace(&cgroups, selectors.uids())?;

    // Register signals before attaching: a signal during attach still detaches cleanly.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

    // Nothing counted before this agent started is reported twice: the adopted set's record of
    // what was reported is read before its programs could be told to count again.
    let adopted_reported = probe.reported.collect().context("reading the pinned record of reported flows")?;
    probe.attach()?;
    let sockets_at_start = seed_open_sockets(&mut probe);
    let start = probe.start_info();
    for p in probe.attached() {
        info!(program = p.name, hook = p.hook, id = p.id, cgroup = %root.display(), start = start.kind.name(), "attached");
    }
    let away =
        start.previous_heartbeat.map(|t| std::time::SystemTime::now().duration_since(t).unwrap_or_default());
    info!(
        set = %probe.set_dir().display(),
        start = start.kind.name(),
        away = ?away,
        "kernel programs pinned; they keep counting when the agent stops (`egress-monitor detach` removes them)"
    );
    let mut events = probe.take_events()?;

    let store = Store::start_or_degrade(
        &config.agent.state_dir,
        config.store_settings(),
        Some(Box::new(probe.reported_handle()?)),
    );
    let store_counters = store.counters.clone();
    // This run in the store (coverage of residency reports), and the key that signs them.
    let heartbeat = store_runs(&config, &probe);
    record_configuration(&config, "start", enricher.sources());
    let key = Arc::new(HostKey::load_or_create(&config.agent.state_dir)?);
    let schedule = config.report_schedule(enricher.sources()).map(|s| reports::schedule::spawn(s, key));
    let mut sinks = Sinks::start(&config.outbox_options(), prepared, Some(store.writer))?;
    let host: Arc<str> = config.host_name().into();
    let started = Instant::now();
    let status = Arc::new(Mutex::new(Status {
        version: env!("CARGO_PKG_VERSION").into(),
        host: host.to_string(),
        started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        cgroup_root: root.display().to_string(),
        programs: probe
            .attached()
            .iter()
            .map(|p| status::ProgramStatus { name: p.name.into(), hook: p.hook.into(), id: p.id })
            .collect(),
        kernel: status::KernelSide {
            pinned_at: probe.set_dir().display().to_string(),
            start: start.kind.name().into(),
            attached_since: chrono::DateTime::<chrono::Utc>::from(start.attached_since)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            agent_away_seconds: away.map(|d| d.as_secs_f64()),
            carried_flows: 0,
            sockets_at_start: sockets_at_start.1,
            ..Default::default()
        },
        databases: status::Databases {
            store_path: store.reader.path().display().to_string(),
            ..Default::default()
        },
        ..Default::default()
    }));
    let metrics = Arc::new(Metrics::new());
    // Flow questions ask for a read of the kernel first (their answers include active flows'
    // running totals); one read serves the questions of a sweep interval.
    let (live, read_requests) = LiveTotals::new(store_counters.clone(), config.agent.sweep_interval.0);
    let mut reads = ReadQueue::new(read_requests, config.agent.sweep_interval.0 / 2);
    let api_classes = Arc::new(std::sync::RwLock::new(config.class_names()));
    let state = ApiState {
        live: Some(live),
        store: store.reader.clone(),
        status: status.clone(),
        metrics: metrics.clone(),
        started,
        state_dir: config.agent.state_dir.clone(),
        classes: api_classes.clone(),
        queries: Arc::new(tokio::sync::Semaphore::new(api::query_permits())),
        flow_answers: Arc::default(),
    };
    let api = api::serve(&config.api_options(), token, state).await?;
    let (stop_export, stop_export_rx) = tokio::sync::watch::channel(false);
    let mut export = Vec::new();
    if let Some(ch) = clickhouse {
        let st =
            Arc::new(Mutex::new(status::ExportStatus { name: "clickhouse".into(), ..Default::default() }));
        let task = tokio::spawn(clickhouse::run(ch, st.clone(), stop_export_rx.clone()));
        export.push((st, task));
    }
    let records = RecordContext {
        host: host.clone(),
        classes: config.class_names().into_iter().map(Arc::from).collect(),
        cgroups: Some(CgroupNames::new(&root)?),
    };
    let table = FlowTable::new(config.table_settings());
    let names = NameTable::new(config.name_options());
    let mut pipeline =
        Pipeline::new(table, records, names, enricher, policy, config.alert_book(), metrics.clone());
    // The class maps were written above: flows the kernel counted before then are checked.
    pipeline.classes_changed(selectors.paths());
    let mut out: Vec<Output> = Vec::new();
    // What the kernel counted while no agent ran: the adopted set's flows are reported at the
    // first sweep (minus what was reported before); replaced sets are drained now.
    pipeline.seed_sockets(&sockets_at_start.0);
    pipeline.adopt(adopted_reported);
    for mut retired in probe.take_retired() {
        pipeline
            .carry_over(&mut retired, &mut out)
            .with_context(|| format!("carrying over the counters of {}", retired.path.display()))?;
        deliver(&mut pipeline, &sinks, &mut out).await;
    }
    status.lock().unwrap_or_else(|e| e.into_inner()).kernel.carried_flows = pipeline.carried_flows;
    // Enforcement: the verdict tables first, then the programs that read them.
    let mut enforcer = Enforcer::new(&config.class_modes());
    let tables = enforcer.install(&mut probe, &mut pipeline)?;
    enforcer.attach(&mut probe, &selectors)?;
    status.lock().unwrap_or_else(|e| e.into_inner()).kernel.verdict_tables = tables;
    let mut drain = interval(DRAIN_INTERVAL);
    drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sweep = interval(config.agent.sweep_interval.0);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut files_check = files_timer(&config).await;
    info!(
        classes = config.classes.len(),
        host = %host,
        "agent running; stop with SIGINT or SIGTERM, reload the configuration with SIGHUP"
    );
    if let Some(period) = manager.watchdog()
        && config.agent.sweep_interval.0 * 2 > period
    {
        warn!(watchdog = ?period, sweep_interval = ?config.agent.sweep_interval.0, "the service manager's watchdog is fed at every sweep: agent.sweep_interval should be under half of WatchdogSec");
    }
    manager.ready(&format!("counting; {} classes", config.classes.len()));

    let mut classes_to_write = None;
    // Enforcement to attach to the classes' cgroups as they are now (retried at every sweep
    // until it works), and the attempts that failed in a row.
    let (mut attach_due, mut attach_failures) = (false, 0u64);
    // A question waits for live totals: the next sweep reports every changed flow.
    let mut read_due = false;
    let mut last_kernel = probe::KernelStats::default();
    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                batch = events.next_batch() => pipeline.on_kernel(batch?, &mut out),
                _ = drain.tick() => pipeline.on_kernel(events.drain(), &mut out),
                _ = sweep.tick() => {
                    // Cgroups first: a flow ends at least one sweep after its socket closed, so
                    // a cgroup created while it ran is known before its final record.
                    if let Some(cgroups) = selectors.rescan().cloned() {
                        classes_to_write = Some(cgroups);
                        attach_due = true;
                    }
                    if attach_due {
                        attach_due = !attach_enforcement(&enforcer, &mut probe, &selectors, &mut attach_failures);
                    }
                    // A failed write of the class maps is retried at every sweep until it works.
                    if let Some(cgroups) = &classes_to_write {
                        match probe.classes.replace(cgroups, selectors.uids()) {
                            Ok(()) => {
                                classes_to_write = None;
                                pipeline.classes_changed(selectors.paths());
                            }
                            Err(e) => {
                                pipeline.kernel_read_failed();
                                warn!(error = %format!("{e:#}"), "writing the kernel class maps failed; retrying at the next sweep");
                            }
                        }
                    }
                    let started = Instant::now();
                    let read_at = chrono::Utc::now();
                    // Answers and events first: a flow the sweep finds is named by the answers
                    // that came before it.
                    pipeline.on_kernel(events.drain(), &mut out);
                    pipeline.sweep(&mut probe.flows, &mut out);
                    manager.alive();
                    if read_due {
                        // Questions wait for live totals: every flow that changed, reported now.
                        pipeline.report_changed(&mut out);
                    }
                    let stale = pipeline.take_stale();
                    if let Err(e) = probe.reported.remove(&stale) {
                        warn!(error = %e, "removing stale entries of the kernel's record of reported flows failed");
                    }
                    debug!(flows = pipeline.table().len(), took = ?started.elapsed(), "sweep");
                    // Records first: a failing counter read must not cost them, and the status
                    // below then counts what the sinks and the store were just handed.
                    deliver(&mut pipeline, &sinks, &mut out).await;
                    if std::mem::take(&mut read_due) {
                        reads.made(read_at, store_counters.queued.load(std::sync::atomic::Ordering::Acquire));
                    }
                    if let Err(e) = probe.heartbeat() {
                        pipeline.kernel_read_failed();
                        warn!(error = %format!("{e:#}"), "writing the heartbeat failed; retrying at the next sweep");
                    }
                    let kernel = match probe.stats.read() {
                        Ok(k) => {
                            last_kernel = k.clone();
                            k
                        }
                        Err(e) => {
                            pipeline.kernel_read_failed();
                            warn!(error = %format!("{e:#}"), "reading the kernel counters failed; retrying at the next sweep");
                            last_kernel.clone()
                        }
                    };
                    pipeline.check_losses(&kernel, &mut out);
                    deliver(&mut pipeline, &sinks, &mut out).await;
                    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                    pipeline.fill_status(&mut s, &kernel);
                    s.classes = class_status(&selectors, &pipeline, &enforcer);
                    s.kernel.enforcing_cgroups = probe.enforcement.attached().unwrap_or_default();
                    sinks.fill_status(&mut s);
                    store_counters.fill_status(&mut s);
                    if let Some(h) = &heartbeat {
                        h.counters.store_dropped.store(s.losses.store_dropped, std::sync::atomic::Ordering::Relaxed);
                        h.counters.geolocation_errors.store(s.geolocation.decode_errors, std::sync::atomic::Ordering::Relaxed);
                    }
                    s.export = export.iter().map(|(st, _)| st.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect();
                    metrics.observe(&s);
                }
                due = reads.next() => {
                    // Served by the next sweep, which reads the kernel map anyway: a read of
                    // its own would double the sweeps' cost under a steady flow of questions.
                    read_due |= due;
                }
                _ = files_check.tick() => {
                    // A replaced database or range file: the kernel's verdicts follow.
                    if pipeline.enricher.reload_replaced() {
                        record_configuration(&config, "sources", pipeline.enricher.sources());
                        // Seconds with a large database: off the runtime's async workers, so
                        // the API goes on answering (this loop's sweeps wait; the kernel counts).
                        match tokio::task::block_in_place(|| enforcer.install(&mut probe, &mut pipeline)) {
                            Ok(tables) => status.lock().unwrap_or_else(|e| e.into_inner()).kernel.verdict_tables = tables,
                            Err(e) => warn!(error = %format!("{e:#}"), "compiling the reloaded places into the kernel's verdict tables failed; the previous tables stay in force"),
                        }
                    }
                }
                _ = sighup.recv() => {
                    manager.reloading();
                    // Seconds with a large database: off the async workers, as at a reload.
                    match tokio::task::block_in_place(|| reload(&config, &root, &mut probe, &mut pipeline)) {
                        Ok(Reloaded { config: new, enforcer: new_enforcer, tables, selectors: new_selectors, sinks: new_sinks }) => {
                            status.lock().unwrap_or_else(|e| e.into_inner()).kernel.verdict_tables = tables;
                            enforcer = new_enforcer;
                            // The new classes into the kernel's class maps now (sockets are
                            // classified again at their next packet); retried at every sweep
                            // when the write fails, as after a rescan.
                            selectors = new_selectors;
                            let cgroups = selectors.rescan().cloned().unwrap_or_default();
                            match probe.classes.replace(&cgroups, selectors.uids()) {
                                Ok(()) => pipeline.classes_changed(selectors.paths()),
                                Err(e) => {
                                    warn!(error = %format!("{e:#}"), "writing the kernel class maps failed; retrying at the next sweep");
                                    classes_to_write = Some(cgroups);
                                }
                            }
                            *api_classes.write().unwrap_or_else(|e| e.into_inner()) = new.class_names();
                            // Records until now go to the sinks that took them so far.
                            deliver(&mut pipeline, &sinks, &mut out).await;
                            sinks.reopen(&new.outbox_options(), new_sinks).await.context("starting the reloaded sinks")?;
                            if new.geoip.reload_interval.0 != config.geoip.reload_interval.0 {
                                files_check = files_timer(&new).await;
                            }
                            config = new;
                            record_configuration(&config, "reload", pipeline.enricher.sources());
                            // A class that starts or stops enforcing: its cgroups follow.
                            attach_due = !attach_enforcement(&enforcer, &mut probe, &selectors, &mut attach_failures);
                            info!(file = %config.origin, classes = config.classes.len(), attach_pending = attach_due, "SIGHUP: the configuration was reloaded: classes, sites, geolocation sources and sinks");
                        }
                        Err(e) => warn!(error = %format!("{e:#}"), "SIGHUP: the configuration was not reloaded; the running one stays in force"),
                    }
                    manager.reloaded(&format!("counting; {} classes", config.classes.len()));
                }
                _ = sigterm.recv() => { info!("SIGTERM: stopping"); manager.stopping(); break }
                _ = sigint.recv() => { info!("SIGINT: stopping"); manager.stopping(); break }
            }
            deliver(&mut pipeline, &sinks, &mut out).await;
        }
        // Report what was counted up to now, so nothing is left unsaid.
        pipeline.on_kernel(events.drain(), &mut out);
        pipeline.report_all(&mut probe.flows, &mut out);
        deliver(&mut pipeline, &sinks, &mut out).await;
        pipeline.final_alert_updates(&mut out);
        // Read after the final sweep, so the last loss record counts everything.
        pipeline.check_losses(&probe.stats.read().unwrap_or(last_kernel), &mut out);
        deliver(&mut pipeline, &sinks, &mut out).await;
        Ok(())
    }
    .await;

    api.stop().await;
    schedule.inspect(|t| t.abort());
    if let Some(h) = heartbeat {
        h.stop();
    }
    let _ = stop_export.send(true);
    for (_, task) in export {
        let _ = task.await;
    }
    let _ = probe.heartbeat();
    info!(
        set = %probe.set_dir().display(),
        "the kernel programs stay attached and counting; the next agent adopts them (`egress-monitor detach` removes them)"
    );
    drop(probe);
    pipeline.log_totals();
    sinks.close().await.context("flushing the sinks")?;
    result
}

/// Each class's part of the status: its selectors (cgroups found or not) and flows tracked now;
/// the API adds what it sent in the last hour from the store.
fn class_status(selectors: &ClassSelectors, pipeline: &Pipeline, enforcer: &Enforcer) -> Vec<ClassStatus> {
    let tracked = pipeline.table().by_class();
    selectors
        .described()
        .into_iter()
        .map(|ClassDescription { id, name, cgroups, uids }| ClassStatus {
            name,
            mode: enforcer.mode(id).into(),
            cgroups: cgroups
                .into_iter()
                .map(|(path, cgroup_id)| CgroupSelector { path, cgroup_id })
                .collect(),
            uids,
            flows_tracked: tracked.get(&id).map_or(0, |t| t.flows),
            sockets_tracked: tracked.get(&id).map_or(0, |t| t.sockets),
            blocked: pipeline.blocks().get(&id).copied().unwrap_or(0),
            last_hour: Default::default(),
        })
        .collect()
}

/// How often the databases and range files are checked for a replaced version
/// (`geoip.reload_interval`); the first tick is now's, taken (the files were just opened).
async fn files_timer(config: &Config) -> tokio::time::Interval {
    let mut t = interval(config.geoip.reload_interval.0);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t.tick().await;
    t
}

/// Hands the records to the outputs, a chunk at a time while the pipeline has more.
async fn deliver(pipeline: &mut Pipeline, sinks: &Sinks, out: &mut Vec<Output>) {
    loop {
        sinks.send_all(out).await;
        if !pipeline.pending() {
            return;
        }
        pipeline.emit_more(out);
    }
}

/// The kernel's record of what was reported follows what the store committed: the last mark of
/// each flow in a batch wins (a flow that ended is forgotten).
impl CommittedMarks for ReportedMap {
    fn committed(&mut self, marks: &[KernelMark]) -> std::io::Result<()> {
        let mut last: HashMap<FlowKey, Option<Reported>> = HashMap::with_capacity(marks.len());
        for m in marks {
            last.insert(m.key, m.reported);
        }
        let mut write = Vec::new();
        let mut forget = Vec::new();
        for (key, r) in last {
            match r {
                Some(r) => write.push((key, r)),
                None => forget.push(key),
            }
        }
        // Forget first: it frees the slots the new entries may need.
        self.remove(&forget)?;
        self.update(&write)
    }
}
