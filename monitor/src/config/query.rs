//! The `[store]`, `[api]` and `[export]` schema: where flow summaries are kept, how security
//! teams query them, and where a fleet sends them.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use serde::Deserializer;

use super::Interval;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Flow summaries are kept per flow per bucket of this length.
    pub bucket: Spanned<Interval>,
    /// Summaries and alerts older than this are pruned.
    pub retention: Interval,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            bucket: Spanned::new(0..0, Interval(Duration::from_secs(60))),
            retention: Interval(Duration::from_secs(30 * 86400)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Unix socket of the HTTP API (mode 0660).
    pub socket: PathBuf,
    /// Also serve the API on TCP here; requires `token_file`.
    pub listen: Option<Spanned<SocketAddr>>,
    /// File holding the bearer token TCP clients must send.
    pub token_file: Option<Spanned<PathBuf>>,
}

pub const DEFAULT_API_SOCKET: &str = "/run/egress-monitor/api.sock";

impl Default for ApiConfig {
    fn default() -> Self {
        Self { socket: PathBuf::from(DEFAULT_API_SOCKET), listen: None, token_file: None }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    pub clickhouse: Option<ClickHouseConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// ClickHouse's HTTP interface, like "http://clickhouse.internal:8123".
    pub url: WebhookUrl,
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default = "default_user")]
    pub user: String,
    pub password_file: Option<PathBuf>,
    /// How often finished buckets are sent.
    #[serde(default = "default_interval")]
    pub interval: Interval,
    /// Per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout: Interval,
}

/// An http:// or https:// URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(pub reqwest::Url);

impl<'de> Deserialize<'de> for WebhookUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        crate::sinks::webhook::parse_http_url(&text).map(WebhookUrl).map_err(serde::de::Error::custom)
    }
}

fn default_database() -> String {
    "egress".into()
}

fn default_user() -> String {
    "default".into()
}

fn default_interval() -> Interval {
    Interval(Duration::from_secs(10))
}

fn default_timeout() -> Interval {
    Interval(Duration::from_secs(10))
}
