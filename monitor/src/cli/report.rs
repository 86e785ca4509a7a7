//! `egress-monitor report`, `key` and `verify`: a residency report of a period from the store,
//! signed with the host key and chained to the previous one; the host's public key; and the
//! checks an auditor runs on reports without trusting the host.

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::ConfigArg;
use crate::{
    enrich::Enricher,
    reports::{self, ReportOptions, key::HostKey, key::PublicKey, render, verify},
    store,
};

#[derive(Args)]
pub struct ReportArgs {
    /// Start of the period: RFC 3339, or a duration before now (24h, 30d). The store sums per
    /// bucket ([store] bucket): the bucket holding this time counts whole
    #[arg(long)]
    since: String,
    /// End of the period: RFC 3339, or a duration before now [default: now]
    #[arg(long)]
    until: Option<String>,
    /// Only this class (its rows alone are summed and digested)
    #[arg(long)]
    class: Option<String>,
    /// json: the signed report (the evidence); html: one page with a world map per class;
    /// text: the same figures for a terminal
    #[arg(short, long, value_enum, default_value = "json")]
    output: ReportFormat,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ReportFormat {
    Json,
    Html,
    Text,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Report files (JSON, as `report` writes them), in any order
    #[arg(value_name = "REPORT", required = true)]
    reports: Vec<PathBuf>,
    /// File holding the host's public key, as `egress-monitor key` prints it
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The host's store (state_dir/store.sqlite, or a copy): also check that its rows still
    /// match the digest each report took of them
    #[arg(long, value_name = "FILE")]
    store: Option<PathBuf>,
}

/// Builds, signs, records and prints a report.
pub fn report(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let now = chrono::Utc::now();
    let time =
        |name: &str, v: &str| store::query::parse_time(name, v, now).map_err(|e| anyhow::anyhow!("--{e}"));
    let since = time("since", &args.since)?;
    let until = args.until.as_deref().map(|u| time("until", u)).transpose()?.unwrap_or(now);
    if until <= since {
        anyhow::bail!("--until {until} is not after --since {since}");
    }
    let dir = &config.agent.state_dir;
    let key = HostKey::load_or_create(dir)?;
    // The report names the configurations the agent recorded over the period; this one only
    // when there are none. Its databases cannot be left out: one that cannot be opened stops it.
    let sources = Enricher::open(&config.enrich_options())
        .with_context(|| format!("opening the geolocation sources {} names", config.origin))?
        .sources();
    let options = ReportOptions {
        host: config.host_name(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        own: store::configs::Configuration {
            at_ms: now.timestamp_millis(),
            ..config.recorded("report", sources)
        },
        since,
        until,
        class: args.class.clone(),
        bucket_secs: config.store.bucket.get_ref().0.as_secs().max(1) as i64,
        now,
    };
    let mut conn = store::open_for_writing(dir)?;
    let report = reports::make(&mut conn, &options, &key, false).context("making the report")?;
    // The chain stays whole in the directory, beside the agent's periodic reports.
    let kept = reports::schedule::keep(dir, &report)?;
    eprintln!("report {} recorded in the store and kept as {}", report.seq, kept.display());
    let text = match args.output {
        ReportFormat::Json => serde_json::to_string_pretty(&report.to_value())? + "\n",
        ReportFormat::Html => render::html(&report),
        ReportFormat::Text => render::text(&report),
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the host's public key (creating the key pair when there is none yet).
pub fn key(arg: &ConfigArg) -> anyhow::Result<ExitCode> {
    let config = arg.load()?;
    println!("{}", HostKey::load_or_create(&config.agent.state_dir)?.public());
    Ok(ExitCode::SUCCESS)
}

pub fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let key_text = std::fs::read_to_string(&args.key)
        .with_context(|| format!("--key {}: cannot read it", args.key.display()))?;
    let key =
        PublicKey::parse(&key_text).map_err(|e| anyhow::anyhow!("--key {}: {e}", args.key.display()))?;
    let mut failures = Vec::new();
    let mut loaded = Vec::new();
    for p in &args.reports {
        match verify::load(p) {
            Ok(l) => loaded.push(l),
            Err(e) => failures.push(e),
        }
    }
    let conn = match &args.store {
        Some(p) => Some(
            rusqlite::Connection::open_with_flags(p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .with_context(|| format!("--store {}: cannot open it", p.display()))?,
        ),
        None => None,
    };
    failures.extend(verify::verify(&mut loaded, &key, conn.as_ref()));
    if failures.is_empty() {
        let seqs: Vec<String> = loaded.iter().map(|l| l.report.seq.to_string()).collect();
        println!(
            "ok: {} report(s) ({}), signed by {}, chained, figures add up{}",
            loaded.len(),
            seqs.join(", "),
            key.text(),
            if conn.is_some() { ", the store's rows match" } else { "" }
        );
        return Ok(ExitCode::SUCCESS);
    }
    for f in &failures {
        println!("FAILED: {f}");
    }
    Ok(ExitCode::FAILURE)
}
