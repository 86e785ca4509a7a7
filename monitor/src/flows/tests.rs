use monitor_common::{DIRECTION_OUTBOUND, FAMILY_V4, NewFlowEvent};

use super::*;

use super::fake::FakeMap;

const SEC: u64 = 1_000_000_000;

fn settings() -> TableSettings {
    TableSettings {
        flush_interval: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        close_grace: Duration::from_secs(2),
    }
}

fn key(dport: u16) -> FlowKey {
    let mut daddr = [0; 16];
    daddr[..4].copy_from_slice(&[198, 51, 100, 7]);
    FlowKey {
        cgroup_id: 42,
        saddr: [0; 16],
        daddr,
        sport: 41000,
        dport,
        proto: 6,
        family: FAMILY_V4,
        _pad: [0; 2],
    }
}

fn value(packets: u64, bytes: u64, first_ns: u64, last_ns: u64) -> FlowValue {
    let mut process = ProcessInfo::EMPTY;
    process.tgid = 1234;
    process.pid = 1234;
    process.uid = 1001;
    process.comm[..3].copy_from_slice(b"api");
    FlowValue {
        packets,
        bytes,
        first_seen_ns: first_ns,
        last_seen_ns: last_ns,
        cookie: 77,
        class_id: 1,
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
    KernelEvent::NewFlow(NewFlowEvent { kind: monitor_common::EVENT_NEW_FLOW, _pad: 0, key: k, value: v })
}

fn states(out: &[FlowUpdate]) -> Vec<(u16, FlowState, u64, u64)> {
    out.iter().map(|u| (u.key.dport, u.state, u.flow.packets, u.flow.bytes)).collect()
}

#[test]
fn new_flow_event_is_reported_at_once_with_its_process() {
    let mut t = FlowTable::new(settings());
    let mut out = Vec::new();
    t.on_event(new_flow(key(443), value(1, 60, SEC, SEC)), Instant::now(), &mut out);
    assert_eq!(states(&out), vec![(443, FlowState::New, 1, 60)]);
    let p = out[0].flow.process.unwrap();
    assert_eq!((p.tgid, p.uid, &p.comm[..3]), (1234, 1001, &b"api"[..]));
    assert_eq!(t.counters.new_flow_events, 1);
}

#[test]
fn active_flows_are_reported_once_per_flush_interval_and_only_when_changed() {
    let mut t = FlowTable::new(settings());
    let mut map = FakeMap::default();
    let t0 = Instant::now();
    let mut out = Vec::new();
    map.0.insert(key(443), value(1, 60, SEC, SEC));
    t.on_event(new_flow(key(443), value(1, 60, SEC, SEC)), t0, &mut out);
    out.clear();

    map.0.insert(key(443), value(5, 3000, SEC, 2 * SEC));
    t.sweep(&mut map, t0 + Duration::from_secs(1), 2 * SEC, &mut out).unwrap();
    assert!(out.is_empty(), "before the flush interval: {:?}", states(&out));
    t.sweep(&mut map, t0 + Duration::from_secs(10), 11 * SEC, &mut out).unwrap();
    assert_eq!(states(&out), vec![(443, FlowState::Active, 5, 3000)]);
    out.clear();
    // No change since: nothing to say.
    t.sweep(&mut map, t0 + Duration::from_secs(25), 25 * SEC, &mut out).unwrap();
    assert!(out.is_empty(), "{:?}", states(&out));
}

#[test]
fn closed_socket_ends_its_flow_after_the_grace_period_with_final_counts() {
    let mut t = FlowTable::new(settings());
    let mut map = FakeMap::default();
    let t0 = Instant::now();
    let mut out = Vec::new();
    map.0.insert(key(443), value(1, 60, SEC, SEC));
    t.on_event(new_flow(key(443), value(1, 60, SEC, SEC)), t0, &mut out);
    t.on_event(KernelEvent::SockClosed { cookie: 77 }, t0, &mut out);
    out.clear();
    // The FIN exchange after close still counts.
    map.0.insert(key(443), value(6, 1320, SEC, SEC + SEC / 2));
    t.sweep(&mut map, t0 + Duration::from_secs(1), 2 * SEC, &mut out).unwrap();
    assert!(out.is_empty(), "within the grace period: {:?}", states(&out));
    t.sweep(&mut map, t0 + Duration::from_secs(3), 4 * SEC, &mut out).unwrap();
    assert_eq!(states(&out), vec![(443, FlowState::Ended, 6, 1320)]);
    assert!(map.0.is_empty(), "the kernel entry is removed");
    assert_eq!(t.len(), 0);
}

#[test]
fn idle_flow_ends_after_idle_timeout() {
    let mut t = FlowTable::new(settings());
    let mut map = FakeMap::default();
    let t0 = Instant::now();
    let mut out = Vec::new();
    map.0.insert(key(53), value(2, 200, SEC, SEC));
    t.sweep(&mut map, t0, SEC, &mut out).unwrap();
    assert_eq!(states(&out), vec![(53, FlowState::New, 2, 200)]);
    assert_eq!(t.counters.found_by_sweep, 1, "no event was seen for it");
    out.clear();
    t.sweep(&mut map, t0 + Duration::from_secs(59), 60 * SEC, &mut out).unwrap();
    assert!(out.is_empty());
    t.sweep(&mut map, t0 + Duration::from_secs(61), 62 * SEC, &mut out).unwrap();
    assert_eq!(states(&out), vec![(53, FlowState::Ended, 2, 200)]);
    assert!(map.0.is_empty());
}

#[test]
fn flow_gone_from_the_kernel_map_counts_as_evicted_and_ends() {
    let mut t = FlowTable::new(settings());
    let mut map = FakeMap::default();
    let t0 = Instant::now();
    let mut out = Vec::new();
    map.0.insert(key(443), value(3, 300, SEC, SEC));
    t.sweep(&mut map, t0, SEC, &mut out).unwrap();
    out.clear();
    map.0.clear();
    t.sweep(&mut map, t0 + Duration::from_secs(1), 2 * SEC, &mut out).unwrap();
    assert_eq!(states(&out), vec![(443, FlowState::Ended, 3, 300)]);
    assert_eq!(t.counters.flows_evicted, 1);
}

#[test]
fn recreated_kernel_entry_continues_the_totals() {
    let mut t = FlowTable::new(settings());
    let mut map = FakeMap::default();
    let t0 = Instant::now();
    let mut out = Vec::new();
    map.0.insert(key(443), value(10, 1000, SEC, SEC));
    t.sweep(&mut map, t0, SEC, &mut out).unwrap();
    // Evicted and re-created between two sweeps: a new first_seen, counters from zero.
    map.0.insert(key(443), value(2, 150, 3 * SEC, 3 * SEC));
    t.sweep(&mut map, t0 + Duration::from_secs(20), 4 * SEC, &mut out).unwrap();
    assert_eq!(t.counters.flows_evicted, 1);
    assert_eq!(states(&out).last(), Some(&(443, FlowState::Active, 12, 1150)));
}

#[test]
fn late_new_flow_event_does_not_rewind_counts() {
    let mut t = FlowTable::new(settings());
    let mut map = FakeMap::default();
    let t0 = Instant::now();
    let mut out = Vec::new();
    map.0.insert(key(443), value(9, 900, SEC, 2 * SEC));
    t.sweep(&mut map, t0, 2 * SEC, &mut out).unwrap();
    t.on_event(new_flow(key(443), value(1, 60, SEC, SEC)), t0, &mut out);
    map.0.insert(key(443), value(9, 900, SEC, 2 * SEC));
    t.flush_all(t0, &mut out);
    assert_eq!(states(&out), vec![(443, FlowState::New, 9, 900)], "no second record, no rewind");
}

#[test]
fn reclassified_flow_keeps_its_corrected_class() {
    let mut t = FlowTable::new(settings());
    let mut map = FakeMap::default();
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut unclassified = value(1, 60, SEC, SEC);
    unclassified.class_id = 0;
    map.0.insert(key(443), unclassified);
    t.sweep(&mut map, t0, SEC, &mut out).unwrap();
    t.reclassify(|cgroup_id| (cgroup_id == 42).then_some(3));
    // The kernel entry still says 0 (no packet since): the correction stands.
    t.sweep(&mut map, t0 + Duration::from_secs(11), 2 * SEC, &mut out).unwrap();
    assert_eq!(out.last().map(|u| (u.state, u.flow.class_id)), Some((FlowState::Active, 3)));
}

#[test]
fn process_comes_from_the_connect_event_when_the_entry_lacks_it() {
    let mut t = FlowTable::new(settings());
    let mut out = Vec::new();
    let mut e: SockEvent = unsafe { std::mem::zeroed() };
    e.kind = monitor_common::EVENT_CONNECT;
    e.cookie = 77;
    e.process.tgid = 999;
    t.on_event(KernelEvent::Connect(e), Instant::now(), &mut out);
    let mut v = value(1, 60, SEC, SEC);
    v.sock_flags = 0;
    v.process = ProcessInfo::EMPTY;
    t.on_event(new_flow(key(443), v), Instant::now(), &mut out);
    assert_eq!(out[0].flow.process.map(|p| p.tgid), Some(999));
}

#[test]
fn flush_all_reports_every_changed_flow() {
    let mut t = FlowTable::new(settings());
    let mut map = FakeMap::default();
    let t0 = Instant::now();
    let mut out = Vec::new();
    map.0.insert(key(1), value(1, 60, SEC, SEC));
    map.0.insert(key(2), value(1, 60, SEC, SEC));
    t.sweep(&mut map, t0, SEC, &mut out).unwrap();
    out.clear();
    map.0.insert(key(2), value(4, 400, SEC, SEC));
    t.sweep(&mut map, t0 + Duration::from_secs(1), SEC, &mut out).unwrap();
    t.flush_all(t0 + Duration::from_secs(1), &mut out);
    assert_eq!(states(&out), vec![(2, FlowState::Active, 4, 400)]);
}

#[test]
fn flow_marked_closed_in_the_kernel_ends_after_the_grace_period() {
    let mut t = FlowTable::new(settings());
    let mut map = FakeMap::default();
    let t0 = Instant::now();
    let mut out = Vec::new();
    map.0.insert(key(443), value(3, 300, SEC, SEC));
    t.sweep(&mut map, t0, SEC, &mut out).unwrap();
    out.clear();
    // sock_release marked the flow (no event); the FIN still counts.
    let mut closed = value(4, 352, SEC, SEC + SEC / 10);
    closed.closed = 1;
    map.0.insert(key(443), closed);
    t.sweep(&mut map, t0 + Duration::from_secs(1), 2 * SEC, &mut out).unwrap();
    assert!(out.is_empty(), "within the grace period: {:?}", states(&out));
    t.sweep(&mut map, t0 + Duration::from_secs(4), 5 * SEC, &mut out).unwrap();
    assert_eq!(states(&out), vec![(443, FlowState::Ended, 4, 352)]);
    assert_eq!(t.counters.close_events, 0);
}

#[test]
fn an_adopted_map_is_reported_minus_what_the_previous_agent_reported() {
    let mut t = FlowTable::new(settings());
    let now = Instant::now();
    let mut map = FakeMap::default();
    // Reported up to 3 packets / 300 bytes; 5 / 500 counted since. Another flow opened while
    // no agent ran; a third was reported for an entry that no longer exists (stale).
    map.0.insert(key(443), value(8, 800, SEC, 2 * SEC));
    map.0.insert(key(80), value(2, 120, 3 * SEC, 3 * SEC));
    t.adopt(vec![
        (key(443), Reported { entry_id: SEC, packets: 3, bytes: 300 }),
        (key(22), Reported { entry_id: SEC, packets: 1, bytes: 60 }),
    ]);
    let mut out = Vec::new();
    t.sweep(&mut map, now, 3 * SEC, &mut out).unwrap();
    let mut got: Vec<_> =
        out.iter().map(|u| (u.key.dport, u.state, u.delta_packets, u.delta_bytes, u.mark)).collect();
    got.sort_by_key(|g| g.0);
    assert_eq!(
        got,
        vec![
            (80, FlowState::New, 2, 120, Some(Reported { entry_id: 3 * SEC, packets: 2, bytes: 120 })),
            (443, FlowState::Active, 5, 500, Some(Reported { entry_id: SEC, packets: 8, bytes: 800 })),
        ]
    );
    assert_eq!(t.take_stale(), vec![key(22)]);
    assert_eq!(t.counters.flows_evicted, 0);
}

#[test]
fn a_replaced_sets_flows_are_carried_over_and_continued_by_the_new_map() {
    let mut t = FlowTable::new(settings());
    let now = Instant::now();
    let mut old = FakeMap::default();
    old.0.insert(key(443), value(10, 1000, SEC, 2 * SEC));
    t.adopt(vec![(key(443), Reported { entry_id: SEC, packets: 4, bytes: 400 })]);
    let carried = t.carry_over(&mut old, now, &mut Vec::new()).unwrap();
    assert_eq!(carried, 1);
    // The new map: the same connection goes on (a new entry), and nothing is counted as lost.
    let mut new = FakeMap::default();
    new.0.insert(key(443), value(3, 300, 5 * SEC, 5 * SEC));
    let mut out = Vec::new();
    t.flush_all(now, &mut out);
    t.sweep(&mut new, now, 5 * SEC, &mut out).unwrap();
    t.flush_all(now, &mut out);
    let total: u64 = out.iter().map(|u| u.delta_bytes).sum();
    assert_eq!(total, 300, "{:?}", states(&out));
    assert_eq!(t.counters.flows_evicted, 0);
    assert_eq!(out.last().map(|u| u.flow.bytes), Some(1300));
}

#[test]
fn a_late_event_of_an_adopted_flow_does_not_report_again_what_was_reported() {
    let mut t = FlowTable::new(settings());
    let now = Instant::now();
    t.adopt(vec![(key(443), Reported { entry_id: SEC, packets: 6, bytes: 600 })]);
    // The flow's new-flow event was still in the pinned ring: its first packet only.
    let mut out = Vec::new();
    t.on_event(new_flow(key(443), value(1, 100, SEC, SEC)), now, &mut out);
    assert!(out.is_empty(), "nothing new: {:?}", states(&out));
    // The sweep finds 9 packets: 3 more than reported, and only those are reported.
    let mut map = FakeMap::default();
    map.0.insert(key(443), value(9, 900, SEC, 2 * SEC));
    t.sweep(&mut map, now, 2 * SEC, &mut out).unwrap();
    t.flush_all(now, &mut out);
    let delta: u64 = out.iter().map(|u| u.delta_bytes).sum();
    assert_eq!(delta, 300, "{:?}", states(&out));
}
