//! What the query subcommands share: how to reach the agent's API, the output formats, and
//! the cells of their tables (human byte sizes, endpoints, places, processes).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use comfy_table::{Table, presets};

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
    pub fn client(&self) -> anyhow::Result<ApiClient> {
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

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Prints an answer as JSON, as the API sent it.
pub fn print_json(body: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(body)?);
    Ok(())
}

pub fn write_csv(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(std::io::stdout().lock());
    w.write_record(header)?;
    for r in rows {
        w.write_record(&r)?;
    }
    w.flush()?;
    Ok(())
}

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING).set_header(header.to_vec());
    t
}

/// A cell: the value, or "-" when there is none.
pub fn text<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), T::to_string)
}

/// A CSV field: the value, or empty when there is none.
pub fn field<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(String::new, T::to_string)
}

/// Where a destination is, in a word when it has no country: `internal` (private, loopback,
/// ... and in no site) or `unknown` (no database places it); "-" when that is not known.
pub fn country(country: Option<&str>, internal: Option<bool>) -> String {
    match (country, internal) {
        (Some(c), _) => c.to_owned(),
        (None, Some(true)) => "internal".into(),
        (None, Some(false)) => "unknown".into(),
        (None, None) => "-".into(),
    }
}

pub fn bytes(n: u64) -> String {
    bytesize::ByteSize(n).to_string()
}

pub fn endpoint(ip: Option<&str>, port: Option<u16>) -> String {
    match (ip, port) {
        (Some(ip), Some(p)) if ip.contains(':') => format!("[{ip}]:{p}"),
        (Some(ip), Some(p)) => format!("{ip}:{p}"),
        (Some(ip), None) => ip.to_owned(),
        _ => "-".into(),
    }
}

pub fn cloud(provider: Option<&str>, region: Option<&str>) -> String {
    match (provider, region) {
        (Some(p), Some(region)) => format!("{p}:{region}"),
        _ => "-".into(),
    }
}

/// Where a destination is: its site, country and cloud region; `internal` or `unknown` when it
/// has none of them.
pub fn place(
    site: Option<&str>,
    country_code: Option<&str>,
    provider: Option<&str>,
    region: Option<&str>,
    internal: Option<bool>,
) -> String {
    let mut parts: Vec<String> = site.into_iter().chain(country_code).map(str::to_owned).collect();
    if region.is_some() {
        parts.push(cloud(provider, region));
    }
    if parts.is_empty() { country(None, internal) } else { parts.join(" ") }
}

pub fn process(comm: Option<&str>, pid: Option<u32>) -> String {
    match (comm, pid) {
        (Some(c), Some(pid)) => format!("{c}[{pid}]"),
        (None, Some(pid)) => format!("[{pid}]"),
        _ => "-".into(),
    }
}
