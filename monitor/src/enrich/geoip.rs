//! MaxMind DB files (country, city, ASN) in the two schemas in use: MaxMind GeoIP2/GeoLite2 and
//! DB-IP / ip-location-db. Files are memory-mapped and reopened when replaced on disk.

use std::{
    fs::File,
    io::Read,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use std::sync::Arc;

use maxminddb::Reader;
use serde::Deserialize;

use super::{Destination, Placed, Reload, Source, SourceFile};

/// The database bytes: a mapped file, or the embedded default decompressed in memory.
pub enum DbBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for DbBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            DbBytes::Mapped(m) => m,
            DbBytes::Owned(v) => v,
        }
    }
}

/// The embedded DB-IP "IP to Country Lite" database (CC BY 4.0, https://db-ip.com), xz-compressed.
static EMBEDDED_COUNTRY: &[u8] = include_bytes!("../../data/dbip-country.mmdb.xz");

/// Identity of a file's contents as far as replacement goes: a new file (rename over, as
/// geoipupdate does) has a new inode; an in-place rewrite changes size or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileStamp {
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        Ok(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        })
    }
}

/// One MaxMind-format database and where it came from.
pub struct GeoDb {
    /// None for the embedded database.
    pub path: Option<PathBuf>,
    stamp: Option<FileStamp>,
    reader: Reader<DbBytes>,
}

/// Fields of every schema we read; absent ones are None. Unknown fields are skipped.
#[derive(Deserialize, Default)]
struct GeoRecord<'a> {
    #[serde(borrow)]
    country: Option<Iso<'a>>,
    #[serde(borrow)]
    registered_country: Option<Iso<'a>>,
    /// DB-IP / ip-location-db schema.
    country_code: Option<&'a str>,
    #[serde(borrow)]
    subdivisions: Option<Vec<Iso<'a>>>,
    autonomous_system_number: Option<u32>,
    autonomous_system_organization: Option<&'a str>,
}

#[derive(Deserialize)]
struct Iso<'a> {
    iso_code: Option<&'a str>,
}

/// What one database says about an address.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GeoFacts {
    pub country: Option<String>,
    /// ISO 3166-2 code with its country ("US-VA").
    pub subdivision: Option<String>,
    pub asn: Option<u32>,
    pub as_org: Option<String>,
}

impl GeoDb {
    /// Opens and checks a database file; the error names the file and says what is wrong.
    pub fn open(path: &Path) -> Result<GeoDb, String> {
        let shown = path.display();
        let stamp = FileStamp::of(path).map_err(|e| format!("{shown}: {e}"))?;
        let file = File::open(path).map_err(|e| format!("{shown}: {e}"))?;
        // SAFETY: the map is read-only. Replacing the file by rename (as geoipupdate does)
        // leaves this mapping intact; the agent then opens the new file. Truncating the file in
        // place while mapped would fault, as with any mmap-based MaxMind reader.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("{shown}: cannot map: {e}"))?;
        let db = GeoDb::from_bytes(DbBytes::Mapped(map), Some(path.to_owned()))?;
        db.verify().map_err(|e| format!("{shown}: {e}"))?;
        Ok(GeoDb { stamp: Some(stamp), ..db })
    }

    /// Opens and checks a database held in memory (as [`GeoDb::open`] does a file).
    pub fn from_memory(bytes: Vec<u8>) -> Result<GeoDb, String> {
        let db = GeoDb::from_bytes(DbBytes::Owned(bytes), None)?;
        db.verify()?;
        Ok(db)
    }

    /// The whole search tree and data section, walked once: a damaged file is refused here
    /// rather than answering "no data" (or failing) address by address later.
    fn verify(&self) -> Result<(), String> {
        if let Err(e) = self.reader.verify() {
            // The reader's verification also refuses metadata without a description, which many
            // databases built by other tools lack: those are walked here instead, every
            // network and every record.
            if !e.to_string().contains("description") {
                return Err(format!("damaged MaxMind DB file: {e}"));
            }
            self.walk().map_err(|e| format!("damaged MaxMind DB file: {e}"))?;
        }
        Ok(())
    }

    /// The embedded DB-IP Lite country database.
    pub fn embedded_country() -> GeoDb {
        GeoDb::from_bytes(DbBytes::Owned(Self::embedded_country_bytes()), None)
            .expect("the embedded database is valid")
    }

    /// The embedded DB-IP Lite country database, decompressed.
    pub fn embedded_country_bytes() -> Vec<u8> {
        let mut out = Vec::with_capacity(9 << 20);
        liblzma::read::XzDecoder::new(EMBEDDED_COUNTRY)
            .read_to_end(&mut out)
            .expect("the embedded database decompresses");
        out
    }

    fn from_bytes(bytes: DbBytes, path: Option<PathBuf>) -> Result<GeoDb, String> {
        let shown = path.as_deref().map_or("<embedded country database>".into(), |p| p.display().to_string());
        let reader =
            Reader::from_source(bytes).map_err(|e| format!("{shown}: not a valid MaxMind DB file: {e}"))?;
        let db = GeoDb { path, stamp: None, reader };
        // A damaged data section shows up on the first decode: try one of each family.
        for probe in ["1.1.1.1", "2606:4700::1111"] {
            let ip: IpAddr = probe.parse().expect("valid probe address");
            if db.reader.metadata().ip_version == 4 && ip.is_ipv6() {
                continue;
            }
            db.decode(ip).map_err(|e| format!("{shown}: cannot read records: {e}"))?;
        }
        Ok(db)
    }

    /// Every network of the search tree, aliases included (an IPv6 database answers for
    /// `::ffff:0:0/96` and `2002::/16` from its IPv4 subtree); an IPv4 network also as the
    /// IPv6 network `::a.b.c.d/96+n` where the IPv4 subtree sits.
    pub fn networks(&self, out: &mut Vec<ipnet::IpNet>) -> Result<(), maxminddb::MaxMindDbError> {
        let options =
            maxminddb::WithinOptions::default().include_aliased_networks().include_networks_without_data();
        for network in self.reader.networks(options)? {
            let net = network?.network()?;
            let net = ipnet::IpNet::new(net.ip(), net.prefix()).expect("a valid prefix from the reader");
            if let ipnet::IpNet::V4(v4) = net
                && self.reader.metadata().ip_version == 6
            {
                let embedded = std::net::Ipv6Addr::from(u32::from(v4.addr()) as u128);
                out.push(ipnet::IpNet::new(embedded.into(), 96 + v4.prefix_len()).expect("a valid prefix"));
            }
            out.push(net);
        }
        Ok(())
    }

    /// Visits every network of the search tree and decodes its record.
    fn walk(&self) -> Result<(), maxminddb::MaxMindDbError> {
        for network in self.reader.networks(Default::default())? {
            network?.decode::<GeoRecord<'_>>()?;
        }
        Ok(())
    }

    /// Human description: type and build date.
    pub fn describe(&self) -> String {
        let m = self.reader.metadata();
        let built = chrono::DateTime::from_timestamp(m.build_epoch as i64, 0)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        format!("{} built {built}, {} search-tree nodes", m.database_type, m.node_count)
    }

    /// Whether the file on disk is no longer the one loaded.
    pub fn replaced(&self) -> bool {
        match (&self.path, &self.stamp) {
            (Some(p), Some(s)) => FileStamp::of(p).map(|now| now != *s).unwrap_or(false),
            _ => false,
        }
    }

    /// Takes the file's current identity as loaded, so a broken replacement is reported once.
    pub fn accept_current_stamp(&mut self) {
        if let Some(p) = &self.path {
            self.stamp = FileStamp::of(p).ok();
        }
    }

    fn decode(&self, ip: IpAddr) -> Result<GeoFacts, maxminddb::MaxMindDbError> {
        let result = self.reader.lookup(ip)?;
        let Some(r) = result.decode::<GeoRecord<'_>>()? else { return Ok(GeoFacts::default()) };
        let country = match &r.country {
            Some(c) => c.iso_code,
            None => r.registered_country.as_ref().and_then(|c| c.iso_code),
        }
        .or(r.country_code);
        let subdivision =
            match (country, r.subdivisions.as_ref().and_then(|s| s.first()).and_then(|s| s.iso_code)) {
                (Some(c), Some(s)) => Some(format!("{c}-{s}")),
                _ => None,
            };
        Ok(GeoFacts {
            country: country.map(str::to_owned),
            subdivision,
            asn: r.autonomous_system_number,
            as_org: r.autonomous_system_organization.map(str::to_owned),
        })
    }

    /// What the database says about `ip` (an IPv4-mapped IPv6 address is looked up as IPv4;
    /// an IPv6 address in an IPv4-only database is simply not found). Fails on a damaged record.
    pub fn lookup(&self, ip: IpAddr) -> Result<GeoFacts, String> {
        let ip = ip.to_canonical();
        if self.reader.metadata().ip_version == 4 && ip.is_ipv6() {
            return Ok(GeoFacts::default());
        }
        self.decode(ip).map_err(|e| e.to_string())
    }
}

/// Which part of a destination an MMDB database fills in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmdbRole {
    /// The country (unless a site already set it).
    Country,
    /// The subdivision, and the country when nothing else set it.
    City,
    /// The autonomous system number and organisation.
    Asn,
}

/// A MaxMind-format database as a source of places.
pub struct MmdbSource {
    role: MmdbRole,
    label: String,
    db: GeoDb,
}

impl MmdbSource {
    pub fn open(f: &SourceFile, role: MmdbRole) -> Result<MmdbSource, String> {
        Ok(MmdbSource { role, label: f.label.clone(), db: GeoDb::open(&f.path)? })
    }

    pub fn embedded_country() -> MmdbSource {
        MmdbSource { role: MmdbRole::Country, label: "country_db".into(), db: GeoDb::embedded_country() }
    }
}

impl Source for MmdbSource {
    fn kind(&self) -> &'static str {
        match self.role {
            MmdbRole::Country => "country",
            MmdbRole::City => "city",
            MmdbRole::Asn => "asn",
        }
    }

    fn describe(&self) -> Vec<String> {
        let name = self.db.path.as_deref().map_or("embedded DB-IP Lite".into(), |p| p.display().to_string());
        vec![format!("{name} ({})", self.db.describe())]
    }

    fn place(&self, ip: IpAddr, d: &mut Destination) -> Result<Placed, String> {
        let facts = self.db.lookup(ip).map_err(|e| format!("{}: {e}", self.label))?;
        match self.role {
            MmdbRole::Country => {
                if d.country.is_none() {
                    d.country = facts.country.as_deref().map(Arc::from);
                }
            }
            MmdbRole::City => {
                d.subdivision = facts.subdivision.as_deref().map(Arc::from);
                if d.country.is_none() {
                    d.country = facts.country.as_deref().map(Arc::from);
                }
            }
            MmdbRole::Asn => {
                d.asn = facts.asn;
                d.as_org = facts.as_org.as_deref().map(Arc::from);
            }
        }
        Ok(Placed::Continue)
    }

    fn reload(&mut self) -> Reload {
        let mut r = Reload::default();
        if !self.db.replaced() {
            return r;
        }
        let path = self.db.path.clone().expect("file-backed databases have a path");
        match GeoDb::open(&path) {
            Ok(new) => {
                r.reloaded.push(format!(
                    "{}: {}: database replaced on disk: reloaded ({})",
                    self.label,
                    path.display(),
                    new.describe()
                ));
                self.db = new;
            }
            Err(e) => {
                r.failed.push(format!(
                    "{}: database replaced on disk but cannot be loaded, keeping the previous one: {e}",
                    self.label
                ));
                // Do not retry the same broken file every interval.
                self.db.accept_current_stamp();
            }
        }
        r
    }

    fn networks(&self, out: &mut Vec<ipnet::IpNet>) -> Result<(), String> {
        self.db.networks(out).map_err(|e| format!("{}: {e}", self.label))
    }
}
