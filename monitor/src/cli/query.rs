//! `egress-monitor flows`, `alerts`, `status` and `top`: questions to a running agent's API,
//! answered as aligned tables for people (human byte sizes), or JSON and CSV for scripts.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, ValueEnum};
use comfy_table::{Table, presets};
use serde_json::Value;

use super::ConfigArg;
use crate::{api::client::ApiClient, config::DEFAULT_API_SOCKET};

/// How to reach the agent.
#[derive(Args, Debug)]
pub struct ApiArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The API over TCP (api.listen of the agent), like http://10.0.0.5:9850 [default: the
    /// unix socket named by the configuration]
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// File with the bearer token for --api
    #[arg(long, value_name = "FILE", requires = "api")]
    token_file: Option<PathBuf>,
}

impl ApiArgs {
    fn client(&self) -> anyhow::Result<ApiClient> {
        if let Some(url) = &self.api {
            return ApiClient::tcp(url, self.token_file.as_deref());
        }
        let socket = match self.config.load() {
            Ok(c) => c.api.socket,
            Err(e) if self.config.config.is_some() => return Err(e.into()),
            Err(_) => PathBuf::from(DEFAULT_API_SOCKET),
        };
        ApiClient::unix(&socket)
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Args, Debug)]
pub struct FlowArgs {
    /// Start of the window: RFC 3339, or a duration before now (30m, 24h, 7d)
    #[arg(long, default_value = "1h")]
    since: String,
    /// End of the window (default: now)
    #[arg(long)]
    until: Option<String>,
    /// Only this class (comma-separated for several)
    #[arg(long)]
    class: Option<String>,
    /// allowed, violation or unclassified (comma-separated)
    #[arg(long)]
    verdict: Option<String>,
    /// Destination country, ISO 3166-1 alpha-2 (comma-separated)
    #[arg(long)]
    country: Option<String>,
    /// Cloud region, like aws:us-east-1 or oci:us-* (* matches anything)
    #[arg(long)]
    cloud_region: Option<String>,
    /// Company site name (comma-separated)
    #[arg(long)]
    site: Option<String>,
    /// Process name (comma-separated)
    #[arg(long)]
    comm: Option<String>,
    /// Process id
    #[arg(long)]
    pid: Option<u32>,
    /// A cgroup (relative to the cgroup v2 root) and everything below it
    #[arg(long)]
    cgroup: Option<String>,
    /// Destination address or CIDR
    #[arg(long)]
    dst: Option<String>,
    /// Destination port
    #[arg(long)]
    port: Option<u16>,
    /// Sum per group: class, country, cloud_region, site, destination, process (comma-separated);
    /// without it, one row per flow
    #[arg(long, value_name = "KEYS")]
    group_by: Option<String>,
    /// Most rows to show (largest first)
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

impl FlowArgs {
    fn params(&self) -> Vec<(&'static str, String)> {
        let mut p = vec![("since", self.since.clone()), ("limit", self.limit.to_string())];
        let opt = [
            ("until", self.until.clone()),
            ("class", self.class.clone()),
            ("verdict", self.verdict.clone()),
            ("country", self.country.clone()),
            ("cloud_region", self.cloud_region.clone()),
            ("site", self.site.clone()),
            ("comm", self.comm.clone()),
            ("pid", self.pid.map(|v| v.to_string())),
            ("cgroup", self.cgroup.clone()),
            ("dst", self.dst.clone()),
            ("port", self.port.map(|v| v.to_string())),
            ("group_by", self.group_by.clone()),
        ];
        p.extend(opt.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        p
    }
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
}

#[derive(Args, Debug)]
pub struct TopArgs {
    /// Window the totals cover, ending now
    #[arg(long, default_value = "5m")]
    since: String,
    /// What to rank: class, country, cloud_region, site, destination, process (comma-separated)
    #[arg(long, default_value = "destination")]
    group_by: String,
    /// Only this class
    #[arg(long)]
    class: Option<String>,
    /// Only these verdicts (allowed, violation, unclassified)
    #[arg(long)]
    verdict: Option<String>,
    /// Only this cgroup and everything below it
    #[arg(long)]
    cgroup: Option<String>,
    /// Rows shown
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Time between refreshes
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Stop after this many refreshes (default: until Ctrl-C)
    #[arg(short = 'n', long)]
    iterations: Option<u64>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub(super) fn flows(api: &ApiArgs, args: &FlowArgs, format: Format) -> anyhow::Result<ExitCode> {
    let client = api.client()?;
    let body = runtime()?.block_on(client.get("v1/flows", &args.params()))?;
    print_flows(&body, format)?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn alerts(api: &ApiArgs, args: &AlertArgs, format: Format) -> anyhow::Result<ExitCode> {
    let client = api.client()?;
    let mut params = vec![("since", args.since.clone()), ("limit", args.limit.to_string())];
    for (k, v) in [("until", &args.until), ("class", &args.class), ("severity", &args.severity)] {
        if let Some(v) = v {
            params.push((k, v.clone()));
        }
    }
    let body = runtime()?.block_on(client.get("v1/alerts", &params))?;
    let alerts = body["alerts"].as_array().cloned().unwrap_or_default();
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&body)?),
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
                let (p, d) = (&a["process"], &a["destination"]);
                vec![
                    text(&a["time"]),
                    text(&a["id"]),
                    text(&a["severity"]),
                    text(&a["class"]),
                    text(&p["pid"]),
                    text(&p["comm"]),
                    text(&p["cgroup"]),
                    text(&d["ip"]),
                    text(&d["port"]),
                    text(&d["country"]),
                    cloud(d),
                    text(&d["site"]),
                    text(&a["bytes"]),
                    text(&a["reason"]),
                ]
            });
            write_csv(&header, rows)?;
        }
        Format::Table => {
            let mut t =
                table(&["TIME", "SEVERITY", "CLASS", "PROCESS", "DESTINATION", "WHERE", "BYTES", "REASON"]);
            for a in &alerts {
                let d = &a["destination"];
                t.add_row(vec![
                    text(&a["time"]),
                    text(&a["severity"]),
                    text(&a["class"]),
                    process(&a["process"]),
                    endpoint(&d["ip"], &d["port"]),
                    place(d),
                    bytes(&a["bytes"]),
                    text(&a["reason"]),
                ]);
            }
            println!("{t}");
            println!(
                "{} alert{} since {}",
                alerts.len(),
                if alerts.len() == 1 { "" } else { "s" },
                text(&body["since"])
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn status(api: &ApiArgs, format: Format) -> anyhow::Result<ExitCode> {
    let client = api.client()?;
    let s = runtime()?.block_on(client.get("v1/status", &[]))?;
    if format != Format::Table {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    let programs: Vec<String> =
        s["programs"].as_array().into_iter().flatten().map(|p| text(&p["hook"])).collect();
    let losses = &s["losses"];
    let lost: Vec<String> = losses
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_u64() != Some(0))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let rows: Vec<(&str, String)> = vec![
        ("version", text(&s["version"])),
        ("host", text(&s["host"])),
        (
            "uptime",
            humantime::format_duration(Duration::from_secs(s["uptime_seconds"].as_u64().unwrap_or(0)))
                .to_string(),
        ),
        ("cgroup root", text(&s["cgroup_root"])),
        ("programs", format!("{} attached ({})", programs.len(), programs.join(", "))),
        ("flows tracked", text(&s["flows_tracked"])),
        (
            "events",
            format!(
                "{} new flows, {} connects, {} closes, {} found by sweep",
                s["events"]["new_flow"],
                s["events"]["connect"],
                s["events"]["close"],
                s["events"]["found_by_sweep"]
            ),
        ),
        ("losses", if lost.is_empty() { "none".into() } else { lost.join(", ") }),
        ("alerts", format!("{} raised, {} open", s["alerts"]["raised"], s["alerts"]["open"])),
        (
            "lookups",
            format!("{} ({} from cache)", s["geolocation"]["lookups"], s["geolocation"]["cache_hits"]),
        ),
        (
            "store",
            format!("{} ({})", text(&s["databases"]["store_path"]), bytes(&s["databases"]["store_bytes"])),
        ),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_owned(), v]);
    }
    for sink in s["sinks"].as_array().into_iter().flatten() {
        let mut v = format!(
            "{} delivered, {} waiting, {} retries, {} failed",
            sink["delivered"], sink["backlog"], sink["retries"], sink["failed"]
        );
        if let Some(e) = sink["last_error"].as_str() {
            v += &format!("; last error: {e}");
        }
        t.add_row(vec![format!("sink {}", text(&sink["name"])), v]);
    }
    for e in s["export"].as_array().into_iter().flatten() {
        let mut v = format!(
            "{} rows and {} alerts sent, next bucket {}",
            e["rows_sent"],
            e["alerts_sent"],
            text(&e["next_bucket"])
        );
        if let Some(err) = e["last_error"].as_str() {
            v += &format!("; last error: {err}");
        }
        t.add_row(vec![format!("export {}", text(&e["name"])), v]);
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

pub(super) fn top(api: &ApiArgs, args: &TopArgs) -> anyhow::Result<ExitCode> {
    let client = api.client()?;
    let rt = runtime()?;
    let live = std::io::stdout().is_terminal();
    let mut n = 0;
    loop {
        let mut params = vec![
            ("since", args.since.clone()),
            ("group_by", args.group_by.clone()),
            ("limit", args.limit.to_string()),
        ];
        for (k, v) in [("class", &args.class), ("verdict", &args.verdict), ("cgroup", &args.cgroup)] {
            if let Some(v) = v {
                params.push((k, v.clone()));
            }
        }
        let body = rt.block_on(client.get("v1/flows", &params))?;
        if live {
            print!("\x1b[2J\x1b[H"); // clear the screen, like top
        }
        let rows = body["rows"].as_array().cloned().unwrap_or_default();
        let total: u64 = rows.iter().filter_map(|r| r["bytes"].as_u64()).sum();
        println!(
            "egress-monitor top - {} - last {} by {}: {} in the top {} groups",
            chrono::Utc::now().format("%H:%M:%S"),
            args.since,
            args.group_by,
            bytesize::ByteSize(total),
            rows.len()
        );
        print_flows(&body, Format::Table)?;
        n += 1;
        if args.iterations.is_some_and(|max| n >= max) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(args.interval);
    }
}

/// The columns of a flows answer: one per group key (or a flow's attributes), then the sums.
fn print_flows(body: &Value, format: Format) -> anyhow::Result<()> {
    let rows = body["rows"].as_array().cloned().unwrap_or_default();
    let groups: Vec<String> = body["group_by"].as_array().into_iter().flatten().map(text).collect();
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(body)?);
        return Ok(());
    }
    if format == Format::Csv {
        let keys: Vec<String> =
            rows.first().and_then(|r| r.as_object()).map(|o| o.keys().cloned().collect()).unwrap_or_default();
        let header: Vec<&str> = keys.iter().map(String::as_str).collect();
        return write_csv(&header, rows.iter().map(|r| keys.iter().map(|k| text(&r[k])).collect()));
    }
    type Column = (&'static str, fn(&Value) -> String);
    let mut columns: Vec<Column> = Vec::new();
    if groups.is_empty() {
        columns.extend([
            ("CLASS", (|r: &Value| text(&r["class"])) as fn(&Value) -> String),
            ("VERDICT", |r| text(&r["verdict"])),
            ("PROTO", |r| text(&r["protocol"])),
            ("SOURCE", |r| endpoint(&r["src_ip"], &r["src_port"])),
            ("DESTINATION", |r| endpoint(&r["dst_ip"], &r["dst_port"])),
            ("WHERE", place_row),
            ("PROCESS", |r| process(r)),
        ]);
    }
    for g in &groups {
        match g.as_str() {
            "class" => columns.push(("CLASS", |r| text(&r["class"]))),
            "country" => columns.push(("COUNTRY", |r| text(&r["country"]))),
            "cloud_region" => columns.push(("CLOUD", cloud)),
            "site" => columns.push(("SITE", |r| text(&r["site"]))),
            "destination" => columns.push(("DESTINATION", |r| endpoint(&r["dst_ip"], &r["dst_port"]))),
            "process" => columns.extend([
                ("PROCESS", (|r: &Value| process(r)) as fn(&Value) -> String),
                ("CGROUP", |r| text(&r["cgroup"])),
            ]),
            _ => {}
        }
    }
    columns.extend([
        ("BYTES", (|r: &Value| bytes(&r["bytes"])) as fn(&Value) -> String),
        ("PACKETS", |r| text(&r["packets"])),
        ("FLOWS", |r| text(&r["flows"])),
        ("LAST SEEN", |r| text(&r["last_seen"])),
    ]);
    let mut t = table(&columns.iter().map(|(h, _)| *h).collect::<Vec<_>>());
    for r in &rows {
        t.add_row(columns.iter().map(|(_, f)| f(r)).collect::<Vec<_>>());
    }
    println!("{t}");
    Ok(())
}

fn write_csv(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(std::io::stdout().lock());
    w.write_record(header)?;
    for r in rows {
        w.write_record(&r)?;
    }
    w.flush()?;
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING).set_header(header.to_vec());
    t
}

/// A JSON value as a cell ("-" for null).
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn bytes(v: &Value) -> String {
    v.as_u64().map(|n| bytesize::ByteSize(n).to_string()).unwrap_or_else(|| text(v))
}

fn endpoint(ip: &Value, port: &Value) -> String {
    match (ip.as_str(), port.as_u64()) {
        (Some(ip), Some(p)) if ip.contains(':') => format!("[{ip}]:{p}"),
        (Some(ip), Some(p)) => format!("{ip}:{p}"),
        (Some(ip), None) => ip.to_owned(),
        _ => "-".into(),
    }
}

fn cloud(r: &Value) -> String {
    match (r["cloud_provider"].as_str(), r["cloud_region"].as_str()) {
        (Some(p), Some(region)) => format!("{p}:{region}"),
        _ => "-".into(),
    }
}

/// Where a destination is: site, else cloud region, else country.
fn place(d: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(s) = d["site"].as_str() {
        parts.push(s.to_owned());
    }
    if let Some(c) = d["country"].as_str() {
        parts.push(c.to_owned());
    }
    if d["cloud_region"].is_string() {
        parts.push(cloud(d));
    }
    if parts.is_empty() { "-".into() } else { parts.join(" ") }
}

fn place_row(r: &Value) -> String {
    place(r)
}

fn process(p: &Value) -> String {
    match (p["comm"].as_str(), p["pid"].as_u64()) {
        (Some(c), Some(pid)) => format!("{c}[{pid}]"),
        (None, Some(pid)) => format!("[{pid}]"),
        _ => "-".into(),
    }
}
