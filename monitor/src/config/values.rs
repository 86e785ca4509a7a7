//! The values a configuration is made of, each checked as it is read: durations, sizes, names,
//! cgroup paths, country codes and CIDRs. Errors say what was expected.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de};

use crate::{enrich::countries, policy::ApprovedEntry};

/// A duration written like "10s", "500ms", "2m", "1h".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Duration);

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let parsed = humantime::parse_duration(&text).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration {text:?} ({e}): expected a number and a unit, like \"500ms\", \"10s\", \"5m\""
            ))
        })?;
        if parsed.is_zero() {
            return Err(de::Error::custom(format!("invalid duration {text:?}: must be greater than zero")));
        }
        Ok(Interval(parsed))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingBufferSize(pub u32);

impl<'de> Deserialize<'de> for RingBufferSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        if n < 4096 || !n.is_power_of_two() || n > 1 << 30 {
            return Err(de::Error::custom(format!(
                "invalid ring buffer size {n}: expected a power of two between 4096 and 1073741824 bytes"
            )));
        }
        Ok(RingBufferSize(n as u32))
    }
}

/// A class name: what alerts and records call the data (`us-user-data`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClassName(pub String);

impl<'de> Deserialize<'de> for ClassName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ClassName(name::<D>(String::deserialize(d)?, "class")?))
    }
}

/// Checks a name that records and alerts carry: 1 to 64 letters, digits, '-', '_' or '.'.
fn name<'de, D: Deserializer<'de>>(name: String, what: &str) -> Result<String, D::Error> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(de::Error::custom(format!(
            "invalid {what} name {name:?}: expected 1 to 64 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(name)
}

/// A cgroup path relative to the cgroup v2 root, written absolute: "/payments/userdata".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CgroupPath(pub String);

impl CgroupPath {
    /// The directory of this cgroup under the given cgroup v2 mount point.
    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(self.0.trim_start_matches('/'))
    }
}

impl<'de> Deserialize<'de> for CgroupPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let path = String::deserialize(d)?;
        if !path.starts_with('/') {
            return Err(de::Error::custom(format!(
                "invalid cgroup path {path:?}: expected a path from the cgroup v2 root, starting with '/' (like \"/payments/userdata\")"
            )));
        }
        if path.split('/').any(|c| c == ".." || c == ".") {
            return Err(de::Error::custom(format!(
                "invalid cgroup path {path:?}: '.' and '..' are not allowed"
            )));
        }
        // Normalise: no trailing or doubled slashes.
        let normal: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        Ok(CgroupPath(format!("/{}", normal.join("/"))))
    }
}

/// An ISO 3166-1 alpha-2 country code, upper case ("US").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CountryCode(pub String);

impl<'de> Deserialize<'de> for CountryCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        if !countries::is_known(&code) {
            return Err(de::Error::custom(format!(
                "unknown country code {code:?}: expected an ISO 3166-1 alpha-2 code in upper case, like \"US\", \"DE\", \"SG\""
            )));
        }
        Ok(CountryCode(code))
    }
}

/// A site name; it must not look like any other kind of approved entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SiteName(pub String);

impl<'de> Deserialize<'de> for SiteName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = name::<D>(String::deserialize(d)?, "site")?;
        if let Ok(other) = ApprovedEntry::parse(&name)
            && !matches!(other, ApprovedEntry::Site(_))
        {
            return Err(de::Error::custom(format!(
                "invalid site name {name:?}: it reads as {}, so `approved` could not name it; choose a name like \"dc-us-east\"",
                other.kind()
            )));
        }
        Ok(SiteName(name))
    }
}

/// An IPv4 or IPv6 network in CIDR notation ("10.60.0.0/16"); a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let net = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| {
                de::Error::custom(format!(
                    "invalid CIDR {text:?}: expected an address and a prefix length, like \"10.60.0.0/16\" or \"2001:db8::/32\""
                ))
            })?;
        if net.trunc() != net {
            return Err(de::Error::custom(format!(
                "invalid CIDR {text:?}: host bits are set below the /{} prefix (did you mean \"{}\"?)",
                net.prefix_len(),
                net.trunc()
            )));
        }
        Ok(Cidr(net))
    }
}
