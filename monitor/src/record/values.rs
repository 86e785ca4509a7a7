//! The values records are made of: times, directions, protocols, lifecycle stages, verdicts,
//! severities and places. Their serialised forms are public API.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A point in time, printed as RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(Utc::now())
    }

    /// The form records carry ("2026-11-25T10:00:00.120Z").
    pub fn rfc3339(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| Timestamp(t.with_timezone(&Utc)))
            .map_err(|e| de::Error::custom(format!("invalid time {text:?}: {e}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The local side opened the connection.
    Outbound,
    /// The remote side opened it (an accepted connection, a UDP server answering).
    Inbound,
    /// The socket existed before the agent started and never connected since.
    Unknown,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
            Direction::Unknown => "unknown",
        }
    }
}

/// IP protocol by its IANA keyword ("tcp", "udp", "icmp", "ipv6-icmp"), or its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol(pub u8);

const PROTOCOL_NAMES: [(u8, &str); 7] =
    [(1, "icmp"), (6, "tcp"), (17, "udp"), (47, "gre"), (50, "esp"), (58, "ipv6-icmp"), (132, "sctp")];

impl Protocol {
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match PROTOCOL_NAMES.iter().find(|(n, _)| *n == self.0) {
            Some((_, name)) => (*name).into(),
            None => self.0.to_string().into(),
        }
    }

    /// The protocol a name (or number) printed by [`Protocol::name`] stands for.
    pub fn from_name(name: &str) -> Option<Protocol> {
        PROTOCOL_NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(p, _)| Protocol(*p))
            .or_else(|| name.parse().ok().map(Protocol))
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Protocol::from_name(&text).ok_or_else(|| de::Error::custom(format!("unknown protocol {text:?}")))
    }
}

/// Lifecycle stage a flow record reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowState {
    /// First time the agent reports this flow.
    New,
    /// Periodic report of a flow that is still sending.
    Active,
    /// Final report: the socket closed or the flow went idle.
    Ended,
}

impl FlowState {
    pub fn name(self) -> &'static str {
        match self {
            FlowState::New => "new",
            FlowState::Active => "active",
            FlowState::Ended => "ended",
        }
    }
}

/// The outcome for one flow, as records show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictKind {
    Allowed,
    Violation,
    Unclassified,
}

impl VerdictKind {
    pub fn name(self) -> &'static str {
        match self {
            VerdictKind::Allowed => "allowed",
            VerdictKind::Violation => "violation",
            VerdictKind::Unclassified => "unclassified",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    #[default]
    High,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudProvider {
    Oci,
    Aws,
    Gcp,
    Azure,
}

impl CloudProvider {
    pub const ALL: [CloudProvider; 4] =
        [CloudProvider::Oci, CloudProvider::Aws, CloudProvider::Gcp, CloudProvider::Azure];

    pub fn name(self) -> &'static str {
        match self {
            CloudProvider::Oci => "oci",
            CloudProvider::Aws => "aws",
            CloudProvider::Gcp => "gcp",
            CloudProvider::Azure => "azure",
        }
    }

    pub fn from_name(name: &str) -> Option<CloudProvider> {
        CloudProvider::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Where an address is. Field names are public API (records and alerts carry them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

    /// "provider:region" when the address is in a cloud region.
    pub fn cloud(&self) -> Option<String> {
        match (self.cloud_provider, &self.cloud_region) {
            (Some(p), Some(r)) => Some(format!("{}:{r}", p.name())),
            _ => None,
        }
    }
}
