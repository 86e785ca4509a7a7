//! `egress-monitor status`: a running agent's health (programs, flows, losses, sinks,
//! databases, exports) as a table, or the status document as JSON.

use std::{process::ExitCode, time::Duration};

use comfy_table::{Table, presets};

use super::output::{ApiArgs, Format, bytes, print_json, runtime, write_csv};
use crate::status::Status;

pub(super) fn status(api: &ApiArgs, format: Format) -> anyhow::Result<ExitCode> {
    let client = api.client()?;
    let (s, body) = runtime()?.block_on(client.get::<Status>("v1/status", &[]))?;
    match format {
        Format::Json => return print_json(&body).map(|()| ExitCode::SUCCESS),
        Format::Csv => {
            let mut rows = Vec::new();
            flatten("", &body, &mut rows);
            write_csv(&["field", "value"], rows.into_iter().map(|(k, v)| vec![k, v]))?;
            return Ok(ExitCode::SUCCESS);
        }
        Format::Table => {}
    }
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    let programs: Vec<&str> = s.programs.iter().map(|p| p.hook.as_str()).collect();
    let lost: Vec<String> = serde_json::to_value(&s.losses)?
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_u64() != Some(0))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let (e, g) = (&s.events, &s.geolocation);
    let rows: Vec<(&str, String)> = vec![
        ("version", s.version.clone()),
        ("host", s.host.clone()),
        ("uptime", humantime::format_duration(Duration::from_secs(s.uptime_seconds)).to_string()),
        ("cgroup root", s.cgroup_root.clone()),
        ("programs", format!("{} attached ({})", programs.len(), programs.join(", "))),
        ("attached since", {
            let k = &s.kernel;
            let away = match k.agent_away_seconds {
                Some(a) => format!(
                    "; agent was away {}",
                    humantime::format_duration(Duration::from_millis((a.max(0.0) * 1000.0) as u64))
                ),
                None => String::new(),
            };
            format!("{} ({} at start{away}; pinned at {})", k.attached_since, k.start, k.pinned_at)
        }),
        ("sockets at start", {
            let o = &s.kernel.sockets_at_start;
            let failed = match (o.failed, o.unreadable_processes) {
                (0, 0) => String::new(),
                (f, u) => format!("; {f} failed, {u} processes unreadable"),
            };
            format!(
                "{} found ({} listening), {} given their process and direction{failed}",
                o.found, o.listening, o.seeded
            )
        }),
        ("flows tracked", s.flows_tracked.to_string()),
        (
            "events",
            format!(
                "{} new flows announced, {} found by sweep, {} closes",
                e.new_flow, e.found_by_sweep, e.close
            ),
        ),
        ("losses", if lost.is_empty() { "none".into() } else { lost.join(", ") }),
        ("alerts", format!("{} raised, {} open", s.alerts.raised, s.alerts.open)),
        ("lookups", format!("{} ({} from cache)", g.lookups, g.cache_hits)),
        ("dns", {
            let d = &s.dns;
            format!(
                "{} packets, {} answers, {} names kept; {} malformed, {} truncated, {} tcp dropped, {} evicted",
                d.packets, d.answers, d.names, d.malformed, d.truncated, d.tcp_dropped, d.evicted
            )
        }),
        (
            "store",
            match &s.databases.store_error {
                None => format!("{} ({})", s.databases.store_path, bytes(s.databases.store_bytes)),
                Some(e) => format!("{}: FAILING, records are not stored: {e}", s.databases.store_path),
            },
        ),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_owned(), v]);
    }
    for source in &s.databases.sources {
        t.add_row(vec![format!("places: {}", source.kind), source.description.clone()]);
    }
    for c in &s.classes {
        let mut selects: Vec<String> = c
            .cgroups
            .iter()
            .map(|g| match g.cgroup_id {
                Some(id) => format!("{} (cgroup id {id})", g.path),
                None => format!("{} (NOT FOUND: no such cgroup yet)", g.path),
            })
            .collect();
        selects.extend(c.uids.iter().map(|u| format!("uid {u}")));
        t.add_row(vec![
            format!("class {} ({})", c.name, if c.mode.is_empty() { "observe" } else { &c.mode }),
            format!(
                "{}; {} flows of {} sockets now; {} blocked; last hour: {} allowed, {} violation",
                selects.join(", "),
                c.flows_tracked,
                c.sockets_tracked,
                c.blocked,
                bytes(c.last_hour.allowed),
                bytes(c.last_hour.violation)
            ),
        ]);
    }
    for sink in &s.sinks {
        let mut v = format!(
            "{} delivered, {} waiting, {} retries, {} failed",
            sink.delivered, sink.backlog, sink.retries, sink.failed
        );
        if let Some(e) = &sink.last_error {
            v += &format!("; last error: {e}");
        }
        t.add_row(vec![format!("sink {}", sink.name), v]);
    }
    for e in &s.export {
        let mut v = format!(
            "{} rows and {} alerts sent, next bucket {}",
            e.rows_sent,
            e.alerts_sent,
            e.next_bucket.as_deref().unwrap_or("-")
        );
        if let Some(err) = &e.last_error {
            v += &format!("; last error: {err}");
        }
        t.add_row(vec![format!("export {}", e.name), v]);
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

/// The status document as (field, value) pairs: nested fields joined by dots, list items by
/// their index (`sinks.0.name`); a null is an empty value.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    use serde_json::Value;
    let key = |k: &str| if prefix.is_empty() { k.to_owned() } else { format!("{prefix}.{k}") };
    match v {
        Value::Object(m) => m.iter().for_each(|(k, v)| flatten(&key(k), v, out)),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| flatten(&key(&i.to_string()), v, out)),
        Value::Null => out.push((prefix.to_owned(), String::new())),
        Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}
