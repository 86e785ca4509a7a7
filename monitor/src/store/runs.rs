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
    /// Records the store lost during the run (its queue full), geolocation lookups that failed.
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
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let now = now_ms();
        let ended = stopping.then_some(now);
        let r = conn.execute(
            "UPDATE agent_runs SET last_seen_ms = ?2, ended_ms = ?3, store_dropped = ?4, geolocation_errors = ?5 WHERE id = ?1",
            params![
                id,
                now,
                ended,
                c.store_dropped.load(Ordering::Relaxed) as i64,
                c.geolocation_errors.load(Ordering::Relaxed) as i64
            ],
        );
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
