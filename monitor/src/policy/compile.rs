//! The residency policy compiled into prefix tables for the kernel: for every IPv4 and IPv6
//! address, the set of classes that may send there, as a bitmask (bit `id - 1` for class id
//! `id`), in longest-prefix-match entries. The kernel then answers "approved or not" for a
//! classified socket and a destination with one lookup.
//!
//! Exact by construction: every network any source knows (database networks with their
//! aliases, cloud ranges, sites, the internal and mapped ranges) bounds an interval on which
//! every source gives the same answer; each interval is judged once by the agent's own
//! enricher and policy, equal neighbours are merged, and each run becomes the fewest CIDRs
//! that cover it exactly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{Policy, VerdictKind};
use crate::enrich::Enricher;

/// Classes the kernel tables can speak for (bits of the mask).
pub const KERNEL_CLASSES: usize = 64;

/// The compiled tables.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub v4: Vec<(Ipv4Net, u64)>,
    pub v6: Vec<(Ipv6Net, u64)>,
    /// Intervals judged (before merging).
    pub intervals: usize,
}

impl Compiled {
    /// The entries as prefix maps, to look addresses up as the kernel does (for tests and
    /// `lookup`).
    pub fn table(&self) -> CompiledTable {
        CompiledTable { v4: self.v4.iter().copied().collect(), v6: self.v6.iter().copied().collect() }
    }
}

/// [`Compiled`] as longest-prefix-match maps.
pub struct CompiledTable {
    v4: prefix_trie::PrefixMap<Ipv4Net, u64>,
    v6: prefix_trie::PrefixMap<Ipv6Net, u64>,
}

impl CompiledTable {
    /// The mask for `ip`, by longest prefix match. Mapped and NAT64 IPv6 addresses are looked
    /// up as IPv4, as the kernel does.
    pub fn lookup(&self, ip: IpAddr) -> Option<u64> {
        match crate::enrich::embedded_ipv4(ip.to_canonical()) {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(|(_, m)| *m),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(_, m)| *m),
        }
    }
}

/// The mask of classes that may send to `ip`, as the agent judges it.
pub fn mask_of(enricher: &mut Enricher, policy: &Policy, ip: IpAddr) -> u64 {
    let d = enricher.locate_uncached(ip);
    let mut mask = 0u64;
    for id in 1..=policy.classes().len().min(KERNEL_CLASSES) as u32 {
        if policy.evaluate(id, &d).kind == VerdictKind::Allowed {
            mask |= 1 << (id - 1);
        }
    }
    mask
}

/// Compiles the policy over every address the enricher can place.
pub fn compile(enricher: &mut Enricher, policy: &Policy) -> Result<Compiled, String> {
    let networks = enricher.networks()?;
    let (mut b4, mut b6): (Vec<u128>, Vec<u128>) = (vec![0], vec![0]);
    for n in &networks {
        let (bounds, first, last) = match n {
            IpNet::V4(n) => (&mut b4, u32::from(n.network()) as u128, u32::from(n.broadcast()) as u128),
            IpNet::V6(n) => (&mut b6, u128::from(n.network()), u128::from(n.broadcast())),
        };
        bounds.push(first);
        if let Some(next) = last.checked_add(1) {
            bounds.push(next);
        }
    }
    let v4 = runs(b4, u32::MAX as u128, |a| mask_of(enricher, policy, IpAddr::V4(Ipv4Addr::from(a as u32))));
    let v6 = runs(b6, u128::MAX, |a| mask_of(enricher, policy, IpAddr::V6(Ipv6Addr::from(a))));
    let mut out = Compiled { intervals: v4.1 + v6.1, ..Default::default() };
    for (lo, hi, mask) in v4.0 {
        for (addr, len) in cidrs(lo, hi, 32) {
            out.v4.push((Ipv4Net::new(Ipv4Addr::from(addr as u32), len).expect("valid prefix"), mask));
        }
    }
    for (lo, hi, mask) in v6.0 {
        for (addr, len) in cidrs(lo, hi, 128) {
            out.v6.push((Ipv6Net::new(Ipv6Addr::from(addr), len).expect("valid prefix"), mask));
        }
    }
    Ok(out)
}

/// Sorts the boundaries (first addresses of intervals, up to the space's `last` address),
/// judges each interval by its first address, and merges equal neighbours: (first, last, mask)
/// runs, and the number of intervals judged.
fn runs(
    mut bounds: Vec<u128>,
    last: u128,
    mut judge: impl FnMut(u128) -> u64,
) -> (Vec<(u128, u128, u64)>, usize) {
    bounds.retain(|b| *b <= last);
    bounds.sort_unstable();
    bounds.dedup();
    let mut out: Vec<(u128, u128, u64)> = Vec::new();
    for (i, &lo) in bounds.iter().enumerate() {
        let hi = bounds.get(i + 1).map_or(last, |next| next - 1);
        let mask = judge(lo);
        match out.last_mut() {
            Some(run) if run.2 == mask => run.1 = hi,
            _ => out.push((lo, hi, mask)),
        }
    }
    (out, bounds.len())
}

/// The fewest CIDRs (address, prefix length) covering exactly [lo, hi] in a `bits`-bit space.
fn cidrs(mut lo: u128, hi: u128, bits: u8) -> Vec<(u128, u8)> {
    let mut out = Vec::new();
    loop {
        // The largest block aligned at `lo` that ends at or before `hi`: 2^size addresses.
        let mut size = if lo == 0 { bits as u32 } else { lo.trailing_zeros().min(bits as u32) };
        while size > 0 && block_last(lo, size) > hi {
            size -= 1;
        }
        out.push((lo, bits - size as u8));
        let last = block_last(lo, size);
        if last >= hi {
            return out;
        }
        lo = last + 1;
    }
}

/// The last address of the block of 2^size addresses starting at `lo` (saturating: the whole
/// IPv6 space ends at u128::MAX).
fn block_last(lo: u128, size: u32) -> u128 {
    if size >= 128 { u128::MAX } else { lo.saturating_add((1u128 << size) - 1) }
}

#[cfg(test)]
mod tests;
