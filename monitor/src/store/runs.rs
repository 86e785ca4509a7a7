//! The agent's own record of when it ran, for the coverage part of residency reports: one row
//! per agent start (how it found the kernel side, since when the programs counted), its latest
//! heartbeat, and when it stopped cleanly. A thread of its own writes the heartbeat every
//! [`BEAT`], on its own connection, so a busy store writer never delays it.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use rusqlite::{Connection, params};

/// How often the heartbeat is written. A report counts the agent as running up to its last
/// heartbeat (and, for a running agent, up to now).
pub const BEAT: Duration = Duration::from_secs(2);

/// A run whose last heartbeat is older than this (three beats) is not running any more.
pub const STALE_MS: i64 = 3 * BEAT.as_millis() as i64;

/// One agent run, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub id: i64,
    /// Unix milliseconds.
    pub started_ms: i64,
    pub last_seen_ms: i64,
    pub ended_ms: Option<i64>,
    /// `fresh` (nothing was counting before), `adopted` or `replaced` (the kernel counted
    /// while no agent ran; those counts were carried over).
    pub start_kind: String,
    pub attached_since_ms: i64,
    pub version: String,
    /// Records the store lost during the run (its queue full), geolocation lookups that failed,
    /// in all (`run_counters` holds them as they grew).
    pub store_dropped: i64,
    pub geolocation_errors: i64,
}

/// What the heartbeat thread writes besides the time.
#[derive(Default)]
pub struct RunCounters {
    pub store_dropped: AtomicU64,
    pub geolocation_errors: AtomicU64,
}

pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub counters: Arc<RunCounters>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Heartbeat {
    /// Records a new run in the store at `dir` and beats until [`Heartbeat::stop`].
    pub fn start(
        dir: &Path,
        start_kind: &str,
        attached_since_ms: i64,
        version: &str,
    ) -> anyhow::Result<Heartbeat> {
        let conn = super::open_for_writing(dir)?;
        let now = now_ms();
        conn.execute(
            "INSERT INTO agent_runs (started_ms, last_seen_ms, start_kind, attached_since_ms, version, store_dropped, geolocation_errors)
             VALUES (?1, ?1, ?2, ?3, ?4, 0, 0)",
            params![now, start_kind, attached_since_ms, version],
        )?;
        let id = conn.last_insert_rowid();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(RunCounters::default());
        let (s, c) = (stop.clone(), counters.clone());
        let thread =
            std::thread::Builder::new().name("heartbeat".into()).spawn(move || beat(conn, id, &s, &c))?;
        Ok(Heartbeat { stop, thread: Some(thread), counters })
    }

    /// Writes the last heartbeat and the clean stop.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn beat(conn: Connection, id: i64, stop: &AtomicBool, c: &RunCounters) {
    // The counters as last written to run_counters (a row only when they grew).
    let mut written = (0, 0);
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let now = now_ms();
        let ended = stopping.then_some(now);
        let counters = (
            c.store_dropped.load(Ordering::Relaxed) as i64,
            c.geolocation_errors.load(Ordering::Relaxed) as i64,
        );
        let r = conn
            .execute(
                "UPDATE agent_runs SET last_seen_ms = ?2, ended_ms = ?3, store_dropped = ?4, geolocation_errors = ?5 WHERE id = ?1",
                params![id, now, ended, counters.0, counters.1],
            )
            .and_then(|_| {
                if counters != written {
                    conn.execute(
                        "INSERT INTO run_counters (run_id, at_ms, store_dropped, geolocation_errors) VALUES (?1, ?2, ?3, ?4)",
                        params![id, now, counters.0, counters.1],
                    )?;
                    written = counters;
                }
                Ok(())
            });
        if let Err(e) = r {
            tracing::warn!(error = %e, "writing the agent's heartbeat to the store failed; retrying");
        }
        if stopping {
            return;
        }
        std::thread::park_timeout(BEAT);
    }
}

/// The runs that overlap [from_ms, until_ms], with the last one before it (whose end says
/// whether the period began with the agent running), in start order.
pub fn runs(conn: &Connection, from_ms: i64, until_ms: i64) -> rusqlite::Result<Vec<Run>> {
    let mut stmt = conn.prepare(
        "SELECT id, started_ms, last_seen_ms, ended_ms, start_kind, attached_since_ms, version, store_dropped, geolocation_errors
         FROM agent_runs
         WHERE id >= IFNULL((SELECT MAX(id) FROM agent_runs WHERE started_ms <= ?1), 0) AND started_ms <= ?2
         ORDER BY id",
    )?;
    let rows = stmt.query_map(params![from_ms, until_ms], |r| {
        Ok(Run {
            id: r.get(0)?,
            started_ms: r.get(1)?,
            last_seen_ms: r.get(2)?,
            ended_ms: r.get(3)?,
            start_kind: r.get(4)?,
            attached_since_ms: r.get(5)?,
            version: r.get(6)?,
            store_dropped: r.get(7)?,
            geolocation_errors: r.get(8)?,
        })
    })?;
    rows.collect()
}

/// While an agent runs (its heartbeat recent at `now_ms`): until when its store writer has
/// written every record made (Unix ms). None when no agent runs: then nothing more comes for
/// the past.
pub fn writer_settled(conn: &Connection, now_ms: i64) -> rusqlite::Result<Option<i64>> {
    let running: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM agent_runs WHERE ended_ms IS NULL AND last_seen_ms >= ?1)",
        [now_ms - STALE_MS],
        |r| r.get(0),
    )?;
    if !running {
        return Ok(None);
    }
    conn.query_row("SELECT settled_ms FROM writer_progress", [], |r| r.get(0))
}

/// How much a run's loss counters grew over (from_ms, until_ms]: (store dropped, geolocation
/// errors), each counted in the heartbeat that first recorded it.
pub fn counters_grown(
    conn: &Connection,
    run_id: i64,
    from_ms: i64,
    until_ms: i64,
) -> rusqlite::Result<(u64, u64)> {
    let at = |t: i64| -> rusqlite::Result<(i64, i64)> {
        let mut stmt = conn.prepare_cached(
            "SELECT store_dropped, geolocation_errors FROM run_counters
             WHERE run_id = ?1 AND at_ms <= ?2 ORDER BY at_ms DESC LIMIT 1",
        )?;
        let mut rows = stmt.query(params![run_id, t])?;
        Ok(match rows.next()? {
            Some(r) => (r.get(0)?, r.get(1)?),
            None => (0, 0),
        })
    };
    let (a, b) = (at(from_ms)?, at(until_ms)?);
    Ok(((b.0 - a.0).max(0) as u64, (b.1 - a.1).max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_dates_the_counters_as_they_grow() {
        let dir = tempfile::tempdir().unwrap();
        let before = now_ms();
        let h = Heartbeat::start(dir.path(), "fresh", before, "0.1.0").unwrap();
        h.counters.store_dropped.store(3, Ordering::Relaxed);
        h.counters.geolocation_errors.store(1, Ordering::Relaxed);
        h.stop();
        let conn = super::super::open_for_writing(dir.path()).unwrap();
        let run = runs(&conn, before, now_ms()).unwrap().pop().unwrap();
        assert_eq!((run.store_dropped, run.geolocation_errors), (3, 1));
        assert!(run.ended_ms.is_some());
        assert_eq!(counters_grown(&conn, run.id, before - 1, now_ms()).unwrap(), (3, 1));
        // Nothing grew before the run began.
        assert_eq!(counters_grown(&conn, run.id, 0, before - 1).unwrap(), (0, 0));
    }
}
