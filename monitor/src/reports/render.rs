//! A report for people: plain text, or one HTML page (summary, a world map per class of where
//! its bytes went, the places, violations and coverage). The signed JSON is the evidence; these
//! show the same figures.

use std::fmt::Write;

use super::{Report, map};

fn gib(bytes: u64) -> String {
    bytesize::ByteSize(bytes).to_string()
}

fn place_name(kind: &str, name: &Option<String>) -> String {
    match name {
        Some(n) => format!("{kind} {n}"),
        None => kind.to_owned(),
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

fn gaps(r: &Report) -> Vec<String> {
    r.coverage
        .agent_not_running
        .iter()
        .map(|g| {
            let how = match g.kernel_counting {
                Some(true) => "the kernel programs went on counting (carried over)",
                Some(false) => "nothing counted",
                None => "no agent has run since",
            };
            format!("{} to {} ({}): {how}", g.from, g.until, seconds(g.ms))
        })
        .collect()
}

/// The coverage in one sentence.
fn coverage(r: &Report) -> String {
    let cv = &r.coverage;
    let k = &cv.kernel_losses;
    format!(
        "agent not running {} (of it blind {}), {} agent runs; kernel losses: {} ring-buffer drops, {} packets ({} bytes) overflowed, {} DNS answers lost; store dropped {} records; {} geolocation errors",
        seconds(cv.agent_not_running_ms),
        seconds(cv.blind_ms),
        cv.runs,
        k.ringbuf_drops,
        k.overflow_packets,
        k.overflow_bytes,
        k.dns_answers_lost,
        cv.store_dropped,
        cv.geolocation_errors
    )
}

pub fn text(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Residency report {} of host {} ({} to {})", r.seq, r.host, r.since, r.until);
    let _ = writeln!(
        o,
        "  sums of whole store buckets from {} to {}; generated {}",
        r.counted_from, r.counted_until, r.generated
    );
    let _ = writeln!(o, "  agent {}", r.agent_version);
    for c in &r.configurations {
        let _ = writeln!(
            o,
            "  configuration {} in force from {} ({}); classes: {}",
            c.digest,
            c.from,
            c.cause,
            c.classes.join(", ")
        );
        for s in &c.sources {
            let _ = writeln!(o, "    source {}: {}", s.kind, s.description);
        }
    }
    for c in &r.classes {
        let _ = writeln!(
            o,
            "\nclass {}: {} ({} bytes), {} packets, {} flows",
            c.class,
            gib(c.bytes),
            c.bytes,
            c.packets,
            c.flows
        );
        for d in &c.destinations {
            let v = if d.violation_bytes > 0 {
                format!(", {} bytes in violation", d.violation_bytes)
            } else {
                String::new()
            };
            let _ = writeln!(
                o,
                "  {:<32} {:>16} bytes {:>8} flows{v}",
                place_name(&d.kind, &d.name),
                d.bytes,
                d.flows
            );
        }
        let _ = writeln!(
            o,
            "  violations: {} flows, {} bytes; alerts: {}, of them blocked: {}",
            c.violations.flows,
            c.violations.bytes,
            if c.violations.alerts.is_empty() { "none".into() } else { c.violations.alerts.join(", ") },
            c.blocked_alerts
        );
    }
    if let Some(u) = &r.unclassified {
        let _ = writeln!(o, "\nunclassified: {} bytes, {} packets, {} flows", u.bytes, u.packets, u.flows);
    }
    let _ = writeln!(o, "\ncoverage: {}", coverage(r));
    for g in gaps(r) {
        let _ = writeln!(o, "  {g}");
    }
    let _ = writeln!(o, "\nrows summed: {} ({})", r.rows.count, r.rows.digest);
    let _ = writeln!(o, "previous report: {}", r.previous.as_deref().unwrap_or("none (first)"));
    if let Some(s) = &r.signature {
        let _ = writeln!(o, "signed by {}", s.key);
    }
    o
}

pub fn html(r: &Report) -> String {
    let e = map::html_escape;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Residency report {seq}: {host}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}td.n{{text-align:right}}
.map{{width:100%;max-width:1000px;border:1px solid #ccc}}.bad{{color:#c62828;font-weight:bold}}.ok{{color:#2e7d32}}</style></head><body>
<h1>Residency report {seq} of host {host}</h1>
<p>From {since} to {until} (sums of whole store buckets from {from} to {to}); generated {gen} by egress-monitor {ver}.</p>"#,
        seq = r.seq,
        host = e(&r.host),
        since = e(&r.since),
        until = e(&r.until),
        from = e(&r.counted_from),
        to = e(&r.counted_until),
        gen = e(&r.generated),
        ver = e(&r.agent_version)
    );
    o += r#"<h2>Classes</h2><table id="classes"><tr><th>class</th><th>bytes</th><th>packets</th><th>flows</th><th>violation bytes</th><th>alerts</th><th>blocked alerts</th></tr>"#;
    for c in &r.classes {
        let status = if c.violations.bytes > 0 { "bad" } else { "ok" };
        let _ = write!(
            o,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n {status}">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            e(&c.class),
            c.bytes,
            c.packets,
            c.flows,
            c.violations.bytes,
            c.violations.alerts.len(),
            c.blocked_alerts
        );
    }
    o += "</table>";
    for c in &r.classes {
        let _ = write!(o, "<h2>Class {}</h2>", e(&c.class));
        o += &map::svg(|code| {
            c.destinations
                .iter()
                .filter(|d| d.kind == "country" && d.name.as_deref() == Some(code))
                .map(|d| map::Shade { bytes: d.bytes, violation_bytes: d.violation_bytes })
                .next()
        });
        o += r#"<table class="places"><tr><th>where</th><th>bytes</th><th>packets</th><th>flows</th><th>of which violations</th></tr>"#;
        for d in &c.destinations {
            let _ = write!(
                o,
                r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
                e(&place_name(&d.kind, &d.name)),
                d.bytes,
                d.packets,
                d.flows,
                d.violation_bytes
            );
        }
        o += "</table>";
        if !c.violations.alerts.is_empty() {
            let _ = write!(o, "<p class=\"bad\">Alerts: {}</p>", e(&c.violations.alerts.join(", ")));
        }
    }
    let _ = write!(o, "<h2>Coverage</h2><p>{}</p><ul>", e(&coverage(r)));
    for g in gaps(r) {
        let _ = write!(o, "<li>{}</li>", e(&g));
    }
    o += r#"</ul><h2>Configurations in force</h2><table id="configurations"><tr><th>from</th><th>cause</th><th>SHA-256</th><th>classes</th><th>sources</th></tr>"#;
    for c in &r.configurations {
        let sources: Vec<String> =
            c.sources.iter().map(|s| format!("{}: {}", s.kind, s.description)).collect();
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            e(&c.from),
            e(&c.cause),
            e(&c.digest),
            e(&c.classes.join(", ")),
            sources.iter().map(|s| e(s)).collect::<Vec<_>>().join("<br>")
        );
    }
    let _ = writeln!(
        o,
        "</table><h2>Evidence</h2><p>{} store rows summed, digest <code>{}</code>. Previous report: <code>{}</code>. Signed by <code>{}</code>. Check with <code>egress-monitor verify REPORT.json --key HOST.pub</code> (this page shows the signed JSON's figures; the JSON is the evidence).</p></body></html>",
        r.rows.count,
        e(&r.rows.digest),
        e(r.previous.as_deref().unwrap_or("none (first)")),
        e(r.signature.as_ref().map_or("(not signed)", |s| s.key.as_str()))
    );
    o
}
