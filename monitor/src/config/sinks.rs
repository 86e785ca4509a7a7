//! The `[[sinks]]` schema: where records and alerts go, and which alerts each sink takes.

use std::{collections::BTreeMap, fmt, ops::Range, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, de};
use toml::Spanned;

use super::{ClassName, Interval};
use crate::policy::Severity;

/// A sink, checked and typed (from a [`SinkEntry`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// Every flow record, alert and alert update as a JSON line on standard output.
    Stdout {},
    Syslog(SyslogConfig),
    Webhook(WebhookConfig),
}

/// Which alerts a sink takes (the `min_severity` and `classes` keys of a sink).
#[derive(Debug, Clone, Copy)]
pub struct AlertFilter<'a> {
    /// Only alerts at least this severe.
    pub min_severity: Option<Severity>,
    /// Only alerts of these classes (all classes when empty).
    pub classes: &'a [ClassName],
}

impl AlertFilter<'_> {
    pub fn accepts(&self, class: &str, severity: Severity) -> bool {
        self.min_severity.is_none_or(|m| severity >= m)
            && (self.classes.is_empty() || self.classes.iter().any(|c| c.0 == class))
    }
}

/// How a sink retries a delivery that failed for a reason that may pass (the `retry_initial`
/// and `retry_max` keys of a sink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// First wait after a failure; doubled after each further failure (with jitter).
    pub initial: Duration,
    /// Longest wait between two attempts.
    pub max: Duration,
}

fn default_retry_initial() -> Interval {
    Interval(Duration::from_secs(1))
}

fn default_retry_max() -> Interval {
    Interval(Duration::from_secs(300))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    /// Names the sink in logs, status and the outbox; defaults to "syslog:<address>".
    pub name: Option<String>,
    pub address: SyslogAddress,
    pub format: SyslogFormat,
    pub facility: Facility,
    /// PEM file of CA certificates that sign the server's certificate (tls:// only); the
    /// system's trust store when absent.
    pub ca_file: Option<PathBuf>,
    pub min_severity: Option<Severity>,
    pub classes: Vec<ClassName>,
    pub retry: RetryConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Names the sink in logs, status and the outbox; defaults to "webhook:<url>".
    pub name: Option<String>,
    pub url: WebhookUrl,
    pub format: WebhookFormat,
    /// File holding the shared secret that signs each request (HMAC-SHA256).
    pub secret_file: Option<PathBuf>,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout (connect, send, answer).
    pub timeout: Duration,
    pub min_severity: Option<Severity>,
    pub classes: Vec<ClassName>,
    pub retry: RetryConfig,
}

/// A `[[sinks]]` table as written: every key of every sink type, checked against its `type`
/// by [`SinkEntry::check`] so that errors keep their line and key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkEntry {
    #[serde(rename = "type")]
    pub kind: Spanned<SinkKind>,
    pub name: Option<Spanned<String>>,
    pub address: Option<Spanned<SyslogAddress>>,
    pub facility: Option<Spanned<Facility>>,
    pub ca_file: Option<Spanned<PathBuf>>,
    pub url: Option<Spanned<WebhookUrl>>,
    pub secret_file: Option<Spanned<PathBuf>>,
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    pub timeout: Option<Spanned<Interval>>,
    pub format: Option<Spanned<String>>,
    pub min_severity: Option<Spanned<Severity>>,
    #[serde(default)]
    pub classes: Vec<Spanned<ClassName>>,
    pub retry_initial: Option<Spanned<Interval>>,
    pub retry_max: Option<Spanned<Interval>>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Stdout,
    Syslog,
    Webhook,
}

/// A configuration error inside one sink: where, which key (relative to the sink), what.
pub type SinkError = (Range<usize>, String, String);

impl SinkEntry {
    /// Checks the keys against the sink's type and builds the typed sink.
    pub fn check(&self) -> Result<SinkConfig, SinkError> {
        let kind = *self.kind.get_ref();
        let (allowed, type_name): (&[&str], &str) = match kind {
            SinkKind::Stdout => (&[], "stdout"),
            SinkKind::Syslog => (
                &[
                    "name",
                    "address",
                    "format",
                    "facility",
                    "ca_file",
                    "min_severity",
                    "classes",
                    "retry_initial",
                    "retry_max",
                ],
                "syslog",
            ),
            SinkKind::Webhook => (
                &[
                    "name",
                    "url",
                    "format",
                    "secret_file",
                    "headers",
                    "timeout",
                    "min_severity",
                    "classes",
                    "retry_initial",
                    "retry_max",
                ],
                "webhook",
            ),
        };
        for (key, span) in self.present() {
            if !allowed.contains(&key) {
                let takes = if allowed.is_empty() { "no other keys".to_owned() } else { allowed.join(", ") };
                return Err((
                    span,
                    key.into(),
                    format!("`{key}` is not a key of a {type_name} sink ({type_name} sinks take {takes})"),
                ));
            }
        }
        let retry = RetryConfig {
            initial: self.retry_initial.as_ref().map_or(default_retry_initial().0, |i| i.get_ref().0),
            max: self.retry_max.as_ref().map_or(default_retry_max().0, |i| i.get_ref().0),
        };
        if retry.max < retry.initial {
            let span = self.retry_max.as_ref().map_or(0..0, |s| s.span());
            return Err((span, "retry_max".into(), "must not be shorter than retry_initial".into()));
        }
        let name = self.name.as_ref().map(|n| n.get_ref().clone());
        let min_severity = self.min_severity.as_ref().map(|s| *s.get_ref());
        let classes: Vec<ClassName> = self.classes.iter().map(|c| c.get_ref().clone()).collect();
        let format = |choices: &[&str]| -> Result<Option<String>, SinkError> {
            match &self.format {
                None => Ok(None),
                Some(f) if choices.contains(&f.get_ref().as_str()) => Ok(Some(f.get_ref().clone())),
                Some(f) => Err((
                    f.span(),
                    "format".into(),
                    format!(
                        "unknown format {:?} for a {type_name} sink: expected {}",
                        f.get_ref(),
                        choices.join(" or ")
                    ),
                )),
            }
        };
        let missing = |key: &str, example: &str| {
            (
                self.kind.span(),
                key.to_owned(),
                format!("a {type_name} sink needs `{key}`, like {key} = {example:?}"),
            )
        };
        Ok(match kind {
            SinkKind::Stdout => SinkConfig::Stdout {},
            SinkKind::Syslog => SinkConfig::Syslog(SyslogConfig {
                name,
                address: self
                    .address
                    .as_ref()
                    .ok_or_else(|| missing("address", "udp://127.0.0.1:514"))?
                    .get_ref()
                    .clone(),
                format: match format(&["rfc5424", "rfc3164"])?.as_deref() {
                    Some("rfc3164") => SyslogFormat::Rfc3164,
                    _ => SyslogFormat::Rfc5424,
                },
                facility: self.facility.as_ref().map_or_else(Facility::default, |f| *f.get_ref()),
                ca_file: self.ca_file.as_ref().map(|p| p.get_ref().clone()),
                min_severity,
                classes,
                retry,
            }),
            SinkKind::Webhook => SinkConfig::Webhook(WebhookConfig {
                name,
                url: self
                    .url
                    .as_ref()
                    .ok_or_else(|| missing("url", "https://hooks.example/egress"))?
                    .get_ref()
                    .clone(),
                format: match format(&["json", "slack"])?.as_deref() {
                    Some("slack") => WebhookFormat::Slack,
                    _ => WebhookFormat::Json,
                },
                secret_file: self.secret_file.as_ref().map(|p| p.get_ref().clone()),
                headers: self.headers.as_ref().map(|h| h.get_ref().clone()).unwrap_or_default(),
                timeout: self.timeout.as_ref().map_or(Duration::from_secs(5), |t| t.get_ref().0),
                min_severity,
                classes,
                retry,
            }),
        })
    }

    /// The keys written in this table (besides `type`), with their spans.
    fn present(&self) -> Vec<(&'static str, Range<usize>)> {
        fn at<T>(key: &'static str, v: &Option<Spanned<T>>) -> Option<(&'static str, Range<usize>)> {
            v.as_ref().map(|s| (key, s.span()))
        }
        let mut keys: Vec<(&'static str, Range<usize>)> = [
            at("name", &self.name),
            at("address", &self.address),
            at("facility", &self.facility),
            at("ca_file", &self.ca_file),
            at("url", &self.url),
            at("secret_file", &self.secret_file),
            at("headers", &self.headers),
            at("timeout", &self.timeout),
            at("format", &self.format),
            at("min_severity", &self.min_severity),
            at("retry_initial", &self.retry_initial),
            at("retry_max", &self.retry_max),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let Some(first) = self.classes.first() {
            keys.push(("classes", first.span()));
        }
        keys
    }
}

impl SinkConfig {
    /// The sink's stable name: pending deliveries in the outbox are kept under it.
    pub fn name(&self) -> String {
        match self {
            SinkConfig::Stdout {} => "stdout".into(),
            SinkConfig::Syslog(s) => s.name.clone().unwrap_or_else(|| format!("syslog:{}", s.address)),
            SinkConfig::Webhook(w) => w.name.clone().unwrap_or_else(|| format!("webhook:{}", w.url.0)),
        }
    }

    /// Filter of a sink that delivers alerts through the outbox (None for stdout).
    pub fn alert_filter(&self) -> Option<AlertFilter<'_>> {
        match self {
            SinkConfig::Stdout {} => None,
            SinkConfig::Syslog(s) => Some(AlertFilter { min_severity: s.min_severity, classes: &s.classes }),
            SinkConfig::Webhook(w) => Some(AlertFilter { min_severity: w.min_severity, classes: &w.classes }),
        }
    }

    /// Retry timing of a sink that delivers through the outbox.
    pub fn retry(&self) -> RetryConfig {
        match self {
            SinkConfig::Stdout {} => {
                RetryConfig { initial: default_retry_initial().0, max: default_retry_max().0 }
            }
            SinkConfig::Syslog(s) => s.retry,
            SinkConfig::Webhook(w) => w.retry,
        }
    }
}

/// Where a syslog receiver listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogAddress {
    Unix(PathBuf),
    Udp {
        host: String,
        port: u16,
    },
    /// RFC 6587 octet-counted framing.
    Tcp {
        host: String,
        port: u16,
    },
    Tls {
        host: String,
        port: u16,
    },
}

impl fmt::Display for SyslogAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyslogAddress::Unix(p) => write!(f, "unix://{}", p.display()),
            SyslogAddress::Udp { host, port } => write!(f, "udp://{host}:{port}"),
            SyslogAddress::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            SyslogAddress::Tls { host, port } => write!(f, "tls://{host}:{port}"),
        }
    }
}

impl SyslogAddress {
    pub fn parse(text: &str) -> Result<SyslogAddress, String> {
        let expected =
            "expected unix:///path/to/socket, udp://host[:port], tcp://host[:port] or tls://host[:port]";
        let (scheme, rest) =
            text.split_once("://").ok_or_else(|| format!("invalid syslog address {text:?}: {expected}"))?;
        if scheme == "unix" {
            if !rest.starts_with('/') {
                return Err(format!(
                    "invalid syslog address {text:?}: the socket path must be absolute, like unix:///dev/log"
                ));
            }
            return Ok(SyslogAddress::Unix(PathBuf::from(rest)));
        }
        let default_port = match scheme {
            "udp" => 514,
            "tcp" => 601,
            "tls" => 6514,
            _ => {
                return Err(format!(
                    "invalid syslog address {text:?}: unknown scheme {scheme:?}; {expected}"
                ));
            }
        };
        let (host, port) = match rest.rsplit_once(':') {
            // IPv6 literals come in brackets: [::1]:514.
            Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.starts_with('[')) => {
                let port = p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    format!("invalid syslog address {text:?}: {p:?} is not a port (1-65535)")
                })?;
                (h, port)
            }
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("invalid syslog address {text:?}: no host; {expected}"));
        }
        let host = host.to_owned();
        Ok(match scheme {
            "udp" => SyslogAddress::Udp { host, port },
            "tcp" => SyslogAddress::Tcp { host, port },
            _ => SyslogAddress::Tls { host, port },
        })
    }
}

impl<'de> Deserialize<'de> for SyslogAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SyslogAddress::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyslogFormat {
    #[default]
    Rfc5424,
    Rfc3164,
}

/// A syslog facility by its conventional name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facility(pub u8);

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

impl Default for Facility {
    fn default() -> Self {
        Facility(4) // auth
    }
}

impl<'de> Deserialize<'de> for Facility {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        FACILITIES.iter().position(|f| *f == name).map(|i| Facility(i as u8)).ok_or_else(|| {
            de::Error::custom(format!(
                "unknown syslog facility {name:?}: expected one of auth, authpriv, daemon, user, security, local0 ... local7"
            ))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebhookFormat {
    /// The alert's JSON, as the stdout sink prints it.
    #[default]
    Json,
    /// A chat-ready message (`{"text": ...}`) with the key fields.
    Slack,
}

/// An http:// or https:// URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(pub reqwest::Url);

impl<'de> Deserialize<'de> for WebhookUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let url = reqwest::Url::parse(&text)
            .map_err(|e| de::Error::custom(format!("invalid webhook URL {text:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(de::Error::custom(format!(
                "invalid webhook URL {text:?}: expected an http:// or https:// URL with a host"
            )));
        }
        Ok(WebhookUrl(url))
    }
}
