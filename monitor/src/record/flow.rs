//! The flow record and the loss record, as printed and stored.

use std::{net::IpAddr, sync::Arc};

use serde::{Deserialize, Serialize};

use super::{Destination, Direction, FlowState, Protocol, Timestamp, VerdictKind, kind};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// None for protocols without ports.
    pub port: Option<u16>,
}

/// The destination of a flow: its endpoint, the name its workload resolved it from, and
/// where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationRecord {
    pub ip: IpAddr,
    pub port: Option<u16>,
    /// The name the flow's cgroup (or, when it saw none, the host) asked DNS for and got this
    /// address in answer; null when no answer seen names it (never resolved, resolved over DNS
    /// over TLS or HTTPS, or the name expired before the flow started).
    pub domain: Option<Arc<str>>,
    /// The CNAME targets from `domain` to the name holding the address, in order.
    #[serde(default)]
    pub cname_chain: Arc<[Arc<str>]>,
    #[serde(flatten)]
    pub place: Arc<Destination>,
}

/// A destination's name, from a DNS answer: the name asked for and the CNAME chain to the
/// name holding the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainName {
    pub domain: Arc<str>,
    pub cname_chain: Arc<[Arc<str>]>,
}

impl DestinationRecord {
    /// The destination `ip`:`port` at `place`, named `name` when an answer named it.
    pub fn new(ip: IpAddr, port: Option<u16>, name: Option<&DomainName>, place: Arc<Destination>) -> Self {
        DestinationRecord {
            ip,
            port,
            domain: name.map(|n| n.domain.clone()),
            cname_chain: name.map_or_else(|| Arc::from([]), |n| n.cname_chain.clone()),
            place,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Process id (thread group id); None when the socket predates the agent.
    pub pid: Option<u32>,
    /// Thread that opened the connection.
    pub tid: Option<u32>,
    pub comm: Option<String>,
    /// Owner uid: the process's uid, or the socket's when the process is unknown.
    pub uid: u32,
    /// The socket's cgroup, relative to the cgroup v2 root; None if it no longer exists.
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlowRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: Timestamp,
    pub host: Arc<str>,
    /// The same for every record of one flow (its cgroup, 5-tuple and first packet).
    pub flow_id: String,
    pub state: FlowState,
    pub class: Option<Arc<str>>,
    pub direction: Direction,
    pub protocol: Protocol,
    pub source: Endpoint,
    pub destination: DestinationRecord,
    /// `allowed`, `violation` or `unclassified`.
    pub verdict: VerdictKind,
    pub process: Process,
    pub bytes: u64,
    pub packets: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    /// Bytes and packets since this flow's previous record (the store and metrics add these).
    #[serde(skip)]
    pub delta_bytes: u64,
    #[serde(skip)]
    pub delta_packets: u64,
    /// What the kernel's pinned record of reported flows must say once this record is stored.
    #[serde(skip)]
    pub kernel_mark: Option<KernelMark>,
}

/// The kernel's record of what was reported of one flow (see `monitor_common::Reported`):
/// the store writes it after committing the record, so an agent that restarts after a crash
/// reports to the store exactly what it had not stored. None: forget the flow (it ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelMark {
    pub key: monitor_common::FlowKey,
    pub reported: Option<monitor_common::Reported>,
}

/// Reported whenever a loss counter grows: nothing is dropped silently.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LossRecord {
    #[serde(rename = "type", skip_deserializing, default = "kind::loss")]
    pub kind: &'static str,
    pub time: Timestamp,
    pub host: Arc<str>,
    /// Totals since the kernel programs were attached (they outlive agent restarts), except
    /// `flows_evicted`, since this agent started.
    pub ringbuf_drops: u64,
    pub flow_insert_failed: u64,
    pub sock_storage_failed: u64,
    pub unparsed_packets: u64,
    /// DNS answers the kernel could not hand over (its ring was full), and their bytes: flows
    /// to the addresses they named may lack their `domain`.
    #[serde(default)]
    pub dns_answers_lost: u64,
    #[serde(default)]
    pub dns_answers_lost_bytes: u64,
    pub flows_evicted: u64,
    /// Packets and bytes the kernel could not give a flow of their own (its flow map was full):
    /// they are in no flow record, only here.
    pub overflow_packets: u64,
    pub overflow_bytes: u64,
    /// The same by class (null: unclassified) ...
    pub overflow_by_class: Vec<OverflowCount>,
    /// ... and by sending cgroup (may miss a cgroup when its own table is full; the class
    /// totals never miss).
    pub overflow_by_cgroup: Vec<OverflowCount>,
}

/// Overflowed packets and bytes of one class or one cgroup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OverflowCount {
    pub class: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cgroup_id: Option<u64>,
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(any(test, feature = "fixtures"))]
impl FlowRecord {
    /// A new outbound TCP flow of an unclassified process `api` (pid 1234, uid 1001, cgroup
    /// /payments/userdata) from 10.0.0.2:41000 to `dst`:`dport`, placed at `place`, 1000
    /// bytes in 5 packets: tests change what they need.
    pub fn sample(dst: &str, dport: u16, place: Destination) -> FlowRecord {
        let t = Timestamp::now();
        FlowRecord {
            kind: "flow",
            time: t,
            host: "h1".into(),
            flow_id: format!("{dst}:{dport}"),
            state: FlowState::New,
            class: None,
            direction: Direction::Outbound,
            protocol: Protocol(6),
            source: Endpoint { ip: "10.0.0.2".parse().unwrap(), port: Some(41000) },
            destination: DestinationRecord::new(dst.parse().unwrap(), Some(dport), None, Arc::new(place)),
            verdict: VerdictKind::Unclassified,
            process: Process {
                pid: Some(1234),
                tid: Some(1234),
                comm: Some("api".into()),
                uid: 1001,
                cgroup: Some("/payments/userdata".into()),
                cgroup_id: 9,
            },
            bytes: 1000,
            packets: 5,
            first_seen: t,
            last_seen: t,
            delta_bytes: 1000,
            delta_packets: 5,
            kernel_mark: None,
        }
    }
}
