//! `egress-monitor flows`: flow summaries from a running agent, per flow or per group, as an
//! aligned table for people (human byte sizes), or JSON and CSV for scripts.

use std::process::ExitCode;

use clap::Args;

use super::output::{
    ApiArgs, Format, bytes, cloud, country, endpoint, field, place, print_json, process, runtime, table,
    text, write_csv,
};
use crate::{
    api::answers::{FlowRow, FlowsAnswer},
    store::query::{GroupKey, answer_columns},
};

#[derive(Args, Debug)]
pub struct FlowArgs {
    /// Start of the window: RFC 3339, or a duration before now (30m, 24h, 7d). Flows are those
    /// seen in the window, by their own first and last seen times. Their bytes are summed per
    /// store bucket ([store] bucket, default 1m), from the one holding this time: the line
    /// above the table says so when that reaches earlier
    #[arg(long, default_value = "1h")]
    since: String,
    /// End of the window (default: now)
    #[arg(long)]
    until: Option<String>,
    #[command(flatten)]
    filters: FlowFilters,
    /// Sum per group: class, country, cloud_region, site, destination, process, domain
    /// (comma-separated); without it, one row per flow
    #[arg(long, value_name = "KEYS")]
    group_by: Option<String>,
    /// Most rows to show (largest first)
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

/// The filters of `/v1/flows`, shared by `flows` and `top`.
#[derive(Args, Debug)]
pub struct FlowFilters {
    /// Only this class (comma-separated for several)
    #[arg(long)]
    class: Option<String>,
    /// allowed, violation or unclassified (comma-separated)
    #[arg(long)]
    verdict: Option<String>,
    /// Destination country, ISO 3166-1 alpha-2, any case (comma-separated)
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
    /// The name a destination was resolved from (DNS); *.example.com: every name below
    /// example.com (comma-separated)
    #[arg(long)]
    domain: Option<String>,
    /// outbound (this host connected or sent first), inbound (a remote peer did), or unknown
    /// (sockets older than the agent)
    #[arg(long)]
    direction: Option<String>,
}

impl FlowFilters {
    /// The filters given, as API parameters.
    pub(super) fn params(&self) -> Vec<(&'static str, String)> {
        let all = [
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
            ("direction", self.direction.clone()),
            ("domain", self.domain.clone()),
        ];
        all.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect()
    }
}

impl FlowArgs {
    pub(super) fn params(&self) -> Vec<(&'static str, String)> {
        let mut p = vec![("since", self.since.clone()), ("limit", self.limit.to_string())];
        let opt = [("until", self.until.clone()), ("group_by", self.group_by.clone())];
        p.extend(opt.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        p.extend(self.filters.params());
        p
    }
}

pub(super) fn flows(api: &ApiArgs, args: &FlowArgs, format: Format) -> anyhow::Result<ExitCode> {
    let client = api.client()?;
    let (answer, body) =
        runtime()?.block_on(client.get::<FlowsAnswer<FlowRow>>("v1/flows", &args.params()))?;
    print_flows(&answer, &body, format)?;
    Ok(ExitCode::SUCCESS)
}

type Column = (&'static str, fn(&FlowRow) -> String);

/// The columns of a flows answer: one per group key (or a flow's attributes), then the sums.
pub(super) fn print_flows(
    a: &FlowsAnswer<FlowRow>,
    body: &serde_json::Value,
    format: Format,
) -> anyhow::Result<()> {
    let groups: Vec<GroupKey> = a.group_by.iter().filter_map(|g| GroupKey::from_name(g)).collect();
    match format {
        Format::Json => return print_json(body),
        Format::Csv => {
            let header = answer_columns(&groups);
            let rows = a.rows.iter().map(|r| header.iter().map(|c| field(&r.column(c))).collect());
            return write_csv(&header, rows);
        }
        Format::Table => {}
    }
    let mut columns: Vec<Column> = Vec::new();
    if groups.is_empty() {
        columns.extend([
            ("CLASS", (|r: &FlowRow| text(&r.class)) as fn(&FlowRow) -> String),
            ("VERDICT", |r| text(&r.verdict)),
            ("DIRECTION", |r| text(&r.direction)),
            ("PROTO", |r| text(&r.protocol)),
            ("SOURCE", |r| endpoint(r.src_ip.as_deref(), r.src_port)),
            ("DESTINATION", |r| endpoint(r.dst_ip.as_deref(), r.dst_port)),
            ("DOMAIN", |r| text(&r.domain)),
            ("WHERE", |r| {
                place(
                    r.site.as_deref(),
                    r.country.as_deref(),
                    r.cloud_provider.as_deref(),
                    r.cloud_region.as_deref(),
                    r.internal,
                )
            }),
            ("PROCESS", |r| process(r.comm.as_deref(), r.pid)),
        ]);
    }
    for g in &groups {
        match g {
            GroupKey::Class => columns.push(("CLASS", |r| text(&r.class))),
            GroupKey::Country => columns.push(("COUNTRY", |r| country(r.country.as_deref(), r.internal))),
            GroupKey::CloudRegion => {
                columns.push(("CLOUD", |r| cloud(r.cloud_provider.as_deref(), r.cloud_region.as_deref())))
            }
            GroupKey::Site => columns.push(("SITE", |r| text(&r.site))),
            GroupKey::Destination => {
                columns.push(("DESTINATION", |r| endpoint(r.dst_ip.as_deref(), r.dst_port)))
            }
            GroupKey::Process => columns.extend([
                ("PROCESS", (|r: &FlowRow| process(r.comm.as_deref(), r.pid)) as fn(&FlowRow) -> String),
                ("CGROUP", |r| text(&r.cgroup)),
            ]),
            GroupKey::Domain => columns.push(("DOMAIN", |r| text(&r.domain))),
        }
    }
    columns.extend([
        ("BYTES", (|r: &FlowRow| bytes(r.bytes)) as fn(&FlowRow) -> String),
        ("PACKETS", |r| r.packets.to_string()),
        ("FLOWS", |r| r.flows.to_string()),
        ("LAST SEEN", |r| text(&r.last_seen)),
    ]);
    let mut t = table(&columns.iter().map(|(h, _)| *h).collect::<Vec<_>>());
    for r in &a.rows {
        t.add_row(columns.iter().map(|(_, f)| f(r)).collect::<Vec<_>>());
    }
    println!("{}", heading(a));
    println!("{t}");
    Ok(())
}

/// The line above a flows table: how many rows, the window, as of when the counts are, and,
/// when the window does not start on a store bucket, from when the sums count.
fn heading<R>(a: &FlowsAnswer<R>) -> String {
    let n = a.rows.len();
    let mut line = format!("{n} row{}, {} to {}, ", if n == 1 { "" } else { "s" }, a.since, a.until);
    line += &match a.live {
        true => format!("counted up to {} (active flows included)", a.as_of),
        false => format!("as of {} (active flows as of their last report)", a.as_of),
    };
    if !a.counted_from.is_empty() && a.counted_from != a.since {
        line += &format!("; sums from {} (whole store buckets)", a.counted_from);
    }
    line
}
