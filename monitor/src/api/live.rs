//! Live totals for flow questions. The store holds an active flow's bytes as of its last report
//! (at least every `agent.flush_interval`), so a question asked a few seconds into a transfer
//! would see its first packet only. Before answering, the API asks the agent's loop for a read:
//! its next sweep of the kernel flow map reports every flow whose counts changed, and the
//! question waits until the store has committed those reports: the answer then holds every byte
//! the kernel had counted at that sweep. Questions share reads: one serves every question asked
//! within a sweep interval of it, so fifty dashboards cost at most one flush per interval.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::store::StoreCounters;

/// What one read of the kernel gave: when it was made, and how many records the store had been
/// handed once its reports were delivered.
#[derive(Debug, Clone, Copy)]
pub struct KernelRead {
    pub at: DateTime<Utc>,
    pub queued: u64,
}

/// A question's request for a read, answered by the agent's loop.
pub type ReadRequest = oneshot::Sender<KernelRead>;

/// The API's side: asks for a read and waits for the store. Under a steady flow of questions
/// none waits: a question takes the latest read the store has committed when it is younger
/// than two sweep intervals, and a read for the next questions is asked for in the background
/// once that one is half a sweep old.
#[derive(Clone)]
pub struct LiveTotals {
    requests: mpsc::Sender<ReadRequest>,
    store: Arc<StoreCounters>,
    wait: Duration,
    /// A read serves questions this long (two sweeps: the next read comes with a sweep).
    fresh_for: Duration,
    /// Once the latest read is this old, the next is asked for in the background.
    refresh_after: Duration,
    /// The latest read whose reports the store has committed.
    last: Arc<std::sync::Mutex<Option<DateTime<Utc>>>>,
    refreshing: Arc<std::sync::atomic::AtomicBool>,
}

/// Longest a question waits for the kernel read and the store's commit before it is answered
/// from the store as it is (and says so).
const WAIT: Duration = Duration::from_secs(5);

impl LiveTotals {
    /// The handle and the receiving end for the agent's loop, whose sweeps (every `sweep`)
    /// make the reads: a read serves questions for two sweeps, and the next is asked for once it
    /// is half a sweep old, so under a steady flow of questions none waits.
    pub fn new(store: Arc<StoreCounters>, sweep: Duration) -> (LiveTotals, mpsc::Receiver<ReadRequest>) {
        let (requests, rx) = mpsc::channel(1024);
        let live = LiveTotals {
            requests,
            store,
            wait: WAIT,
            fresh_for: sweep * 2,
            refresh_after: sweep / 2,
            last: Arc::default(),
            refreshing: Arc::default(),
        };
        (live, rx)
    }

    /// Time of a kernel read whose totals the store now holds, at most two sweeps old; None
    /// when the agent's loop did not answer (it is stopping) or the store did not commit in
    /// time.
    pub async fn read(&self) -> Option<DateTime<Utc>> {
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = last
            && let Ok(age) = (Utc::now() - at).to_std()
            && age < self.fresh_for
        {
            if age >= self.refresh_after && !self.refreshing.swap(true, std::sync::atomic::Ordering::AcqRel) {
                let me = self.clone();
                tokio::spawn(async move {
                    me.read_now().await;
                    me.refreshing.store(false, std::sync::atomic::Ordering::Release);
                });
            }
            return Some(at);
        }
        self.read_now().await
    }

    /// Asks the agent's loop for a read and waits until the store has its reports.
    async fn read_now(&self) -> Option<DateTime<Utc>> {
        let (tx, rx) = oneshot::channel();
        self.requests.try_send(tx).ok()?;
        let read = tokio::time::timeout(self.wait, rx).await.ok()?.ok()?;
        if !self.store.wait_settled(read.queued, self.wait).await {
            return None;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some(last.map_or(read.at, |l| l.max(read.at)));
        Some(read.at)
    }
}

/// The agent's side: collects the questions waiting, and tells whether a new read is due.
pub struct ReadQueue {
    rx: mpsc::Receiver<ReadRequest>,
    waiting: Vec<ReadRequest>,
    last: Option<(tokio::time::Instant, KernelRead)>,
    /// A read at most this old serves a question.
    fresh_for: Duration,
}

impl ReadQueue {
    pub fn new(rx: mpsc::Receiver<ReadRequest>, fresh_for: Duration) -> ReadQueue {
        ReadQueue { rx, waiting: Vec::new(), last: None, fresh_for }
    }

    /// Waits for a question; true when a new read is due (the last one is too old), false when
    /// the questions waiting were answered with the last one.
    pub async fn next(&mut self) -> bool {
        let Some(first) = self.rx.recv().await else { return std::future::pending().await };
        self.waiting.push(first);
        while let Ok(more) = self.rx.try_recv() {
            self.waiting.push(more);
        }
        match self.last {
            Some((made, read)) if made.elapsed() < self.fresh_for => {
                self.answer(read);
                false
            }
            _ => true,
        }
    }

    /// Answers the questions waiting with a read just made (`at`: when it started; `queued`:
    /// the store's count of records handed to it once the read's reports were delivered).
    pub fn made(&mut self, at: DateTime<Utc>, queued: u64) {
        let read = KernelRead { at, queued };
        self.last = Some((tokio::time::Instant::now(), read));
        self.answer(read);
    }

    fn answer(&mut self, read: KernelRead) {
        for w in self.waiting.drain(..) {
            let _ = w.send(read);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[tokio::test]
    async fn a_read_serves_the_questions_of_its_interval_and_waits_for_the_store() {
        let store = Arc::new(StoreCounters::default());
        let (live, rx) = LiveTotals::new(store.clone(), Duration::from_secs(30));
        let mut queue = ReadQueue::new(rx, Duration::from_secs(60));
        let agent = tokio::spawn(async move {
            assert!(queue.next().await, "the first question needs a read");
            store.queued.store(7, Ordering::Release);
            queue.made(Utc::now(), 7);
            // The writer commits a little later.
            tokio::time::sleep(Duration::from_millis(50)).await;
            store.settled.store(7, Ordering::Release);
        });
        let first = live.read().await.expect("a read");
        agent.await.unwrap();
        let second = live.read().await.expect("the same read");
        assert_eq!(first, second, "the second question within the interval shares the read");
    }

    #[tokio::test]
    async fn no_answer_when_the_store_does_not_commit() {
        let store = Arc::new(StoreCounters::default());
        let (mut live, rx) = LiveTotals::new(store, Duration::from_secs(1));
        live.wait = Duration::from_millis(100);
        let mut queue = ReadQueue::new(rx, Duration::from_secs(1));
        tokio::spawn(async move {
            if queue.next().await {
                queue.made(Utc::now(), 1); // never settled
            }
            std::future::pending::<()>().await
        });
        assert_eq!(live.read().await, None);
    }
}
