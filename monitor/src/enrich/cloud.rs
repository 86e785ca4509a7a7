//! Cloud provider regions from the providers' own published range files, read as published:
//! Oracle `public_ip_ranges.json`, AWS `ip-ranges.json`, Google Cloud `cloud.json` and Azure
//! Service Tags JSON. The provider is recognised from the file's content.

use std::{net::IpAddr, path::Path, sync::Arc};

use ipnet::IpNet;
use serde_json::Value;

use prefix_trie::joint::map::JointPrefixMap;

use super::{Destination, Placed, Reload, Source, SourceFile, geoip::FileStamp};
use crate::record::CloudProvider;

/// What a provider's range file is called, for messages.
fn file_kind(p: CloudProvider) -> &'static str {
    match p {
        CloudProvider::Oci => "Oracle public_ip_ranges.json",
        CloudProvider::Aws => "AWS ip-ranges.json",
        CloudProvider::Gcp => "Google Cloud cloud.json",
        CloudProvider::Azure => "Azure Service Tags JSON",
    }
}

/// A provider's region, as one entry of the longest-prefix-match table names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CloudRegion {
    pub provider: CloudProvider,
    /// Region as the provider spells it, lower case ("us-ashburn-1", "eastus").
    pub region: Arc<str>,
}

/// The networks of one range file.
#[derive(Debug)]
pub struct RangeFile {
    pub provider: CloudProvider,
    pub networks: Vec<(IpNet, CloudRegion)>,
    /// The file's own version, as its provider publishes it (Oracle's last_updated_timestamp,
    /// AWS's createDate, Google's creationTime, Azure's changeNumber), when it has one.
    pub published: Option<String>,
}

impl RangeFile {
    pub fn describe(&self) -> String {
        match &self.published {
            Some(p) => {
                format!("{} ({} networks, published {p})", file_kind(self.provider), self.networks.len())
            }
            None => format!("{} ({} networks)", file_kind(self.provider), self.networks.len()),
        }
    }

    /// Reads and parses a range file; the error names the file and the entry at fault.
    pub fn load(path: &Path) -> Result<RangeFile, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
        RangeFile::parse(&text).map_err(|e| format!("{shown}: {e}"))
    }

    pub fn parse(text: &str) -> Result<RangeFile, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let provider = recognise(&v).ok_or_else(|| {
            "not a recognised cloud range file: expected Oracle public_ip_ranges.json (\"regions\"), \
             AWS ip-ranges.json (\"prefixes\" with \"ip_prefix\"), Google Cloud cloud.json \
             (\"prefixes\" with \"ipv4Prefix\"/\"ipv6Prefix\" and \"scope\") or Azure Service Tags \
             JSON (\"values\" with \"properties.addressPrefixes\")"
                .to_string()
        })?;
        let mut networks = Vec::new();
        let mut add = |cidr: &Value, region: &Value, at: String| -> Result<(), String> {
            let (Some(cidr), Some(region)) = (cidr.as_str(), region.as_str()) else {
                return Err(format!("{at}: missing network or region"));
            };
            let net: IpNet = cidr.parse().map_err(|_| format!("{at}: invalid CIDR {cidr:?}"))?;
            if !region.is_empty() {
                let region = Arc::from(region.to_ascii_lowercase().as_str());
                networks.push((net.trunc(), CloudRegion { provider, region }));
            }
            Ok(())
        };
        match provider {
            CloudProvider::Oci => {
                for (i, r) in array(&v["regions"]).iter().enumerate() {
                    for (j, c) in array(&r["cidrs"]).iter().enumerate() {
                        add(&c["cidr"], &r["region"], format!("regions[{i}].cidrs[{j}]"))?;
                    }
                }
            }
            CloudProvider::Aws => {
                for (i, p) in array(&v["prefixes"]).iter().enumerate() {
                    add(&p["ip_prefix"], &p["region"], format!("prefixes[{i}]"))?;
                }
                for (i, p) in array(&v["ipv6_prefixes"]).iter().enumerate() {
                    add(&p["ipv6_prefix"], &p["region"], format!("ipv6_prefixes[{i}]"))?;
                }
            }
            CloudProvider::Gcp => {
                for (i, p) in array(&v["prefixes"]).iter().enumerate() {
                    let cidr = if p["ipv4Prefix"].is_string() { &p["ipv4Prefix"] } else { &p["ipv6Prefix"] };
                    add(cidr, &p["scope"], format!("prefixes[{i}]"))?;
                }
            }
            CloudProvider::Azure => {
                // Service tags without a region (global services) name no region: skipped.
                for (i, t) in array(&v["values"]).iter().enumerate() {
                    let props = &t["properties"];
                    for (j, c) in array(&props["addressPrefixes"]).iter().enumerate() {
                        add(c, &props["region"], format!("values[{i}].properties.addressPrefixes[{j}]"))?;
                    }
                }
            }
        }
        let published = ["last_updated_timestamp", "createDate", "creationTime"]
            .iter()
            .find_map(|k| v[*k].as_str().map(str::to_owned))
            .or_else(|| v["changeNumber"].as_u64().map(|n| format!("change {n}")));
        Ok(RangeFile { provider, networks, published })
    }
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn recognise(v: &Value) -> Option<CloudProvider> {
    let first = |key: &str| v[key].as_array().and_then(|a| a.first());
    if v["regions"].is_array() {
        return Some(CloudProvider::Oci);
    }
    if v["values"].is_array() && (v.get("changeNumber").is_some() || v.get("cloud").is_some()) {
        return Some(CloudProvider::Azure);
    }
    if let Some(p) = first("prefixes") {
        if p.get("ip_prefix").is_some() {
            return Some(CloudProvider::Aws);
        }
        if p.get("scope").is_some() && (p.get("ipv4Prefix").is_some() || p.get("ipv6Prefix").is_some()) {
            return Some(CloudProvider::Gcp);
        }
    }
    if v["ipv6_prefixes"].is_array() && v.get("syncToken").is_some() {
        return Some(CloudProvider::Aws);
    }
    None
}
/// A file-backed range file and the identity of the version loaded.
struct Loaded {
    file: SourceFile,
    stamp: Option<FileStamp>,
    value: RangeFile,
}

/// Every configured range file, merged into one longest-prefix-match table.
pub struct CloudSource {
    files: Vec<Loaded>,
    table: JointPrefixMap<IpNet, CloudRegion>,
}

impl CloudSource {
    /// Reads every range file; the error names the file's label and the entry at fault.
    pub fn open(files: &[SourceFile]) -> anyhow::Result<CloudSource> {
        let mut loaded = Vec::new();
        for f in files {
            let stamp = FileStamp::of(&f.path).ok();
            let value = RangeFile::load(&f.path).map_err(|e| anyhow::anyhow!("{}: {e}", f.label))?;
            loaded.push(Loaded { file: f.clone(), stamp, value });
        }
        let mut s = CloudSource { files: loaded, table: JointPrefixMap::new() };
        s.rebuild();
        Ok(s)
    }

    fn rebuild(&mut self) {
        let mut table = JointPrefixMap::new();
        for f in &self.files {
            for (net, region) in &f.value.networks {
                table.insert(*net, region.clone());
            }
        }
        self.table = table;
    }
}

impl Source for CloudSource {
    fn kind(&self) -> &'static str {
        "cloud"
    }

    fn describe(&self) -> Vec<String> {
        self.files.iter().map(|f| format!("{} ({})", f.file.path.display(), f.value.describe())).collect()
    }

    fn place(&self, ip: IpAddr, d: &mut Destination) -> Result<Placed, String> {
        if let Some((_, c)) = self.table.get_lpm(&IpNet::from(ip)) {
            d.cloud_provider = Some(c.provider);
            d.cloud_region = Some(c.region.clone());
        }
        Ok(Placed::Continue)
    }

    fn reload(&mut self) -> Reload {
        let mut r = Reload::default();
        for f in &mut self.files {
            let now = FileStamp::of(&f.file.path).ok();
            if now.is_none() || now == f.stamp {
                continue;
            }
            f.stamp = now;
            match RangeFile::load(&f.file.path) {
                Ok(v) => {
                    r.reloaded.push(format!(
                        "{}: {}: range file replaced on disk: reloaded ({})",
                        f.file.label,
                        f.file.path.display(),
                        v.describe()
                    ));
                    f.value = v;
                }
                Err(e) => r.failed.push(format!(
                    "{}: range file replaced on disk but cannot be loaded, keeping the previous one: {e}",
                    f.file.label
                )),
            }
        }
        if !r.reloaded.is_empty() {
            self.rebuild();
        }
        r
    }

    fn networks(&self, out: &mut Vec<IpNet>) -> Result<(), String> {
        out.extend(self.table.iter().map(|(net, _)| net));
        Ok(())
    }
}
