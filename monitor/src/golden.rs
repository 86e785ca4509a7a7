//! Golden tests: the public shapes of what the agent writes, for fixed inputs. Record JSON
//! (flow, alert, alert update, loss), syslog lines (RFC 5424 and 3164), webhook bodies (JSON
//! and Slack), the store's rows and the ClickHouse rows. The expected texts live in
//! `monitor/tests/golden/`; they change only when a public format changes on purpose
//! (regenerate with `GOLDEN_UPDATE=1 cargo test -p monitor golden`, then review the diff).

use std::{path::PathBuf, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use rusqlite::types::ValueRef;
use serde_json::{Map, Value};

use crate::{
    record::{
        Alert, AlertUpdate, CloudProvider, Destination, DestinationRecord, Direction, DomainName, Endpoint,
        FlowRecord, FlowState, LossRecord, Output, OverflowCount, Process, Protocol, Severity, Timestamp,
        VerdictKind,
    },
    sinks::{
        syslog::{self, Facility, SyslogFormat},
        webhook::{self, WebhookFormat},
    },
    store::{Store, StoreSettings},
};

fn at(t: &str) -> Timestamp {
    Timestamp(DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc))
}

fn place() -> Destination {
    Destination {
        country: Some("CN".into()),
        subdivision: Some("CN-BJ".into()),
        asn: Some(4134),
        as_org: Some("Chinanet".into()),
        cloud_provider: Some(CloudProvider::Oci),
        cloud_region: Some("ap-beijing-1".into()),
        site: None,
        internal: false,
    }
}

fn process() -> Process {
    Process {
        pid: Some(1234),
        tid: Some(1240),
        comm: Some("api \"x\"".into()),
        uid: 1001,
        cgroup: Some("/payments/userdata".into()),
        cgroup_id: 8,
    }
}

fn flow() -> FlowRecord {
    FlowRecord {
        kind: "flow",
        time: at("2026-11-25T10:00:10.250Z"),
        host: "h1".into(),
        flow_id: "00112233aabbccdd".into(),
        state: FlowState::Active,
        class: Some("us-user-data".into()),
        direction: Direction::Outbound,
        protocol: Protocol(6),
        source: Endpoint { ip: "10.0.0.2".parse().unwrap(), port: Some(41000) },
        destination: DestinationRecord::new(
            "175.16.199.1".parse().unwrap(),
            Some(443),
            Some(&DomainName {
                domain: "api.bytegraph-cn.example".into(),
                cname_chain: Arc::from([Arc::from("edge.bytegraph-cn.example")]),
            }),
            Arc::new(place()),
        ),
        verdict: VerdictKind::Violation,
        process: process(),
        bytes: 5120,
        packets: 9,
        first_seen: at("2026-11-25T10:00:00.003Z"),
        last_seen: at("2026-11-25T10:00:10.110Z"),
        delta_bytes: 4000,
        delta_packets: 4,
        kernel_mark: None,
    }
}

fn alert() -> Alert {
    let f = flow();
    Alert {
        kind: "alert",
        id: "0123456789abcdef0123456789abcdef".into(),
        time: at("2026-11-25T10:00:00.120Z"),
        host: f.host,
        class: "us-user-data".into(),
        severity: Severity::Critical,
        action: Default::default(),
        reason: "destination country CN is not approved for class us-user-data".into(),
        direction: f.direction,
        protocol: f.protocol,
        process: f.process,
        destination: f.destination,
        bytes: 1120,
        packets: 5,
        first_seen: f.first_seen,
        last_seen: at("2026-11-25T10:00:00.110Z"),
    }
}

fn alert_update() -> AlertUpdate {
    AlertUpdate {
        kind: "alert_update",
        id: "0123456789abcdef0123456789abcdef".into(),
        time: at("2026-11-25T10:00:20.000Z"),
        host: "h1".into(),
        class: "us-user-data".into(),
        bytes: 9000,
        packets: 14,
        flows: 2,
        last_seen: at("2026-11-25T10:00:19.500Z"),
    }
}

fn loss() -> LossRecord {
    LossRecord {
        kind: "loss",
        time: at("2026-11-25T10:00:30.000Z"),
        host: "h1".into(),
        ringbuf_drops: 3,
        flow_insert_failed: 1,
        sock_storage_failed: 0,
        unparsed_packets: 2,
        dns_answers_lost: 0,
        dns_answers_lost_bytes: 0,
        flows_evicted: 5,
        overflow_packets: 7,
        overflow_bytes: 4200,
        overflow_by_class: vec![
            OverflowCount { class: None, cgroup: None, cgroup_id: None, packets: 2, bytes: 1200 },
            OverflowCount {
                class: Some("us-user-data".into()),
                cgroup: None,
                cgroup_id: None,
                packets: 5,
                bytes: 3000,
            },
        ],
        overflow_by_cgroup: vec![OverflowCount {
            class: Some("us-user-data".into()),
            cgroup: Some("/payments/userdata".into()),
            cgroup_id: Some(4242),
            packets: 5,
            bytes: 3000,
        }],
    }
}

/// Compares `actual` with the golden file `name` (or writes it with GOLDEN_UPDATE=1).
fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (GOLDEN_UPDATE=1 writes it)", path.display()));
    assert_eq!(actual, expected, "{} changed: a public format changed", path.display());
}

#[test]
fn record_json() {
    let lines: Vec<String> = [
        Output::Flow(flow()),
        Output::Alert(alert()),
        Output::AlertUpdate(alert_update()),
        Output::Loss(loss()),
    ]
    .iter()
    .map(|o| serde_json::to_string(o).unwrap())
    .collect();
    check("records.jsonl", &(lines.join("\n") + "\n"));
}

#[test]
fn syslog_lines() {
    let a = alert();
    let text = format!(
        "{}\n{}\n",
        syslog::message(&a, SyslogFormat::Rfc5424, Facility(4), 77),
        syslog::message(&a, SyslogFormat::Rfc3164, Facility(10), 77),
    );
    check("syslog.txt", &text);
}

#[test]
fn webhook_bodies() {
    let a = alert();
    let text =
        format!("{}\n{}\n", webhook::body(&a, WebhookFormat::Json), webhook::body(&a, WebhookFormat::Slack));
    check("webhook.txt", &text);
}

/// Every row of `table`, each column by name, in key order.
fn rows(conn: &rusqlite::Connection, sql: &str) -> String {
    let mut stmt = conn.prepare(sql).unwrap();
    let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
    let mut out = String::new();
    let mut rows = stmt.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        let mut m = Map::new();
        for (i, n) in names.iter().enumerate() {
            let v = match r.get_ref(i).unwrap() {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(n) => n.into(),
                ValueRef::Real(f) => f.into(),
                ValueRef::Text(t) => String::from_utf8_lossy(t).into(),
                ValueRef::Blob(b) => b.iter().map(|x| format!("{x:02x}")).collect::<String>().into(),
            };
            m.insert(n.clone(), v);
        }
        out.push_str(&Value::Object(m).to_string());
        out.push('\n');
    }
    out
}

/// The store written by the real writer thread from the golden records.
fn golden_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let settings = StoreSettings {
        bucket: Duration::from_secs(60),
        retention: Duration::from_secs(86400 * 365 * 100),
        prune_every: Duration::from_secs(3600),
    };
    let store = Store::start(dir.path(), settings).unwrap();
    let mut new = flow();
    (new.state, new.time, new.bytes, new.packets, new.delta_bytes, new.delta_packets) =
        (FlowState::New, at("2026-11-25T10:00:00.120Z"), 1120, 5, 1120, 5);
    for o in [
        Output::Flow(new),
        Output::Alert(alert()),
        Output::Flow(flow()),
        Output::AlertUpdate(alert_update()),
        Output::Loss(loss()),
    ] {
        store.writer.write(&Arc::new(o));
    }
    store.writer.close();
    dir
}

#[test]
fn store_rows() {
    let dir = golden_store();
    let conn = rusqlite::Connection::open(dir.path().join(crate::store::FILE)).unwrap();
    let text = rows(&conn, "SELECT * FROM flows ORDER BY bucket, flow_id")
        + &rows(&conn, "SELECT * FROM alerts ORDER BY id");
    check("store.jsonl", &text);
}

#[test]
fn clickhouse_rows() {
    let dir = golden_store();
    let text = crate::export::clickhouse::golden_rows(dir.path());
    check("clickhouse.jsonl", &text);
}
