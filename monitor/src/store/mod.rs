//! The embedded store: flow summaries (one row per flow per time bucket, with class, verdict,
//! process and every destination field) and alerts, in SQLite under the state directory. Writes
//! are batched on a thread of their own, so a slow disk never stalls the kernel readers; when
//! its queue is full, records are dropped and counted. Old rows are pruned in the background.

pub mod configs;
pub mod export;
mod groups;
mod migrations;
pub mod query;
pub mod runs;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
pub use export::ExportReader;
pub use groups::bytes_by_class_and_verdict;
use rusqlite::{Connection, OpenFlags};
pub use writer::{StoreWriter, pruned_before};

use crate::{record::KernelMark, status::Status};

/// File name of the store in the state directory.
pub const FILE: &str = "store.sqlite";

/// Counters the agent reports about the store.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Records dropped because the writer's queue was full (the disk could not keep up).
    pub dropped: AtomicU64,
    /// Rows written (inserted or updated).
    pub rows_written: AtomicU64,
    /// Transactions committed: what a reader has seen changes only when this does.
    pub commits: AtomicU64,
    pub write_errors: AtomicU64,
    pub rows_pruned: AtomicU64,
    /// Records handed to the writer's queue, and those of them it has since committed (or
    /// failed to write): once `settled` reaches a value `queued` had, everything queued before
    /// then is in the store (see [`StoreCounters::wait_settled`]).
    pub queued: AtomicU64,
    pub settled: AtomicU64,
    /// Unix ms until which every record the agent made has been handed to the writer (see
    /// [`StoreWriter::handed`]; 0: not yet).
    pub handed_ms: std::sync::atomic::AtomicI64,
    /// Callers of [`StoreCounters::wait_settled`] waiting now: the writer does not linger.
    pub waiting: AtomicU64,
    /// The latest failure to open or write the store (cleared by the next good write).
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl StoreCounters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Waits until every record queued before `queued` was read is settled, at most `wait`.
    /// False when the writer did not get there in time.
    pub async fn wait_settled(&self, queued: u64, wait: Duration) -> bool {
        if self.settled.load(Ordering::Acquire) >= queued {
            return true;
        }
        // Counted while waiting, also when the caller gives up (the future is dropped).
        struct Waiting<'a>(&'a AtomicU64);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        let deadline = tokio::time::Instant::now() + wait;
        while self.settled.load(Ordering::Acquire) < queued {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// Brings the store's part of the status document up to date.
    pub fn fill_status(&self, s: &mut Status) {
        s.losses.store_dropped = Self::get(&self.dropped);
        s.losses.store_write_errors = Self::get(&self.write_errors);
        s.databases.store_error = self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
    }
}

/// Settings of the store.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub bucket: Duration,
    pub retention: Duration,
    /// How often old rows are pruned.
    pub prune_every: Duration,
}

/// Opens (creating and migrating) the store for writing.
pub fn open_for_writing(dir: &Path) -> anyhow::Result<Connection> {
    let path = dir.join(FILE);
    let mut conn =
        Connection::open(&path).with_context(|| format!("opening the store {}", path.display()))?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")
        .with_context(|| format!("configuring the store {}", path.display()))?;
    migrations::migrate(&mut conn).with_context(|| format!("migrating the store {}", path.display()))?;
    Ok(conn)
}

/// An empty store in memory with the current schema (for checks of the queries).
pub fn open_in_memory() -> anyhow::Result<Connection> {
    let mut conn = Connection::open_in_memory()?;
    migrations::migrate(&mut conn)?;
    Ok(conn)
}

/// Read-only access for queries (the API), any number at once alongside the writer.
#[derive(Clone)]
pub struct StoreReader {
    path: PathBuf,
    pub bucket: Duration,
    /// The writer's counters, when this process writes the store.
    writer: Option<Arc<StoreCounters>>,
}

impl StoreReader {
    pub fn new(dir: &Path, bucket: Duration) -> StoreReader {
        StoreReader { path: dir.join(FILE), bucket, writer: None }
    }

    /// The store's version: it changes whenever the writer commits, so two answers read at
    /// the same version are the same. None when no writer of this process tells (the store
    /// may change under this reader at any time).
    pub fn version(&self) -> Option<u64> {
        self.writer.as_ref().map(|c| c.commits.load(Ordering::Acquire))
    }

    pub fn connect(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(conn)
    }

    /// Size of the database and its write-ahead log, in bytes.
    pub fn size(&self) -> u64 {
        [self.path.clone(), self.path.with_extension("sqlite-wal")]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The store as the agent holds it: the writer and the reader.
pub struct Store {
    pub writer: StoreWriter,
    pub reader: StoreReader,
    pub counters: Arc<StoreCounters>,
}

/// Told, after each commit, the kernel marks of the flow records just stored (see
/// [`crate::record::KernelMark`]): the kernel's record of what was reported then follows what
/// the store holds, so after a crash the store receives exactly what it lacks.
pub trait CommittedMarks: Send {
    fn committed(&mut self, marks: &[KernelMark]) -> std::io::Result<()>;
}

impl Store {
    pub fn start(dir: &Path, settings: StoreSettings) -> anyhow::Result<Store> {
        Self::start_with_marks(dir, settings, None)
    }

    /// As [`Store::start`]; `marks` is told about every flow record once it is committed.
    pub fn start_with_marks(
        dir: &Path,
        settings: StoreSettings,
        marks: Option<Box<dyn CommittedMarks>>,
    ) -> anyhow::Result<Store> {
        let conn = open_for_writing(dir)?;
        let counters = Arc::new(StoreCounters::default());
        let reader = StoreReader { writer: Some(counters.clone()), ..StoreReader::new(dir, settings.bucket) };
        let writer = StoreWriter::start(conn, settings, counters.clone(), marks)?;
        Ok(Store { writer, reader, counters })
    }

    /// As [`Store::start_with_marks`], but a store that cannot be opened (disk full, read-only,
    /// corrupt) does not stop the agent: it runs without one, every record is counted as
    /// dropped from the store, and `status` shows the error. Alerts still reach the sinks.
    pub fn start_or_degrade(
        dir: &Path,
        settings: StoreSettings,
        marks: Option<Box<dyn CommittedMarks>>,
    ) -> Store {
        let reader = StoreReader::new(dir, settings.bucket);
        match Self::start_with_marks(dir, settings, marks) {
            Ok(store) => store,
            Err(e) => {
                let message = format!("{e:#}");
                tracing::error!(error = %message, "the store cannot be opened: running without it (records are counted as dropped from it; alerts still reach the sinks)");
                let counters = Arc::new(StoreCounters::default());
                *counters.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
                Store { writer: StoreWriter::unavailable(counters.clone()), reader, counters }
            }
        }
    }
}
