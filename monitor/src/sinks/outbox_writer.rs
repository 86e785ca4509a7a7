//! The outbox writer: alerts into the outbox on a thread of their own, in batches.

use std::sync::Arc;

use tokio::sync::Notify;
use tracing::error;

use super::Outbox;
use crate::record::Alert;

/// An alert on its way into the outbox: the sinks it is for, and how to wake them.
type Queued = (Alert, Vec<String>, Vec<Arc<Notify>>);

/// Writes alerts into the outbox on a thread of its own, in batches (one transaction, one
/// fsync, for all the alerts queued meanwhile): the agent's loop never waits for the disk.
pub(super) struct OutboxWriter {
    tx: Option<std::sync::mpsc::Sender<Queued>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Alerts written per transaction at most.
const OUTBOX_BATCH: usize = 1000;

impl OutboxWriter {
    pub(super) fn start(outbox: Arc<Outbox>) -> anyhow::Result<OutboxWriter> {
        let (tx, rx) = std::sync::mpsc::channel::<Queued>();
        let thread = std::thread::Builder::new().name("outbox-writer".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while batch.len() < OUTBOX_BATCH
                    && let Ok(more) = rx.try_recv()
                {
                    batch.push(more);
                }
                let rows: Vec<(&Alert, &[String])> = batch.iter().map(|(a, n, _)| (a, n.as_slice())).collect();
                match outbox.push_batch(&rows) {
                    Ok(_) => batch.iter().flat_map(|(_, _, w)| w).for_each(|w| w.notify_one()),
                    Err(e) => {
                        for (a, _, _) in &batch {
                            error!(
                                id = %a.id, error = %e, file = %outbox.path().display(),
                                "cannot write the alert to the outbox: it is printed but will not be delivered to syslog/webhook sinks"
                            );
                        }
                    }
                }
            }
        })?;
        Ok(OutboxWriter { tx: Some(tx), thread: Some(thread) })
    }

    pub(super) fn queue(&self, alert: Alert, sinks: Vec<String>, wakes: Vec<Arc<Notify>>) {
        if let Some(tx) = &self.tx {
            // Fails only when the thread died; the alert is then printed but not delivered.
            if tx.send((alert, sinks, wakes)).is_err() {
                error!(
                    "the outbox writer stopped: alerts are printed but not delivered to syslog/webhook sinks"
                );
            }
        }
    }

    /// Writes what is queued and stops the thread.
    pub(super) fn close(mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
