//! A report from the store: the flow rows of the period summed per class and place, the alerts
//! raised, the loss records, and the agent's runs (coverage).

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, params, types::Value as SqlValue};
use sha2::{Digest, Sha256};

use super::{
    ClassReport, Coverage, FORMAT, Gap, InForce, KIND, KernelLosses, Place, Report, Rows, Source, Totals,
    Violations,
};
use crate::store::{
    configs::{Configuration, in_force},
    runs::{STALE_MS, counters_grown, runs, writer_settled},
};

/// What a report is about and what it says of its host.
pub struct ReportOptions {
    pub host: String,
    pub agent_version: String,
    /// The configuration the report is made with: named as in force only when the store
    /// holds none the agent recorded for the period.
    pub own: Configuration,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub class: Option<String>,
    /// The store's bucket length, in seconds.
    pub bucket_secs: i64,
    /// When the report is made (a running agent counts as running up to then).
    pub now: DateTime<Utc>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The first store bucket (Unix seconds) that pruning at `cutoff` left whole.
pub fn first_kept_bucket(cutoff: i64, bucket_secs: i64) -> i64 {
    (cutoff + bucket_secs - 1).div_euclid(bucket_secs) * bucket_secs
}

pub(super) fn ms_time(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).map(rfc3339).unwrap_or_default()
}

/// The flow rows a report sums: those of whole, finished store buckets, from the one holding
/// `since` up to (not including) `end`, of one class or all.
const ROWS: &str =
    "SELECT bucket, flow_id, class, verdict, dst_ip, dst_port, country, cloud_provider, cloud_region,
        site, internal, bytes, packets FROM flows
     WHERE bucket >= ?1 AND bucket < ?2 AND (?3 IS NULL OR class = ?3) ORDER BY bucket, flow_id";

/// A bucket is final this long after it ended: records reach the store within the writer's
/// batching delay (as the ClickHouse export waits).
pub const SETTLE_SECS: i64 = 3;

/// One flow row as a report reads it.
pub struct Row {
    class: Option<String>,
    violation: bool,
    flow_id: String,
    place: (String, Option<String>),
    bytes: u64,
    packets: u64,
}

/// The rows of a period, each folded into the digest as it is read: SHA-256 over each row's
/// values, as text, separated by tabs, one row per line, in bucket and flow order (as
/// PostgreSQL's COPY writes them: NULL as `\N`, a backslash, tab, newline or carriage return in
/// a text as `\\`, `\t`, `\n`, `\r`; bytes as `\x` and hex), so that no two row sets share
/// one text. Returns the count, the digest and the rows.
pub fn rows_digest(
    conn: &Connection,
    first_bucket: i64,
    end: i64,
    class: Option<&str>,
) -> rusqlite::Result<(u64, String, Vec<Row>)> {
    let mut stmt = conn.prepare(ROWS)?;
    let mut h = Sha256::new();
    let mut out = Vec::new();
    let mut rows = stmt.query(params![first_bucket, end, class])?;
    while let Some(r) = rows.next()? {
        let values: Vec<SqlValue> = (0..13).map(|i| r.get(i)).collect::<Result<_, _>>()?;
        let line: Vec<String> = values
            .iter()
            .map(|v| match v {
                SqlValue::Null => "\\N".to_owned(),
                SqlValue::Integer(n) => n.to_string(),
                SqlValue::Real(f) => f.to_string(),
                SqlValue::Text(t) => {
                    t.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n").replace('\r', "\\r")
                }
                SqlValue::Blob(b) => {
                    "\\x".to_owned() + &b.iter().map(|x| format!("{x:02x}")).collect::<String>()
                }
            })
            .collect();
        h.update(line.join("\t").as_bytes());
        h.update(b"\n");
        let text = |i: usize| if let SqlValue::Text(t) = &values[i] { Some(t.clone()) } else { None };
        let int = |i: usize| if let SqlValue::Integer(n) = &values[i] { *n } else { 0 };
        let place = if let Some(site) = text(9) {
            ("site".to_owned(), Some(site))
        } else if let Some(region) = text(8) {
            ("cloud_region".to_owned(), Some(format!("{}:{region}", text(7).unwrap_or_default())))
        } else if int(10) != 0 {
            ("internal".to_owned(), None)
        } else if let Some(country) = text(6) {
            ("country".to_owned(), Some(country))
        } else {
            ("unknown".to_owned(), None)
        };
        out.push(Row {
            class: text(2),
            violation: text(3).as_deref() == Some("violation"),
            flow_id: text(1).unwrap_or_default(),
            place,
            bytes: int(11).max(0) as u64,
            packets: int(12).max(0) as u64,
        });
    }
    let digest = super::sha256_text(&h.finalize());
    Ok((out.len() as u64, digest, out))
}

/// The report of `o`'s period, not yet numbered, chained or signed.
pub fn build(conn: &Connection, o: &ReportOptions) -> anyhow::Result<Report> {
    // Whole buckets only, and only those that were final when the report was made: a row of
    // a bucket still open would change after the report and fail `verify --store`.
    let floor = |t: i64| t.div_euclid(o.bucket_secs) * o.bucket_secs;
    let first_bucket = floor(o.since.timestamp());
    // While an agent runs, its writer may still hold records of the last seconds (a backlog):
    // no bucket past what it has written.
    let mut last = o.until.timestamp().min(o.now.timestamp() - SETTLE_SECS);
    if let Some(settled) = writer_settled(conn, o.now.timestamp_millis())? {
        last = last.min(settled.div_euclid(1000));
    }
    let end = floor(last).max(first_bucket);
    if let Some((cutoff, at)) = crate::store::pruned_before(conn)?
        && first_bucket < cutoff
    {
        anyhow::bail!(
            "the store no longer holds the rows before {} (pruned at {} after [store] retention): a report from {} on can be made",
            ms_time(cutoff * 1000),
            ms_time(at),
            ms_time(first_kept_bucket(cutoff, o.bucket_secs) * 1000)
        );
    }
    let mut configurations = in_force(conn, first_bucket * 1000, end.max(first_bucket + 1) * 1000)?;
    if configurations.is_empty() {
        configurations.push(o.own.clone());
    }
    // Every class of a configuration in force, traffic or not.
    let mut names: Vec<&String> = Vec::new();
    for n in configurations.iter().flat_map(|c| &c.classes) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    if let Some(c) = &o.class
        && !names.contains(&c)
    {
        anyhow::bail!(
            "--class {c}: no such class in the configurations in force over the period (classes: {})",
            names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    let (count, digest, rows) = rows_digest(conn, first_bucket, end, o.class.as_deref())?;
    let mut classes: BTreeMap<String, ClassReport> = BTreeMap::new();
    for name in names.into_iter().filter(|n| o.class.as_ref().is_none_or(|c| c == *n)) {
        classes.insert(name.clone(), empty_class(name));
    }
    let mut unclassified = Totals::default();
    let mut flows_seen: HashSet<(Option<String>, String)> = HashSet::new();
    let mut place_flows: HashSet<(Option<String>, String, Option<String>, String)> = HashSet::new();
    let mut violating: HashSet<(String, String)> = HashSet::new();
    for r in rows {
        let new_flow = flows_seen.insert((r.class.clone(), r.flow_id.clone()));
        let Some(class) = &r.class else {
            unclassified.bytes += r.bytes;
            unclassified.packets += r.packets;
            unclassified.flows += new_flow as u64;
            continue;
        };
        let c = classes.entry(class.clone()).or_insert_with(|| empty_class(class));
        c.bytes += r.bytes;
        c.packets += r.packets;
        c.flows += new_flow as u64;
        let new_in_place =
            place_flows.insert((r.class.clone(), r.place.0.clone(), r.place.1.clone(), r.flow_id.clone()));
        let p = match c.destinations.iter_mut().position(|p| (&p.kind, &p.name) == (&r.place.0, &r.place.1)) {
            Some(i) => &mut c.destinations[i],
            None => {
                c.destinations.push(Place {
                    kind: r.place.0.clone(),
                    name: r.place.1.clone(),
                    bytes: 0,
                    packets: 0,
                    flows: 0,
                    violation_bytes: 0,
                });
                c.destinations.last_mut().expect("just pushed")
            }
        };
        p.bytes += r.bytes;
        p.packets += r.packets;
        p.flows += new_in_place as u64;
        if r.violation {
            p.violation_bytes += r.bytes;
            c.violations.bytes += r.bytes;
            if violating.insert((class.clone(), r.flow_id.clone())) {
                c.violations.flows += 1;
            }
        }
    }
    // Alerts raised in the summed buckets (as every figure of the report: consecutive reports
    // tile time, none counted twice).
    let mut stmt = conn.prepare(
        "SELECT id, class, action FROM alerts WHERE time_unix >= ?1 AND time_unix < ?2 ORDER BY time_unix, id",
    )?;
    let alerts = stmt.query_map(params![first_bucket, end], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?))
    })?;
    for a in alerts {
        let (id, class, action) = a?;
        if let Some(c) = classes.get_mut(&class) {
            c.violations.alerts.push(id);
            c.blocked_alerts += (action.as_deref() == Some("blocked")) as u64;
        }
    }
    let mut classes: Vec<ClassReport> = classes.into_values().collect();
    for c in &mut classes {
        c.destinations
            .sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| (&a.kind, &a.name).cmp(&(&b.kind, &b.name))));
    }
    Ok(Report {
        kind: KIND.into(),
        format: FORMAT,
        seq: 0,
        host: o.host.clone(),
        agent_version: o.agent_version.clone(),
        generated: rfc3339(o.now),
        since: rfc3339(o.since),
        until: rfc3339(o.until),
        counted_from: DateTime::from_timestamp(first_bucket, 0).map(rfc3339).unwrap_or_default(),
        counted_until: DateTime::from_timestamp(end, 0).map(rfc3339).unwrap_or_default(),
        class_filter: o.class.clone(),
        configurations: configurations
            .into_iter()
            .map(|c| InForce {
                from: ms_time(c.at_ms),
                cause: c.cause,
                digest: c.digest,
                classes: c.classes,
                sources: c
                    .sources
                    .into_iter()
                    .map(|(kind, description)| Source { kind, description })
                    .collect(),
            })
            .collect(),
        classes,
        unclassified: o.class.is_none().then_some(unclassified),
        coverage: coverage(conn, first_bucket * 1000, end * 1000, o.now.timestamp_millis())?,
        rows: Rows { count, digest },
        previous: None,
        signature: None,
    })
}

fn empty_class(name: &str) -> ClassReport {
    ClassReport {
        class: name.to_owned(),
        bytes: 0,
        packets: 0,
        flows: 0,
        destinations: Vec::new(),
        violations: Violations::default(),
        blocked_alerts: 0,
    }
}

/// When no agent ran in [from, until) (Unix ms, the summed buckets; from the runs'
/// heartbeats), and what was lost then.
fn coverage(conn: &Connection, from: i64, until: i64, now: i64) -> anyhow::Result<Coverage> {
    let runs = runs(conn, from, until)?;
    let mut c = Coverage::default();
    let mut gaps = Vec::new();
    let mut cursor = from;
    for (i, r) in runs.iter().enumerate() {
        if r.started_ms > cursor {
            // The programs counted meanwhile when this agent found them pinned and counting.
            gaps.push((cursor, r.started_ms, Some(r.start_kind != "fresh")));
        }
        let last = i + 1 == runs.len();
        let end = match r.ended_ms {
            Some(e) => e,
            // Running now (its heartbeat is recent): covered up to now.
            None if last && now - r.last_seen_ms <= STALE_MS => now,
            None => r.last_seen_ms,
        };
        cursor = cursor.max(end);
        if end >= from {
            c.runs += 1;
            let (dropped, errors) = counters_grown(conn, r.id, from, until)?;
            c.store_dropped += dropped;
            c.geolocation_errors += errors;
        }
    }
    if cursor < until {
        // No agent since: whether the programs counted is not known yet.
        gaps.push((cursor, until, None));
    }
    for (a, b, counting) in gaps {
        let (a, b) = (a.max(from), b.min(until));
        if b <= a {
            continue;
        }
        let ms = (b - a) as u64;
        c.agent_not_running_ms += ms;
        if counting == Some(false) {
            c.blind_ms += ms;
        }
        c.agent_not_running.push(Gap { from: ms_time(a), until: ms_time(b), ms, kernel_counting: counting });
    }
    let new_sets: Vec<i64> =
        runs.iter().filter(|r| r.start_kind != "adopted").map(|r| r.started_ms).collect();
    c.kernel_losses = kernel_losses(conn, from / 1000, until / 1000, &new_sets)?;
    Ok(c)
}

/// The loss counters a report sums, as loss records name them.
const LOSS_KEYS: [&str; 6] = [
    "ringbuf_drops",
    "flow_insert_failed",
    "overflow_packets",
    "overflow_bytes",
    "dns_answers_lost",
    "dns_answers_lost_bytes",
];

/// The growth of the kernel's loss totals over [since, until) (Unix seconds), record by record
/// from the last one before it. Totals count from when their programs were attached: they
/// restart with a new program set (an agent that did not adopt the pinned one, or any total
/// going down), and then a record's totals are all growth. A record that cannot be read fails
/// the report: its totals would be taken as zeros and the next record's as all growth.
fn kernel_losses(
    conn: &Connection,
    since: i64,
    until: i64,
    new_sets_ms: &[i64],
) -> anyhow::Result<KernelLosses> {
    let mut stmt = conn.prepare(
        "SELECT time_unix, record FROM losses
         WHERE time_unix >= IFNULL((SELECT MAX(time_unix) FROM losses WHERE time_unix < ?1), ?1) AND time_unix < ?2
         ORDER BY time_unix, rowid",
    )?;
    let mut rows = stmt.query(params![since, until])?;
    let mut grown = [0u64; LOSS_KEYS.len()];
    let mut previous: Option<(i64, [u64; LOSS_KEYS.len()])> = None;
    while let Some(r) = rows.next()? {
        let t: i64 = r.get(0)?;
        let text: String = r.get(1)?;
        let record: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("the store's loss record of {} cannot be read: {e}", ms_time(t * 1000))
        })?;
        let totals = LOSS_KEYS.map(|k| record[k].as_u64().unwrap_or(0));
        // The last record before the period is where its growth starts.
        if t >= since {
            let base = previous.and_then(|(at, before)| {
                let new_set = new_sets_ms.iter().any(|&s| s > at * 1000 && s <= t * 1000)
                    || totals.iter().zip(&before).any(|(now, then)| now < then);
                (!new_set).then_some(before)
            });
            for (i, g) in grown.iter_mut().enumerate() {
                *g += totals[i] - base.map_or(0, |b| b[i]);
            }
        }
        previous = Some((t, totals));
    }
    // In LOSS_KEYS' order.
    Ok(KernelLosses {
        ringbuf_drops: grown[0],
        flow_insert_failed: grown[1],
        overflow_packets: grown[2],
        overflow_bytes: grown[3],
        dns_answers_lost: grown[4],
        dns_answers_lost_bytes: grown[5],
    })
}

#[cfg(test)]
mod tests;
