//! Places every destination on the map: the company's own sites, cloud provider regions, and
//! country, subdivision and autonomous system from MaxMind-format databases, cached per address.

mod cloud;
pub mod countries;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
mod geoip;

use std::{collections::HashMap, net::IpAddr, path::PathBuf, sync::Arc};

pub use cloud::{CloudProvider, CloudRegion, RangeFile};
pub use geoip::{GeoDb, GeoFacts};
use ipnet::IpNet;
use prefix_trie::joint::map::JointPrefixMap;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::Config;

/// Where an address is. Field names are public API (records and alerts carry them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Destination {
    /// ISO 3166-1 alpha-2; a site's configured country for site addresses.
    pub country: Option<Arc<str>>,
    /// ISO 3166-2 ("US-VA"), from the city database.
    pub subdivision: Option<Arc<str>>,
    pub asn: Option<u32>,
    pub as_org: Option<Arc<str>>,
    pub cloud_provider: Option<CloudProvider>,
    pub cloud_region: Option<Arc<str>>,
    /// The company site whose CIDRs hold the address.
    pub site: Option<Arc<str>>,
    /// Private, loopback, link-local or multicast, and in no site: not geolocated.
    pub internal: bool,
}

impl Destination {
    /// Whether anything at all places this destination.
    pub fn has_location(&self) -> bool {
        self.country.is_some() || self.site.is_some() || self.cloud_region.is_some() || self.asn.is_some()
    }
}

/// A configured site.
#[derive(Debug, Clone)]
struct Site {
    name: Arc<str>,
    country: Arc<str>,
}

/// A file-backed source and the path it was configured with.
struct Loaded<T> {
    path: PathBuf,
    stamp: Option<geoip::FileStamp>,
    value: T,
}

/// Counters the agent reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EnrichCounters {
    pub lookups: u64,
    pub cache_hits: u64,
    /// Database records that could not be decoded (the address is then placed without them).
    pub decode_errors: u64,
    pub reloads: u64,
    pub reload_failures: u64,
}

/// Everything that places addresses, and the per-address cache.
pub struct Enricher {
    country: GeoDb,
    city: Option<GeoDb>,
    asn: Option<GeoDb>,
    cloud_files: Vec<Loaded<RangeFile>>,
    cloud: JointPrefixMap<IpNet, CloudRegion>,
    sites: JointPrefixMap<IpNet, Site>,
    cache: HashMap<IpAddr, Arc<Destination>>,
    pub counters: EnrichCounters,
}

/// Addresses remembered before the cache starts over.
const CACHE_LIMIT: usize = 1 << 17;

impl Enricher {
    /// Opens every configured source. Errors name the file and what is wrong with it.
    pub fn from_config(config: &Config) -> anyhow::Result<Enricher> {
        let g = &config.geoip;
        let origin = &config.origin;
        let open = |p: &toml::Spanned<PathBuf>, key: &str| {
            GeoDb::open(p.get_ref()).map_err(|e| anyhow::anyhow!("{origin}: geoip.{key}: {e}"))
        };
        let country = match &g.country_db {
            Some(p) => open(p, "country_db")?,
            None => GeoDb::embedded_country(),
        };
        let city = g.city_db.as_ref().map(|p| open(p, "city_db")).transpose()?;
        let asn = g.asn_db.as_ref().map(|p| open(p, "asn_db")).transpose()?;
        let mut cloud_files = Vec::new();
        for (i, p) in g.cloud_ranges.iter().enumerate() {
            let path = p.get_ref().clone();
            let stamp = geoip::FileStamp::of(&path).ok();
            let value = RangeFile::load(&path)
                .map_err(|e| anyhow::anyhow!("{origin}: geoip.cloud_ranges[{i}]: {e}"))?;
            cloud_files.push(Loaded { path, stamp, value });
        }
        let mut sites = JointPrefixMap::new();
        for s in &config.sites {
            let site = Site {
                name: Arc::from(s.name.get_ref().0.as_str()),
                country: Arc::from(s.country.get_ref().0.as_str()),
            };
            for cidr in &s.cidrs {
                sites.insert(cidr.get_ref().0, site.clone());
            }
        }
        let mut e = Enricher {
            country,
            city,
            asn,
            cloud_files,
            cloud: JointPrefixMap::new(),
            sites,
            cache: HashMap::new(),
            counters: EnrichCounters::default(),
        };
        e.rebuild_cloud();
        Ok(e)
    }

    /// One line per source, for the start-up log and `lookup`.
    pub fn sources(&self) -> Vec<(String, String)> {
        let name =
            |db: &GeoDb| db.path.as_deref().map_or("embedded DB-IP Lite".into(), |p| p.display().to_string());
        let mut out =
            vec![("country".into(), format!("{} ({})", name(&self.country), self.country.describe()))];
        for (kind, db) in [("city", &self.city), ("asn", &self.asn)] {
            if let Some(db) = db {
                out.push((kind.into(), format!("{} ({})", name(db), db.describe())));
            }
        }
        for f in &self.cloud_files {
            out.push(("cloud".into(), format!("{} ({})", f.path.display(), f.value.describe())));
        }
        out
    }

    fn rebuild_cloud(&mut self) {
        let mut table = JointPrefixMap::new();
        for f in &self.cloud_files {
            for (net, region) in &f.value.networks {
                table.insert(*net, region.clone());
            }
        }
        self.cloud = table;
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

    /// Forgets every cached answer (benchmarks measure cold lookups with it).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// Places an address without the cache.
    fn place(&mut self, ip: IpAddr) -> Destination {
        let ip = ip.to_canonical();
        let host = IpNet::from(ip);
        let mut d = Destination::default();
        if let Some((_, site)) = self.sites.get_lpm(&host) {
            d.site = Some(site.name.clone());
            d.country = Some(site.country.clone());
        } else if is_internal(ip) {
            d.internal = true;
            return d;
        }
        if let Some((_, c)) = self.cloud.get_lpm(&host) {
            d.cloud_provider = Some(c.provider);
            d.cloud_region = Some(c.region.clone());
        }
        let mut facts = |db: &GeoDb| match db.lookup(ip) {
            Ok(f) => f,
            Err(e) => {
                self.counters.decode_errors += 1;
                warn!(address = %ip, error = %e, "cannot decode a database record; the address is placed without it");
                GeoFacts::default()
            }
        };
        let country = facts(&self.country);
        if d.country.is_none() {
            d.country = country.country.as_deref().map(Arc::from);
        }
        if let Some(city) = &self.city {
            let city = facts(city);
            d.subdivision = city.subdivision.as_deref().map(Arc::from);
            if d.country.is_none() {
                d.country = city.country.as_deref().map(Arc::from);
            }
        }
        if let Some(asn) = &self.asn {
            let asn = facts(asn);
            d.asn = asn.asn;
            d.as_org = asn.as_org.as_deref().map(Arc::from);
        }
        d
    }

    /// Reopens every file that was replaced on disk. A file that fails to load keeps the
    /// previous version, and the failure is logged and counted. Returns whether anything changed.
    pub fn reload_replaced(&mut self) -> bool {
        let mut changed = false;
        for (key, slot) in [
            ("country_db", Some(&mut self.country)),
            ("city_db", self.city.as_mut()),
            ("asn_db", self.asn.as_mut()),
        ] {
            let Some(db) = slot else { continue };
            if !db.replaced() {
                continue;
            }
            let path = db.path.clone().expect("file-backed databases have a path");
            match GeoDb::open(&path) {
                Ok(new) => {
                    info!(key, file = %path.display(), database = %new.describe(), "database replaced on disk: reloaded");
                    *db = new;
                    self.counters.reloads += 1;
                    changed = true;
                }
                Err(e) => {
                    warn!(key, error = %e, "database replaced on disk but cannot be loaded: keeping the previous one");
                    self.counters.reload_failures += 1;
                    // Do not retry the same broken file every interval.
                    db.accept_current_stamp();
                }
            }
        }
        let mut cloud_changed = false;
        for (i, f) in self.cloud_files.iter_mut().enumerate() {
            let now = geoip::FileStamp::of(&f.path).ok();
            if now.is_none() || now == f.stamp {
                continue;
            }
            f.stamp = now;
            match RangeFile::load(&f.path) {
                Ok(v) => {
                    info!(key = %format!("cloud_ranges[{i}]"), file = %f.path.display(), ranges = %v.describe(), "range file replaced on disk: reloaded");
                    f.value = v;
                    self.counters.reloads += 1;
                    cloud_changed = true;
                }
                Err(e) => {
                    warn!(key = %format!("cloud_ranges[{i}]"), error = %e, "range file replaced on disk but cannot be loaded: keeping the previous one");
                    self.counters.reload_failures += 1;
                }
            }
        }
        if cloud_changed {
            self.rebuild_cloud();
        }
        if changed || cloud_changed {
            self.cache.clear();
        }
        changed || cloud_changed
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
