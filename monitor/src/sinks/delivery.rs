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
    /// Alerts given up on (refused for good, or failing for longer than `max_age`): kept in
    /// the outbox's dead-letter table.
    pub dead_lettered: u64,
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
    /// How long an alert may keep failing before it goes to the dead-letter table (the
    /// `max_age` key of a sink), so that it no longer blocks the ones behind it.
    pub max_age: Duration,
}

impl RetryPolicy {
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(300),
        max_age: Duration::from_secs(86400),
    };
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
                error!(sink = %name, id = %alert.id, %reason, "the receiver refused the alert; not retrying it (kept as undelivered)");
                if let Err(e) = outbox.give_up(&name, alert.seq, &reason) {
                    error!(sink = %name, id = %alert.id, error = %e, "cannot update the outbox");
                }
                let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                s.failed += 1;
                s.dead_lettered += 1;
                s.last_error = Some(reason);
            }
            Err(DeliveryError::Retry { reason, .. })
                if failing_too_long(&outbox, &name, alert.seq, retry.max_age) =>
            {
                let why = format!(
                    "failing for longer than max_age ({}): {reason}",
                    humantime::format_duration(retry.max_age)
                );
                error!(sink = %name, id = %alert.id, reason = %why, "giving up on the alert so that the ones behind it move (kept as undelivered)");
                if let Err(e) = outbox.give_up(&name, alert.seq, &why) {
                    error!(sink = %name, id = %alert.id, error = %e, "cannot update the outbox");
                }
                backoff.reset();
                let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                s.dead_lettered += 1;
                s.last_error = Some(why);
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

/// Whether the pending alert `seq` of `sink` has been failing for `max_age` or longer (its first
/// failure is recorded by this call).
fn failing_too_long(outbox: &Outbox, sink: &str, seq: i64, max_age: Duration) -> bool {
    let now = chrono::Utc::now().timestamp_millis();
    match outbox.failing_since(sink, seq, now) {
        Ok(since) => now - since >= max_age.as_millis() as i64,
        Err(e) => {
            error!(sink, error = %e, "cannot update the outbox");
            false
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
            max_age: Duration::MAX,
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

    /// Fails every alert whose id starts with "bad" (a reason that may pass); takes the rest.
    struct Picky(Arc<Mutex<Vec<String>>>);

    impl AlertSink for Picky {
        fn deliver<'a>(&'a mut self, alert: &'a crate::record::Alert) -> super::super::Delivery<'a> {
            Box::pin(async move {
                if alert.id.starts_with("bad") {
                    return Err(DeliveryError::Retry { reason: "503".into(), after: None });
                }
                self.0.lock().unwrap().push(alert.id.clone());
                Ok(())
            })
        }
    }

    fn alert(id: &str) -> crate::record::Alert {
        let mut a: crate::record::Alert = serde_json::from_value(serde_json::json!({
            "type": "alert", "id": "x", "time": "2026-11-25T10:00:00.120Z", "host": "h1", "class": "c",
            "severity": "high", "bytes": 1, "packets": 1, "direction": "outbound", "protocol": "tcp", "reason": "r",
            "process": {"pid": 1, "tid": 1, "comm": "a", "uid": 0, "cgroup": "/x", "cgroup_id": 8},
            "destination": {"ip": "192.0.2.1", "port": 443, "internal": false},
            "first_seen": "2026-11-25T10:00:00.003Z", "last_seen": "2026-11-25T10:00:00.110Z"
        }))
        .unwrap();
        a.id = id.into();
        a
    }

    #[tokio::test]
    async fn an_alert_failing_past_max_age_goes_to_the_dead_letters_and_unblocks_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Arc::new(Outbox::open(dir.path(), 100).unwrap());
        let sinks = vec!["s".to_string()];
        outbox.push(&alert("bad-1"), &sinks).unwrap();
        outbox.push(&alert("good-2"), &sinks).unwrap();
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(Mutex::new(SinkStats::default()));
        let (stop, stop_rx) = watch::channel(false);
        let retry = RetryPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(20),
            max_age: Duration::from_millis(300),
        };
        let task = tokio::spawn(run(
            "s".into(),
            Box::new(Picky(delivered.clone())),
            retry,
            outbox.clone(),
            Arc::new(Notify::new()),
            stats.clone(),
            stop_rx,
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while delivered.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the good alert stayed blocked behind the bad one");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop.send(true);
        task.await.unwrap();
        assert_eq!(*delivered.lock().unwrap(), ["good-2"]);
        let s = stats.lock().unwrap().clone();
        assert_eq!((s.delivered, s.dead_lettered, s.failed), (1, 1, 0));
        assert!(s.retries >= 1);
        assert_eq!(outbox.backlog("s").unwrap(), 0);
        let dead = outbox.dead_letters(10).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].sink.as_str(), dead[0].id.as_str()), ("s", "bad-1"));
        assert!(dead[0].reason.contains("max_age") && dead[0].reason.contains("503"), "{}", dead[0].reason);
        assert!(dead[0].failing_since.is_some());
        assert_eq!(dead[0].alert["id"], "bad-1", "the alert itself is kept");
        // The API reads them from the state directory, read-only.
        assert_eq!(Outbox::dead_letters_in(dir.path(), 10).unwrap(), dead);
    }
}
