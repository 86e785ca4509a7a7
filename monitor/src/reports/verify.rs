//! `egress-monitor verify`: the checks an auditor runs on a host's reports without trusting
//! the host: each signature against the host's public key, the chain (each report names the
//! digest of the one before; a missing or reordered report is named), the figures adding up,
//! and, given the store, that its rows still match the digest each report took of them.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::{FORMAT, KIND, Report, digest, key::PublicKey, ms_time, rows_digest, signed_bytes};

/// One report as read from its file: its text as JSON, and as a report.
pub struct Loaded {
    pub path: PathBuf,
    pub value: serde_json::Value,
    pub report: Report,
}

pub fn load(path: &Path) -> Result<Loaded, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    parse(path, &text)
}

/// A report's text, read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Loaded, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    if let Some(f) = value.get("format").and_then(|f| f.as_u64())
        && f != u64::from(FORMAT)
    {
        return Err(format!(
            "{}: report format {f}, and this verify reads format {FORMAT} (use the egress-monitor version that made it)",
            path.display()
        ));
    }
    let report: Report = serde_json::from_value(value.clone())
        .map_err(|e| format!("{}: not a residency report: {e}", path.display()))?;
    Ok(Loaded { path: path.to_owned(), value, report })
}

/// Every failure found, each naming the report (by file and number) and what does not hold.
pub fn verify(reports: &mut [Loaded], key: &PublicKey, store: Option<&Connection>) -> Vec<String> {
    let mut failures = Vec::new();
    reports.sort_by_key(|l| l.report.seq);
    let host = reports.first().map(|l| l.report.host.clone()).unwrap_or_default();
    for l in reports.iter() {
        let name = format!("{} (report {})", l.path.display(), l.report.seq);
        if l.report.kind != KIND {
            failures.push(format!("{name}: its type is {:?}, not {KIND:?}", l.report.kind));
        }
        if l.report.host != host {
            failures.push(format!("{name}: of host {:?}, the others of {host:?}", l.report.host));
        }
        if l.report.seq == 1 && l.report.previous.is_some() {
            failures.push(format!("{name}: the first report of the chain names a previous one"));
        }
        match &l.report.signature {
            None => failures.push(format!("{name}: not signed")),
            Some(s) if s.key != key.text() => {
                failures.push(format!("{name}: signed by another key ({}), not {}", s.key, key.text()))
            }
            Some(s) if !key.verifies(&signed_bytes(&l.value), &s.value) => failures.push(format!(
                "{name}: the signature does not match the contents: the report was changed after it was signed"
            )),
            Some(_) => {}
        }
        failures.extend(add_up(&l.report).into_iter().map(|f| format!("{name}: {f}")));
        if let Some(conn) = store {
            failures.extend(against_store(&l.report, conn).into_iter().map(|f| format!("{name}: {f}")));
        }
    }
    for pair in reports.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.report.seq == a.report.seq {
            failures.push(format!(
                "{} and {}: both are report {} of the chain",
                a.path.display(),
                b.path.display(),
                a.report.seq
            ));
        } else if Some(b.report.seq) != a.report.seq.checked_add(1) {
            let (first, last) = (a.report.seq + 1, b.report.seq - 1);
            let missing = if first == last {
                format!("report {first} is")
            } else {
                format!("reports {first} to {last} are")
            };
            failures.push(format!(
                "the chain is broken: {missing} missing between report {} ({}) and report {} ({})",
                a.report.seq,
                a.path.display(),
                b.report.seq,
                b.path.display()
            ));
        } else if b.report.previous.as_deref() != Some(digest(&a.value).as_str()) {
            failures.push(format!(
                "the chain is broken: report {} ({}) does not follow report {} ({}): it names {} as the previous report's digest, which is {}",
                b.report.seq,
                b.path.display(),
                a.report.seq,
                a.path.display(),
                b.report.previous.as_deref().unwrap_or("none"),
                digest(&a.value)
            ));
        }
    }
    failures
}

/// Whether the figures of a report add up: each class's places to its totals, its violations
/// to its places' violation bytes.
fn add_up(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for c in &r.classes {
        // Sums of untrusted figures: one past u64 does not add up to anything (None).
        let sum = |f: &dyn Fn(&super::Place) -> u64| {
            c.destinations.iter().try_fold(0u64, |total, d| total.checked_add(f(d)))
        };
        let (bytes, packets) = (sum(&|d| d.bytes), sum(&|d| d.packets));
        if (bytes, packets) != (Some(c.bytes), Some(c.packets)) {
            out.push(format!(
                "class {}: its places add up to {} bytes and {} packets, its totals say {} and {}",
                c.class,
                shown(bytes),
                shown(packets),
                c.bytes,
                c.packets
            ));
        }
        let violation = sum(&|d| d.violation_bytes);
        if violation != Some(c.violations.bytes) || c.violations.bytes > c.bytes {
            out.push(format!(
                "class {}: its places' violation bytes add up to {}, its violations say {} (of {} bytes)",
                c.class,
                shown(violation),
                c.violations.bytes,
                c.bytes
            ));
        }
    }
    let gaps = r.coverage.agent_not_running.iter().try_fold(0u64, |total, g| total.checked_add(g.ms));
    if gaps != Some(r.coverage.agent_not_running_ms) || Some(r.coverage.blind_ms) > gaps {
        let gaps = shown(gaps);
        out.push(format!(
            "coverage: its intervals add up to {gaps} ms, it says {} ms (blind {} ms)",
            r.coverage.agent_not_running_ms, r.coverage.blind_ms
        ));
    }
    out
}

/// A sum, or that it overflowed.
fn shown(sum: Option<u64>) -> String {
    sum.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string())
}

/// Whether the store's rows of the report's period still have the digest the report took.
fn against_store(r: &Report, conn: &Connection) -> Vec<String> {
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).map(|t| t.timestamp());
    let (Ok(first), Ok(until)) = (parse(&r.counted_from), parse(&r.counted_until)) else {
        return vec!["its period cannot be read".into()];
    };
    if let Ok(Some((cutoff, at))) = crate::store::pruned_before(conn)
        && first < cutoff
    {
        return vec![format!(
            "its rows cannot be checked: the store pruned the rows before {} at {} ([store] retention), and the report sums rows from {}",
            ms_time(cutoff * 1000),
            ms_time(at),
            r.counted_from
        )];
    }
    match rows_digest(conn, first, until, r.class_filter.as_deref()) {
        Err(e) => vec![format!("reading the store: {e}")],
        Ok((count, digest, _)) if digest != r.rows.digest => vec![format!(
            "the store's rows for {} to {} no longer match the report: {count} rows with digest {digest}, the report summed {} rows with digest {} (a row was changed, added or removed, or pruned past the store's retention)",
            r.counted_from, r.counted_until, r.rows.count, r.rows.digest
        )],
        Ok(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::{Place, ReportOptions, build, key::HostKey};

    /// A signed report of an empty store, numbered `seq`, changed by `edit` before signing.
    fn report(key: &HostKey, seq: u64, edit: impl FnOnce(&mut Report)) -> Loaded {
        let conn = crate::store::open_in_memory().unwrap();
        let now = chrono::Utc::now();
        let o = ReportOptions {
            host: "h1".into(),
            agent_version: "0.1.0".into(),
            own: crate::store::configs::Configuration {
                at_ms: 0,
                cause: "report".into(),
                digest: "sha256:00".into(),
                classes: vec!["us".into()],
                sources: Vec::new(),
            },
            since: now - chrono::Duration::hours(1),
            until: now,
            class: None,
            bucket_secs: 60,
            now,
        };
        let mut r = build(&conn, &o).unwrap();
        r.seq = seq;
        edit(&mut r);
        r.sign(key);
        Loaded { path: format!("{seq}.json").into(), value: r.to_value(), report: r }
    }

    #[test]
    fn untrusted_numbers_are_named_without_overflowing() {
        let dir = tempfile::tempdir().unwrap();
        let key = HostKey::load_or_create(dir.path()).unwrap();
        let public = PublicKey::parse(&key.public()).unwrap();
        let huge = report(&key, u64::MAX, |r| {
            let place = |bytes| Place {
                kind: "country".into(),
                name: Some("US".into()),
                bytes,
                packets: 1,
                flows: 1,
                violation_bytes: 0,
            };
            r.classes[0].destinations = vec![place(u64::MAX), place(1)];
            r.classes[0].bytes = 0;
        });
        let mut reports = [report(&key, 1, |_| {}), huge];
        let failures = verify(&mut reports, &public, None);
        assert!(
            failures.iter().any(|f| f.contains("reports 2 to 18446744073709551614 are missing")),
            "{failures:?}"
        );
        assert!(failures.iter().any(|f| f.contains("add up to more than 2^64 bytes")), "{failures:?}");
    }

    #[test]
    fn another_host_a_first_report_with_a_previous_one_and_another_type_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = HostKey::load_or_create(dir.path()).unwrap();
        let public = PublicKey::parse(&key.public()).unwrap();
        let first = report(&key, 1, |r| r.previous = Some("sha256:00".into()));
        let previous = digest(&first.value);
        let second = report(&key, 2, |r| {
            r.previous = Some(previous);
            r.host = "h2".into();
            r.kind = "other".into();
        });
        let failures = verify(&mut [first, second], &public, None);
        assert_eq!(
            failures,
            [
                "1.json (report 1): the first report of the chain names a previous one",
                "2.json (report 2): its type is \"other\", not \"residency_report\"",
                "2.json (report 2): of host \"h2\", the others of \"h1\""
            ]
        );
    }
}
