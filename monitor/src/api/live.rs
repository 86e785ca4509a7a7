//! Live totals for flow questions. The store holds an active flow's bytes as of its last report
//! (at least every `agent.flush_interval`), so a question asked a few seconds into a transfer
//! would see its first packet only. Before answering, the API asks the agent's loop to read the
//! kernel flow map and report every flow whose counts changed, and waits until the store has
//! committed those reports: the answer then holds every byte the kernel had counted at that
//! read. Questions share reads: one read serves every question asked within a sweep interval
//! of it, so fifty dashboards cost at most one extra read per interval.

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

/// The API's side: asks for a read and waits for the store.
#[derive(Clone)]
pub struct LiveTotals {
    requests: mpsc::Sender<ReadRequest>,
    store: Arc<StoreCounters>,
    wait: Duration,
}

/// Longest a question waits for the kernel read and the store's commit before it is answered
/// from the store as it is (and says so).
const WAIT: Duration = Duration::from_secs(5);

impl LiveTotals {
    /// The handle and the receiving end for the agent's loop.
    pub fn new(store: Arc<StoreCounters>) -> (LiveTotals, mpsc::Receiver<ReadRequest>) {
        let (requests, rx) = mpsc::channel(1024);
        (LiveTotals { requests, store, wait: WAIT }, rx)
    }

    /// Time of a kernel read whose totals the store now holds; None when the agent's loop did
    /// not answer (it is stopping) or the store did not commit in time.
    pub async fn read(&self) -> Option<DateTime<Utc>> {
        let (tx, rx) = oneshot::channel();
        self.requests.try_send(tx).ok()?;
        let read = tokio::time::timeout(self.wait, rx).await.ok()?.ok()?;
        self.store.wait_settled(read.queued, self.wait).await.then_some(read.at)
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
        let (live, rx) = LiveTotals::new(store.clone());
        let mut queue = ReadQueue::new(rx, Duration::from_secs(60));
        let agent = tokio::spawn(async move {
            let mut reads = 0;
            for _ in 0..2 {
                if queue.next().await {
                    reads += 1;
                    store.queued.store(7, Ordering::Release);
                    queue.made(Utc::now(), 7);
                    // The writer commits a little later.
                    let store = store.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        store.settled.store(7, Ordering::Release);
                    });
                }
            }
            reads
        });
        let first = live.read().await.expect("a read");
        let second = live.read().await.expect("the same read");
        assert_eq!(first, second, "the second question within the interval shares the read");
        assert_eq!(agent.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn no_answer_when_the_store_does_not_commit() {
        let store = Arc::new(StoreCounters::default());
        let (mut live, rx) = LiveTotals::new(store);
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
