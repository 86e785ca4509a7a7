//! The store's writer thread: records arrive on a bounded queue, are written in batches (one
//! transaction each), and old rows are pruned now and then.

use std::{
    sync::{
        Arc, LazyLock,
        atomic::Ordering,
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rusqlite::{Connection, Transaction, params, params_from_iter, types::Value as SqlValue};
use tracing::{error, warn};

use super::{
    CommittedMarks, StoreCounters, StoreSettings,
    groups::{self, FlowRow, Groups},
};
use crate::record::{
    Alert, AlertUpdate, FlowRecord, FlowState, KernelMark, LossRecord, Output,
    fields::{self, Field, Value},
};

/// Records waiting for the writer before new ones are dropped (and counted).
const QUEUE: usize = 100_000;
/// Records written per transaction at most.
const BATCH: usize = 5_000;
/// Longest a record waits before its batch is written.
const LINGER: Duration = Duration::from_millis(200);
/// How often, at most, the writer records that it has caught up (`writer_progress`).
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

pub struct StoreWriter {
    tx: Option<SyncSender<Arc<Output>>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<StoreCounters>,
}

impl StoreWriter {
    pub fn start(
        conn: Connection,
        settings: StoreSettings,
        counters: Arc<StoreCounters>,
        marks: Option<Box<dyn CommittedMarks>>,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        let c = counters.clone();
        let thread = std::thread::Builder::new().name("store-writer".into()).spawn(move || {
            Writer { conn, settings, counters: c, marks, pending: Vec::new(), newest_bucket: i64::MIN }
                .run(rx)
        })?;
        Ok(StoreWriter { tx: Some(tx), thread: Some(thread), counters })
    }

    /// A writer for a store that could not be opened: every record is counted as dropped.
    pub fn unavailable(counters: Arc<StoreCounters>) -> Self {
        StoreWriter { tx: None, thread: None, counters }
    }

    /// Queues a record; never waits. A full queue drops the record and counts it.
    pub fn write(&self, output: &Arc<Output>) {
        let Some(tx) = &self.tx else {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        {
            match tx.try_send(output.clone()) {
                Ok(()) => {
                    self.counters.queued.fetch_add(1, Ordering::Release);
                }
                Err(TrySendError::Full(_)) => {
                    if self.counters.dropped.fetch_add(1, Ordering::Relaxed).is_multiple_of(10_000) {
                        warn!(
                            "the store cannot keep up (disk too slow?): records are dropped from it and counted"
                        );
                    }
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Says that every record made until now has been handed to [`StoreWriter::write`].
    pub fn handed(&self) {
        self.counters.handed_ms.store(chrono::Utc::now().timestamp_millis(), Ordering::Release);
    }

    /// Writes what is queued and stops the thread.
    pub fn close(mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Writer {
    conn: Connection,
    settings: StoreSettings,
    counters: Arc<StoreCounters>,
    marks: Option<Box<dyn CommittedMarks>>,
    pending: Vec<KernelMark>,
    /// The newest bucket written since start.
    newest_bucket: i64,
}

impl Writer {
    fn run(mut self, rx: Receiver<Arc<Output>>) {
        let mut batch: Vec<Arc<Output>> = Vec::with_capacity(BATCH);
        let mut last_prune = Instant::now() - self.settings.prune_every;
        let mut last_progress = Instant::now() - PROGRESS_EVERY;
        loop {
            let done = match rx.recv_timeout(LINGER) {
                Ok(first) => {
                    batch.push(first);
                    let deadline = Instant::now() + LINGER;
                    while batch.len() < BATCH {
                        // Someone waits for what is queued (a question wanting live totals):
                        // write what is there now rather than linger for more.
                        let linger = match self.counters.waiting.load(Ordering::Acquire) {
                            0 => deadline.saturating_duration_since(Instant::now()),
                            _ => Duration::ZERO,
                        };
                        match rx.recv_timeout(linger) {
                            Ok(o) => batch.push(o),
                            Err(_) => break,
                        }
                    }
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            if !batch.is_empty() {
                match self.write(&batch) {
                    Ok(()) => {
                        let mut last = self.counters.last_error.lock().unwrap_or_else(|e| e.into_inner());
                        if last.is_some() {
                            *last = None;
                        }
                    }
                    Err(e) => {
                        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                        self.counters.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        *self.counters.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(e.to_string());
                        error!(error = %e, records = batch.len(), "cannot write to the store; these records are not stored (counted as dropped)");
                    }
                }
                self.counters.settled.fetch_add(batch.len() as u64, Ordering::Release);
                batch.clear();
            }
            // Every record the agent made before `handed` was queued before it was set: once
            // all queued then are settled, they are in the store (or counted as dropped). A
            // report of a running agent sums no bucket past it.
            if last_progress.elapsed() >= PROGRESS_EVERY {
                let handed = self.counters.handed_ms.load(Ordering::Acquire);
                let queued = self.counters.queued.load(Ordering::Acquire);
                if handed > 0 && self.counters.settled.load(Ordering::Acquire) >= queued {
                    last_progress = Instant::now();
                    if let Err(e) = self.conn.execute("UPDATE writer_progress SET settled_ms = ?1", [handed])
                    {
                        error!(error = %e, "cannot record the store writer's progress");
                    }
                }
            }
            if last_prune.elapsed() >= self.settings.prune_every {
                last_prune = Instant::now();
                match prune(&self.conn, self.settings.retention) {
                    Ok(n) => {
                        self.counters.rows_pruned.fetch_add(n, Ordering::Relaxed);
                        if n > 0 {
                            // What readers may have remembered has changed.
                            self.counters.commits.fetch_add(1, Ordering::Release);
                        }
                    }
                    Err(e) => error!(error = %e, "cannot prune the store"),
                }
            }
            if done {
                return;
            }
        }
    }

    fn write(&mut self, batch: &[Arc<Output>]) -> rusqlite::Result<()> {
        let bucket_secs = self.settings.bucket.as_secs().max(1) as i64;
        // Immediate: the batch starts with a read, and an exporter's write between that read and
        // the first insert would otherwise fail the whole batch (SQLITE_BUSY_SNAPSHOT).
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Buckets before this have been sent by some exporter: a row written there makes its
        // bucket late. Read once per batch; records are almost always for the current bucket.
        let sent_before: i64 = tx.query_row(
            "SELECT COALESCE(MAX(position), -9223372036854775808) FROM export_cursors WHERE exporter LIKE '%.flows'",
            [],
            |r| r.get(0),
        )?;
        let now = chrono::Utc::now().timestamp();
        let mut flows = FlowBatch {
            bucket_secs,
            sent_before,
            kept_from: now - (self.settings.retention + self.settings.prune_every).as_secs() as i64,
            newest: &mut self.newest_bucket,
            groups: Groups::default(),
        };
        let mut rows = 0;
        for o in batch {
            rows += match &**o {
                Output::Flow(r) => flows.write(&tx, r)?,
                Output::Alert(a) => write_alert(&tx, a)?,
                Output::AlertUpdate(u) => write_update(&tx, u)?,
                Output::Loss(l) => write_loss(&tx, l)?,
            };
        }
        let mut groups = flows.groups;
        groups.write(&tx)?;
        tx.commit()?;
        self.counters.commits.fetch_add(1, Ordering::Release);
        self.counters.rows_written.fetch_add(rows, Ordering::Relaxed);
        if let Some(marks) = &mut self.marks {
            self.pending.clear();
            self.pending.extend(batch.iter().filter_map(|o| match &**o {
                Output::Flow(r) => r.kernel_mark,
                _ => None,
            }));
            if let Err(e) = marks.committed(&self.pending) {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "cannot update the kernel's record of stored flows: after a crash, their last counts may be stored twice");
            }
        }
        Ok(())
    }
}

/// A loss record: its totals as JSON, the overflow in columns.
fn write_loss(tx: &Transaction<'_>, l: &LossRecord) -> rusqlite::Result<u64> {
    let json = serde_json::to_string(l).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
    tx.execute(
        "INSERT INTO losses (time, time_unix, host, overflow_packets, overflow_bytes, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            l.time.rfc3339(),
            l.time.0.timestamp(),
            &*l.host,
            l.overflow_packets as i64,
            l.overflow_bytes as i64,
            json
        ],
    )?;
    Ok(1)
}

/// A field's value as SQLite stores it.
fn sql(v: Value<'_>) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Text(t) => SqlValue::Text(t.into_owned()),
        Value::Int(n) => SqlValue::Integer(n),
        Value::Bool(b) => SqlValue::Integer(b as i64),
        Value::Time(t) => SqlValue::Text(t.rfc3339()),
        Value::Address(a) => SqlValue::Blob(a.to_vec()),
    }
}

/// `INSERT INTO table (every stored column) VALUES (?1, ...)`, followed by `tail`.
fn insert<R>(verb: &str, table: &str, fields: &'static [Field<R>], tail: &str) -> String {
    let columns: Vec<&str> = fields::stored(fields).map(|(c, _)| c).collect();
    let marks: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    format!("{verb} INTO {table} ({}) VALUES ({}) {tail}", columns.join(", "), marks.join(", "))
}

static FLOW_SQL: LazyLock<String> = LazyLock::new(|| insert("INSERT", "flows", fields::FLOW, ""));

/// Adds a record's new bytes and packets to its flow's row in the bucket: the columns it
/// sets, then the key.
const FLOW_UPDATE_COLUMNS: [&str; 7] =
    ["bytes", "packets", "last_seen", "class", "verdict", "bucket", "flow_id"];
const FLOW_UPDATE_SQL: &str = "UPDATE flows SET bytes = bytes + ?1, packets = packets + ?2, last_seen = ?3,
     class = ?4, verdict = ?5 WHERE bucket = ?6 AND flow_id = ?7";

/// Where [`FLOW_UPDATE_COLUMNS`] sit in a flow row's values.
static FLOW_UPDATE_POSITIONS: LazyLock<Vec<usize>> =
    LazyLock::new(|| fields::stored_positions(fields::FLOW, &FLOW_UPDATE_COLUMNS));

static ALERT_SQL: LazyLock<String> =
    LazyLock::new(|| insert("INSERT OR IGNORE", "alerts", fields::ALERT, ""));

/// What writing one batch's flow records needs besides the transaction.
struct FlowBatch<'a> {
    bucket_secs: i64,
    /// Buckets before this have been sent by some exporter.
    sent_before: i64,
    /// Rows older than this are gone or about to be pruned (retention, and the prune interval).
    kept_from: i64,
    /// The newest bucket this writer has written.
    newest: &'a mut i64,
    groups: Groups,
}

impl FlowBatch<'_> {
    fn bucket_of(&self, t: i64) -> i64 {
        t.div_euclid(self.bucket_secs) * self.bucket_secs
    }

    /// Adds a flow record's new bytes and packets to its row in the bucket of the record's
    /// time, and to its group's sums.
    fn write(&mut self, tx: &Transaction<'_>, r: &FlowRecord) -> rusqlite::Result<u64> {
        if r.delta_bytes == 0 && r.delta_packets == 0 && r.state != FlowState::New {
            return Ok(0);
        }
        let mut bucket = self.bucket_of(r.time.0.timestamp());
        // A flow's rows never go back in time, even when the wall clock does: after a step
        // back, a record of a flow with a row in a later bucket goes into that row.
        if r.state != FlowState::New
            && *self.newest > bucket
            && let Some(later) =
                groups::newest_row(tx, &r.flow_id, *self.newest, bucket + self.bucket_secs, self.bucket_secs)?
        {
            bucket = later;
        }
        *self.newest = (*self.newest).max(bucket);
        let values: Vec<SqlValue> = fields::stored(fields::FLOW)
            .map(|(column, f)| match column {
                // The bucket comes from the store's bucket length, not from the record.
                "bucket" => SqlValue::Integer(bucket),
                _ => sql((f.value)(r)),
            })
            .collect();
        // The flow's row in this bucket if it has one, else a new row.
        let updated = tx
            .prepare_cached(FLOW_UPDATE_SQL)?
            .execute(params_from_iter(FLOW_UPDATE_POSITIONS.iter().map(|&i| &values[i])))?;
        let row = if updated > 0 {
            FlowRow::Existing
        } else {
            let prev = if r.state == FlowState::New {
                None
            } else {
                // Back to the flow's start (two buckets' slack: its first_seen is recomputed
                // from the clock at each record), or as far as rows are kept.
                let start = self.bucket_of(r.first_seen.0.timestamp()) - 2 * self.bucket_secs;
                let oldest = start.max(self.bucket_of(self.kept_from));
                groups::newest_row(tx, &r.flow_id, bucket - self.bucket_secs, oldest, self.bucket_secs)?
            };
            tx.prepare_cached(&FLOW_SQL)?.execute(params_from_iter(&values))?;
            FlowRow::First { prev }
        };
        self.groups.add(&values, bucket, row);
        // Written into a bucket an exporter has already sent: it sends that bucket again.
        if bucket < self.sent_before {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO late_buckets (exporter, bucket)
                 SELECT exporter, ?1 FROM export_cursors WHERE exporter LIKE '%.flows' AND position > ?1",
            )?
            .execute([bucket])?;
        }
        Ok(1)
    }
}

fn write_alert(tx: &Transaction<'_>, a: &Alert) -> rusqlite::Result<u64> {
    let values = fields::stored(fields::ALERT).map(|(_, f)| sql((f.value)(a)));
    let n = tx.prepare_cached(&ALERT_SQL)?.execute(params_from_iter(values))?;
    Ok(n as u64)
}

fn write_update(tx: &Transaction<'_>, u: &AlertUpdate) -> rusqlite::Result<u64> {
    let n = tx
        .prepare_cached(
            "UPDATE alerts SET bytes = ?2, packets = ?3, flows = ?4, last_seen = ?5 WHERE id = ?1",
        )?
        .execute(params![u.id, u.bytes as i64, u.packets as i64, u.flows as i64, u.last_seen.rfc3339()])?;
    Ok(n as u64)
}

/// Deletes flow summaries, alerts and loss records older than the retention, and records
/// where it cut (reports refuse periods before it). The last loss record before the cut
/// stays: a report takes the growth of the loss totals from it.
fn prune(conn: &Connection, retention: Duration) -> rusqlite::Result<u64> {
    let now = chrono::Utc::now();
    let cutoff = now.timestamp() - retention.as_secs() as i64;
    let flows = conn.execute("DELETE FROM flows WHERE bucket < ?1", [cutoff])?;
    conn.execute("DELETE FROM flow_groups WHERE bucket < ?1", [cutoff])?;
    let alerts = conn.execute("DELETE FROM alerts WHERE time_unix < ?1", [cutoff])?;
    let losses = conn.execute(
        "DELETE FROM losses WHERE time_unix < ?1
         AND rowid <> (SELECT rowid FROM losses WHERE time_unix < ?1 ORDER BY time_unix DESC, rowid DESC LIMIT 1)",
        [cutoff],
    )?;
    let rows = flows + alerts + losses;
    if flows + alerts > 0 {
        conn.execute(
            "INSERT INTO prunes (at_ms, cutoff, rows) VALUES (?1, ?2, ?3)",
            rusqlite::params![now.timestamp_millis(), cutoff, rows as i64],
        )?;
    }
    Ok(rows as u64)
}

/// The latest cut of [`prune`]: (rows before this Unix second are gone, when it cut in Unix ms).
pub fn pruned_before(conn: &Connection) -> rusqlite::Result<Option<(i64, i64)>> {
    let mut stmt = conn.prepare("SELECT cutoff, at_ms FROM prunes ORDER BY cutoff DESC LIMIT 1")?;
    let mut rows = stmt.query([])?;
    rows.next()?.map(|r| Ok((r.get(0)?, r.get(1)?))).transpose()
}
