//! The durable outbox every alert is written to before any delivery. An alert leaves it for a
//! sink only when that sink accepted it (or refused it for good); the agent killed and started
//! again delivers what was pending. SQLite in WAL mode with synchronous=FULL, so a written alert
//! survives power loss. Bounded: when full, the oldest alert is dropped, counted and logged.

use std::{
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};
use tracing::warn;

use crate::record::Alert;

/// One alert awaiting delivery to one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: i64,
    pub id: String,
    /// The alert, read back from its stored JSON (an error if that no longer reads as one).
    pub alert: Result<Alert, String>,
}

pub struct Outbox {
    path: PathBuf,
    conn: Mutex<Connection>,
    max: u64,
    /// Alerts dropped because the outbox was full.
    pub dropped_full: AtomicU64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pending (
    sink TEXT NOT NULL,
    seq INTEGER NOT NULL REFERENCES alerts(seq) ON DELETE CASCADE,
    PRIMARY KEY (sink, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    reason TEXT NOT NULL,
    failing_since_ms INTEGER,
    given_up_ms INTEGER NOT NULL
);
";

/// An alert a sink gave up on: refused for good, or failing for longer than its `max_age`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    pub sink: String,
    pub id: String,
    pub reason: String,
    /// RFC 3339: the first failed attempt (None for a refusal on the first attempt).
    pub failing_since: Option<String>,
    pub given_up: String,
    /// The alert as it was stored.
    pub alert: serde_json::Value,
}

/// Outboxes written before dead letters existed lack the column that times a failing delivery.
fn add_failing_since(conn: &Connection) -> rusqlite::Result<()> {
    let has: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('pending') WHERE name = 'failing_since_ms'")?
        .exists([])?;
    if !has {
        conn.execute_batch("ALTER TABLE pending ADD COLUMN failing_since_ms INTEGER")?;
    }
    Ok(())
}

impl Outbox {
    /// Opens (or creates) `outbox.sqlite` in `dir`.
    pub fn open(dir: &Path, max: u64) -> anyhow::Result<Outbox> {
        let path = dir.join("outbox.sqlite");
        let conn = Connection::open(&path)
            .with_context(|| format!("opening the alert outbox {}", path.display()))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .and_then(|_| conn.execute_batch(SCHEMA))
            .and_then(|_| add_failing_since(&conn))
            .with_context(|| format!("preparing the alert outbox {}", path.display()))?;
        Ok(Outbox { path, conn: Mutex::new(conn), max: max.max(1), dropped_full: AtomicU64::new(0) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent: keep going.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores an alert for `sinks` (durably, before returning). When the outbox holds
    /// `outbox_max` alerts, the oldest are dropped first; their ids are returned. The agent
    /// writes through [`Outbox::push_batch`].
    #[cfg(test)]
    pub fn push(&self, alert: &Alert, sinks: &[String]) -> rusqlite::Result<Vec<String>> {
        self.push_batch(&[(alert, sinks)])
    }

    /// Stores several alerts, each for its sinks, in one transaction (one fsync).
    pub fn push_batch(&self, alerts: &[(&Alert, &[String])]) -> rusqlite::Result<Vec<String>> {
        let bodies = alerts
            .iter()
            .map(|(a, sinks)| {
                let body = serde_json::to_string(a)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
                Ok((a.id.as_str(), body, *sinks))
            })
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let raw: Vec<(&str, &str, &[String])> =
            bodies.iter().map(|(id, b, s)| (*id, b.as_str(), *s)).collect();
        self.push_raw_batch(&raw)
    }

    /// Stores an alert's JSON as it is.
    #[cfg(test)]
    fn push_raw(&self, id: &str, body: &str, sinks: &[String]) -> rusqlite::Result<Vec<String>> {
        self.push_raw_batch(&[(id, body, sinks)])
    }

    fn push_raw_batch(&self, alerts: &[(&str, &str, &[String])]) -> rusqlite::Result<Vec<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut dropped = Vec::new();
        for (id, body, sinks) in alerts {
            if !sinks.is_empty() {
                dropped.extend(self.insert(&tx, id, body, sinks)?);
            }
        }
        tx.commit()?;
        if !dropped.is_empty() {
            self.dropped_full.fetch_add(dropped.len() as u64, Ordering::Relaxed);
            warn!(
                dropped = dropped.len(),
                ids = %dropped.join(","),
                outbox_max = self.max,
                "alert outbox full: dropped the oldest undelivered alerts (raise alerts.outbox_max, or fix the sinks)"
            );
        }
        Ok(dropped)
    }

    /// One alert into the transaction, making room first; the ids of alerts dropped for it.
    fn insert(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: &str,
        body: &str,
        sinks: &[String],
    ) -> rusqlite::Result<Vec<String>> {
        let held = tx.query_row("SELECT COUNT(*) FROM alerts", [], |r| r.get::<_, i64>(0))? as u64;
        let mut dropped = Vec::new();
        if held >= self.max {
            let excess = held + 1 - self.max;
            let mut stmt = tx.prepare("SELECT seq, id FROM alerts ORDER BY seq LIMIT ?1")?;
            let oldest: Vec<(i64, String)> =
                stmt.query_map([excess as i64], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
            drop(stmt);
            for (seq, old) in oldest {
                tx.execute("DELETE FROM alerts WHERE seq = ?1", [seq])?;
                dropped.push(old);
            }
        }
        tx.execute("INSERT INTO alerts (id, body) VALUES (?1, ?2)", params![id, body])?;
        let seq = tx.last_insert_rowid();
        for sink in sinks {
            tx.execute("INSERT INTO pending (sink, seq) VALUES (?1, ?2)", params![sink, seq])?;
        }
        Ok(dropped)
    }

    /// The oldest alert `sink` has not taken yet.
    pub fn next(&self, sink: &str) -> rusqlite::Result<Option<Pending>> {
        self.conn()
            .query_row(
                "SELECT a.seq, a.id, a.body FROM pending p JOIN alerts a ON a.seq = p.seq \
                 WHERE p.sink = ?1 ORDER BY p.seq LIMIT 1",
                [sink],
                |r| {
                    let body: String = r.get(2)?;
                    let alert = serde_json::from_str(&body).map_err(|e| e.to_string());
                    Ok(Pending { seq: r.get(0)?, id: r.get(1)?, alert })
                },
            )
            .optional()
    }

    /// `sink` is done with alert `seq` (delivered, or refused for good). The alert leaves the
    /// outbox when no sink still needs it.
    pub fn done(&self, sink: &str, seq: i64) -> rusqlite::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        leave(&tx, sink, seq)?;
        tx.commit()
    }

    /// When the delivery of `seq` to `sink` first failed, in Unix milliseconds (`now_ms` when
    /// this is its first failure).
    pub fn failing_since(&self, sink: &str, seq: i64, now_ms: i64) -> rusqlite::Result<i64> {
        let conn = self.conn();
        conn.execute(
            "UPDATE pending SET failing_since_ms = COALESCE(failing_since_ms, ?3) WHERE sink = ?1 AND seq = ?2",
            params![sink, seq, now_ms],
        )?;
        conn.query_row(
            "SELECT COALESCE(failing_since_ms, ?3) FROM pending WHERE sink = ?1 AND seq = ?2",
            params![sink, seq, now_ms],
            |r| r.get(0),
        )
        .optional()
        .map(|v| v.unwrap_or(now_ms))
    }

    /// `sink` gives up on alert `seq`: it moves to the dead-letter table, and leaves the outbox
    /// when no sink still needs it.
    pub fn give_up(&self, sink: &str, seq: i64, reason: &str) -> rusqlite::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO dead_letters (sink, id, body, reason, failing_since_ms, given_up_ms)
             SELECT p.sink, a.id, a.body, ?3, p.failing_since_ms, ?4
             FROM pending p JOIN alerts a ON a.seq = p.seq WHERE p.sink = ?1 AND p.seq = ?2",
            params![sink, seq, reason, chrono::Utc::now().timestamp_millis()],
        )?;
        leave(&tx, sink, seq)?;
        // Kept up to `outbox_max` too: the oldest go first (each was counted and logged when
        // given up on).
        let old = tx.execute(
            "DELETE FROM dead_letters WHERE seq <= (SELECT MAX(seq) FROM dead_letters) - ?1",
            [self.max as i64],
        )?;
        tx.commit()?;
        if old > 0 {
            warn!(
                dropped = old,
                outbox_max = self.max,
                "dead-letter table full: dropped the oldest undelivered alerts"
            );
        }
        Ok(())
    }

    /// Every alert given up on, newest first (at most `limit`).
    pub fn dead_letters(&self, limit: usize) -> rusqlite::Result<Vec<DeadLetter>> {
        query_dead_letters(&self.conn(), limit)
    }

    /// The dead letters of the outbox in state directory `dir`, read-only (none when there is
    /// no outbox).
    pub fn dead_letters_in(dir: &Path, limit: usize) -> rusqlite::Result<Vec<DeadLetter>> {
        let path = dir.join("outbox.sqlite");
        if !path.exists() {
            return Ok(Vec::new());
        }
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let has: bool = conn.prepare("SELECT 1 FROM sqlite_master WHERE name = 'dead_letters'")?.exists([])?;
        if !has {
            return Ok(Vec::new());
        }
        query_dead_letters(&conn, limit)
    }
}

/// `sink` is done with alert `seq`; the alert leaves when no sink still needs it.
fn leave(tx: &rusqlite::Transaction<'_>, sink: &str, seq: i64) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM pending WHERE sink = ?1 AND seq = ?2", params![sink, seq])?;
    tx.execute(
        "DELETE FROM alerts WHERE seq = ?1 AND NOT EXISTS (SELECT 1 FROM pending WHERE seq = ?1)",
        [seq],
    )?;
    Ok(())
}

fn query_dead_letters(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<DeadLetter>> {
    {
        let mut stmt = conn.prepare(&format!(
            "SELECT sink, id, reason, failing_since_ms, given_up_ms, body FROM dead_letters
             ORDER BY seq DESC LIMIT {limit}"
        ))?;
        let time =
            |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_default();
        stmt.query_map([], |r| {
            let body: String = r.get(5)?;
            Ok(DeadLetter {
                sink: r.get(0)?,
                id: r.get(1)?,
                reason: r.get(2)?,
                failing_since: r.get::<_, Option<i64>>(3)?.map(time),
                given_up: time(r.get(4)?),
                alert: serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
            })
        })?
        .collect()
    }
}

impl Outbox {
    /// Every sink that has alerts waiting.
    pub fn pending_sinks(&self) -> rusqlite::Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT DISTINCT sink FROM pending")?;
        stmt.query_map([], |r| r.get(0))?.collect()
    }

    /// Moves `old`'s pending alerts to `new` (a sink that was renamed).
    pub fn rename_sink(&self, old: &str, new: &str) -> rusqlite::Result<()> {
        self.conn().execute("UPDATE OR REPLACE pending SET sink = ?2 WHERE sink = ?1", params![old, new])?;
        Ok(())
    }

    /// Alerts waiting for `sink`.
    pub fn backlog(&self, sink: &str) -> rusqlite::Result<u64> {
        self.conn()
            .query_row("SELECT COUNT(*) FROM pending WHERE sink = ?1", [sink], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
    }

    /// Alerts held in all.
    pub fn len(&self) -> rusqlite::Result<u64> {
        self.conn().query_row("SELECT COUNT(*) FROM alerts", [], |r| r.get::<_, i64>(0)).map(|n| n as u64)
    }

    pub fn is_empty(&self) -> rusqlite::Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// Drops pending deliveries of sinks no longer configured (renamed or removed), and
    /// alerts no sink needs any more. Returns (sink, deliveries dropped) for each such sink.
    pub fn forget_other_sinks(&self, configured: &[String]) -> rusqlite::Result<Vec<(String, u64)>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut stmt = tx.prepare("SELECT sink, COUNT(*) FROM pending GROUP BY sink")?;
        let all: Vec<(String, u64)> =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?.collect::<Result<_, _>>()?;
        drop(stmt);
        let gone: Vec<(String, u64)> = all.into_iter().filter(|(s, _)| !configured.contains(s)).collect();
        for (sink, _) in &gone {
            tx.execute("DELETE FROM pending WHERE sink = ?1", [sink])?;
        }
        tx.execute(
            "DELETE FROM alerts WHERE NOT EXISTS (SELECT 1 FROM pending WHERE pending.seq = alerts.seq)",
            [],
        )?;
        tx.commit()?;
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sinks(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn alerts_leave_only_when_every_sink_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path(), 100).unwrap();
        o.push_raw("a1", "{\"id\":\"a1\"}", &sinks(&["syslog", "webhook"])).unwrap();
        o.push_raw("a2", "{\"id\":\"a2\"}", &sinks(&["webhook"])).unwrap();
        assert_eq!(o.next("syslog").unwrap().map(|p| p.id), Some("a1".into()));
        assert_eq!((o.backlog("syslog").unwrap(), o.backlog("webhook").unwrap()), (1, 2));
        let a1 = o.next("webhook").unwrap().unwrap();
        o.done("webhook", a1.seq).unwrap();
        assert_eq!(o.next("webhook").unwrap().map(|p| p.id), Some("a2".into()), "in order");
        assert_eq!(o.len().unwrap(), 2, "a1 still waits for syslog");
        o.done("syslog", a1.seq).unwrap();
        assert_eq!(o.len().unwrap(), 1);
        assert_eq!(o.next("syslog").unwrap(), None);
    }

    #[test]
    fn pending_alerts_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = Outbox::open(dir.path(), 100).unwrap();
            o.push_raw("a1", "body", &sinks(&["webhook"])).unwrap();
        }
        let o = Outbox::open(dir.path(), 100).unwrap();
        let p = o.next("webhook").unwrap().unwrap();
        assert_eq!(p.id, "a1");
        assert!(
            p.alert.is_err(),
            "\"body\" is no alert: delivered as a permanent failure, not retried forever"
        );
    }

    #[test]
    fn full_outbox_drops_the_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path(), 3).unwrap();
        for i in 0..3 {
            assert!(o.push_raw(&format!("a{i}"), "b", &sinks(&["w"])).unwrap().is_empty());
        }
        assert_eq!(o.push_raw("a3", "b", &sinks(&["w"])).unwrap(), vec!["a0".to_string()]);
        assert_eq!(o.push_raw("a4", "b", &sinks(&["w"])).unwrap(), vec!["a1".to_string()]);
        assert_eq!(o.dropped_full.load(Ordering::Relaxed), 2);
        assert_eq!((o.len().unwrap(), o.backlog("w").unwrap()), (3, 3));
        assert_eq!(o.next("w").unwrap().map(|p| p.id), Some("a2".into()));
    }

    #[test]
    fn a_batch_is_one_transaction_and_keeps_each_alerts_sinks() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path(), 10).unwrap();
        let alert = |id: &str| -> Alert {
            let mut a: Alert = serde_json::from_value(serde_json::json!({
                "type": "alert", "id": "x", "time": "2026-11-25T10:00:00.120Z", "host": "h1", "class": "c",
                "severity": "high", "bytes": 1, "packets": 1, "direction": "outbound", "protocol": "tcp",
                "reason": "r", "process": {"pid": 1, "tid": 1, "comm": "a", "uid": 0, "cgroup": "/x", "cgroup_id": 8},
                "destination": {"ip": "192.0.2.1", "port": 443, "internal": false},
                "first_seen": "2026-11-25T10:00:00.003Z", "last_seen": "2026-11-25T10:00:00.110Z"
            }))
            .unwrap();
            a.id = id.into();
            a
        };
        let (a1, a2) = (alert("a1"), alert("a2"));
        let (both, one) = (sinks(&["s", "w"]), sinks(&["w"]));
        o.push_batch(&[(&a1, &both), (&a2, &one)]).unwrap();
        assert_eq!((o.backlog("s").unwrap(), o.backlog("w").unwrap()), (1, 2));
        let p = o.next("w").unwrap().unwrap();
        assert_eq!(p.alert.unwrap(), a1, "read back as the alert that was written");
    }

    #[test]
    fn dead_letters_are_kept_up_to_the_outbox_bound() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path(), 2).unwrap();
        for i in 0..4 {
            o.push_raw(&format!("a{i}"), "{}", &sinks(&["w"])).unwrap();
            let p = o.next("w").unwrap().unwrap();
            o.give_up("w", p.seq, "refused").unwrap();
        }
        let ids: Vec<String> = o.dead_letters(10).unwrap().into_iter().map(|d| d.id).collect();
        assert_eq!(ids, ["a3", "a2"], "the newest, newest first");
    }

    #[test]
    fn deliveries_of_removed_sinks_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path(), 10).unwrap();
        o.push_raw("a1", "b", &sinks(&["old", "kept"])).unwrap();
        o.push_raw("a2", "b", &sinks(&["old"])).unwrap();
        assert_eq!(o.forget_other_sinks(&sinks(&["kept"])).unwrap(), vec![("old".to_string(), 2)]);
        assert_eq!((o.len().unwrap(), o.backlog("kept").unwrap()), (1, 1));
    }
}
