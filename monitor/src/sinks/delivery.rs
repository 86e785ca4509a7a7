//! The one delivery loop every alert sink shares: take the oldest pending alert from the
//! outbox, hand it to the sink's transport, and on failure retry with exponential backoff and
//! jitter (or the wait the receiver asked for); a permanent refusal is logged, counted and not
//! retried. Transports only say how one attempt went.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use rand::RngExt;
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

use super::{AlertSink, outbox::Outbox};

/// How one delivery attempt failed.
#[derive(Debug)]
pub enum DeliveryError {
    /// May pass: connection refused or reset, timeout, 5xx, 408, 429. `after` is the wait the
    /// receiver asked for (Retry-After).
    Retry { reason: String, after: Option<Duration> },
    /// Will not pass by retrying: the receiver refused the alert (4xx other than 408/429).
    Permanent(String),
}

/// What a sink has done, for logs and status.
#[derive(Debug, Default, Clone)]
pub struct SinkStats {
    pub delivered: u64,
    pub retries: u64,
    /// Alerts the receiver refused for good.
    pub failed: u64,
    pub last_error: Option<String>,
}

/// How a sink retries a delivery that failed for a reason that may pass (the `retry_initial`
/// and `retry_max` keys of a sink); the ClickHouse export backs off the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First wait after a failure; doubled after each further failure (with jitter).
    pub initial: Duration,
    /// Longest wait between two attempts.
    pub max: Duration,
}

impl RetryPolicy {
    pub const DEFAULT: RetryPolicy =
        RetryPolicy { initial: Duration::from_secs(1), max: Duration::from_secs(300) };
}

/// Exponential backoff with jitter: each wait is drawn from [d/2, d], d doubling from
/// `initial` up to `max`.
pub struct Backoff {
    retry: RetryPolicy,
    current: Duration,
}

impl Backoff {
    pub fn new(retry: RetryPolicy) -> Self {
        Backoff { retry, current: retry.initial }
    }

    pub fn next_wait(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.retry.max);
        let half = d / 2;
        half + Duration::from_nanos(
            rand::rng().random_range(0..=half.as_nanos().min(u64::MAX as u128) as u64),
        )
    }

    pub fn reset(&mut self) {
        self.current = self.retry.initial;
    }
}

/// Longest wait a Retry-After may impose (a receiver asking for more is waited on this long).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Delivers `name`'s pending alerts until `stop` turns true. Woken by `wake` when an alert is
/// added.
pub async fn run(
    name: String,
    mut sink: Box<dyn AlertSink>,
    retry: RetryPolicy,
    outbox: Arc<Outbox>,
    wake: Arc<Notify>,
    stats: Arc<Mutex<SinkStats>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(retry);
    let mut attempts_of_current: (i64, u32) = (0, 0);
    loop {
        if *stop.borrow() {
            return;
        }
        let pending = match outbox.next(&name) {
            Ok(p) => p,
            Err(e) => {
                error!(sink = %name, error = %e, file = %outbox.path().display(), "cannot read the alert outbox");
                None
            }
        };
        let Some(alert) = pending else {
            tokio::select! {
                _ = wake.notified() => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        if attempts_of_current.0 != alert.seq {
            attempts_of_current = (alert.seq, 0);
        }
        attempts_of_current.1 += 1;
        let outcome = match &alert.alert {
            Ok(a) => tokio::select! {
                r = sink.deliver(a) => r,
                _ = stop.changed() => return, // still pending: delivered after the next start
            },
            Err(e) => Err(DeliveryError::Permanent(format!("the stored alert cannot be read: {e}"))),
        };
        match outcome {
            Ok(()) => {
                backoff.reset();
                if let Err(e) = outbox.done(&name, alert.seq) {
                    error!(sink = %name, id = %alert.id, error = %e, "delivered, but cannot update the outbox: it may be delivered again");
                }
                let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                s.delivered += 1;
                if attempts_of_current.1 > 1 {
                    info!(sink = %name, id = %alert.id, attempts = attempts_of_current.1, "alert delivered after retries");
                }
            }
            Err(DeliveryError::Permanent(reason)) => {
                error!(sink = %name, id = %alert.id, %reason, "the receiver refused the alert; not retrying it");
                if let Err(e) = outbox.done(&name, alert.seq) {
                    error!(sink = %name, id = %alert.id, error = %e, "cannot update the outbox");
                }
                let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                s.failed += 1;
                s.last_error = Some(reason);
            }
            Err(DeliveryError::Retry { reason, after }) => {
                let wait = after.map(|a| a.min(MAX_RETRY_AFTER)).unwrap_or_else(|| backoff.next_wait());
                warn!(sink = %name, id = %alert.id, %reason, attempt = attempts_of_current.1, retry_in = ?wait, "alert delivery failed; will retry");
                {
                    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                    s.retries += 1;
                    s.last_error = Some(reason);
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_max() {
        let mut b = Backoff::new(RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(700),
        });
        let expect_max = [100, 200, 400, 700, 700];
        for max in expect_max {
            let w = b.next_wait();
            let max = Duration::from_millis(max);
            assert!(w >= max / 2 && w <= max, "{w:?} not in [{:?}, {max:?}]", max / 2);
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));
    }
}
