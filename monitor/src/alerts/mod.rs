//! Violations become alerts: one per (class, workload, remote address, remote port) per
//! cooldown window; for inbound flows (a classified server answering a client) the client's
//! ephemeral port is left out, so one client is one alert. Later traffic of the same key adds to the open alert's totals, reported
//! as `alert_update` records, instead of raising more alerts.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use monitor_common::FlowKey;
use sha2::{Digest, Sha256};

pub use crate::record::{Alert, AlertUpdate};
use crate::{
    policy::{ClassPolicy, Verdict},
    record::{Action, Direction, FlowRecord, Timestamp},
};

/// What makes two violations "the same alert". The workload is the cgroup and, when known,
/// the process name: a pid would make every run of a cron job a new alert.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AlertKey {
    class: Arc<str>,
    cgroup: String,
    comm: Option<String>,
    ip: IpAddr,
    port: Option<u16>,
    /// Refused attempts are alerts of their own, apart from traffic that went.
    action: Action,
}

struct OpenAlert {
    id: String,
    class: Arc<str>,
    raised: Instant,
    /// Latest totals of each flow counted.
    flows: HashMap<FlowKey, (u64, u64)>,
    last_seen: Timestamp,
    /// Totals changed since the last report.
    dirty: bool,
    last_report: Instant,
}

impl OpenAlert {
    fn totals(&self) -> (u64, u64) {
        self.flows.values().fold((0, 0), |(b, p), (fb, fp)| (b + fb, p + fp))
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AlertCounters {
    pub raised: u64,
    /// Violations folded into an alert already open for their key.
    pub folded: u64,
}

pub struct AlertBook {
    cooldown: Duration,
    /// Minimum time between two updates of one alert.
    report_interval: Duration,
    open: HashMap<AlertKey, OpenAlert>,
    pub counters: AlertCounters,
}

impl AlertBook {
    pub fn new(cooldown: Duration, report_interval: Duration) -> Self {
        Self { cooldown, report_interval, open: HashMap::new(), counters: AlertCounters::default() }
    }

    pub fn open_alerts(&self) -> usize {
        self.open.len()
    }

    /// Records a violating flow. Returns an alert when it is the first of its key in the
    /// current window.
    pub fn observe(
        &mut self,
        flow: &FlowKey,
        rec: &FlowRecord,
        class: &ClassPolicy,
        verdict: &Verdict,
        now: Instant,
    ) -> Option<Alert> {
        self.observe_as(flow, rec, class, verdict, now, Action::Observed)
    }

    /// As [`AlertBook::observe`], for traffic that met `action`: a refused attempt
    /// ([`Action::Blocked`]) is described by `rec` as the flow it would have been.
    pub fn observe_as(
        &mut self,
        flow: &FlowKey,
        rec: &FlowRecord,
        class: &ClassPolicy,
        verdict: &Verdict,
        now: Instant,
        action: Action,
    ) -> Option<Alert> {
        let key = AlertKey {
            action,
            class: class.name.clone(),
            cgroup: rec
                .process
                .cgroup
                .clone()
                .unwrap_or_else(|| format!("cgroup-id:{}", rec.process.cgroup_id)),
            comm: rec.process.comm.clone(),
            ip: rec.destination.ip,
            // A classified server answering a client: the client's port is ephemeral, a new one
            // per connection; the alert is about the client, whatever port it came from.
            port: if rec.direction == Direction::Inbound { None } else { rec.destination.port },
        };
        if let Some(open) = self.open.get_mut(&key)
            && now.duration_since(open.raised) < self.cooldown
        {
            self.counters.folded += 1;
            let totals = (rec.bytes, rec.packets);
            if open.flows.insert(*flow, totals) != Some(totals) {
                open.dirty = true;
            }
            open.last_seen = open.last_seen.max(rec.last_seen);
            return None;
        }
        self.counters.raised += 1;
        let id = alert_id(&rec.host, &key, rec.time);
        self.open.insert(
            key,
            OpenAlert {
                id: id.clone(),
                class: class.name.clone(),
                raised: now,
                flows: HashMap::from([(*flow, (rec.bytes, rec.packets))]),
                last_seen: rec.last_seen,
                dirty: false,
                last_report: now,
            },
        );
        Some(Alert {
            kind: "alert",
            id,
            time: rec.time,
            host: rec.host.clone(),
            class: class.name.clone(),
            severity: class.severity,
            action,
            reason: class.explain(verdict, rec.destination.ip, &rec.destination.place),
            direction: rec.direction,
            protocol: rec.protocol,
            process: rec.process.clone(),
            destination: rec.destination.clone(),
            bytes: rec.bytes,
            packets: rec.packets,
            first_seen: rec.first_seen,
            last_seen: rec.last_seen,
        })
    }

    /// Updates for alerts whose totals changed (at most one per alert per report interval,
    /// and a last one when its window closes), and forgets closed windows. `all` reports every
    /// changed alert now (at shutdown).
    pub fn updates(&mut self, host: &Arc<str>, now: Instant, all: bool) -> Vec<AlertUpdate> {
        let mut out = Vec::new();
        let (cooldown, interval) = (self.cooldown, self.report_interval);
        self.open.retain(|_, a| {
            let closing = now.duration_since(a.raised) >= cooldown;
            if a.dirty && (all || closing || now.duration_since(a.last_report) >= interval) {
                let (bytes, packets) = a.totals();
                out.push(AlertUpdate {
                    kind: "alert_update",
                    id: a.id.clone(),
                    time: Timestamp::now(),
                    host: host.clone(),
                    class: a.class.clone(),
                    bytes,
                    packets,
                    flows: a.flows.len() as u64,
                    last_seen: a.last_seen,
                });
                a.dirty = false;
                a.last_report = now;
            }
            !closing
        });
        out
    }
}

/// A deterministic id: the same key raised at the same time on the same host gives the same id.
fn alert_id(host: &str, key: &AlertKey, raised: Timestamp) -> String {
    let mut h = Sha256::new();
    let port = key.port.map_or(String::new(), |p| p.to_string());
    for part in [
        host,
        &key.class,
        &key.cgroup,
        key.comm.as_deref().unwrap_or(""),
        &key.ip.to_string(),
        &port,
        &raised.0.timestamp_nanos_opt().unwrap_or_default().to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    // Observed alerts keep the ids they had before enforcement existed.
    if key.action == Action::Blocked {
        h.update(b"blocked\0");
    }
    h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
