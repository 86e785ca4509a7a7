use std::sync::Arc;

use super::*;
use crate::{
    enrich::{CloudProvider, Destination},
    policy::VerdictKind,
    record::{FlowRecord, FlowState},
    sinks::Output,
    store::{Store, StoreSettings},
};

fn params(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn settings() -> StoreSettings {
    StoreSettings {
        bucket: Duration::from_secs(60),
        retention: Duration::from_secs(86400),
        prune_every: Duration::from_secs(3600),
    }
}

/// A store in a temporary directory holding `records`, written by the real writer thread.
fn store_with(records: Vec<Output>) -> (tempfile::TempDir, crate::store::StoreReader) {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings();
    let store = Store::start(dir.path(), settings).unwrap();
    for r in records {
        store.writer.write(&Arc::new(r));
    }
    let reader = store.reader.clone();
    store.writer.close();
    (dir, reader)
}

fn cn() -> Destination {
    Destination { country: Some("CN".into()), asn: Some(4134), ..Default::default() }
}

fn us_aws() -> Destination {
    Destination {
        country: Some("US".into()),
        cloud_provider: Some(CloudProvider::Aws),
        cloud_region: Some("us-east-1".into()),
        ..Default::default()
    }
}

/// Three flows: api -> CN (violation, two records: new then ended with more bytes), api -> AWS
/// (allowed), and an unclassified curl -> CN.
fn sample() -> Vec<Output> {
    let mut a = FlowRecord::sample("175.16.199.1", 443, cn());
    (a.class, a.verdict) = (Some("us-user-data".into()), VerdictKind::Violation);
    let mut a_end = a.clone();
    (a_end.state, a_end.bytes, a_end.packets, a_end.delta_bytes, a_end.delta_packets) =
        (FlowState::Ended, 5000, 9, 4000, 4);
    let mut b = FlowRecord::sample("3.5.140.2", 443, us_aws());
    (b.class, b.verdict) = (Some("us-user-data".into()), VerdictKind::Allowed);
    b.source.port = Some(41001);
    (b.bytes, b.delta_bytes) = (700, 700);
    let mut c = FlowRecord::sample("175.16.199.9", 8443, cn());
    c.source.port = Some(41002);
    (c.process.comm, c.process.pid, c.process.cgroup) =
        (Some("curl".into()), Some(77), Some("/other".into()));
    (c.bytes, c.delta_bytes) = (300, 300);
    vec![Output::Flow(a), Output::Flow(a_end), Output::Flow(b), Output::Flow(c)]
}

fn run(reader: &crate::store::StoreReader, q: &str) -> Vec<Map<String, Value>> {
    let q = FlowQuery::parse(&params(q), now()).unwrap();
    q.run(&reader.connect().unwrap(), reader.bucket).unwrap()
}

fn sums(rows: &[Map<String, Value>], key: &str) -> Vec<(String, u64)> {
    rows.iter().map(|r| (r[key].as_str().unwrap_or("-").to_owned(), r["bytes"].as_u64().unwrap())).collect()
}

#[test]
fn flows_are_summed_per_flow_and_per_group() {
    let (_d, reader) = store_with(sample());
    let rows = run(&reader, "");
    assert_eq!(rows.len(), 3, "one row per flow: {rows:?}");
    assert_eq!(rows[0]["bytes"], 5000, "new + ended amounts of one flow");
    assert_eq!(rows[0]["packets"], 9);
    assert_eq!((rows[0]["dst_ip"].as_str(), rows[0]["comm"].as_str()), (Some("175.16.199.1"), Some("api")));
    assert_eq!(sums(&run(&reader, "group_by=country"), "country"), [("CN".into(), 5300), ("US".into(), 700)]);
    assert_eq!(
        sums(&run(&reader, "group_by=class"), "class"),
        [("us-user-data".into(), 5700), ("-".into(), 300)]
    );
    let by_cloud = run(&reader, "group_by=cloud_region");
    assert_eq!(
        (by_cloud[1]["cloud_provider"].as_str(), by_cloud[1]["cloud_region"].as_str()),
        (Some("aws"), Some("us-east-1"))
    );
    let by_process = run(&reader, "group_by=process,destination");
    assert_eq!(by_process.len(), 3);
    assert_eq!(
        (by_process[2]["comm"].as_str(), by_process[2]["pid"].as_u64(), by_process[2]["dst_port"].as_u64()),
        (Some("curl"), Some(77), Some(8443))
    );
    assert_eq!(run(&reader, "group_by=class,country")[0]["flows"], 1);
}

#[test]
fn every_filter_narrows_the_flows() {
    let (_d, reader) = store_with(sample());
    let total = |q: &str| -> u64 { run(&reader, q).iter().map(|r| r["bytes"].as_u64().unwrap()).sum() };
    assert_eq!(total("class=us-user-data"), 5700);
    assert_eq!(total("verdict=violation"), 5000);
    assert_eq!(total("verdict=allowed,unclassified"), 1000);
    assert_eq!(total("country=CN"), 5300);
    assert_eq!(total("cloud_region=aws:us-*"), 700);
    assert_eq!(total("cloud_region=us-east-1"), 700);
    assert_eq!(total("cloud_region=gcp:us-east-1"), 0);
    assert_eq!(total("site=dc-sg-backup"), 0);
    assert_eq!(total("comm=curl"), 300);
    assert_eq!(total("pid=1234"), 5700);
    assert_eq!(total("cgroup=/payments"), 5700, "the cgroup and its descendants");
    assert_eq!(total("cgroup=/payments/userdata/"), 5700);
    assert_eq!(total("cgroup=/pay"), 0, "a prefix of a name is not a parent");
    assert_eq!(total("cgroup=/other"), 300);
    assert_eq!(total("dst=175.16.199.0/24"), 5300);
    assert_eq!(total("dst=175.16.199.9"), 300);
    assert_eq!(total("dst=::ffff:175.16.199.1"), 5000, "IPv4-mapped addresses match IPv4 flows");
    assert_eq!(total("port=8443"), 300);
    assert_eq!(total("direction=outbound"), 6000);
    assert_eq!(run(&reader, "limit=1").len(), 1);
    assert_eq!(total("since=2h&until=90m"), 0, "a window before the flows");
}

#[test]
fn bad_parameters_are_named() {
    for (q, parameter, expected) in [
        ("since=yesterday", "since", "RFC 3339"),
        ("until=2026-13-01", "until", "RFC 3339"),
        ("group_by=planet", "group_by", "class, country"),
        ("limit=0", "limit", "from 1 to 10000"),
        ("verdict=bad", "verdict", "allowed, violation or unclassified"),
        ("dst=999.1.1.1", "dst", "an address or CIDR"),
        ("port=70000", "port", "0-65535"),
        ("pid=x", "pid", "a number"),
        ("cgroup=payments", "cgroup", "from the cgroup v2 root"),
        ("colour=red", "colour", "a known parameter"),
        ("since=1h&until=2h", "until", "a time after since"),
    ] {
        let e = FlowQuery::parse(&params(q), now()).unwrap_err();
        assert_eq!(e.parameter, parameter, "{q}: {e}");
        assert!(e.expected.contains(expected), "{q}: {e}");
    }
    let e = AlertQuery::parse(&params("severity=urgent"), now()).unwrap_err();
    assert_eq!((e.parameter.as_str(), e.value.as_str()), ("severity", "urgent"));
}

#[test]
fn alerts_are_stored_updated_and_filtered() {
    use crate::{alerts::AlertBook, policy::ClassPolicy};
    let class = ClassPolicy {
        name: "us-user-data".into(),
        approved: vec![],
        unknown: crate::policy::Decision::Violation,
        internal: crate::policy::Decision::Allow,
        severity: crate::policy::Severity::Critical,
    };
    let mut book = AlertBook::new(Duration::from_secs(600), Duration::ZERO);
    let mut r = FlowRecord::sample("175.16.199.1", 443, cn());
    r.class = Some("us-user-data".into());
    let key = monitor_common::FlowKey { cgroup_id: 9, dport: 443, proto: 6, ..monitor_common::FlowKey::ZERO };
    let t = std::time::Instant::now();
    let alert = book.observe(&key, &r, &class, &class.evaluate(&r.destination.place), t).unwrap();
    r.bytes = 9000;
    book.observe(&key, &r, &class, &class.evaluate(&r.destination.place), t);
    let update = book.updates(&"h1".into(), t, true).pop().unwrap();
    let (_d, reader) = store_with(vec![Output::Alert(alert.clone()), Output::AlertUpdate(update)]);
    let run =
        |q: &str| AlertQuery::parse(&params(q), now()).unwrap().run(&reader.connect().unwrap()).unwrap();
    let got = run("");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], alert.id.as_str());
    assert_eq!(
        (got[0]["bytes"].as_u64(), got[0]["flows"].as_u64()),
        (Some(9000), Some(1)),
        "the update's totals"
    );
    assert_eq!(got[0]["destination"]["country"], "CN");
    assert_eq!(got[0]["reason"], "destination country CN is not approved for class us-user-data");
    // Field for field the alert as printed, but for the totals the update changed.
    let mut printed = serde_json::to_value(&alert).unwrap();
    printed["bytes"] = 9000.into();
    printed["packets"] = got[0]["packets"].clone();
    printed["last_seen"] = got[0]["last_seen"].clone();
    printed["flows"] = 1.into();
    assert_eq!(got[0], printed);
    assert_eq!(run("severity=critical,high").len(), 1);
    assert_eq!(run("severity=low").len(), 0);
    assert_eq!(run("class=other").len(), 0);
}

#[test]
fn retention_prunes_old_rows() {
    let dir = tempfile::tempdir().unwrap();
    let settings = StoreSettings {
        bucket: Duration::from_secs(60),
        retention: Duration::from_secs(3600),
        prune_every: Duration::from_millis(50),
    };
    let store = Store::start(dir.path(), settings).unwrap();
    let mut old = FlowRecord::sample("175.16.199.1", 443, cn());
    old.time.0 -= chrono::Duration::hours(2);
    let fresh = FlowRecord::sample("175.16.199.2", 443, cn());
    store.writer.write(&Arc::new(Output::Flow(old)));
    store.writer.write(&Arc::new(Output::Flow(fresh)));
    std::thread::sleep(Duration::from_millis(700));
    let counters = store.counters.clone();
    let reader = store.reader.clone();
    store.writer.close();
    let rows = run(&reader, "since=3h");
    assert_eq!(rows.iter().map(|r| r["dst_ip"].as_str().unwrap()).collect::<Vec<_>>(), ["175.16.199.2"]);
    assert_eq!(crate::store::StoreCounters::get(&counters.rows_pruned), 1);
    // Where it cut is recorded: reports of periods before it are refused.
    let conn = crate::store::open_for_writing(dir.path()).unwrap();
    let (cutoff, _) = crate::store::pruned_before(&conn).unwrap().unwrap();
    assert!((chrono::Utc::now().timestamp() - 3600 - cutoff).abs() <= 2, "{cutoff}");
}

#[test]
fn the_cgroup_filter_matches_paths_exactly() {
    let mut a = FlowRecord::sample("175.16.199.1", 443, cn());
    a.process.cgroup = Some("/Payments/x".into());
    let mut b = FlowRecord::sample("175.16.199.2", 443, cn());
    (b.process.cgroup, b.source.port) = (Some("/pay_ments/x".into()), Some(41001));
    let mut c = FlowRecord::sample("175.16.199.3", 443, cn());
    (c.process.cgroup, c.source.port) = (Some("/pay%/x".into()), Some(41002));
    let (_d, reader) = store_with(vec![Output::Flow(a), Output::Flow(b), Output::Flow(c)]);
    let count = |q: &str| run(&reader, q).len();
    assert_eq!(count("cgroup=/payments"), 0, "case matters");
    assert_eq!(count("cgroup=/Payments"), 1);
    assert_eq!(count("cgroup=/pay.ments"), 0);
    assert_eq!(count("cgroup=/payXments"), 0, "_ is no wildcard");
    assert_eq!(count("cgroup=/pay_ments"), 1);
    assert_eq!(count("cgroup=/pay%25"), 1, "% is no wildcard either");
    assert_eq!(count("cgroup=/pa%25"), 0);
}

#[test]
fn times_out_of_range_are_refused_not_a_panic() {
    for q in ["since=300000y", "until=300000y"] {
        let e = FlowQuery::parse(&params(q), now()).unwrap_err();
        assert_eq!(e.expected, "a shorter duration", "{q}");
        assert!(AlertQuery::parse(&params(q), now()).is_err(), "{q}");
    }
}

#[test]
fn a_store_that_fails_to_write_counts_the_records_and_shows_why() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings();
    let store = Store::start(dir.path(), settings).unwrap();
    // The disk turns bad under the agent: its flows table is gone.
    rusqlite::Connection::open(dir.path().join("store.sqlite"))
        .unwrap()
        .execute_batch("DROP TABLE flows")
        .unwrap();
    let counters = store.counters.clone();
    store.writer.write(&Arc::new(Output::Flow(FlowRecord::sample("175.16.199.1", 443, cn()))));
    store.writer.close();
    let mut s = crate::status::Status::default();
    counters.fill_status(&mut s);
    assert_eq!((s.losses.store_write_errors, s.losses.store_dropped), (1, 1));
    assert!(s.databases.store_error.as_deref().is_some_and(|e| e.contains("flows")), "{:?}", s.databases);
}

#[test]
fn the_writer_records_until_when_everything_handed_to_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::start(dir.path(), settings()).unwrap();
    let progress = || -> i64 {
        crate::store::open_for_writing(dir.path())
            .unwrap()
            .query_row("SELECT settled_ms FROM writer_progress", [], |r| r.get(0))
            .unwrap()
    };
    // Nothing handed yet: no progress.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(progress(), 0);
    store.writer.write(&Arc::new(Output::Flow(FlowRecord::sample("175.16.199.1", 443, cn()))));
    store.writer.handed();
    let handed = store.counters.handed_ms.load(std::sync::atomic::Ordering::Acquire);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while progress() != handed {
        assert!(std::time::Instant::now() < deadline, "progress {} never reached {handed}", progress());
        std::thread::sleep(Duration::from_millis(50));
    }
    let reader = store.reader.clone();
    store.writer.close();
    assert_eq!(run(&reader, "since=1h").len(), 1, "what it says is written is there");
}
