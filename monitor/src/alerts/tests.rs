use monitor_common::FAMILY_V4;

use super::*;
use crate::{
    policy::Decision,
    record::{Destination, Severity, VerdictKind},
};

const MIN: Duration = Duration::from_secs(60);

fn class() -> ClassPolicy {
    ClassPolicy {
        name: "us-user-data".into(),
        approved: vec![],
        unknown: Decision::Violation,
        internal: Decision::Allow,
        severity: Severity::Critical,
    }
}

const REASON: &str = "destination country CN is not approved for class us-user-data";

fn verdict() -> Verdict {
    let v = class().evaluate(&Destination { country: Some("CN".into()), ..Default::default() });
    assert_eq!(v.kind, VerdictKind::Violation);
    v
}

fn key(sport: u16, dport: u16) -> FlowKey {
    FlowKey {
        cgroup_id: 9,
        saddr: [0; 16],
        daddr: [0; 16],
        sport,
        dport,
        proto: 6,
        family: FAMILY_V4,
        _pad: [0; 2],
    }
}

fn record(dst: &str, dport: u16, pid: u32, comm: &str, bytes: u64) -> FlowRecord {
    let mut r =
        FlowRecord::sample(dst, dport, Destination { country: Some("CN".into()), ..Default::default() });
    r.class = Some("us-user-data".into());
    r.verdict = VerdictKind::Violation;
    (r.process.pid, r.process.tid, r.process.comm) = (Some(pid), Some(pid), Some(comm.into()));
    (r.bytes, r.packets) = (bytes, bytes / 500);
    r
}

#[test]
fn one_alert_per_key_per_cooldown_with_totals_as_updates() {
    let mut book = AlertBook::new(10 * MIN, MIN);
    let t0 = Instant::now();
    let c = class();
    let a = book
        .observe(&key(41000, 443), &record("175.16.199.1", 443, 100, "api", 5000), &c, &verdict(), t0)
        .unwrap();
    assert_eq!(
        (a.kind, a.class.as_ref(), a.severity, a.bytes),
        ("alert", "us-user-data", Severity::Critical, 5000)
    );
    assert_eq!(a.reason, REASON);
    assert_eq!(a.destination.place.country.as_deref(), Some("CN"));
    assert_eq!(a.id.len(), 32);

    // The same flow grows, and another process run (new pid, same program) opens a second flow.
    let later = t0 + Duration::from_secs(30);
    assert!(
        book.observe(&key(41000, 443), &record("175.16.199.1", 443, 100, "api", 9000), &c, &verdict(), later)
            .is_none()
    );
    assert!(
        book.observe(&key(41001, 443), &record("175.16.199.1", 443, 101, "api", 1000), &c, &verdict(), later)
            .is_none()
    );
    assert_eq!((book.counters.raised, book.counters.folded), (1, 2));
    assert!(book.updates(&"h1".into(), later, false).is_empty(), "at most one update per interval");
    let ups = book.updates(&"h1".into(), t0 + 2 * MIN, false);
    assert_eq!(ups.len(), 1);
    assert_eq!((ups[0].id.as_str(), ups[0].bytes, ups[0].flows), (a.id.as_str(), 10000, 2));
    assert!(book.updates(&"h1".into(), t0 + 3 * MIN, false).is_empty(), "no change, no update");

    // After the cooldown the window closes; the next violation raises a new alert.
    assert!(book.updates(&"h1".into(), t0 + 10 * MIN, false).is_empty());
    assert_eq!(book.open_alerts(), 0);
    let b = book.observe(
        &key(41000, 443),
        &record("175.16.199.1", 443, 100, "api", 9500),
        &c,
        &verdict(),
        t0 + 11 * MIN,
    );
    assert!(b.is_some_and(|b| b.id != a.id));
}

#[test]
fn different_port_address_or_workload_is_a_different_alert() {
    let mut book = AlertBook::new(10 * MIN, MIN);
    let t0 = Instant::now();
    let c = class();
    let v = verdict();
    assert!(book.observe(&key(1, 443), &record("175.16.199.1", 443, 1, "api", 1), &c, &v, t0).is_some());
    assert!(book.observe(&key(2, 8443), &record("175.16.199.1", 8443, 1, "api", 1), &c, &v, t0).is_some());
    assert!(book.observe(&key(3, 443), &record("175.16.199.2", 443, 1, "api", 1), &c, &v, t0).is_some());
    assert!(book.observe(&key(4, 443), &record("175.16.199.1", 443, 1, "curl", 1), &c, &v, t0).is_some());
    assert_eq!(book.counters.raised, 4);
}

#[test]
fn ids_are_deterministic() {
    let k = AlertKey {
        class: "c".into(),
        cgroup: "/a".into(),
        comm: Some("api".into()),
        ip: "175.16.199.1".parse().unwrap(),
        port: Some(443),
        action: crate::record::Action::Observed,
    };
    let t = Timestamp::now();
    assert_eq!(alert_id("h1", &k, t), alert_id("h1", &k, t));
    assert_ne!(alert_id("h1", &k, t), alert_id("h2", &k, t));
    let blocked = AlertKey { action: crate::record::Action::Blocked, ..k.clone() };
    assert_ne!(alert_id("h1", &k, t), alert_id("h1", &blocked, t), "a refusal is an alert of its own");
}

#[test]
fn pending_totals_are_reported_at_shutdown() {
    let mut book = AlertBook::new(10 * MIN, MIN);
    let t0 = Instant::now();
    let c = class();
    book.observe(&key(1, 443), &record("175.16.199.1", 443, 1, "api", 100), &c, &verdict(), t0);
    book.observe(&key(1, 443), &record("175.16.199.1", 443, 1, "api", 700), &c, &verdict(), t0);
    let ups = book.updates(&"h1".into(), t0, true);
    assert_eq!(ups.iter().map(|u| u.bytes).collect::<Vec<_>>(), vec![700]);
}

#[test]
fn a_classified_server_answering_one_client_is_one_alert_whatever_its_ports() {
    let mut book = AlertBook::new(10 * MIN, MIN);
    let (c, t0) = (class(), Instant::now());
    // The same client connects three times, each time from another ephemeral port.
    let raised: Vec<bool> = [50001u16, 50002, 50003]
        .iter()
        .map(|&port| {
            let mut r = record("175.16.199.1", port, 100, "api", 1000);
            r.direction = crate::record::Direction::Inbound;
            book.observe(&key(443, port), &r, &c, &verdict(), t0).is_some()
        })
        .collect();
    assert_eq!(raised, [true, false, false]);
    assert_eq!((book.counters.raised, book.counters.folded), (1, 2));
    // An outbound flow keeps its port in the key: another port is another alert.
    let mut r = record("175.16.199.1", 8443, 100, "api", 1000);
    r.direction = crate::record::Direction::Outbound;
    assert!(book.observe(&key(41000, 8443), &r, &c, &verdict(), t0).is_some());
}
