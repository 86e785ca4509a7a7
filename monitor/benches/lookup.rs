//! Geolocation + policy per destination: a cold lookup (a new address: site table, cloud table,
//! country database) and a warm one (the per-address cache), each followed by the policy verdict,
//! as the agent does for every flow record. Uses the embedded DB-IP database and a cloud range
//! table of realistic size.

use std::{hint::black_box, net::IpAddr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use monitor::{
    config::{Config, Origin},
    enrich::{Enricher, GeoDb, fixtures},
    policy::Policy,
};

/// Deterministic public-looking addresses spread over the IPv4 space.
fn addresses(n: usize) -> Vec<IpAddr> {
    let mut x: u32 = 0x9e37_79b9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            IpAddr::from((x | 0x0100_0000).to_be_bytes())
        })
        .collect()
}

fn setup() -> (tempfile::TempDir, Enricher, Policy) {
    let dir = tempfile::tempdir().unwrap();
    // 2,000 regions' worth of /20s: the size of a provider's published file.
    let nets: Vec<String> =
        (0..2000u32).map(|i| format!("{}.{}.{}.0/20", 20 + i / 256 % 200, i % 256, (i % 16) * 16)).collect();
    let regions: Vec<(&str, &str)> = nets
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), if i % 2 == 0 { "us-east-1" } else { "eu-west-1" }))
        .collect();
    std::fs::write(dir.path().join("aws.json"), fixtures::aws_ranges(&regions)).unwrap();
    let text = format!(
        "[geoip]\ncloud_ranges = [\"{}/aws.json\"]\n\
         [[sites]]\nname = \"dc-us-east\"\ncountry = \"US\"\ncidrs = [\"10.20.0.0/16\"]\n\
         [[classes]]\nname = \"us-user-data\"\nuids = [1001]\napproved = [\"US\", \"aws:us-*\", \"dc-us-east\"]\n",
        dir.path().display()
    );
    let config = Config::parse(&text, Origin::Embedded).unwrap();
    (dir, Enricher::open(&config.enrich_options()).unwrap(), config.policy())
}

fn lookups(c: &mut Criterion) {
    let (_dir, mut enricher, policy) = setup();
    let mut group = c.benchmark_group("geolocation+policy");
    group.throughput(Throughput::Elements(1));

    // Cold: every iteration a new address (the cache is cleared by recreating the enricher
    // would cost more than the lookup; instead walk a set far larger than what we measure).
    let cold = addresses(2_000_000);
    let mut i = 0;
    group.bench_function("cold (new destination)", |b| {
        b.iter(|| {
            let ip = cold[i % cold.len()];
            i += 1;
            enricher.clear_cache();
            let d = enricher.locate(ip);
            black_box(policy.evaluate(1, &d).kind)
        })
    });

    let warm = addresses(1024);
    for ip in &warm {
        enricher.locate(*ip);
    }
    let mut j = 0;
    group.bench_function("warm (cached destination)", |b| {
        b.iter(|| {
            let ip = warm[j & 1023];
            j += 1;
            let d = enricher.locate(ip);
            black_box(policy.evaluate(1, &d).kind)
        })
    });
    group.finish();
}

/// A MaxMind DB the size of a city database: 1,000,000 IPv4 networks with a country and a
/// subdivision (200 distinct places).
fn city_sized() -> Vec<u8> {
    let places: Vec<(String, String)> = (0..200)
        .map(|i| (format!("{}{}", (b'A' + i / 26) as char, (b'A' + i % 26) as char), format!("S{i}")))
        .collect();
    let nets: Vec<String> =
        (0..1_000_000u32).map(|i| format!("{}.{}.{}.0/24", 1 + i / 65536, (i >> 8) & 255, i & 255)).collect();
    let entries: Vec<(&str, &str, &str)> = nets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let (c, s) = &places[i % places.len()];
            (n.as_str(), c.as_str(), s.as_str())
        })
        .collect();
    fixtures::geoip2_city(&entries)
}

/// Verification when a database is loaded (at start and at every reload): the search tree and
/// data section walked once.
fn verification(c: &mut Criterion) {
    let mut group = c.benchmark_group("mmdb verification");
    group.sample_size(10);
    let embedded = GeoDb::embedded_country_bytes();
    group.bench_function("embedded country (DB-IP Lite)", |b| {
        b.iter(|| black_box(GeoDb::from_memory(embedded.clone()).expect("valid")))
    });
    let city = city_sized();
    group.bench_function("city-sized (1M networks)", |b| {
        b.iter(|| black_box(GeoDb::from_memory(city.clone()).expect("valid")))
    });
    group.finish();
}

criterion_group!(benches, lookups, verification);
criterion_main!(benches);
