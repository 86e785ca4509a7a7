//! The flow record, as printed and stored: field names here are public API.
//! Kernel values (ids, monotonic nanoseconds, raw addresses) become names, times and IPs.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use chrono::{DateTime, SecondsFormat, Utc};
use monitor_common::{DIRECTION_INBOUND, DIRECTION_OUTBOUND, FAMILY_V4, FlowKey, ProcessInfo};
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::{FlowState, FlowUpdate};
use crate::{cgroup::CgroupNames, enrich::Destination, policy::VerdictKind};

/// A point in time, printed as RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub DateTime<Utc>);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(Utc::now())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    pub fn from_kernel(d: u8) -> Self {
        match d {
            DIRECTION_OUTBOUND => Direction::Outbound,
            DIRECTION_INBOUND => Direction::Inbound,
            _ => Direction::Unknown,
        }
    }
}

/// IP protocol by its IANA keyword ("tcp", "udp", "icmp", "ipv6-icmp"), or its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol(pub u8);

impl Protocol {
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match self.0 {
            1 => "icmp".into(),
            6 => "tcp".into(),
            17 => "udp".into(),
            47 => "gre".into(),
            50 => "esp".into(),
            58 => "ipv6-icmp".into(),
            132 => "sctp".into(),
            n => n.to_string().into(),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// None for protocols without ports.
    pub port: Option<u16>,
}

/// The destination of a flow: its endpoint and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestinationRecord {
    pub ip: IpAddr,
    pub port: Option<u16>,
    #[serde(flatten)]
    pub place: Arc<Destination>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}

/// Converts CLOCK_MONOTONIC nanoseconds (the kernel programs' clock) to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_at_zero: SystemTime,
}

impl Clock {
    /// Reads both clocks now.
    pub fn sample() -> Self {
        let mono = monotonic_ns();
        Clock { wall_at_zero: SystemTime::now() - Duration::from_nanos(mono) }
    }

    pub fn wall(&self, mono_ns: u64) -> Timestamp {
        Timestamp((self.wall_at_zero + Duration::from_nanos(mono_ns)).into())
    }
}

/// CLOCK_MONOTONIC in nanoseconds: what bpf_ktime_get_ns returns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What turns kernel ids into names when building records.
pub struct RecordContext {
    pub host: Arc<str>,
    /// Class names by class id - 1.
    pub classes: Vec<Arc<str>>,
    pub cgroups: CgroupNames,
}

impl RecordContext {
    pub fn class_name(&self, id: u32) -> Option<Arc<str>> {
        id.checked_sub(1).and_then(|i| self.classes.get(i as usize)).cloned()
    }

    /// The record of a flow update, placed at `place` with `verdict`.
    pub fn flow_record(
        &mut self,
        u: &FlowUpdate,
        place: Arc<Destination>,
        verdict: VerdictKind,
        clock: &Clock,
        time: Timestamp,
    ) -> FlowRecord {
        let k = &u.key;
        let f = &u.flow;
        let has_ports = matches!(k.proto, 6 | 17 | 132);
        FlowRecord {
            kind: "flow",
            time,
            host: self.host.clone(),
            flow_id: flow_id(k, f.first_seen_ns),
            state: u.state,
            class: self.class_name(f.class_id),
            direction: Direction::from_kernel(f.direction),
            protocol: Protocol(k.proto),
            source: Endpoint { ip: ip_of(k, &k.saddr), port: has_ports.then_some(k.sport) },
            destination: DestinationRecord {
                ip: ip_of(k, &k.daddr),
                port: has_ports.then_some(k.dport),
                place,
            },
            verdict,
            process: process(f.process.as_ref(), f.sock_uid, k.cgroup_id, self.cgroups.path(k.cgroup_id)),
            bytes: f.bytes,
            packets: f.packets,
            first_seen: clock.wall(f.first_seen_ns),
            last_seen: clock.wall(f.last_seen_ns),
            delta_bytes: u.delta_bytes,
            delta_packets: u.delta_packets,
        }
    }
}

/// A flow's id: the first 8 bytes of SHA-256 over its key and its first packet's time, in hex.
pub fn flow_id(key: &FlowKey, first_seen_ns: u64) -> String {
    let mut h = Sha256::new();
    h.update(key.cgroup_id.to_le_bytes());
    h.update(key.saddr);
    h.update(key.daddr);
    h.update(key.sport.to_le_bytes());
    h.update(key.dport.to_le_bytes());
    h.update([key.proto, key.family]);
    h.update(first_seen_ns.to_le_bytes());
    h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn process(p: Option<&ProcessInfo>, sock_uid: u32, cgroup_id: u64, cgroup: Option<String>) -> Process {
    match p {
        Some(p) => Process {
            pid: Some(p.tgid),
            tid: Some(p.pid),
            comm: Some(comm(&p.comm)),
            uid: p.uid,
            cgroup,
            cgroup_id,
        },
        None => Process { pid: None, tid: None, comm: None, uid: sock_uid, cgroup, cgroup_id },
    }
}

pub fn comm(raw: &[u8; 16]) -> String {
    let n = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..n]).into_owned()
}

pub fn ip_of(key: &FlowKey, raw: &[u8; 16]) -> IpAddr {
    if key.family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

/// Reported whenever a loss counter grows: nothing is dropped silently.
#[derive(Debug, Clone, Serialize)]
pub struct LossRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: Timestamp,
    pub host: Arc<str>,
    /// Totals since the agent started.
    pub ringbuf_drops: u64,
    pub flow_insert_failed: u64,
    pub sock_storage_failed: u64,
    pub unparsed_packets: u64,
    pub flows_evicted: u64,
}

#[cfg(test)]
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
            destination: DestinationRecord {
                ip: dst.parse().unwrap(),
                port: Some(dport),
                place: Arc::new(place),
            },
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
        }
    }
}
