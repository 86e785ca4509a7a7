//! The store's writer thread: records arrive on a bounded queue, are written in batches (one
//! transaction each), and old rows are pruned now and then.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::Ordering,
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rusqlite::{Connection, Transaction, params};
use tracing::{error, warn};

use super::{StoreCounters, StoreSettings};
use crate::record::{Alert, AlertUpdate, FlowRecord, FlowState, Output};

/// Records waiting for the writer before new ones are dropped (and counted).
const QUEUE: usize = 100_000;
/// Records written per transaction at most.
const BATCH: usize = 5_000;
/// Longest a record waits before its batch is written.
const LINGER: Duration = Duration::from_millis(200);

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
    ) -> anyhow::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || Writer { conn, settings, counters: c }.run(rx))?;
        Ok(StoreWriter { tx: Some(tx), thread: Some(thread), counters })
    }

    /// Queues a record; never waits. A full queue drops the record and counts it.
    pub fn write(&self, output: &Arc<Output>) {
        if matches!(**output, Output::Loss(_)) {
            return;
        }
        if let Some(tx) = &self.tx {
            match tx.try_send(output.clone()) {
                Ok(()) => {}
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
}

impl Writer {
    fn run(mut self, rx: Receiver<Arc<Output>>) {
        let mut batch: Vec<Arc<Output>> = Vec::with_capacity(BATCH);
        let mut last_prune = Instant::now() - self.settings.prune_every;
        loop {
            let done = match rx.recv_timeout(LINGER) {
                Ok(first) => {
                    batch.push(first);
                    let deadline = Instant::now() + LINGER;
                    while batch.len() < BATCH {
                        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
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
                if let Err(e) = self.write(&batch) {
                    self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    error!(error = %e, records = batch.len(), "cannot write to the store; these records are not stored");
                }
                batch.clear();
            }
            if last_prune.elapsed() >= self.settings.prune_every {
                last_prune = Instant::now();
                match prune(&self.conn, self.settings.retention) {
                    Ok(n) => {
                        self.counters.rows_pruned.fetch_add(n, Ordering::Relaxed);
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
        let tx = self.conn.transaction()?;
        let mut rows = 0;
        for o in batch {
            rows += match &**o {
                Output::Flow(r) => write_flow(&tx, r, bucket_secs)?,
                Output::Alert(a) => write_alert(&tx, a)?,
                Output::AlertUpdate(u) => write_update(&tx, u)?,
                Output::Loss(_) => 0,
            };
        }
        tx.commit()?;
        self.counters.rows_written.fetch_add(rows, Ordering::Relaxed);
        Ok(())
    }
}

/// An address as 16 bytes (IPv4 mapped into IPv6), so CIDR filters are byte ranges.
pub fn ip_bin(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Adds a flow record's new bytes and packets to its row in the bucket of the record's time.
fn write_flow(tx: &Transaction<'_>, r: &FlowRecord, bucket_secs: i64) -> rusqlite::Result<u64> {
    let (bytes, packets) = (r.delta_bytes, r.delta_packets);
    if bytes == 0 && packets == 0 && r.state != FlowState::New {
        return Ok(0);
    }
    let id = &r.flow_id;
    let bucket = r.time.0.timestamp().div_euclid(bucket_secs) * bucket_secs;
    let d = &r.destination;
    let p = &r.process;
    tx.prepare_cached(
        "INSERT INTO flows (bucket, flow_id, host, class, verdict, direction, protocol, src_ip, src_port, dst_ip,
             dst_port, dst_bin, country, subdivision, asn, as_org, cloud_provider, cloud_region, site, internal, pid,
             comm, uid, cgroup, bytes, packets, first_seen, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22,
             ?23, ?24, ?25, ?26, ?27, ?28)
         ON CONFLICT (bucket, flow_id) DO UPDATE SET
             bytes = bytes + excluded.bytes, packets = packets + excluded.packets, last_seen = excluded.last_seen,
             class = excluded.class, verdict = excluded.verdict",
    )?
    .execute(params![
        bucket,
        id,
        &*r.host,
        r.class.as_deref(),
        text(&r.verdict),
        text(&r.direction),
        r.protocol.name(),
        r.source.ip.to_string(),
        r.source.port,
        d.ip.to_string(),
        d.port,
        &ip_bin(d.ip)[..],
        d.place.country.as_deref(),
        d.place.subdivision.as_deref(),
        d.place.asn,
        d.place.as_org.as_deref(),
        d.place.cloud_provider.map(|c| c.name()),
        d.place.cloud_region.as_deref(),
        d.place.site.as_deref(),
        d.place.internal,
        p.pid,
        p.comm.as_deref(),
        p.uid,
        p.cgroup.as_deref(),
        bytes as i64,
        packets as i64,
        text(&r.first_seen),
        text(&r.last_seen),
    ])?;
    Ok(1)
}

fn write_alert(tx: &Transaction<'_>, a: &Alert) -> rusqlite::Result<u64> {
    let d = &a.destination;
    let p = &a.process;
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO alerts (id, time, time_unix, host, class, severity, reason, direction, protocol,
                 pid, comm, uid, cgroup, dst_ip, dst_port, country, subdivision, asn, as_org, cloud_provider,
                 cloud_region, site, bytes, packets, flows, first_seen, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21,
                 ?22, ?23, ?24, 1, ?25, ?26)",
        )?
        .execute(params![
            a.id,
            text(&a.time),
            a.time.0.timestamp(),
            &*a.host,
            &*a.class,
            a.severity.name(),
            a.reason,
            text(&a.direction),
            a.protocol.name(),
            p.pid,
            p.comm.as_deref(),
            p.uid,
            p.cgroup.as_deref(),
            d.ip.to_string(),
            d.port,
            d.place.country.as_deref(),
            d.place.subdivision.as_deref(),
            d.place.asn,
            d.place.as_org.as_deref(),
            d.place.cloud_provider.map(|c| c.name()),
            d.place.cloud_region.as_deref(),
            d.place.site.as_deref(),
            a.bytes as i64,
            a.packets as i64,
            text(&a.first_seen),
            text(&a.last_seen),
        ])?;
    Ok(n as u64)
}

fn write_update(tx: &Transaction<'_>, u: &AlertUpdate) -> rusqlite::Result<u64> {
    let last_seen = serde_json::to_value(u.last_seen).ok().and_then(|v| v.as_str().map(str::to_owned));
    let n = tx
        .prepare_cached(
            "UPDATE alerts SET bytes = ?2, packets = ?3, flows = ?4, last_seen = ?5 WHERE id = ?1",
        )?
        .execute(params![u.id, u.bytes as i64, u.packets as i64, u.flows as i64, last_seen])?;
    Ok(n as u64)
}

/// A value's JSON string form ("outbound", "2026-11-25T10:00:00.000Z").
fn text(v: &impl serde::Serialize) -> Option<String> {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned))
}

/// Deletes flow summaries and alerts older than the retention.
fn prune(conn: &Connection, retention: Duration) -> rusqlite::Result<u64> {
    let cutoff = chrono::Utc::now().timestamp() - retention.as_secs() as i64;
    let flows = conn.execute("DELETE FROM flows WHERE bucket < ?1", [cutoff])?;
    let alerts = conn.execute("DELETE FROM alerts WHERE time_unix < ?1", [cutoff])?;
    Ok((flows + alerts) as u64)
}
