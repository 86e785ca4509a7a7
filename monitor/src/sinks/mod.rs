//! Where records and alerts go. The stdout sink prints everything as JSON lines behind a
//! bounded queue. Alert sinks (syslog, webhook) share one durable outbox and one delivery loop
//! with retries: every alert is in the outbox before any delivery is tried, and leaves it for
//! a sink only once that sink accepted it. The embedded store takes every record as well.

mod delivery;
mod outbox;
mod stdout;
pub mod syslog;
pub mod webhook;

use std::sync::{Arc, Mutex, atomic::Ordering};

pub use delivery::SinkStats;
pub use outbox::Outbox;
use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};

pub use crate::record::Output;
use crate::{
    config::{Config, SinkConfig},
    record::Alert,
    status::{SinkStatus, Status},
    store::StoreWriter,
};

/// Records queued per stdout sink before the agent waits for it.
const QUEUE: usize = 65536;

/// One alert sink, as the agent drives it.
struct AlertSink {
    name: String,
    config: SinkConfig,
    wake: Arc<Notify>,
    stats: Arc<Mutex<SinkStats>>,
}

/// Alert sinks checked and ready to start: what `check-config` validates and `run` starts.
pub struct Prepared {
    sinks: Vec<(SinkConfig, Option<delivery::Transport>)>,
}

/// Checks every sink's settings that need the outside world (secret files, CA files, header
/// values) and builds its transport; errors name the sink and the file.
pub fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    let mut sinks = Vec::new();
    for (i, sink) in config.effective_sinks().into_iter().enumerate() {
        let transport = match &sink {
            SinkConfig::Stdout {} => None,
            SinkConfig::Syslog(c) => Some(delivery::Transport::Syslog(
                syslog::SyslogSink::new(c)
                    .map_err(|e| anyhow::anyhow!("{}: sinks[{i}].{e:#}", config.origin))?,
            )),
            SinkConfig::Webhook(c) => Some(delivery::Transport::Webhook(
                webhook::WebhookSink::new(c)
                    .map_err(|e| anyhow::anyhow!("{}: sinks[{i}].{e:#}", config.origin))?,
            )),
        };
        sinks.push((sink, transport));
    }
    Ok(Prepared { sinks })
}

pub struct Sinks {
    queues: Vec<mpsc::Sender<Arc<Output>>>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    alert_sinks: Vec<AlertSink>,
    outbox: Option<Arc<Outbox>>,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    /// The embedded store takes every record too.
    store: Option<StoreWriter>,
}

impl Sinks {
    /// Starts every sink. Alert sinks open the outbox under `agent.state_dir` and begin with
    /// whatever a previous run left pending.
    pub fn start(config: &Config, prepared: Prepared, store: Option<StoreWriter>) -> anyhow::Result<Sinks> {
        let (stop, stop_rx) = watch::channel(false);
        let mut sinks = Sinks {
            queues: Vec::new(),
            tasks: Vec::new(),
            alert_sinks: Vec::new(),
            outbox: None,
            stop,
            workers: Vec::new(),
            store,
        };
        let needs_outbox = prepared.sinks.iter().any(|(_, t)| t.is_some());
        if needs_outbox {
            let dir = &config.agent.state_dir;
            let outbox = Arc::new(Outbox::open(dir, *config.alerts.outbox_max.get_ref() as u64)?);
            let names: Vec<String> =
                prepared.sinks.iter().filter(|(_, t)| t.is_some()).map(|(c, _)| c.name()).collect();
            for (sink, n) in outbox.forget_other_sinks(&names)? {
                warn!(
                    sink,
                    deliveries = n,
                    "pending alerts of a sink that is no longer configured were dropped"
                );
            }
            sinks.outbox = Some(outbox);
        }
        for (config, transport) in prepared.sinks {
            match transport {
                None => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    sinks.tasks.push(tokio::spawn(stdout::run(rx)));
                    sinks.queues.push(tx);
                }
                Some(transport) => {
                    let outbox = sinks.outbox.clone().expect("opened above");
                    let name = config.name();
                    let backlog = outbox.backlog(&name)?;
                    if backlog > 0 {
                        info!(sink = %name, backlog, "delivering alerts left pending by the previous run");
                    }
                    let wake = Arc::new(Notify::new());
                    let stats = Arc::new(Mutex::new(SinkStats::default()));
                    sinks.workers.push(tokio::spawn(delivery::run(
                        name.clone(),
                        transport,
                        config.retry(),
                        outbox,
                        wake.clone(),
                        stats.clone(),
                        stop_rx.clone(),
                    )));
                    sinks.alert_sinks.push(AlertSink { name, config, wake, stats });
                }
            }
        }
        Ok(sinks)
    }

    /// Hands a record to every sink. An alert is written to the outbox (for the alert sinks
    /// whose filters take it) before anything else sees it.
    pub async fn send(&self, output: Output) {
        if let (Output::Alert(alert), Some(outbox)) = (&output, &self.outbox) {
            self.store_alert(outbox, alert);
        }
        let output = Arc::new(output);
        if let Some(store) = &self.store {
            store.write(&output);
        }
        for q in &self.queues {
            // A closed queue means the sink task failed; its error is reported by close().
            let _ = q.send(output.clone()).await;
        }
    }

    /// Hands every record in `outputs` on, in order, and empties it.
    pub async fn send_all(&self, outputs: &mut Vec<Output>) {
        for o in outputs.drain(..) {
            self.send(o).await;
        }
    }

    /// Brings the sinks' part of the status document up to date.
    pub fn fill_status(&self, s: &mut Status) {
        s.losses.outbox_dropped = self.outbox_dropped();
        s.sinks = self
            .alert_sink_stats()
            .into_iter()
            .map(|(name, backlog, st)| SinkStatus {
                name,
                backlog,
                delivered: st.delivered,
                retries: st.retries,
                failed: st.failed,
                last_error: st.last_error,
            })
            .collect();
        s.databases.outbox_bytes = self.outbox_size();
    }

    fn store_alert(&self, outbox: &Outbox, alert: &Alert) {
        let takers: Vec<&AlertSink> = self
            .alert_sinks
            .iter()
            .filter(|s| s.config.alert_filter().is_some_and(|f| f.accepts(&alert.class, alert.severity)))
            .collect();
        if takers.is_empty() {
            return;
        }
        let names: Vec<String> = takers.iter().map(|s| s.name.clone()).collect();
        let body = match serde_json::to_string(alert) {
            Ok(b) => b,
            Err(e) => {
                error!(id = %alert.id, error = %e, "cannot serialise the alert for the outbox");
                return;
            }
        };
        // Writing is a few milliseconds (fsync); alerts are rare next to flow records.
        match outbox.push(&alert.id, &body, &names) {
            Ok(_) => takers.iter().for_each(|s| s.wake.notify_one()),
            Err(e) => error!(
                id = %alert.id, error = %e, file = %outbox.path().display(),
                "cannot write the alert to the outbox: it is printed but will not be delivered to syslog/webhook sinks"
            ),
        }
    }

    /// Name, backlog and counters of each alert sink.
    pub fn alert_sink_stats(&self) -> Vec<(String, u64, SinkStats)> {
        self.alert_sinks
            .iter()
            .map(|s| {
                let backlog = self.outbox.as_ref().and_then(|o| o.backlog(&s.name).ok()).unwrap_or(0);
                (s.name.clone(), backlog, s.stats.lock().unwrap_or_else(|e| e.into_inner()).clone())
            })
            .collect()
    }

    /// Size of the outbox database and its log, in bytes.
    pub fn outbox_size(&self) -> u64 {
        let Some(o) = &self.outbox else { return 0 };
        [o.path().to_path_buf(), o.path().with_extension("sqlite-wal")]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Alerts dropped because the outbox was full.
    pub fn outbox_dropped(&self) -> u64 {
        self.outbox.as_ref().map_or(0, |o| o.dropped_full.load(Ordering::Relaxed))
    }

    /// Flushes the stdout sinks and stops the alert workers; undelivered alerts stay in the
    /// outbox for the next start.
    pub async fn close(self) -> anyhow::Result<()> {
        let stats = self.alert_sink_stats();
        let _ = self.stop.send(true);
        for w in self.workers {
            let _ = w.await;
        }
        for (name, backlog, s) in stats {
            info!(sink = %name, delivered = s.delivered, retries = s.retries, failed = s.failed, backlog, "alert sink totals");
        }
        drop(self.queues);
        for t in self.tasks {
            t.await??;
        }
        if let Some(store) = self.store {
            tokio::task::spawn_blocking(move || store.close()).await?;
        }
        Ok(())
    }
}
