//! The store: how many flow records per second its writer commits, and how long a grouped
//! question (`/v1/flows?group_by=...`) takes against a store of a million flow rows. The API
//! under load (`cargo xtask bench`, step `api-load`) measures the same end to end.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use monitor::{
    pipeline::flow_id,
    record::{Destination, FlowRecord, Output, VerdictKind},
    store::{Store, StoreSettings, query::FlowQuery},
};

const ROWS: u64 = 1_000_000;
const BATCH: u64 = 50_000;

fn settings() -> StoreSettings {
    StoreSettings {
        bucket: Duration::from_secs(60),
        retention: Duration::from_secs(86_400),
        prune_every: Duration::from_secs(3600),
    }
}

/// The `i`th new flow: one of three classes, 200 destination ports, four countries.
fn record(i: u64) -> Output {
    let country = ["US", "CN", "DE", "BR"][(i % 4) as usize];
    let place = Destination { country: Some(country.into()), ..Default::default() };
    let mut r = FlowRecord::sample("10.99.0.2", 20_000 + (i % 200) as u16, place);
    // The agent's ids: new flows arrive in the order they started, one every 50 µs.
    let mut key = monitor_common::FlowKey::ZERO;
    key.sport = (i % 60_000) as u16;
    key.dport = 20_000 + (i % 200) as u16;
    r.flow_id = flow_id(&key, 1_000_000_000 + i * 50_000);
    r.source.port = Some((i % 60_000) as u16);
    r.class = Some(["us-user-data", "eu-user-data", "billing"][(i % 3) as usize].into());
    r.verdict = if country == "US" { VerdictKind::Allowed } else { VerdictKind::Violation };
    Output::Flow(r)
}

/// Writes records `from..to` and waits until they are committed.
fn write(dir: &std::path::Path, from: u64, to: u64) -> Duration {
    let records: Vec<Arc<Output>> = (from..to).map(|i| Arc::new(record(i))).collect();
    let store = Store::start(dir, settings()).unwrap();
    let t = Instant::now();
    for r in &records {
        // The writer's queue holds 100,000 records: a batch fits.
        store.writer.write(r);
    }
    store.writer.close();
    let elapsed = t.elapsed();
    assert_eq!(store.counters.dropped.load(std::sync::atomic::Ordering::Relaxed), 0, "records dropped");
    elapsed
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut next = 0u64;
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    group.bench_function("write new flows", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += write(dir.path(), next, next + BATCH);
                next += BATCH;
            }
            total
        })
    });
    group.finish();

    // Fill up to a million rows, then ask grouped questions.
    while next < ROWS {
        write(dir.path(), next, (next + BATCH).min(ROWS));
        next += BATCH;
    }
    let reader = Store::start(dir.path(), settings()).unwrap().reader;
    let conn = reader.connect().unwrap();
    let mut group = c.benchmark_group("store query");
    group.sample_size(10);
    for key in ["country", "class", "process", "destination"] {
        let params = vec![("since".to_owned(), "1h".to_owned()), ("group_by".to_owned(), key.to_owned())];
        group.bench_function(format!("group_by={key}, 1M rows"), |b| {
            b.iter(|| {
                let q = FlowQuery::parse(&params, chrono::Utc::now()).unwrap();
                let rows = q.run(&conn, reader.bucket).unwrap();
                assert!(!rows.is_empty());
                rows
            })
        });
    }
    group.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
