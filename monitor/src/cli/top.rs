//! `egress-monitor top`: where data goes now, ranked and refreshed like top.

use std::{io::IsTerminal, process::ExitCode, time::Duration};

use clap::Args;

use super::{
    flows::{FlowFilters, print_flows},
    output::{ApiArgs, Format, runtime},
};
use crate::api::answers::{FlowRow, FlowsAnswer};

#[derive(Args, Debug)]
pub struct TopArgs {
    /// Window the totals cover, ending now. Totals take whole store buckets ([store] bucket,
    /// default 1m), from the one holding this time; active flows count up to the moment asked
    #[arg(long, default_value = "5m")]
    since: String,
    /// What to rank: class, country, cloud_region, site, destination, process, domain
    /// (comma-separated); by default each destination with the name it was resolved from
    #[arg(long, default_value = "destination,domain")]
    group_by: String,
    #[command(flatten)]
    filters: FlowFilters,
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

/// Each refresh as a table (the screen cleared first on a terminal), as one line of JSON (the
/// API's answer), or as CSV (a header, then the rows).
pub(super) fn top(api: &ApiArgs, args: &TopArgs, format: Format) -> anyhow::Result<ExitCode> {
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
        params.extend(args.filters.params());
        let (answer, body) = rt.block_on(client.get::<FlowsAnswer<FlowRow>>("v1/flows", &params))?;
        match format {
            Format::Json => println!("{}", serde_json::to_string(&body)?),
            Format::Csv => print_flows(&answer, &body, Format::Csv)?,
            Format::Table => {
                if live {
                    print!("\x1b[2J\x1b[H"); // clear the screen, like top
                }
                let total: u64 = answer.rows.iter().map(|r| r.bytes).sum();
                println!(
                    "egress-monitor top - {} - last {} by {}: {} in the top {} groups",
                    chrono::Utc::now().format("%H:%M:%S"),
                    args.since,
                    args.group_by,
                    bytesize::ByteSize(total),
                    answer.rows.len()
                );
                print_flows(&answer, &body, Format::Table)?;
            }
        }
        n += 1;
        if args.iterations.is_some_and(|max| n >= max) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(args.interval);
    }
}
