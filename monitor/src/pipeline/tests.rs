//! The road without the kernel: kernel events and a fake kernel map in, records and alerts out.

use std::{sync::Arc, time::Duration};

use monitor_common::{
    DIRECTION_OUTBOUND, EVENT_NEW_FLOW, FAMILY_V4, FlowKey, FlowValue, NewFlowEvent, ProcessInfo,
    SOCK_HAS_PROCESS,
};

use super::*;
use crate::{
    enrich::{EnrichOptions, SourceFile, fixtures},
    flows::{TableSettings, fake::FakeMap},
    policy::{ApprovedEntry, ClassPolicy, Decision},
    record::{Direction, Severity},
};

fn key(daddr: [u8; 4], dport: u16) -> FlowKey {
    let mut d = [0; 16];
    d[..4].copy_from_slice(&daddr);
    let mut s = [0; 16];
    s[..4].copy_from_slice(&[10, 0, 0, 2]);
    FlowKey {
        cgroup_id: 9,
        saddr: s,
        daddr: d,
        sport: 41000,
        dport,
        proto: 6,
        family: FAMILY_V4,
        _pad: [0; 2],
    }
}

fn value(class_id: u32, packets: u64, bytes: u64) -> FlowValue {
    let mut process = ProcessInfo::EMPTY;
    (process.tgid, process.pid, process.uid) = (1234, 1240, 1001);
    process.comm[..3].copy_from_slice(b"api");
    // One first packet for every value of a test's flow: the same kernel entry, read again.
    static FIRST: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let first = *FIRST.get_or_init(monotonic_ns);
    FlowValue {
        packets,
        bytes,
        first_seen_ns: first,
        last_seen_ns: first + packets,
        cookie: 77,
        class_id,
        direction: DIRECTION_OUTBOUND,
        sock_flags: SOCK_HAS_PROCESS,
        closed: 0,
        _pad: 0,
        sock_uid: 1001,
        _pad2: 0,
        process,
    }
}

fn new_flow(k: FlowKey, v: FlowValue) -> KernelEvent {
    KernelEvent::NewFlow(NewFlowEvent { kind: EVENT_NEW_FLOW, _pad: 0, key: k, value: v })
}

/// A pipeline over a country database placing 175.16.199.0/24 in CN and 3.5.140.0/24 in US,
/// with one class `us-user-data` (id 1) approved for US only.
fn pipeline() -> (tempfile::TempDir, Pipeline) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("country.mmdb");
    std::fs::write(
        &db,
        fixtures::geoip2_country(&[
            ("175.16.199.0/24", Some("CN"), None),
            ("3.5.140.0/24", Some("US"), None),
        ]),
    )
    .unwrap();
    let options = EnrichOptions {
        country_db: Some(SourceFile { label: "country_db".into(), path: db }),
        ..Default::default()
    };
    let policy = Policy::new(vec![ClassPolicy {
        name: "us-user-data".into(),
        approved: vec![ApprovedEntry::parse("US").unwrap()],
        unknown: Decision::Violation,
        internal: Decision::Allow,
        severity: Severity::Critical,
    }]);
    let settings = TableSettings {
        flush_interval: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        close_grace: Duration::from_secs(2),
    };
    let records = RecordContext { host: "h1".into(), classes: vec!["us-user-data".into()], cgroups: None };
    let p = Pipeline::new(
        FlowTable::new(settings),
        records,
        crate::names::NameTable::new(crate::names::NameOptions {
            grace: Duration::from_secs(300),
            max_names: 1000,
        }),
        Enricher::open(&options).unwrap(),
        policy,
        AlertBook::new(Duration::from_secs(600), Duration::from_secs(10)),
        Arc::new(Metrics::new()),
    );
    (dir, p)
}

#[test]
fn a_violating_flow_becomes_a_flow_record_and_an_alert() {
    let (_d, mut p) = pipeline();
    let mut out = Vec::new();
    p.on_events(vec![new_flow(key([175, 16, 199, 1], 443), value(1, 5, 1120))], 0, &mut out);
    assert_eq!(out.len(), 2, "{out:?}");
    let Output::Flow(f) = &out[0] else { panic!("{:?}", out[0]) };
    assert_eq!(f.class.as_deref(), Some("us-user-data"));
    assert_eq!(f.verdict, VerdictKind::Violation);
    assert_eq!(f.state, FlowState::New);
    assert_eq!(f.destination.place.country.as_deref(), Some("CN"));
    assert_eq!((f.bytes, f.packets, f.delta_bytes), (1120, 5, 1120));
    assert_eq!(
        (f.process.pid, f.process.tid, f.process.comm.as_deref()),
        (Some(1234), Some(1240), Some("api"))
    );
    assert_eq!(f.direction, Direction::Outbound);
    let Output::Alert(a) = &out[1] else { panic!("{:?}", out[1]) };
    assert_eq!(a.class.as_ref(), "us-user-data");
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!(a.reason, "destination country CN is not approved for class us-user-data");
    assert_eq!((a.bytes, a.destination.port), (1120, Some(443)));
}

#[test]
fn allowed_and_unclassified_flows_raise_no_alert() {
    let (_d, mut p) = pipeline();
    let mut out = Vec::new();
    p.on_events(
        vec![
            new_flow(key([3, 5, 140, 2], 443), value(1, 1, 60)),
            new_flow(key([175, 16, 199, 1], 443), value(0, 1, 60)),
        ],
        0,
        &mut out,
    );
    let verdicts: Vec<VerdictKind> = out
        .iter()
        .map(|o| match o {
            Output::Flow(f) => f.verdict,
            other => panic!("only flow records expected: {other:?}"),
        })
        .collect();
    assert_eq!(verdicts, [VerdictKind::Allowed, VerdictKind::Unclassified]);
}

#[test]
fn a_sweep_reports_later_bytes_and_the_alert_update_and_finish_ends_the_flow() {
    let (_d, mut p) = pipeline();
    let k = key([175, 16, 199, 1], 443);
    let mut out = Vec::new();
    p.on_events(vec![new_flow(k, value(1, 5, 1120))], 0, &mut out);
    out.clear();
    let mut map = FakeMap::default();
    map.0.insert(k, value(1, 9, 5120));
    p.report_all(&mut map, &mut out);
    p.final_alert_updates(&mut out);
    let flows: Vec<(FlowState, u64, u64)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Flow(f) => Some((f.state, f.bytes, f.delta_bytes)),
            _ => None,
        })
        .collect();
    assert_eq!(flows, [(FlowState::Active, 5120, 4000)], "{out:?}");
    let updates: Vec<(u64, u64)> = out
        .iter()
        .filter_map(|o| match o {
            Output::AlertUpdate(u) => Some((u.bytes, u.flows)),
            _ => None,
        })
        .collect();
    assert_eq!(updates, [(5120, 1)]);
}

/// A kernel map whose reads fail while `failing` is set.
struct Flaky {
    map: FakeMap,
    failing: bool,
}

impl KernelFlows for Flaky {
    fn for_each(&mut self, f: &mut dyn FnMut(&FlowKey, &FlowValue)) -> std::io::Result<()> {
        if self.failing {
            return Err(std::io::Error::from_raw_os_error(libc::EAGAIN));
        }
        self.map.for_each(f)
    }
    fn take(&mut self, key: &FlowKey) -> std::io::Result<Option<FlowValue>> {
        self.map.take(key)
    }
}

#[test]
fn a_failing_map_read_is_counted_and_retried_not_fatal() {
    let (_d, mut p) = pipeline();
    let k = key([175, 16, 199, 1], 443);
    let mut map = Flaky { map: FakeMap::default(), failing: true };
    map.map.0.insert(k, value(1, 5, 1120));
    let mut out = Vec::new();
    p.sweep(&mut map, &mut out);
    p.sweep(&mut map, &mut out);
    assert!(out.is_empty(), "nothing read yet: {out:?}");
    let mut s = Status::default();
    p.fill_status(&mut s, &KernelStats::default());
    assert_eq!(s.losses.kernel_read_errors, 2);
    // The read works again: the flow counted meanwhile is reported, with everything.
    map.failing = false;
    p.sweep(&mut map, &mut out);
    let Some(Output::Flow(f)) = out.first() else { panic!("{out:?}") };
    assert_eq!((f.bytes, f.state), (1120, FlowState::New));
}

#[test]
fn a_grown_loss_counter_becomes_one_loss_record() {
    let (_d, mut p) = pipeline();
    let mut out = Vec::new();
    p.check_losses(&KernelStats::default(), &mut out);
    assert!(out.is_empty(), "nothing lost yet");
    let k = KernelStats { ringbuf_drops: 3, ..Default::default() };
    p.check_losses(&k, &mut out);
    p.check_losses(&k, &mut out);
    assert_eq!(out.len(), 1, "reported once: {out:?}");
    let Output::Loss(l) = &out[0] else { panic!() };
    assert_eq!((l.ringbuf_drops, &*l.host), (3, "h1"));
}

#[test]
fn a_sweep_with_many_new_flows_is_reported_a_chunk_at_a_time() {
    let (_d, mut p) = pipeline();
    let mut map = FakeMap::default();
    for port in 0..(EMIT_CHUNK as u16 + 10) {
        map.0.insert(key([3, 5, 140, 2], 10000 + port), value(1, 1, 60));
    }
    let mut out = Vec::new();
    p.sweep(&mut map, &mut out);
    assert_eq!(out.len(), EMIT_CHUNK, "one chunk of records at a time");
    assert!(p.pending());
    out.clear();
    p.emit_more(&mut out);
    assert_eq!(out.len(), 10);
    assert!(!p.pending());
}
