//! The kernel's verdict tables, which the enforcement programs look destinations up in: two
//! pairs of longest-prefix-match tries (A and B; per network, the mask of classes that may go
//! there) and the `POLICY` array saying which pair is in force and which classes enforce. A new
//! policy is written into the pair not in force, which is then put in force with one write:
//! no moment has a half-built table in force.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::maps::{
    Array, Map, MapData,
    lpm_trie::{Key, LpmTrie},
};
use monitor_common::policy_slot;

/// Most networks per table (the tries allocate per entry, not up front).
pub const MAX_ENTRIES: u32 = 4 << 20;

pub struct VerdictTables {
    v4: [LpmTrie<MapData, [u8; 4], u64>; 2],
    v6: [LpmTrie<MapData, [u8; 16], u64>; 2],
    policy: Array<MapData, u64>,
}

/// What installing a policy took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    pub v4_entries: usize,
    pub v6_entries: usize,
    /// 1 (A) or 2 (B): the pair now in force.
    pub pair: u64,
    pub took: Duration,
}

impl VerdictTables {
    pub(super) fn new(mut take: impl FnMut(&str) -> anyhow::Result<MapData>) -> anyhow::Result<Self> {
        let mut lpm4 = |n: &str| -> anyhow::Result<_> { Ok(LpmTrie::try_from(Map::LpmTrie(take(n)?))?) };
        let (v4a, v4b) = (lpm4("VERDICTS_V4_A")?, lpm4("VERDICTS_V4_B")?);
        let mut lpm6 = |n: &str| -> anyhow::Result<_> { Ok(LpmTrie::try_from(Map::LpmTrie(take(n)?))?) };
        let (v6a, v6b) = (lpm6("VERDICTS_V6_A")?, lpm6("VERDICTS_V6_B")?);
        let policy = Array::try_from(Map::Array(take("POLICY")?))?;
        Ok(VerdictTables { v4: [v4a, v4b], v6: [v6a, v6b], policy })
    }

    /// The pair in force: 0 none, 1 A, 2 B.
    pub fn in_force(&self) -> u64 {
        self.policy.get(&policy_slot::ACTIVE, 0).unwrap_or(0)
    }

    /// Writes a compiled policy (per network, the mask of classes that may go there) into the
    /// pair not in force, puts it in force, and sets the classes that enforce (bit `id - 1`).
    pub fn install(
        &mut self,
        v4: impl ExactSizeIterator<Item = (Ipv4Addr, u8, u64)>,
        v6: impl ExactSizeIterator<Item = (Ipv6Addr, u8, u64)>,
        enforcing: u64,
    ) -> anyhow::Result<Installed> {
        let started = Instant::now();
        let previous = self.in_force();
        let pair = if previous == 1 { 2 } else { 1 };
        let i = (pair - 1) as usize;
        let (v4_entries, v6_entries) = (v4.len(), v6.len());
        clear(&mut self.v4[i]).context("clearing the IPv4 verdict table not in force")?;
        clear(&mut self.v6[i]).context("clearing the IPv6 verdict table not in force")?;
        for (addr, len, mask) in v4 {
            self.v4[i]
                .insert(&Key::new(len as u32, addr.octets()), mask, 0)
                .with_context(|| format!("writing {addr}/{len} into the IPv4 verdict table"))?;
        }
        for (addr, len, mask) in v6 {
            self.v6[i]
                .insert(&Key::new(len as u32, addr.octets()), mask, 0)
                .with_context(|| format!("writing {addr}/{len} into the IPv6 verdict table"))?;
        }
        // Tables first: a class that starts enforcing is judged by the new ones.
        self.policy.set(policy_slot::ACTIVE, pair, 0).context("putting the new verdict tables in force")?;
        if let Err(e) = self.policy.set(policy_slot::ENFORCING, enforcing, 0) {
            // All or nothing: the previous pair is still whole; put it back in force.
            let _ = self.policy.set(policy_slot::ACTIVE, previous, 0);
            return Err(e).context("writing the enforcing classes (the previous tables stay in force)");
        }
        // The pair no longer in force holds the old policy: free its memory, once every program
        // run that read the old ACTIVE just before the switch is over (runs take microseconds;
        // one that found an emptying table would let its call through). The new policy is in
        // force whatever happens here: a failure only leaves memory in use until the next install.
        std::thread::sleep(Duration::from_millis(20));
        let old = 1 - i;
        if let Err(e) = clear(&mut self.v4[old]).and_then(|()| clear(&mut self.v6[old])) {
            tracing::warn!(error = %format!("{e:#}"), "clearing the verdict tables no longer in force failed; they are cleared at the next install");
        }
        Ok(Installed { v4_entries, v6_entries, pair, took: started.elapsed() })
    }

    /// The mask the kernel finds for `ip` in the tables in force (`ip` as the programs look it
    /// up: IPv4-mapped and NAT64 addresses already turned into IPv4). None: no table in force.
    pub fn lookup(&self, ip: IpAddr) -> anyhow::Result<Option<u64>> {
        let i = match self.in_force() {
            1 => 0,
            2 => 1,
            _ => return Ok(None),
        };
        let found = match ip {
            IpAddr::V4(a) => self.v4[i].get(&Key::new(32, a.octets()), 0),
            IpAddr::V6(a) => self.v6[i].get(&Key::new(128, a.octets()), 0),
        };
        match found {
            Ok(mask) => Ok(Some(mask)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Kernel memory of the verdict tables (both pairs), as the kernel accounts it to their maps
    /// (`memlock` in /proc/self/fdinfo; the agent holds no other LPM trie).
    pub fn kernel_memory() -> u64 {
        let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else { return 0 };
        dir.flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter(|info| info.lines().any(|l| l == "map_type:\t11"))
            .filter_map(|info| {
                info.lines().find_map(|l| l.strip_prefix("memlock:\t")?.trim().parse::<u64>().ok())
            })
            .sum()
    }

    /// The classes that enforce, as the kernel has them.
    pub fn enforcing(&self) -> u64 {
        self.policy.get(&policy_slot::ENFORCING, 0).unwrap_or(0)
    }
}

/// Removes every entry of a table.
fn clear<const N: usize>(trie: &mut LpmTrie<MapData, [u8; N], u64>) -> anyhow::Result<()> {
    let keys: Vec<Key<[u8; N]>> = trie.keys().collect::<Result<_, _>>()?;
    for k in keys {
        trie.remove(&k)?;
    }
    Ok(())
}
