//! Handles on the maps the agent fills (classes) and reads (failure and overflow counters).

use std::collections::HashMap as StdHashMap;

use anyhow::Context;
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use monitor_common::{CONFIG_ACTIVE_EPOCH, CONFIG_GENERATION, Overflow, dns_stat, stat};

use super::batch::BatchMap;

/// The class maps the kernel classifies sockets with, and the shared configuration array.
pub struct ClassMaps {
    pub(super) cgroups: HashMap<MapData, u64, u32>,
    pub(super) uids: HashMap<MapData, u32, u32>,
    pub(super) config: Array<MapData, u32>,
    pub(super) generation: u32,
}

impl ClassMaps {
    /// Makes the kernel maps equal to `cgroups` and `uids`, then bumps the generation so every
    /// socket is classified again on its next packet.
    pub fn replace(
        &mut self,
        cgroups: &StdHashMap<u64, u32>,
        uids: &StdHashMap<u32, u32>,
    ) -> anyhow::Result<()> {
        let stale: Vec<u64> =
            self.cgroups.keys().filter_map(Result::ok).filter(|k| !cgroups.contains_key(k)).collect();
        for k in stale {
            self.cgroups.remove(&k)?;
        }
        for (k, v) in cgroups {
            self.cgroups.insert(k, v, 0).context("filling the cgroup class map")?;
        }
        let stale: Vec<u32> =
            self.uids.keys().filter_map(Result::ok).filter(|k| !uids.contains_key(k)).collect();
        for k in stale {
            self.uids.remove(&k)?;
        }
        for (k, v) in uids {
            self.uids.insert(k, v, 0).context("filling the uid class map")?;
        }
        self.generation = self.generation.wrapping_add(1).max(1);
        self.config.set(CONFIG_GENERATION, self.generation, 0)?;
        Ok(())
    }

    /// Makes the program set with `epoch` the one that counts (one map write: the old set stops
    /// and the new one starts at the same instant).
    pub(super) fn activate(&mut self, epoch: u32) -> anyhow::Result<()> {
        self.config.set(CONFIG_ACTIVE_EPOCH, epoch, 0).context("switching the active program set")
    }
}

/// Totals of the kernel's per-CPU failure counters and of its overflow counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelStats {
    pub ringbuf_drops: u64,
    pub flow_insert_failed: u64,
    pub sock_storage_failed: u64,
    pub unparsed_packets: u64,
    /// DNS answers lost (the DNS ring buffer was full), with their payload bytes.
    pub dns_lost: u64,
    pub dns_lost_bytes: u64,
    /// Packets and bytes that found the flow map full, by class id (index 0: unclassified).
    pub overflow_by_class: Vec<(u32, Overflow)>,
    /// The same by cgroup id (best effort: a cgroup may miss when its own map is full).
    pub overflow_by_cgroup: Vec<(u64, Overflow)>,
}

impl KernelStats {
    /// Adds the counters of another program set (one being replaced) to these.
    pub fn add(&mut self, o: &KernelStats) {
        self.ringbuf_drops += o.ringbuf_drops;
        self.flow_insert_failed += o.flow_insert_failed;
        self.sock_storage_failed += o.sock_storage_failed;
        self.unparsed_packets += o.unparsed_packets;
        self.dns_lost += o.dns_lost;
        self.dns_lost_bytes += o.dns_lost_bytes;
        add_overflow(&mut self.overflow_by_class, &o.overflow_by_class);
        add_overflow(&mut self.overflow_by_cgroup, &o.overflow_by_cgroup);
    }

    /// Bytes and packets in every overflow counter.
    pub fn overflow_total(&self) -> Overflow {
        let mut t = Overflow::default();
        for (_, o) in &self.overflow_by_class {
            t.packets += o.packets;
            t.bytes += o.bytes;
        }
        t
    }
}

fn add_overflow<K: Copy + Ord>(into: &mut Vec<(K, Overflow)>, from: &[(K, Overflow)]) {
    for (k, o) in from {
        match into.iter_mut().find(|(ik, _)| ik == k) {
            Some((_, i)) => {
                i.packets += o.packets;
                i.bytes += o.bytes;
                i.class_id = o.class_id;
            }
            None => into.push((*k, *o)),
        }
    }
    into.sort_by_key(|(k, _)| *k);
}

pub struct StatsMap {
    pub(super) map: PerCpuArray<MapData, u64>,
    pub(super) overflow_classes: BatchMap<u32, Overflow>,
    pub(super) overflow_cgroups: BatchMap<u64, Overflow>,
    /// The DNS counters (`monitor_common::dns_stat`); None for a set older than them.
    pub(super) dns: Option<PerCpuArray<MapData, u64>>,
}

impl StatsMap {
    pub fn read(&mut self) -> anyhow::Result<KernelStats> {
        let sum = |i: u32| -> anyhow::Result<u64> { Ok(self.map.get(&i, 0)?.iter().sum()) };
        let dns = |i: u32| -> anyhow::Result<u64> {
            Ok(match &self.dns {
                Some(m) => m.get(&i, 0).context("reading the DNS counters")?.iter().sum(),
                None => 0,
            })
        };
        let mut overflow_by_class: Vec<(u32, Overflow)> =
            self.overflow_classes.collect().context("reading the per-class overflow counters")?;
        overflow_by_class.retain(|(_, o)| o.packets > 0);
        overflow_by_class.sort_by_key(|(k, _)| *k);
        let mut overflow_by_cgroup =
            self.overflow_cgroups.collect().context("reading the per-cgroup overflow counters")?;
        overflow_by_cgroup.sort_by_key(|(k, _)| *k);
        Ok(KernelStats {
            ringbuf_drops: sum(stat::RINGBUF_DROPS)?,
            flow_insert_failed: sum(stat::FLOW_INSERT_FAILED)?,
            sock_storage_failed: sum(stat::SOCK_STORAGE_FAILED)?,
            unparsed_packets: sum(stat::UNPARSED_PACKETS)?,
            dns_lost: dns(dns_stat::LOST)?,
            dns_lost_bytes: dns(dns_stat::LOST_BYTES)?,
            overflow_by_class,
            overflow_by_cgroup,
        })
    }
}
