//! `egress-monitor alerts`: alerts from a running agent, newest first.

use std::process::ExitCode;

use clap::Args;

use super::output::{
    ApiArgs, Format, bytes, endpoint, field, place, print_json, process, runtime, table, write_csv,
};
use crate::api::answers::{AlertsAnswer, StoredAlert, UndeliveredAnswer};

/// `alerts --undelivered`.
fn undelivered(api: &ApiArgs, limit: u32, format: Format) -> anyhow::Result<ExitCode> {
    let client = api.client()?;
    let (answer, body) = runtime()?
        .block_on(client.get::<UndeliveredAnswer>("v1/undelivered", &[("limit", limit.to_string())]))?;
    let rows = answer.undelivered.iter().map(|d| {
        vec![
            d.given_up.clone(),
            d.sink.clone(),
            d.id.clone(),
            d.failing_since.clone().unwrap_or_else(|| "-".into()),
            d.reason.clone(),
        ]
    });
    match format {
        Format::Json => print_json(&body)?,
        Format::Csv => write_csv(&["given_up", "sink", "id", "failing_since", "reason"], rows)?,
        Format::Table => {
            let mut t = table(&["GIVEN UP", "SINK", "ID", "FAILING SINCE", "REASON"]);
            for r in rows {
                t.add_row(r);
            }
            println!("{t}");
            println!(
                "{} undelivered alert{}",
                answer.undelivered.len(),
                if answer.undelivered.len() == 1 { "" } else { "s" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct AlertArgs {
    /// Start of the window: RFC 3339, or a duration before now (30m, 24h, 7d)
    #[arg(long, default_value = "24h")]
    since: String,
    /// End of the window (default: now)
    #[arg(long)]
    until: Option<String>,
    /// Only this class (comma-separated for several)
    #[arg(long)]
    class: Option<String>,
    /// critical, high, medium or low (comma-separated)
    #[arg(long)]
    severity: Option<String>,
    /// Most alerts to show (newest first)
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Instead, the alerts a syslog or webhook sink gave up on: refused for good, or failing
    /// for longer than the sink's max_age (newest first; the window filters do not apply)
    #[arg(long, conflicts_with_all = ["until", "class", "severity"])]
    undelivered: bool,
}

pub(super) fn alerts(api: &ApiArgs, args: &AlertArgs, format: Format) -> anyhow::Result<ExitCode> {
    if args.undelivered {
        return undelivered(api, args.limit, format);
    }
    let client = api.client()?;
    let mut params = vec![("since", args.since.clone()), ("limit", args.limit.to_string())];
    for (k, v) in [("until", &args.until), ("class", &args.class), ("severity", &args.severity)] {
        if let Some(v) = v {
            params.push((k, v.clone()));
        }
    }
    let (answer, body) =
        runtime()?.block_on(client.get::<AlertsAnswer<StoredAlert>>("v1/alerts", &params))?;
    let alerts = &answer.alerts;
    match format {
        Format::Json => print_json(&body)?,
        Format::Csv => {
            let header = [
                "time",
                "id",
                "severity",
                "class",
                "pid",
                "comm",
                "cgroup",
                "dst_ip",
                "dst_port",
                "country",
                "cloud_region",
                "site",
                "bytes",
                "reason",
            ];
            let rows = alerts.iter().map(|a| {
                let (p, d) = (&a.process, &a.destination);
                vec![
                    a.time.clone(),
                    a.id.clone(),
                    a.severity.clone(),
                    a.class.clone(),
                    field(&p.pid),
                    field(&p.comm),
                    field(&p.cgroup),
                    d.ip.clone(),
                    field(&d.port),
                    field(&d.country),
                    field(
                        &d.cloud_provider
                            .as_deref()
                            .zip(d.cloud_region.as_deref())
                            .map(|(p, r)| format!("{p}:{r}")),
                    ),
                    field(&d.site),
                    a.bytes.to_string(),
                    a.reason.clone(),
                ]
            });
            write_csv(&header, rows)?;
        }
        Format::Table => {
            let mut t = table(&[
                "TIME",
                "ID",
                "SEVERITY",
                "CLASS",
                "PROCESS",
                "DESTINATION",
                "WHERE",
                "BYTES",
                "REASON",
            ]);
            for a in alerts {
                let d = &a.destination;
                t.add_row(vec![
                    a.time.clone(),
                    // The id's first 12 characters, as syslog and webhooks carry it whole.
                    a.id.chars().take(12).collect(),
                    a.severity.clone(),
                    a.class.clone(),
                    process(a.process.comm.as_deref(), a.process.pid),
                    endpoint(Some(&d.ip), d.port),
                    place(
                        d.site.as_deref(),
                        d.country.as_deref(),
                        d.cloud_provider.as_deref(),
                        d.cloud_region.as_deref(),
                        d.internal,
                    ),
                    bytes(a.bytes),
                    a.reason.clone(),
                ]);
            }
            println!("{t}");
            println!(
                "{} alert{} since {}",
                alerts.len(),
                if alerts.len() == 1 { "" } else { "s" },
                answer.since
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
