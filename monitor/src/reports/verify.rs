//! `egress-monitor verify`: the checks an auditor runs on a host's reports without trusting
//! the host: each signature against the host's public key, the chain (each report names the
//! digest of the one before; a missing or reordered report is named), the figures adding up,
//! and, given the store, that its rows still match the digest each report took of them.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::{FORMAT, Report, digest, key::PublicKey, rows_digest, signed_bytes};

/// One report as read from its file: its text as JSON, and as a report.
pub struct Loaded {
    pub path: PathBuf,
    pub value: serde_json::Value,
    pub report: Report,
}

pub fn load(path: &Path) -> Result<Loaded, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
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
    for l in reports.iter() {
        let name = format!("{} (report {})", l.path.display(), l.report.seq);
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
        } else if b.report.seq != a.report.seq + 1 {
            let missing: Vec<String> = (a.report.seq + 1..b.report.seq).map(|n| n.to_string()).collect();
            failures.push(format!(
                "the chain is broken: report {} is missing between report {} ({}) and report {} ({})",
                missing.join(", "),
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
        let (bytes, packets): (u64, u64) =
            c.destinations.iter().fold((0, 0), |(b, p), d| (b + d.bytes, p + d.packets));
        if (bytes, packets) != (c.bytes, c.packets) {
            out.push(format!(
                "class {}: its places add up to {bytes} bytes and {packets} packets, its totals say {} and {}",
                c.class, c.bytes, c.packets
            ));
        }
        let violation: u64 = c.destinations.iter().map(|d| d.violation_bytes).sum();
        if violation != c.violations.bytes || c.violations.bytes > c.bytes {
            out.push(format!(
                "class {}: its places' violation bytes add up to {violation}, its violations say {} (of {} bytes)",
                c.class, c.violations.bytes, c.bytes
            ));
        }
    }
    let gaps: u64 = r.coverage.agent_not_running.iter().map(|g| g.ms).sum();
    if gaps != r.coverage.agent_not_running_ms || r.coverage.blind_ms > gaps {
        out.push(format!(
            "coverage: its intervals add up to {gaps} ms, it says {} ms (blind {} ms)",
            r.coverage.agent_not_running_ms, r.coverage.blind_ms
        ));
    }
    out
}

/// Whether the store's rows of the report's period still have the digest the report took.
fn against_store(r: &Report, conn: &Connection) -> Vec<String> {
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).map(|t| t.timestamp());
    let (Ok(first), Ok(until)) = (parse(&r.counted_from), parse(&r.counted_until)) else {
        return vec!["its period cannot be read".into()];
    };
    match rows_digest(conn, first, until, r.class_filter.as_deref()) {
        Err(e) => vec![format!("reading the store: {e}")],
        Ok((count, digest, _)) if digest != r.rows.digest => vec![format!(
            "the store's rows for {} to {} no longer match the report: {count} rows with digest {digest}, the report summed {} rows with digest {} (a row was changed, added or removed, or pruned past the store's retention)",
            r.counted_from, r.counted_until, r.rows.count, r.rows.digest
        )],
        Ok(_) => Vec::new(),
    }
}
