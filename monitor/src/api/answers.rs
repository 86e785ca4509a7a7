//! The API's answers as types, shared by the server (which sends them) and the client the CLI
//! uses (which decodes them). Rows read from the store carry only the columns the question
//! asked for, so the server fills `R` with the store's rows as they are and the client reads
//! them as [`FlowRow`] and [`StoredAlert`], whose fields are absent or null alike.

use serde::{Deserialize, Serialize};

/// `GET /v1/flows`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowsAnswer<R> {
    /// The window, RFC 3339. A flow is in it when it was seen in it (its first and last seen
    /// times, to the millisecond).
    pub since: String,
    pub until: String,
    /// Bytes and packets are summed per store bucket (`[store] bucket`): they count from the
    /// start of the bucket holding `since`, which is `since` itself only when it falls on a
    /// bucket boundary.
    #[serde(default)]
    pub counted_from: String,
    /// The group keys of the question (empty: one row per flow).
    pub group_by: Vec<String>,
    /// When the counts were read (RFC 3339, milliseconds). With `live`, the answer holds every
    /// byte the kernel had counted then, active flows included. Without (no agent answered in
    /// time), it holds what the store held then: an active flow's bytes as of its last report
    /// (at least every `agent.flush_interval`).
    #[serde(default)]
    pub as_of: String,
    #[serde(default)]
    pub live: bool,
    pub rows: Vec<R>,
}

/// One row of a flows answer: a flow, or a group of flows (then only its group's columns are
/// set), and the sums.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FlowRow {
    pub class: Option<String>,
    pub verdict: Option<String>,
    pub direction: Option<String>,
    pub protocol: Option<String>,
    pub src_ip: Option<String>,
    pub src_port: Option<u16>,
    pub dst_ip: Option<String>,
    pub dst_port: Option<u16>,
    /// The name the destination was resolved from, and the CNAME chain to it.
    pub domain: Option<String>,
    #[serde(default)]
    pub cname_chain: Vec<String>,
    pub country: Option<String>,
    pub subdivision: Option<String>,
    pub asn: Option<u32>,
    pub as_org: Option<String>,
    pub cloud_provider: Option<String>,
    pub cloud_region: Option<String>,
    pub site: Option<String>,
    /// Private, loopback, link-local or multicast, and in no site (with a null country: the
    /// destination is internal; false with a null country: unknown).
    pub internal: Option<bool>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub uid: Option<u32>,
    pub cgroup: Option<String>,
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
}

impl FlowRow {
    /// A column by the name the store and the API give it, as text (None for null or absent).
    pub fn column(&self, name: &str) -> Option<String> {
        fn s<T: ToString>(v: &Option<T>) -> Option<String> {
            v.as_ref().map(T::to_string)
        }
        match name {
            "class" => s(&self.class),
            "verdict" => s(&self.verdict),
            "direction" => s(&self.direction),
            "protocol" => s(&self.protocol),
            "src_ip" => s(&self.src_ip),
            "src_port" => s(&self.src_port),
            "dst_ip" => s(&self.dst_ip),
            "dst_port" => s(&self.dst_port),
            "domain" => s(&self.domain),
            "cname_chain" => Some(self.cname_chain.join(",")).filter(|c| !c.is_empty()),
            "country" => s(&self.country),
            "subdivision" => s(&self.subdivision),
            "asn" => s(&self.asn),
            "as_org" => s(&self.as_org),
            "cloud_provider" => s(&self.cloud_provider),
            "cloud_region" => s(&self.cloud_region),
            "site" => s(&self.site),
            "internal" => s(&self.internal),
            "pid" => s(&self.pid),
            "comm" => s(&self.comm),
            "uid" => s(&self.uid),
            "cgroup" => s(&self.cgroup),
            "bytes" => Some(self.bytes.to_string()),
            "packets" => Some(self.packets.to_string()),
            "flows" => Some(self.flows.to_string()),
            "first_seen" => s(&self.first_seen),
            "last_seen" => s(&self.last_seen),
            _ => None,
        }
    }
}

/// `GET /v1/alerts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertsAnswer<R> {
    pub since: String,
    pub until: String,
    pub alerts: Vec<R>,
}

/// An alert as the store keeps it (with its latest totals).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredAlert {
    pub id: String,
    pub time: String,
    pub host: String,
    pub class: String,
    pub severity: String,
    /// `observed` or `blocked` (null for alerts stored before the store kept it).
    pub action: Option<String>,
    pub reason: String,
    pub direction: Option<String>,
    pub protocol: Option<String>,
    pub process: StoredProcess,
    pub destination: StoredDestination,
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredProcess {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub uid: Option<u32>,
    pub cgroup: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredDestination {
    pub ip: String,
    pub port: Option<u16>,
    pub country: Option<String>,
    pub subdivision: Option<String>,
    pub asn: Option<u32>,
    pub as_org: Option<String>,
    pub cloud_provider: Option<String>,
    pub cloud_region: Option<String>,
    pub site: Option<String>,
    /// Null for alerts stored before the store kept it.
    pub internal: Option<bool>,
}

/// `GET /v1/undelivered`: alerts sinks gave up on (refused for good, or failing for longer
/// than the sink's `max_age`), newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UndeliveredAnswer {
    pub undelivered: Vec<crate::sinks::DeadLetter>,
}

/// A refused question (`400`): which parameter, what it was, what was expected.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub parameter: Option<String>,
    pub value: Option<String>,
    pub expected: Option<String>,
}
