use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use super::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn options(since: &str, until: &str, now: &str) -> ReportOptions {
    ReportOptions {
        host: "h1".into(),
        agent_version: "0.1.0".into(),
        own: Configuration {
            at_ms: t(now).timestamp_millis(),
            cause: "report".into(),
            digest: "sha256:00".into(),
            classes: vec!["us".into(), "eu".into()],
            sources: vec![("country".into(), "embedded".into())],
        },
        since: t(since),
        until: t(until),
        class: None,
        bucket_secs: 60,
        now: t(now),
    }
}

fn row(
    c: &Connection,
    bucket: i64,
    flow: &str,
    class: Option<&str>,
    verdict: &str,
    place: (&str, &str),
    bytes: i64,
) {
    let (country, site) = match place {
        ("site", s) => (Some("US"), Some(s)),
        (_, country) => (Some(country), None),
    };
    c.execute(
        "INSERT INTO flows (bucket, flow_id, host, class, verdict, direction, protocol, src_ip, dst_ip, dst_bin, country, site, internal, uid, bytes, packets, first_seen, last_seen)
         VALUES (?1, ?2, 'h1', ?3, ?4, 'outbound', 'tcp', '10.0.0.1', '192.0.2.1', x'00', ?5, ?6, 0, 0, ?7, 1, '2026-11-01T00:00:00.000Z', '2026-11-01T00:00:00.000Z')",
        params![bucket, flow, class, verdict, country, site, bytes],
    )
    .unwrap();
}

fn run(c: &Connection, started: &str, last_seen: &str, ended: Option<&str>, kind: &str) {
    let ms = |s: &str| t(s).timestamp_millis();
    c.execute(
        "INSERT INTO agent_runs (started_ms, last_seen_ms, ended_ms, start_kind, attached_since_ms, version, store_dropped, geolocation_errors)
         VALUES (?1, ?2, ?3, ?4, ?1, '0.1.0', 2, 1)",
        params![ms(started), ms(last_seen), ended.map(ms), kind],
    )
    .unwrap();
}

#[test]
fn sums_per_class_and_place_with_violations_and_a_digest_of_the_rows() {
    let c = crate::store::open_in_memory().unwrap();
    let b = t("2026-11-01T00:00:00Z").timestamp();
    row(&c, b, "f1", Some("us"), "allowed", ("country", "US"), 1000);
    row(&c, b + 60, "f1", Some("us"), "allowed", ("country", "US"), 500);
    row(&c, b, "f2", Some("us"), "violation", ("country", "CN"), 300);
    row(&c, b, "f3", Some("us"), "allowed", ("site", "dc-us-east"), 20);
    row(&c, b, "f4", None, "unclassified", ("country", "CN"), 7);
    // Outside the period.
    row(&c, b + 3600, "f5", Some("us"), "violation", ("country", "CN"), 99);
    // A bucket still open when the report is made is left out.
    row(&c, b + 540, "f6", Some("us"), "allowed", ("country", "US"), 5);
    let o = options("2026-11-01T00:00:30Z", "2026-11-01T00:10:00Z", "2026-11-01T00:09:02Z");
    let r = build(&c, &o).unwrap();
    assert_eq!(r.counted_from, "2026-11-01T00:00:00.000Z");
    assert_eq!(r.counted_until, "2026-11-01T00:08:00.000Z");
    let us = &r.classes.iter().find(|c| c.class == "us").unwrap();
    assert_eq!((us.bytes, us.flows), (1820, 3));
    let places: Vec<(&str, Option<&str>, u64, u64)> = us
        .destinations
        .iter()
        .map(|p| (p.kind.as_str(), p.name.as_deref(), p.bytes, p.violation_bytes))
        .collect();
    assert_eq!(
        places,
        [
            ("country", Some("US"), 1500, 0),
            ("country", Some("CN"), 300, 300),
            ("site", Some("dc-us-east"), 20, 0)
        ]
    );
    assert_eq!((us.violations.flows, us.violations.bytes), (1, 300));
    // A class that sent nothing is listed with zeros.
    assert_eq!(r.classes.iter().find(|c| c.class == "eu").unwrap().bytes, 0);
    assert_eq!(r.unclassified.as_ref().unwrap().bytes, 7);
    assert_eq!(r.rows.count, 5);
    // The digest follows the rows: a changed byte count changes it.
    let before = r.rows.digest.clone();
    c.execute("UPDATE flows SET bytes = 301 WHERE flow_id = 'f2'", []).unwrap();
    assert_ne!(build(&c, &o).unwrap().rows.digest, before);
}

#[test]
fn coverage_names_each_interval_without_an_agent_and_whether_the_kernel_counted() {
    let c = crate::store::open_in_memory().unwrap();
    run(&c, "2026-11-01T00:00:00Z", "2026-11-01T01:00:00Z", Some("2026-11-01T01:00:00Z"), "fresh");
    // Stopped 14 s; the next agent adopted the pinned programs.
    run(&c, "2026-11-01T01:00:14Z", "2026-11-01T02:00:00Z", None, "adopted");
    // Its heartbeat stopped (killed) 10 minutes before a fresh start: nothing counted.
    run(&c, "2026-11-01T02:10:00Z", "2026-11-01T02:59:59Z", None, "fresh");
    // Loss counters as the heartbeats recorded them: run 1 had dropped 2 records (and failed
    // 1 lookup) before the period began, 5 (1) in all.
    for (run, at, dropped, errors) in [
        (1, "2026-11-01T00:10:00Z", 2, 1),
        (1, "2026-11-01T00:45:00Z", 5, 1),
        (2, "2026-11-01T01:30:00Z", 2, 3),
        (3, "2026-11-01T02:20:00Z", 1, 0),
    ] {
        c.execute(
            "INSERT INTO run_counters (run_id, at_ms, store_dropped, geolocation_errors) VALUES (?1, ?2, ?3, ?4)",
            params![run, t(at).timestamp_millis(), dropped, errors],
        )
        .unwrap();
    }
    let o = options("2026-11-01T00:30:00Z", "2026-11-01T03:30:00Z", "2026-11-01T03:30:00Z");
    let r = build(&c, &o).unwrap();
    let cv = &r.coverage;
    let gaps: Vec<(&str, &str, u64, Option<bool>)> = cv
        .agent_not_running
        .iter()
        .map(|g| (g.from.as_str(), g.until.as_str(), g.ms, g.kernel_counting))
        .collect();
    assert_eq!(
        gaps,
        [
            ("2026-11-01T01:00:00.000Z", "2026-11-01T01:00:14.000Z", 14_000, Some(true)),
            ("2026-11-01T02:00:00.000Z", "2026-11-01T02:10:00.000Z", 600_000, Some(false)),
            // The last heartbeat is old and no agent started since; up to the end of the
            // summed buckets (the one holding now, 03:30, minus 3 s, was not over).
            ("2026-11-01T02:59:59.000Z", "2026-11-01T03:29:00.000Z", 1_741_000, None),
        ]
    );
    assert_eq!(cv.agent_not_running_ms, 14_000 + 600_000 + 1_741_000);
    assert_eq!(cv.blind_ms, 600_000);
    // Those of the period only: 3 + 2 + 1 dropped, 0 + 3 + 0 lookups failed.
    assert_eq!((cv.runs, cv.store_dropped, cv.geolocation_errors), (3, 6, 3));
    // A period after run 1's first hour: its later growth only.
    let later =
        build(&c, &options("2026-11-01T00:40:00Z", "2026-11-01T00:50:00Z", "2026-11-01T03:30:00Z")).unwrap();
    assert_eq!((later.coverage.store_dropped, later.coverage.geolocation_errors), (3, 0));
}

#[test]
fn a_report_names_the_configurations_the_agent_recorded_over_its_period() {
    let c = crate::store::open_in_memory().unwrap();
    let config = |at: &str, cause: &str, digest: &str, classes: &str| {
        c.execute(
            "INSERT INTO configurations (at_ms, cause, digest, classes, sources) VALUES (?1, ?2, ?3, ?4, '[[\"country\",\"x\"]]')",
            params![t(at).timestamp_millis(), cause, digest, classes],
        )
        .unwrap();
    };
    config("2026-11-01T00:00:00Z", "start", "sha256:a", r#"["us"]"#);
    config("2026-11-01T00:05:00Z", "reload", "sha256:b", r#"["us","gone"]"#);
    // After the summed buckets (which end at 00:08).
    config("2026-11-01T00:09:00Z", "reload", "sha256:c", r#"["us","later"]"#);
    let o = options("2026-11-01T00:01:00Z", "2026-11-01T00:10:00Z", "2026-11-01T00:08:10Z");
    let r = build(&c, &o).unwrap();
    let named: Vec<(&str, &str, &str)> =
        r.configurations.iter().map(|c| (c.from.as_str(), c.cause.as_str(), c.digest.as_str())).collect();
    assert_eq!(
        named,
        [
            ("2026-11-01T00:00:00.000Z", "start", "sha256:a"),
            ("2026-11-01T00:05:00.000Z", "reload", "sha256:b")
        ]
    );
    assert_eq!(r.configurations[0].sources[0].description, "x");
    // Its classes are those of the configurations in force, not the report maker's (us, eu).
    let classes: Vec<&str> = r.classes.iter().map(|c| c.class.as_str()).collect();
    assert_eq!(classes, ["gone", "us"]);
    let asking = |class: &str| {
        build(
            &c,
            &ReportOptions {
                class: Some(class.into()),
                ..options("2026-11-01T00:01:00Z", "2026-11-01T00:10:00Z", "2026-11-01T00:08:10Z")
            },
        )
    };
    assert!(asking("gone").is_ok());
    let e = asking("eu").unwrap_err().to_string();
    assert!(e.contains("--class eu: no such class") && e.contains("us, gone"), "{e}");
}

#[test]
fn without_a_recorded_configuration_the_report_names_its_own() {
    let c = crate::store::open_in_memory().unwrap();
    let r =
        build(&c, &options("2026-11-01T00:01:00Z", "2026-11-01T00:10:00Z", "2026-11-01T00:10:10Z")).unwrap();
    assert_eq!(r.configurations.len(), 1);
    assert_eq!(
        (r.configurations[0].cause.as_str(), r.configurations[0].digest.as_str()),
        ("report", "sha256:00")
    );
}

#[test]
fn kernel_losses_are_the_growth_over_the_period_across_a_new_program_set() {
    let c = crate::store::open_in_memory().unwrap();
    let loss = |at: &str, drops: u64, overflow_bytes: u64| {
        let record = serde_json::json!({"ringbuf_drops": drops, "overflow_bytes": overflow_bytes});
        c.execute(
            "INSERT INTO losses (time, time_unix, host, overflow_packets, overflow_bytes, record) VALUES (?1, ?2, 'h1', 0, ?3, ?4)",
            params![at, t(at).timestamp(), overflow_bytes as i64, record.to_string()],
        )
        .unwrap();
    };
    // Before the period: 10 drops, 1000 bytes.
    loss("2026-11-01T00:00:00Z", 10, 1000);
    loss("2026-11-01T00:20:00Z", 15, 1500);
    // A fresh program set at 00:40 (nothing was pinned): its totals start again and pass the
    // old ones before its first record.
    run(&c, "2026-11-01T00:00:00Z", "2026-11-01T00:39:00Z", Some("2026-11-01T00:39:00Z"), "adopted");
    run(&c, "2026-11-01T00:40:00Z", "2026-11-01T02:00:00Z", None, "fresh");
    loss("2026-11-01T00:50:00Z", 20, 1600);
    // An adopted set goes on counting.
    loss("2026-11-01T01:10:00Z", 22, 1700);
    // After the period.
    loss("2026-11-01T02:10:00Z", 99, 9999);
    let r =
        build(&c, &options("2026-11-01T00:10:00Z", "2026-11-01T01:30:00Z", "2026-11-01T03:00:00Z")).unwrap();
    let k = &r.coverage.kernel_losses;
    // 15 - 10, then 20 from zero, then 22 - 20; the bytes alike.
    assert_eq!((k.ringbuf_drops, k.overflow_bytes), (5 + 20 + 2, 500 + 1600 + 100));
    // Two reports that follow each other count each loss once.
    let drops = |since, until| {
        build(&c, &options(since, until, "2026-11-01T03:00:00Z"))
            .unwrap()
            .coverage
            .kernel_losses
            .ringbuf_drops
    };
    assert_eq!(
        drops("2026-11-01T00:10:00Z", "2026-11-01T00:50:00Z")
            + drops("2026-11-01T00:50:00Z", "2026-11-01T01:30:00Z"),
        27
    );
    // A loss record that cannot be read fails the report instead of counting as zeros.
    c.execute("UPDATE losses SET record = 'not json' WHERE time = '2026-11-01T00:50:00Z'", []).unwrap();
    let e = build(&c, &options("2026-11-01T00:10:00Z", "2026-11-01T01:30:00Z", "2026-11-01T03:00:00Z"));
    assert!(e.unwrap_err().to_string().contains("loss record of 2026-11-01T00:50:00.000Z cannot be read"));
}

#[test]
fn a_period_before_what_retention_pruned_is_refused() {
    let c = crate::store::open_in_memory().unwrap();
    c.execute(
        "INSERT INTO prunes (at_ms, cutoff, rows) VALUES (?1, ?2, 10)",
        params![t("2026-11-01T02:00:00Z").timestamp_millis(), t("2026-11-01T01:00:30Z").timestamp()],
    )
    .unwrap();
    let e = build(&c, &options("2026-11-01T01:00:00Z", "2026-11-01T02:00:00Z", "2026-11-01T03:00:00Z"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no longer holds the rows before 2026-11-01T01:00:30.000Z")
            && e.contains("a report from 2026-11-01T01:01:00.000Z on can be made"),
        "{e}"
    );
    assert!(
        build(&c, &options("2026-11-01T01:01:00Z", "2026-11-01T02:00:00Z", "2026-11-01T03:00:00Z")).is_ok()
    );
}

#[test]
fn the_rows_digest_tells_a_null_from_its_text_and_a_tab_inside_a_value_from_a_separator() {
    let c = crate::store::open_in_memory().unwrap();
    let b = t("2026-11-01T00:00:00Z").timestamp();
    row(&c, b, "f1", Some("us"), "allowed", ("country", "US"), 1000);
    let digest = || rows_digest(&c, b, b + 60, None).unwrap().1;
    let null = digest();
    c.execute("UPDATE flows SET cloud_region = '\\N'", []).unwrap();
    let text = digest();
    assert_ne!(null, text);
    // A tab inside one value or the other: the same text without escapes.
    c.execute("UPDATE flows SET cloud_provider = 'x' || char(9) || 'y', cloud_region = 'z'", []).unwrap();
    let first = digest();
    c.execute("UPDATE flows SET cloud_provider = 'x', cloud_region = 'y' || char(9) || 'z'", []).unwrap();
    assert_ne!(first, digest());
}

#[test]
fn while_the_agent_runs_a_report_ends_where_its_writer_has_written_everything() {
    let c = crate::store::open_in_memory().unwrap();
    // Running now (its heartbeat fresh); its writer caught up with what was made until 00:05:30.
    run(&c, "2026-11-01T00:00:00Z", "2026-11-01T00:09:01Z", None, "fresh");
    c.execute("UPDATE writer_progress SET settled_ms = ?1", [t("2026-11-01T00:05:30Z").timestamp_millis()])
        .unwrap();
    let o = options("2026-11-01T00:00:00Z", "2026-11-01T00:10:00Z", "2026-11-01T00:09:02Z");
    assert_eq!(build(&c, &o).unwrap().counted_until, "2026-11-01T00:05:00.000Z");
    // Once no agent runs, nothing more comes: up to the last finished bucket.
    c.execute("UPDATE agent_runs SET ended_ms = ?1", [t("2026-11-01T00:09:01Z").timestamp_millis()]).unwrap();
    assert_eq!(build(&c, &o).unwrap().counted_until, "2026-11-01T00:08:00.000Z");
}
