//! Where records and alerts go. The stdout sink prints everything as JSON lines behind a
//! bounded queue. Alert sinks (syslog, webhook) share one durable outbox and one delivery loop
//! with retries: every alert is in the outbox before any delivery is tried, and leaves it for
//! a sink only once that sink accepted it. The embedded store takes every record as well.
//!
//! A sink type is one file: its settings (read from its `[[sinks]]` table, with their defaults
//! and checks) and its [`AlertSink`]; plus one line in [`REGISTRY`].

mod delivery;
mod outbox;
mod outbox_writer;
mod reopen;
mod stdout;
pub mod syslog;
mod syslog_address;
mod table;
pub mod webhook;

use std::{
    any::Any,
    fmt,
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex, atomic::Ordering},
};

pub use delivery::{Backoff, DeliveryError, RetryPolicy, SinkStats};
pub use outbox::{DeadLetter, Outbox, Pending};
use outbox_writer::OutboxWriter;
pub use table::{Field, FieldError, SinkTable, Span, parse_duration};
use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

pub use crate::record::Output;
use crate::{
    record::{Alert, Severity},
    status::{SinkStatus, Status},
    store::StoreWriter,
};

/// Every sink type: the `type` a `[[sinks]]` table names, and how its table becomes a sink.
/// A new sink is a new file and one line here.
pub static REGISTRY: &[SinkType] = &[stdout::TYPE, syslog::TYPE, webhook::TYPE];

/// A sink type in the registry.
pub struct SinkType {
    pub name: &'static str,
    /// The keys a table of this type takes besides `type`.
    pub keys: &'static [&'static str],
    /// Reads and checks a table of this type (whose keys were checked against `keys`).
    pub parse: fn(&SinkTable) -> Result<SinkConfig, FieldError>,
}

/// Reads a `[[sinks]]` table through the sink type its `type` names.
pub fn read(t: &SinkTable) -> Result<SinkConfig, FieldError> {
    let Some(ty) = REGISTRY.iter().find(|ty| ty.name == t.kind) else {
        let known: Vec<String> = REGISTRY.iter().map(|ty| format!("`{}`", ty.name)).collect();
        return Err(t.error(
            "type",
            t.kind_span.clone(),
            format!("unknown variant `{}`, expected one of {}", t.kind, known.join(", ")),
        ));
    };
    t.only(ty.keys, &all_keys())?;
    (ty.parse)(t)
}

/// Every key some sink type takes, `type` first.
fn all_keys() -> Vec<&'static str> {
    let mut keys = vec!["type"];
    for k in REGISTRY.iter().flat_map(|ty| ty.keys.iter()) {
        if !keys.contains(k) {
            keys.push(k);
        }
    }
    keys
}

/// A future a sink returns from a delivery attempt.
pub type Delivery<'a> = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>;

/// A sink that takes alerts one at a time from the outbox.
pub trait AlertSink: Send {
    /// Tries to deliver one alert: Ok once the receiver accepted it.
    fn deliver<'a>(&'a mut self, alert: &'a Alert) -> Delivery<'a>;
}

/// An alert sink's own settings, as its file reads them.
pub trait AlertSinkOptions: fmt::Debug + Send + Sync {
    /// The name used when the table gives none ("syslog:udp://10.0.0.5:514").
    fn default_name(&self) -> String;
    /// Checks what needs the outside world (secret files, CA files, header values) and builds
    /// the sink; errors name the key and the file.
    fn build(&self) -> anyhow::Result<Box<dyn AlertSink>>;
    /// For tests and callers that know the type.
    fn as_any(&self) -> &dyn Any;
}

/// Which alerts a sink takes (the `min_severity` and `classes` keys of a sink).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertFilter {
    /// Only alerts at least this severe.
    pub min_severity: Option<Severity>,
    /// Only alerts of these classes (all classes when empty).
    pub classes: Vec<String>,
}

impl AlertFilter {
    pub fn accepts(&self, class: &str, severity: Severity) -> bool {
        self.min_severity.is_none_or(|m| severity >= m)
            && (self.classes.is_empty() || self.classes.iter().any(|c| c == class))
    }
}

/// An alert sink's settings: the keys every alert sink takes, and its own.
#[derive(Debug, Clone)]
pub struct AlertSinkConfig {
    /// Names the sink in logs, status and the outbox.
    pub name: String,
    pub filter: AlertFilter,
    pub retry: RetryPolicy,
    pub options: Arc<dyn AlertSinkOptions>,
}

impl AlertSinkConfig {
    /// Reads the keys every alert sink takes (`name`, `min_severity`, `classes`,
    /// `retry_initial`, `retry_max`, `max_age`); `options` are the sink's own settings.
    pub fn read(t: &SinkTable, options: Arc<dyn AlertSinkOptions>) -> Result<AlertSinkConfig, FieldError> {
        let retry = RetryPolicy {
            initial: t.duration("retry_initial")?.unwrap_or(RetryPolicy::DEFAULT.initial),
            max: t.duration("retry_max")?.unwrap_or(RetryPolicy::DEFAULT.max),
            max_age: t.duration("max_age")?.unwrap_or(RetryPolicy::DEFAULT.max_age),
        };
        if retry.max < retry.initial {
            let span = t.entries.get("retry_max").map_or(0..0, |(_, s)| s.clone());
            return Err(t.error("retry_max", span, "must not be shorter than retry_initial"));
        }
        Ok(AlertSinkConfig {
            name: t.text("name")?.map_or_else(|| options.default_name(), |(n, _)| n),
            filter: AlertFilter {
                min_severity: t.severity("min_severity")?,
                classes: t.strings("classes")?.into_iter().map(|(c, _)| c).collect(),
            },
            retry,
            options,
        })
    }
}

/// A sink, checked and typed.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// Every flow record, alert and alert update as a JSON line on standard output.
    Stdout {},
    /// A sink that delivers alerts through the outbox.
    Alerts(AlertSinkConfig),
}

impl PartialEq for SinkConfig {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SinkConfig::Stdout {}, SinkConfig::Stdout {}) => true,
            (SinkConfig::Alerts(a), SinkConfig::Alerts(b)) => {
                a.name == b.name
                    && a.filter == b.filter
                    && a.retry == b.retry
                    && format!("{:?}", a.options) == format!("{:?}", b.options)
            }
            _ => false,
        }
    }
}

impl SinkConfig {
    /// The sink's stable name: pending deliveries in the outbox are kept under it.
    pub fn name(&self) -> String {
        match self {
            SinkConfig::Stdout {} => "stdout".into(),
            SinkConfig::Alerts(a) => a.name.clone(),
        }
    }

    /// Filter of a sink that delivers alerts through the outbox (None for stdout).
    pub fn alert_filter(&self) -> Option<&AlertFilter> {
        match self {
            SinkConfig::Stdout {} => None,
            SinkConfig::Alerts(a) => Some(&a.filter),
        }
    }

    /// Retry timing of a sink that delivers through the outbox.
    pub fn retry(&self) -> RetryPolicy {
        match self {
            SinkConfig::Stdout {} => RetryPolicy::DEFAULT,
            SinkConfig::Alerts(a) => a.retry,
        }
    }

    /// The sink's own settings, when they are of type `T`.
    pub fn options<T: 'static>(&self) -> Option<&T> {
        match self {
            SinkConfig::Stdout {} => None,
            SinkConfig::Alerts(a) => a.options.as_any().downcast_ref(),
        }
    }
}

/// Records queued per stdout sink before the agent waits for it.
const QUEUE: usize = 65536;

/// One alert sink, as the agent drives it.
struct Running {
    name: String,
    filter: AlertFilter,
    wake: Arc<Notify>,
    stats: Arc<Mutex<SinkStats>>,
}

/// Sinks checked and ready to start: what `check-config` validates and `run` starts.
pub struct Prepared {
    sinks: Vec<(SinkConfig, Option<Box<dyn AlertSink>>)>,
}

/// Builds every sink (reading secret and CA files); errors name the sink (`sinks[i]`) and
/// the file.
pub fn prepare(sinks: &[SinkConfig]) -> anyhow::Result<Prepared> {
    let mut out = Vec::new();
    for (i, sink) in sinks.iter().enumerate() {
        let built = match sink {
            SinkConfig::Stdout {} => None,
            SinkConfig::Alerts(a) => {
                Some(a.options.build().map_err(|e| anyhow::anyhow!("sinks[{i}].{e:#}"))?)
            }
        };
        out.push((sink.clone(), built));
    }
    Ok(Prepared { sinks: out })
}

/// Where the outbox lives and how many alerts it holds at most.
#[derive(Debug, Clone)]
pub struct OutboxOptions {
    pub dir: PathBuf,
    pub max: u64,
}

pub struct Sinks {
    queues: Vec<mpsc::Sender<Arc<Output>>>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    alert_sinks: Vec<Running>,
    outbox: Option<Arc<Outbox>>,
    /// Writes alerts into the outbox off the agent's loop.
    outbox_writer: Option<OutboxWriter>,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    /// The embedded store takes every record too.
    store: Option<StoreWriter>,
}

impl Sinks {
    /// Starts every sink. Alert sinks open the outbox and begin with whatever a previous run
    /// left pending.
    pub fn start(
        outbox: &OutboxOptions,
        prepared: Prepared,
        store: Option<StoreWriter>,
    ) -> anyhow::Result<Sinks> {
        let (stop, stop_rx) = watch::channel(false);
        let mut sinks = Sinks {
            queues: Vec::new(),
            tasks: Vec::new(),
            alert_sinks: Vec::new(),
            outbox: None,
            outbox_writer: None,
            stop,
            workers: Vec::new(),
            store,
        };
        if prepared.sinks.iter().any(|(_, s)| s.is_some()) {
            let o = Arc::new(Outbox::open(&outbox.dir, outbox.max)?);
            let names: Vec<String> =
                prepared.sinks.iter().filter(|(_, s)| s.is_some()).map(|(c, _)| c.name()).collect();
            // Unnamed webhooks were once named by their whole URL: their pending alerts follow
            // them to the name without the secret.
            for old in o.pending_sinks()? {
                if let Some(new) = webhook::redacted_name(&old).filter(|n| *n != old && names.contains(n)) {
                    o.rename_sink(&old, &new)?;
                    info!(sink = %new, "pending alerts carried over from the webhook's former name");
                }
            }
            for (sink, n) in o.forget_other_sinks(&names)? {
                let sink = webhook::redacted_name(&sink).unwrap_or(sink);
                warn!(
                    sink,
                    deliveries = n,
                    "pending alerts of a sink that is no longer configured were dropped"
                );
            }
            sinks.outbox_writer = Some(OutboxWriter::start(o.clone())?);
            sinks.outbox = Some(o);
        }
        for (config, sink) in prepared.sinks {
            match (config, sink) {
                (SinkConfig::Alerts(c), Some(sink)) => {
                    let outbox = sinks.outbox.clone().expect("opened above");
                    let backlog = outbox.backlog(&c.name)?;
                    if backlog > 0 {
                        info!(sink = %c.name, backlog, "delivering alerts left pending by the previous run");
                    }
                    let wake = Arc::new(Notify::new());
                    let stats = Arc::new(Mutex::new(SinkStats::default()));
                    sinks.workers.push(tokio::spawn(delivery::run(
                        c.name.clone(),
                        sink,
                        c.retry,
                        outbox,
                        wake.clone(),
                        stats.clone(),
                        stop_rx.clone(),
                    )));
                    sinks.alert_sinks.push(Running { name: c.name, filter: c.filter, wake, stats });
                }
                _ => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    sinks.tasks.push(tokio::spawn(stdout::run(rx)));
                    sinks.queues.push(tx);
                }
            }
        }
        Ok(sinks)
    }

    /// Hands a record to every sink. An alert is written to the outbox (for the alert sinks
    /// whose filters take it) before anything else sees it.
    pub async fn send(&self, output: Output) {
        if let (Output::Alert(alert), Some(writer)) = (&output, &self.outbox_writer) {
            self.store_alert(writer, alert);
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
        // The agent makes records only between these calls: all made so far are handed over.
        if let Some(store) = &self.store {
            store.handed();
        }
    }

    /// Queues an alert for the outbox writer, for the alert sinks whose filters take it.
    fn store_alert(&self, writer: &OutboxWriter, alert: &Alert) {
        let takers: Vec<&Running> =
            self.alert_sinks.iter().filter(|s| s.filter.accepts(&alert.class, alert.severity)).collect();
        if takers.is_empty() {
            return;
        }
        let names = takers.iter().map(|s| s.name.clone()).collect();
        let wakes = takers.iter().map(|s| s.wake.clone()).collect();
        writer.queue(alert.clone(), names, wakes);
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
                dead_lettered: st.dead_lettered,
                last_error: st.last_error,
            })
            .collect();
        s.databases.outbox_bytes = self.outbox_size();
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
    pub async fn close(mut self) -> anyhow::Result<()> {
        // Every alert handed over is in the outbox before the sinks stop.
        if let Some(w) = self.outbox_writer.take() {
            tokio::task::spawn_blocking(move || w.close()).await?;
        }
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
