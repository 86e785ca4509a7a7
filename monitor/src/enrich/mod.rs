//! Places every destination on the map. A destination is built by a list of sources, asked in
//! order: the company's own sites, cloud provider regions, then country, subdivision and
//! autonomous system from MaxMind-format databases. Each source reloads on its own when its
//! file is replaced; answers are cached per address. A new kind of source (DNS names, say) is
//! one more [`Source`].

mod cloud;
pub mod countries;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
mod geoip;
mod sites;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

pub use cloud::{CloudRegion, CloudSource, RangeFile};
pub use geoip::{GeoDb, GeoFacts, MmdbRole, MmdbSource};
pub use sites::{Site, Sites};
use tracing::{info, warn};

pub use crate::record::{CloudProvider, Destination};

/// A file a source reads, and what messages call it (the configuration key that names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub label: String,
    pub path: PathBuf,
}

/// What the enricher is built from.
#[derive(Debug, Clone, Default)]
pub struct EnrichOptions {
    /// Country database; the embedded DB-IP Lite database when None.
    pub country_db: Option<SourceFile>,
    /// City database: adds the subdivision (`US-VA`).
    pub city_db: Option<SourceFile>,
    /// ASN database: autonomous system number and organisation.
    pub asn_db: Option<SourceFile>,
    /// Cloud providers' published range files.
    pub cloud_ranges: Vec<SourceFile>,
    pub sites: Vec<Site>,
}

/// What a source did with an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Ask the next source too.
    Continue,
    /// The destination is complete: no later source may add to it (an internal address).
    Done,
}

/// What a reload found: one message per file.
#[derive(Debug, Default)]
pub struct Reload {
    /// Replaced on disk and reloaded: what is now in force.
    pub reloaded: Vec<String>,
    /// Replaced on disk but unreadable: the previous version stays in force.
    pub failed: Vec<String>,
}

/// One thing that knows where addresses are.
pub trait Source: Send {
    /// What kind of source this is, for logs ("sites", "cloud", "country", "city", "asn").
    fn kind(&self) -> &'static str;
    /// One line per file this source read, for the start-up log and `lookup`.
    fn describe(&self) -> Vec<String>;
    /// Adds what this source knows about `ip` to `d`. An error (a record that cannot be
    /// decoded) makes the destination unknown: a half-placed address could be judged wrongly.
    fn place(&self, ip: IpAddr, d: &mut Destination) -> Result<Placed, String>;
    /// Reopens the source's files that were replaced on disk.
    fn reload(&mut self) -> Reload;
    /// Adds every network this source knows something about (for the policy compiler: within
    /// one of them, and between them, the source's answer is the same for every address).
    fn networks(&self, out: &mut Vec<ipnet::IpNet>) -> Result<(), String>;
}

/// Counters the agent reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EnrichCounters {
    pub lookups: u64,
    pub cache_hits: u64,
    /// Lookups a source failed (a record that cannot be decoded): the destination is then
    /// unknown (a company site keeps its name and country).
    pub decode_errors: u64,
    pub reloads: u64,
    pub reload_failures: u64,
}

/// The sources, in the order they are asked, and the per-address cache.
pub struct Enricher {
    sources: Vec<Box<dyn Source>>,
    cache: HashMap<IpAddr, Arc<Destination>>,
    pub counters: EnrichCounters,
    /// When a lookup error was last logged, and how many were not logged since.
    error_log: Option<(Instant, u64)>,
}

/// Lookup errors are logged at most once per this long (each is counted).
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// Addresses remembered before the cache starts over.
const CACHE_LIMIT: usize = 1 << 17;

impl Enricher {
    /// Opens every source. Errors name the source (its label) and the file, and say what is
    /// wrong with it.
    pub fn open(o: &EnrichOptions) -> anyhow::Result<Enricher> {
        let open =
            |f: &SourceFile, role| MmdbSource::open(f, role).map_err(|e| anyhow::anyhow!("{}: {e}", f.label));
        let mut sources: Vec<Box<dyn Source>> = vec![
            Box::new(Sites::new(&o.sites)),
            Box::new(CloudSource::open(&o.cloud_ranges)?),
            Box::new(match &o.country_db {
                Some(f) => open(f, MmdbRole::Country)?,
                None => MmdbSource::embedded_country(),
            }),
        ];
        if let Some(f) = &o.city_db {
            sources.push(Box::new(open(f, MmdbRole::City)?));
        }
        if let Some(f) = &o.asn_db {
            sources.push(Box::new(open(f, MmdbRole::Asn)?));
        }
        Ok(Enricher::from_sources(sources))
    }

    /// An enricher over the given sources, asked in this order.
    pub fn from_sources(sources: Vec<Box<dyn Source>>) -> Enricher {
        Enricher { sources, cache: HashMap::new(), counters: EnrichCounters::default(), error_log: None }
    }

    /// One line per source file (kind, description), for the start-up log and `lookup`.
    pub fn sources(&self) -> Vec<(String, String)> {
        self.sources.iter().flat_map(|s| s.describe().into_iter().map(|d| (s.kind().to_owned(), d))).collect()
    }

    /// Where `ip` is, from the cache or the sources.
    pub fn locate(&mut self, ip: IpAddr) -> Arc<Destination> {
        self.counters.lookups += 1;
        if let Some(d) = self.cache.get(&ip) {
            self.counters.cache_hits += 1;
            return d.clone();
        }
        let d = Arc::new(self.place(ip));
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache.insert(ip, d.clone());
        d
    }

    /// Where `ip` is, from the sources, without touching the cache (the policy compiler asks
    /// about every network once).
    pub fn locate_uncached(&mut self, ip: IpAddr) -> Destination {
        self.place(ip)
    }

    /// Every network some source knows, plus the networks that decide `internal` and the
    /// ranges judged as IPv4 (mapped and NAT64): the boundaries where an answer may change.
    pub fn networks(&self) -> Result<Vec<ipnet::IpNet>, String> {
        let mut out: Vec<ipnet::IpNet> =
            INTERNAL_AND_MAPPED.iter().map(|n| n.parse().expect("valid network")).collect();
        for s in &self.sources {
            s.networks(&mut out)?;
        }
        Ok(out)
    }

    /// Forgets every cached answer (benchmarks measure cold lookups with it).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// Places an address without the cache. An IPv4-mapped address, and a NAT64 address
    /// (`64:ff9b::/96`, RFC 6052), is placed where its IPv4 address is: that is where the
    /// data goes.
    fn place(&mut self, ip: IpAddr) -> Destination {
        let ip = embedded_ipv4(ip.to_canonical());
        let mut d = Destination::default();
        for s in &self.sources {
            match s.place(ip, &mut d) {
                Ok(Placed::Continue) => {}
                Ok(Placed::Done) => break,
                Err(e) => {
                    self.lookup_failed(ip, &e);
                    // Unknown, but for what the company's own sites say.
                    return Destination {
                        site: d.site.clone(),
                        country: d.site.and(d.country),
                        ..Default::default()
                    };
                }
            }
        }
        d
    }

    /// Counts a failed lookup and logs it, at most once per [`ERROR_LOG_EVERY`].
    fn lookup_failed(&mut self, ip: IpAddr, error: &str) {
        self.counters.decode_errors += 1;
        let now = Instant::now();
        match &mut self.error_log {
            Some((at, quiet)) if now.duration_since(*at) < ERROR_LOG_EVERY => *quiet += 1,
            slot => {
                let not_logged = slot.map_or(0, |(_, q)| q);
                warn!(
                    address = %ip, error, not_logged,
                    "cannot read the geolocation record of an address: it is judged as unknown (counted in geolocation errors)"
                );
                *slot = Some((now, 0));
            }
        }
    }

    /// Reopens every file that was replaced on disk. A file that fails to load keeps the
    /// previous version, and the failure is logged and counted. Returns whether anything changed.
    pub fn reload_replaced(&mut self) -> bool {
        let mut changed = false;
        for s in &mut self.sources {
            let r = s.reload();
            for w in &r.reloaded {
                info!(source = s.kind(), "{w}");
            }
            for w in &r.failed {
                warn!(source = s.kind(), "{w}");
            }
            self.counters.reloads += r.reloaded.len() as u64;
            self.counters.reload_failures += r.failed.len() as u64;
            changed |= !r.reloaded.is_empty();
        }
        if changed {
            self.cache.clear();
        }
        changed
    }
}

/// Networks where [`is_internal`] or the IPv4 mapping changes its answer.
const INTERNAL_AND_MAPPED: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "0.0.0.0/32",
    "255.255.255.255/32",
    "100.64.0.0/10",
    "::1/128",
    "::/128",
    "ff00::/8",
    "fc00::/7",
    "fe80::/10",
    "::ffff:0:0/96",
    "64:ff9b::/96",
];

/// The IPv4 address a NAT64 address (`64:ff9b::/96`) stands for; any other address as it is.
pub fn embedded_ipv4(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
            let o = v6.octets();
            IpAddr::V4(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]))
        }
        other => other,
    }
}

/// Addresses that never leave the company by themselves: private (RFC 1918), shared
/// (RFC 6598), loopback, link-local, unique-local (fc00::/7), multicast and unspecified.
/// Documentation ranges (192.0.2.0/24, 2001:db8::/32, ...) are not internal.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (a == 100 && (b & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests;
