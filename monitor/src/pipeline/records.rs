//! Flow updates become flow records: kernel values (ids, monotonic nanoseconds, raw addresses)
//! become names, times and addresses.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use monitor_common::{DIRECTION_INBOUND, DIRECTION_OUTBOUND, FAMILY_V4, FlowKey, ProcessInfo};
use sha2::{Digest, Sha256};

use crate::{
    cgroup::CgroupNames,
    flows::FlowUpdate,
    record::{
        Destination, DestinationRecord, Direction, DomainName, Endpoint, FlowRecord, KernelMark, Process,
        Protocol, Timestamp, VerdictKind,
    },
};

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
    /// Cgroup paths by id; None in tests without a cgroup hierarchy (records then carry no path).
    pub cgroups: Option<CgroupNames>,
}

impl RecordContext {
    pub fn class_name(&self, id: u32) -> Option<Arc<str>> {
        id.checked_sub(1).and_then(|i| self.classes.get(i as usize)).cloned()
    }

    pub fn cgroup_path(&mut self, id: u64) -> Option<String> {
        self.cgroups.as_mut().and_then(|c| c.path(id))
    }

    /// The record of a flow update, named `name` and placed at `place` with `verdict`.
    #[allow(clippy::too_many_arguments)]
    pub fn flow_record(
        &mut self,
        u: &FlowUpdate,
        name: Option<&DomainName>,
        place: Arc<Destination>,
        verdict: VerdictKind,
        clock: &Clock,
        time: Timestamp,
    ) -> FlowRecord {
        let k = &u.key;
        let f = &u.flow;
        let has_ports = matches!(k.proto, 6 | 17 | 132);
        let cgroup = self.cgroup_path(k.cgroup_id);
        FlowRecord {
            kind: "flow",
            time,
            host: self.host.clone(),
            flow_id: flow_id(k, f.first_seen_ns),
            state: u.state,
            class: self.class_name(f.class_id),
            direction: direction(f.direction),
            protocol: Protocol(k.proto),
            source: Endpoint { ip: ip_of(k, &k.saddr), port: has_ports.then_some(k.sport) },
            destination: DestinationRecord::new(
                ip_of(k, &k.daddr),
                has_ports.then_some(k.dport),
                name,
                place,
            ),
            verdict,
            process: process(f.process.as_ref(), f.sock_uid, k.cgroup_id, cgroup),
            bytes: f.bytes,
            packets: f.packets,
            first_seen: clock.wall(f.first_seen_ns),
            last_seen: clock.wall(f.last_seen_ns),
            delta_bytes: u.delta_bytes,
            delta_packets: u.delta_packets,
            kernel_mark: Some(KernelMark { key: u.key, reported: u.mark }),
        }
    }
}

fn direction(d: u8) -> Direction {
    match d {
        DIRECTION_OUTBOUND => Direction::Outbound,
        DIRECTION_INBOUND => Direction::Inbound,
        _ => Direction::Unknown,
    }
}

/// A flow's id, 24 hex digits: its first packet's time (kernel clock, in units of 2^20 ns,
/// wrapping every 52 days), then the first 8 bytes of SHA-256 over its key and that time. Ids
/// of new flows increase, so the store adds their rows at the end of its index instead of all
/// over it (which made it five times slower); the hash keeps them unique.
pub fn flow_id(key: &FlowKey, first_seen_ns: u64) -> String {
    let mut h = Sha256::new();
    h.update(key.cgroup_id.to_le_bytes());
    h.update(key.saddr);
    h.update(key.daddr);
    h.update(key.sport.to_le_bytes());
    h.update(key.dport.to_le_bytes());
    h.update([key.proto, key.family]);
    h.update(first_seen_ns.to_le_bytes());
    let hash: String = h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{:08x}{hash}", (first_seen_ns >> 20) as u32)
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
