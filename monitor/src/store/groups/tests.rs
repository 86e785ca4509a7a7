//! The per-group sums answer every grouped question exactly as the flow rows do.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde_json::{Map, Value};

use crate::{
    record::{Destination, FlowRecord, FlowState, Output, Timestamp, VerdictKind},
    store::{Store, StoreSettings, query::FlowQuery},
};

const BUCKET: i64 = 60;

fn settings() -> StoreSettings {
    StoreSettings {
        bucket: Duration::from_secs(BUCKET as u64),
        retention: Duration::from_secs(86_400),
        prune_every: Duration::from_secs(3600),
    }
}

/// 120 flows over the last 12 buckets: each has records in a few buckets, with gaps (an idle
/// connection), some more than one record in a bucket; classes, countries, processes and ports
/// vary between flows.
fn records(now: DateTime<Utc>) -> Vec<Output> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let start = now.timestamp().div_euclid(BUCKET) * BUCKET - 11 * BUCKET;
    let mut out = Vec::new();
    for f in 0..120u64 {
        let country = ["US", "CN", "DE"][(f % 3) as usize];
        let place = Destination { country: Some(country.into()), internal: f % 7 == 0, ..Default::default() };
        let mut r = FlowRecord::sample(&format!("198.51.100.{}", f % 9), 443 + (f % 4) as u16, place);
        r.flow_id = format!("flow-{f}");
        r.source.port = Some(40_000 + f as u16);
        r.class = [None, Some("us-user-data".into()), Some("billing".into())][(f % 3) as usize].clone();
        r.verdict = if country == "US" { VerdictKind::Allowed } else { VerdictKind::Violation };
        (r.process.comm, r.process.pid) =
            (Some(["api", "curl"][(f % 2) as usize].into()), Some(100 + (f % 5) as u32));
        let first = next(6) as i64;
        let mut bucket = first;
        let mut state = FlowState::New;
        r.first_seen = Timestamp(DateTime::from_timestamp(start + first * BUCKET + 1, 0).unwrap());
        while bucket < 12 {
            for k in 0..=next(2) {
                let mut rec = r.clone();
                rec.state = state;
                rec.time =
                    Timestamp(DateTime::from_timestamp(start + bucket * BUCKET + 2 + k as i64, 0).unwrap());
                rec.last_seen = rec.time;
                (rec.delta_bytes, rec.delta_packets) = (100 + next(1000), 1 + next(5));
                out.push(Output::Flow(rec));
                state = FlowState::Active;
            }
            bucket += 1 + next(4) as i64;
        }
    }
    // The writer sees records in time order, as the agent sends them.
    out.sort_by_key(|o| match o {
        Output::Flow(r) => r.time.0,
        _ => now,
    });
    out
}

fn store(records: Vec<Output>) -> (tempfile::TempDir, crate::store::StoreReader) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::start(dir.path(), settings()).unwrap();
    for r in records {
        store.writer.write(&Arc::new(r));
    }
    let reader = store.reader.clone();
    store.writer.close();
    (dir, reader)
}

/// The answer as (group, bytes, packets, flows), sorted.
fn answer(rows: Vec<Map<String, Value>>, columns: &[&str]) -> Vec<(String, i64, i64, i64)> {
    let mut v: Vec<_> = rows
        .into_iter()
        .map(|r| {
            let group: Vec<String> = columns.iter().map(|c| r[*c].to_string()).collect();
            let n = |k: &str| r[k].as_i64().unwrap();
            (group.join("|"), n("bytes"), n("packets"), n("flows"))
        })
        .collect();
    v.sort();
    v
}

/// The same question asked of the flow rows directly.
fn reference(
    conn: &Connection,
    q: &FlowQuery,
    first_bucket: i64,
    until: i64,
    filter: &str,
) -> Vec<(String, i64, i64, i64)> {
    let columns: Vec<&str> = q.group_by.iter().flat_map(|g| g.columns().iter().copied()).collect();
    let sql = format!(
        "SELECT {cols}, SUM(bytes), SUM(packets), COUNT(DISTINCT flow_id) FROM flows
         WHERE bucket >= ?1 AND bucket < ?2 {filter} GROUP BY {cols}",
        cols = columns.join(", ")
    );
    let mut stmt = conn.prepare(&sql).unwrap();
    let rows = stmt
        .query_map([first_bucket, until + 1], |r| {
            let mut m = Map::new();
            for (i, c) in columns.iter().enumerate() {
                let v: rusqlite::types::Value = r.get(i)?;
                m.insert(
                    (*c).into(),
                    match v {
                        rusqlite::types::Value::Integer(n) if *c == "internal" => Value::from(n != 0),
                        rusqlite::types::Value::Integer(n) => Value::from(n),
                        rusqlite::types::Value::Text(t) => Value::from(t),
                        _ => Value::Null,
                    },
                );
            }
            m.insert("bytes".into(), Value::from(r.get::<_, i64>(columns.len())?));
            m.insert("packets".into(), Value::from(r.get::<_, i64>(columns.len() + 1)?));
            m.insert("flows".into(), Value::from(r.get::<_, i64>(columns.len() + 2)?));
            Ok(m)
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    answer(rows, &columns)
}

fn check(conn: &Connection, now: DateTime<Utc>) {
    let filters = [
        ("", ""),
        ("&class=us-user-data", "AND class = 'us-user-data'"),
        ("&country=cn", "AND country = 'CN'"),
        ("&comm=curl", "AND comm = 'curl'"),
        ("&port=444", "AND dst_port = 444"),
        (
            "&dst=198.51.100.0/30",
            "AND dst_ip IN ('198.51.100.0', '198.51.100.1', '198.51.100.2', '198.51.100.3')",
        ),
        ("&verdict=violation", "AND verdict = 'violation'"),
    ];
    let mut compared = 0;
    for key in ["class", "country", "cloud_region", "site", "destination", "process", "class,country"] {
        for back in [0i64, 1, 3, 7, 11] {
            for (param, filter) in filters {
                let since = (now - chrono::Duration::seconds(back * BUCKET)).to_rfc3339();
                let params: Vec<(String, String)> =
                    form_urlencoded::parse(format!("group_by={key}&limit=10000{param}").as_bytes())
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .chain([("since".to_owned(), since), ("until".to_owned(), now.to_rfc3339())])
                        .collect();
                let q = FlowQuery::parse(&params, now).unwrap();
                let columns: Vec<&str> =
                    q.group_by.iter().flat_map(|g| g.columns().iter().copied()).collect();
                let first_bucket = q.since.timestamp().div_euclid(BUCKET) * BUCKET;
                let got = answer(q.run(conn, Duration::from_secs(BUCKET as u64)).unwrap(), &columns);
                let want = reference(conn, &q, first_bucket, q.until.timestamp(), filter);
                assert!(!want.is_empty() || !filter.is_empty(), "group_by={key} back={back}: no data");
                assert_eq!(got, want, "group_by={key} back={back}{param}");
                compared += want.len();
            }
        }
    }
    assert!(compared > 1000, "only {compared} groups compared");
}

#[test]
fn grouped_answers_equal_the_flow_rows() {
    let now = Utc::now();
    let (_d, reader) = store(records(now));
    let conn = reader.connect().unwrap();
    let spanning: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM (SELECT flow_id FROM flows GROUP BY flow_id HAVING COUNT(*) > 2 AND MAX(bucket) - MIN(bucket) > 3 * 60)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(spanning > 20, "the test data has flows over several buckets with gaps ({spanning})");
    check(&conn, now);
}

#[test]
fn migration_fills_the_groups_from_stored_flows() {
    let now = Utc::now();
    let (dir, _reader) = store(records(now));
    let path = dir.path().join(crate::store::FILE);
    let mut conn = Connection::open(&path).unwrap();
    // Back to schema 4, as a store written by the previous version: then migrate again.
    conn.execute_batch(
        "DROP TABLE flow_groups; CREATE INDEX flows_by_class ON flows (class, bucket);
         CREATE INDEX flows_by_verdict ON flows (verdict, bucket); ALTER TABLE alerts DROP COLUMN tid;
         ALTER TABLE alerts DROP COLUMN cgroup_id; ALTER TABLE alerts DROP COLUMN internal;
         ALTER TABLE alerts DROP COLUMN action; ALTER TABLE flows DROP COLUMN domain;
         ALTER TABLE flows DROP COLUMN cname_chain; ALTER TABLE alerts DROP COLUMN domain;
         ALTER TABLE alerts DROP COLUMN cname_chain; DROP TABLE agent_runs; DROP TABLE reports;
         DROP TABLE configurations; DROP TABLE run_counters; DROP TABLE prunes;
         DROP TABLE writer_progress;
         PRAGMA user_version = 4;",
    )
    .unwrap();
    super::super::migrations::migrate(&mut conn).unwrap();
    check(&conn, now);
}

fn ask(conn: &Connection, q: &str, now: DateTime<Utc>) -> Vec<(String, i64, i64, i64)> {
    let params: Vec<(String, String)> =
        form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let q = FlowQuery::parse(&params, now).unwrap();
    let columns: Vec<&str> = q.group_by.iter().flat_map(|g| g.columns().iter().copied()).collect();
    answer(q.run(conn, Duration::from_secs(BUCKET as u64)).unwrap(), &columns)
}

#[test]
fn a_flow_that_changes_group_counts_once_and_a_clock_step_back_adds_no_row() {
    let now = Utc::now();
    let b0 = now.timestamp().div_euclid(BUCKET) * BUCKET - 5 * BUCKET;
    let at = |t: i64| Timestamp(DateTime::from_timestamp(t, 0).unwrap());
    let place = Destination { country: Some("CN".into()), ..Default::default() };
    let mut first = FlowRecord::sample("175.16.199.1", 443, place);
    (first.time, first.first_seen, first.last_seen) = (at(b0 + 1), at(b0 + 1), at(b0 + 1));
    (first.delta_bytes, first.delta_packets) = (100, 1);
    // Reclassified in the next bucket ...
    let mut second = first.clone();
    (second.state, second.class, second.verdict) =
        (FlowState::Active, Some("billing".into()), VerdictKind::Violation);
    (second.time, second.last_seen, second.delta_bytes) = (at(b0 + BUCKET + 1), at(b0 + BUCKET + 1), 200);
    // ... then the wall clock steps back into the first bucket.
    let mut third = second.clone();
    (third.time, third.last_seen, third.delta_bytes) = (at(b0 + 2), at(b0 + 2), 300);
    let (_d, reader) = store(vec![Output::Flow(first), Output::Flow(second), Output::Flow(third)]);
    let conn = reader.connect().unwrap();
    let rows: Vec<(i64, i64)> = conn
        .prepare("SELECT bucket, bytes FROM flows ORDER BY bucket")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, [(b0, 100), (b0 + BUCKET, 500)], "the late record joins the flow's newest row");
    let since = format!("since={}", DateTime::from_timestamp(b0, 0).unwrap().format("%Y-%m-%dT%H:%M:%SZ"));
    assert_eq!(ask(&conn, &format!("{since}&group_by=country"), now), [("\"CN\"|false".into(), 600, 3, 1)]);
    assert_eq!(
        ask(&conn, &format!("{since}&group_by=class"), now),
        [("\"billing\"".into(), 500, 2, 0), ("null".into(), 100, 1, 1)],
        "counted once, in its first group; the bytes where they were sent"
    );
    let later =
        format!("since={}", DateTime::from_timestamp(b0 + BUCKET, 0).unwrap().format("%Y-%m-%dT%H:%M:%SZ"));
    assert_eq!(ask(&conn, &format!("{later}&group_by=class"), now), [("\"billing\"".into(), 500, 2, 1)]);
}
