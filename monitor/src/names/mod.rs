//! Names of destinations, from the DNS answers the kernel copies (UDP and TCP, from port 53,
//! received by any socket): per cgroup and address, the name the cgroup's processes asked for
//! and the CNAME chain that led to the address, valid for the answer's TTL plus a grace
//! period; and host-wide per address, for the flows of cgroups that saw no answer of their own
//! (a process that asks a local stub resolver gets its answer on loopback, in its own
//! cgroup; the resolver's upstream answer arrives in the resolver's). Bounded: the least
//! recently used name is forgotten first, counted. Names are evidence of what a workload looked
//! up; where data may go is decided by the address alone.

pub mod answer;
mod tcp;

use std::{net::IpAddr, num::NonZeroUsize, sync::Arc, time::Duration};

use lru::LruCache;

use crate::{probe::DnsPacket, record::DomainName, status::DnsCounts};
use answer::{Parsed, parse};

/// Settings of the name table (`[dns]`).
#[derive(Debug, Clone, Copy)]
pub struct NameOptions {
    /// A name stays valid this long past its answer's TTL.
    pub grace: Duration,
    /// Names kept at most (each answer's addresses count once per cgroup and once host-wide).
    pub max_names: usize,
}

/// Whose answer named an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scope {
    Cgroup(u64),
    Host,
}

/// One answer's name for an address: valid for flows that started from when it was received
/// (CLOCK_MONOTONIC ns, the kernel's clock) until its TTL and the grace ran out.
#[derive(Clone)]
struct Answered {
    name: Arc<DomainName>,
    seen_ns: u64,
    valid_until_ns: u64,
}

impl Answered {
    fn names(&self, at_ns: u64) -> bool {
        self.seen_ns <= at_ns && at_ns <= self.valid_until_ns
    }
}

/// The latest answer for a key, and the one before it while that was still valid: a flow that
/// started before the latest answer but is reported after it keeps the name it was opened with.
struct Entry {
    latest: Answered,
    earlier: Option<Answered>,
}

pub struct NameTable {
    names: LruCache<(Scope, IpAddr), Entry>,
    grace_ns: u64,
    tcp: tcp::Streams,
    counters: DnsCounts,
}

impl NameTable {
    pub fn new(o: NameOptions) -> NameTable {
        NameTable {
            names: LruCache::new(NonZeroUsize::new(o.max_names).unwrap_or(NonZeroUsize::MIN)),
            grace_ns: o.grace.as_nanos() as u64,
            tcp: tcp::Streams::default(),
            counters: DnsCounts::default(),
        }
    }

    /// Names kept now.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// What became of the packets taken in, and the names kept now.
    pub fn counters(&self) -> DnsCounts {
        let mut c = self.counters.clone();
        (c.tcp_dropped, c.tcp_dropped_bytes) = (self.tcp.dropped.segments, self.tcp.dropped.bytes);
        c.names = self.names.len() as u64;
        c
    }

    /// Takes in one packet the kernel copied.
    pub fn on_packet(&mut self, p: &DnsPacket) {
        let h = &p.header;
        self.counters.packets += 1;
        let complete = h.captured >= h.payload_len && p.payload.len() == h.captured as usize;
        if h.proto == 6 {
            for message in self.tcp.segment(h, &p.payload, complete) {
                self.on_message(h.cgroup_id, h.ktime_ns, &message);
            }
            return;
        }
        if !complete {
            self.counters.truncated += 1;
            self.counters.truncated_bytes += h.payload_len as u64;
            return;
        }
        self.on_message(h.cgroup_id, h.ktime_ns, &p.payload);
    }

    fn on_message(&mut self, cgroup_id: u64, at_ns: u64, message: &[u8]) {
        let answer = match parse(message) {
            Ok(Parsed::Answer(a)) => a,
            Ok(Parsed::NoAddress) => {
                self.counters.no_address += 1;
                return;
            }
            Err(_) => {
                self.counters.malformed += 1;
                self.counters.malformed_bytes += message.len() as u64;
                return;
            }
        };
        self.counters.answers += 1;
        for r in answer.addresses {
            let name =
                Arc::new(DomainName { domain: answer.domain.clone(), cname_chain: r.cname_chain.into() });
            // RFC 2181, 8: a TTL with its top bit set is taken as 0.
            let ttl = if r.ttl > i32::MAX as u32 { 0 } else { u64::from(r.ttl) };
            let valid_until_ns = at_ns.saturating_add(ttl * 1_000_000_000).saturating_add(self.grace_ns);
            let answered = Answered { name, seen_ns: at_ns, valid_until_ns };
            // Looked up so: an IPv4-mapped address in an AAAA answer names IPv4 flows.
            let ip = canonical(r.ip);
            for scope in [Scope::Cgroup(cgroup_id), Scope::Host] {
                let entry = match self.names.peek(&(scope, ip)) {
                    // The same name again while valid: one answer, valid from the first to the
                    // latest expiry (the different name before it is kept).
                    Some(e) if e.latest.valid_until_ns >= at_ns && e.latest.name == answered.name => Entry {
                        latest: Answered {
                            valid_until_ns: e.latest.valid_until_ns.max(valid_until_ns),
                            ..e.latest.clone()
                        },
                        earlier: e.earlier.clone(),
                    },
                    e => Entry {
                        latest: answered.clone(),
                        earlier: e.map(|e| e.latest.clone()).filter(|a| a.valid_until_ns >= at_ns),
                    },
                };
                if let Some((key, old)) = self.names.push((scope, ip), entry)
                    && key != (scope, ip)
                    && old.latest.valid_until_ns >= at_ns
                {
                    self.counters.evicted += 1;
                }
            }
        }
    }

    /// The name of `ip` for a flow of `cgroup_id` that started at `at_ns` (CLOCK_MONOTONIC):
    /// the cgroup's own answer when it has one valid then (received before, not expired),
    /// else the host's. An answer received after the flow started does not name it.
    pub fn name_of(&mut self, cgroup_id: u64, ip: IpAddr, at_ns: u64) -> Option<Arc<DomainName>> {
        let ip = canonical(ip);
        for scope in [Scope::Cgroup(cgroup_id), Scope::Host] {
            let Some(e) = self.names.get(&(scope, ip)) else { continue };
            if let Some(a) = std::iter::once(&e.latest).chain(&e.earlier).find(|a| a.names(at_ns)) {
                return Some(a.name.clone());
            }
        }
        None
    }
}

/// An IPv4-mapped IPv6 address as IPv4 (a dual-stack socket's flows show IPv4 destinations so).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests;
