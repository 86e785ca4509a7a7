//! The TOML configuration: schema, defaults and validation. Every error names the file, the
//! line and column, the key and the offending value, and says what was expected.

use std::{
    collections::HashMap,
    fmt,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

mod build;
mod classes;
mod dns;
mod files;
mod query;
mod reload;
mod reports;
mod sinks;
mod values;

pub use classes::{ClassConfig, Mode};
pub use dns::DnsConfig;
pub use query::{ApiConfig, ClickHouseConfig, DEFAULT_API_SOCKET, ExportConfig, StoreConfig};

pub use query::WebhookUrl;
pub use sinks::{
    AlertFilter, Facility, RetryPolicy, SinkConfig, SinkEntry, SyslogAddress, SyslogFormat, SyslogOptions,
    WebhookFormat, WebhookOptions,
};
pub use values::{CgroupPath, Cidr, ClassName, CountryCode, Interval, RingBufferSize, SiteName};

/// Where `run` and the other commands look when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/egress-monitor/egress-monitor.toml";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The file this configuration was read from, for messages about what it names.
    #[serde(skip)]
    pub origin: Origin,
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default)]
    pub geoip: GeoipConfig,
    #[serde(default)]
    pub sites: Vec<SiteConfig>,
    #[serde(default)]
    pub classes: Vec<ClassConfig>,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub reports: reports::ReportsConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub export: ExportConfig,
    /// The `[[sinks]]` tables as written; [`Config::sinks`] holds them checked.
    #[serde(default, rename = "sinks")]
    pub sink_entries: Vec<SinkEntry>,
    #[serde(skip)]
    pub sinks: Vec<SinkConfig>,
    /// The text it was parsed from, to tell what a reload changes.
    #[serde(skip)]
    text: String,
}

/// Where destinations are placed on the map.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeoipConfig {
    /// MaxMind-format country database (GeoIP2/GeoLite2 or DB-IP schema); the embedded DB-IP
    /// Lite database when absent.
    pub country_db: Option<Spanned<PathBuf>>,
    /// City database: adds the subdivision (`US-VA`).
    pub city_db: Option<Spanned<PathBuf>>,
    /// ASN database: autonomous system number and organisation.
    pub asn_db: Option<Spanned<PathBuf>>,
    /// Cloud providers' published range files (Oracle, AWS, Google Cloud, Azure).
    pub cloud_ranges: Vec<Spanned<PathBuf>>,
    /// How often database and range files are checked for replacement.
    pub reload_interval: Interval,
}

impl Default for GeoipConfig {
    fn default() -> Self {
        Self {
            country_db: None,
            city_db: None,
            asn_db: None,
            cloud_ranges: Vec::new(),
            reload_interval: Interval(Duration::from_secs(60)),
        }
    }
}

/// One of the company's own sites: datacenters and private links, by CIDR.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub name: Spanned<SiteName>,
    pub country: Spanned<CountryCode>,
    pub cidrs: Vec<Spanned<Cidr>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// One alert per (class, workload, destination address, port) per window this long.
    pub cooldown: Interval,
    /// Alerts kept in the outbox awaiting delivery; when full, the oldest is dropped (counted
    /// and logged).
    pub outbox_max: Spanned<u32>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self { cooldown: Interval(Duration::from_secs(600)), outbox_max: Spanned::new(0..0, 10_000) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Mount point of the cgroup v2 hierarchy; detected from /proc/self/mountinfo when absent.
    pub cgroup_root: Option<PathBuf>,
    /// Name reported in the `host` field; the system host name when absent.
    pub host: Option<String>,
    /// An active flow is reported at least this often.
    pub flush_interval: Spanned<Interval>,
    /// How often the kernel flow map is read.
    pub sweep_interval: Interval,
    /// A flow with no packet for this long has ended.
    pub idle_timeout: Interval,
    /// After its socket is closed, a flow ends once it has sent nothing for this long
    /// (the FIN exchange and retransmissions still count).
    pub close_grace: Interval,
    /// Capacity of the kernel flow map (entries). When it is full, the packets of flows that
    /// find no slot are counted per class and per cgroup (overflow) and reported as losses
    /// with their bytes; no flow is evicted.
    pub max_flows: Spanned<u32>,
    /// Size of the kernel-to-agent ring buffer in bytes: a power of two, at least 4096.
    pub ring_buffer_size: RingBufferSize,
    /// Where the agent keeps what must survive a restart (the alert outbox).
    pub state_dir: PathBuf,
    /// Directory on bpffs where the kernel programs and maps stay pinned between agents
    /// (bpffs is mounted at /sys/fs/bpf when nothing is).
    pub pin_dir: PathBuf,
    /// How the agent's own log lines are written on stderr (`--log-format` wins).
    pub log_format: LogFormat,
}

/// The agent's log lines: readable text, or one JSON object per line for log pipelines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            cgroup_root: None,
            host: None,
            flush_interval: Spanned::new(0..0, Interval(Duration::from_secs(10))),
            sweep_interval: Interval(Duration::from_secs(1)),
            idle_timeout: Interval(Duration::from_secs(60)),
            close_grace: Interval(Duration::from_secs(2)),
            max_flows: Spanned::new(0..0, 65536),
            ring_buffer_size: RingBufferSize(1 << 20),
            state_dir: PathBuf::from("/var/lib/egress-monitor"),
            pin_dir: PathBuf::from("/sys/fs/bpf/egress-monitor"),
            log_format: LogFormat::Text,
        }
    }
}

/// Where a configuration came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Origin {
    File(PathBuf),
    #[default]
    Embedded,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Embedded => f.write_str("<embedded defaults>"),
        }
    }
}

/// A configuration error: where (file, line, column, key), what is wrong, and the line itself.
#[derive(Debug)]
pub struct ConfigError {
    pub origin: Origin,
    pub line: usize,
    pub column: usize,
    /// Dotted key path such as `classes[0].cgroups[1]`; empty for syntax errors.
    pub key: String,
    pub message: String,
    pub source_line: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if self.line > 0 {
            write!(f, "\n{:>5} | {}", self.line, self.source_line)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// How `run` and friends find their configuration.
pub enum ConfigSource<'a> {
    /// `--config FILE`: the file must exist.
    Explicit(&'a Path),
    /// No flag: the default path if it exists, else the embedded defaults.
    Default,
}

impl Config {
    /// Loads a configuration the way the CLI does.
    pub fn load(source: ConfigSource<'_>) -> Result<Config, ConfigError> {
        match source {
            ConfigSource::Explicit(p) => Config::from_file(p),
            ConfigSource::Default if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Config::from_file(Path::new(DEFAULT_CONFIG_PATH))
            }
            ConfigSource::Default => Config::parse("", Origin::Embedded),
        }
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let origin = Origin::File(path.to_owned());
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the configuration file: {e}"),
            source_line: String::new(),
        })?;
        let config = Config::parse(&text, origin)?;
        config.files_exist(&text)?;
        Ok(config)
    }

    /// Parses and validates a configuration.
    pub fn parse(text: &str, origin: Origin) -> Result<Config, ConfigError> {
        let at = |span: Option<Range<usize>>, key: String, message: String| {
            let (line, column, source_line) = locate(text, span);
            ConfigError { origin: origin.clone(), line, column, key, message, source_line }
        };
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| at(e.span(), String::new(), e.message().to_owned()))?;
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            // Spanned<T> adds a private segment to the path; it is not a key the user wrote.
            let key = e.path().to_string().replace(".$__serde_spanned_private_value", "");
            let key = if key == "." { String::new() } else { key };
            let inner = e.into_inner();
            at(inner.span(), key, inner.message().to_owned())
        })?;
        config.validate(text).map_err(|(span, key, message)| at(Some(span), key, message))?;
        config.sinks = config
            .sink_entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                sinks::check(entry).map_err(|(span, key, message)| {
                    let key =
                        if key.is_empty() { format!("sinks[{i}]") } else { format!("sinks[{i}].{key}") };
                    at(Some(span), key, message)
                })
            })
            .collect::<Result<_, _>>()?;
        config.validate_sinks().map_err(|(span, key, message)| at(Some(span), key, message))?;
        config.origin = origin;
        config.text = text.to_owned();
        Ok(config)
    }

    /// Checks that need the whole document: names and selectors used twice.
    fn validate(&self, text: &str) -> Result<(), (Range<usize>, String, String)> {
        // Class ids 1..=n index the kernel's per-class overflow counters.
        let most = monitor_common::MAX_CLASSES as usize - 1;
        if self.classes.len() > most {
            return Err((
                self.classes[most].name.span(),
                format!("classes[{most}]"),
                format!("{} classes: at most {most} are supported", self.classes.len()),
            ));
        }
        let mut sites: HashMap<&str, usize> = HashMap::new();
        for (i, site) in self.sites.iter().enumerate() {
            let name = site.name.get_ref().0.as_str();
            if let Some(first) = sites.insert(name, i) {
                return Err((
                    site.name.span(),
                    format!("sites[{i}].name"),
                    format!("site name {name:?} is already used by sites[{first}]"),
                ));
            }
            if site.cidrs.is_empty() {
                return Err((
                    site.name.span(),
                    format!("sites[{i}].cidrs"),
                    format!("site {name:?} has no CIDRs: list its networks, like cidrs = [\"10.60.0.0/16\"]"),
                ));
            }
        }
        let names = classes::validate(&self.classes, &self.sites)?;
        for (i, sink) in self.sink_entries.iter().enumerate() {
            let Some((_, classes)) = sink.iter().find(|(k, _)| k.get_ref() == "classes") else { continue };
            let Some(list) = classes.get_ref().as_array() else { continue };
            for (j, class) in list.iter().enumerate() {
                let Some(class) = class.as_str() else { continue };
                if !names.contains_key(class) {
                    let known: Vec<&str> = names.keys().copied().collect();
                    return Err((
                        sinks::item_span(text, classes.span(), class),
                        format!("sinks[{i}].classes[{j}]"),
                        format!("no class is named {class:?} (classes: {})", known.join(", ")),
                    ));
                }
            }
        }
        if let (Some(listen), None) = (&self.api.listen, &self.api.token_file) {
            return Err((
                listen.span(),
                "api.listen".into(),
                format!(
                    "serving the API on TCP ({}) needs api.token_file: requests must carry its bearer token",
                    listen.get_ref()
                ),
            ));
        }
        let bucket = self.store.bucket.get_ref().0;
        if bucket < Duration::from_secs(1) || 86400 % bucket.as_secs() != 0 || bucket.subsec_nanos() != 0 {
            return Err((
                self.store.bucket.span(),
                "store.bucket".into(),
                format!(
                    "{} does not divide a day into whole seconds: use a bucket like \"1m\", \"5m\" or \"1h\"",
                    humantime::format_duration(bucket)
                ),
            ));
        }
        if *self.alerts.outbox_max.get_ref() == 0 {
            return Err((
                self.alerts.outbox_max.span(),
                "alerts.outbox_max".into(),
                "must be at least 1".into(),
            ));
        }
        let a = &self.agent;
        if a.flush_interval() < a.sweep_interval.0 {
            return Err((
                a.flush_interval.span(),
                "agent.flush_interval".into(),
                format!(
                    "{} is shorter than agent.sweep_interval ({}): flows are read once per sweep",
                    humantime::format_duration(a.flush_interval()),
                    humantime::format_duration(a.sweep_interval.0)
                ),
            ));
        }
        if a.max_flows() < 16 {
            return Err((
                a.max_flows.span(),
                "agent.max_flows".into(),
                format!("{} is too small: expected at least 16", a.max_flows()),
            ));
        }
        Ok(())
    }

    /// Checks across the typed sinks: names are unique (the outbox keeps deliveries by name).
    fn validate_sinks(&self) -> Result<(), (Range<usize>, String, String)> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            if let Some(first) = seen.insert(sink.name(), i) {
                return Err((
                    sinks::type_span(&self.sink_entries[i]),
                    format!("sinks[{i}]"),
                    format!(
                        "sink {:?} is the same as sinks[{first}]: give one of them a different `name`",
                        sink.name()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Class names in class-id order: class id `i + 1` is `class_names()[i]`.
    pub fn class_names(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.name.get_ref().0.clone()).collect()
    }
}

impl AgentConfig {
    pub fn flush_interval(&self) -> Duration {
        self.flush_interval.get_ref().0
    }

    pub fn max_flows(&self) -> u32 {
        *self.max_flows.get_ref()
    }
}

/// 1-based line and column of a byte span, and the text of that line.
fn locate(text: &str, span: Option<Range<usize>>) -> (usize, usize, String) {
    let Some(span) = span.filter(|s| s.start > 0 || s.end > 0) else { return (0, 0, String::new()) };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    (line, column, text[line_start..line_end].trim_end_matches('\r').to_owned())
}

#[cfg(test)]
mod tests;
