//! The service manager's side of `run` (sd_notify(3)): readiness once the programs are attached
//! and counting, the watchdog fed at every sweep, and reloads and the stop announced. Without
//! `NOTIFY_SOCKET` (not started by systemd) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

pub struct ServiceManager {
    /// The watchdog's period when the unit has one (`WatchdogSec=`).
    watchdog: Option<Duration>,
}

impl ServiceManager {
    pub fn new() -> Self {
        let mut usec = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec));
        Self { watchdog }
    }

    /// The watchdog's period, when the unit set one: the agent must feed it more often.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Startup is over: the programs are attached, the pinned maps adopted or carried over.
    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// The agent's loop is alive (a sweep just ran).
    pub fn alive(&self) {
        if self.watchdog.is_some() {
            send(&[NotifyState::Watchdog]);
        }
    }

    pub fn reloading(&self) {
        send(&[NotifyState::Reloading]);
    }

    /// A reload is over, applied or refused: the agent runs on `status`.
    pub fn reloaded(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn stopping(&self) {
        send(&[NotifyState::Stopping]);
    }
}

/// Without `NOTIFY_SOCKET`, sd_notify sends nothing and reports no error.
fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "notifying the service manager (NOTIFY_SOCKET) failed");
    }
}
