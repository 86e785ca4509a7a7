//! The flow table: kernel events and periodic sweeps of the kernel flow map become flow
//! updates (new, active, ended). Ending a flow removes it from the kernel map too.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

mod refused;

use monitor_common::{
    DIRECTION_UNKNOWN, FlowKey, FlowValue, ProcessInfo, Reported, SOCK_HAS_PROCESS, SockEvent,
};

use crate::probe::KernelEvent;
use crate::record::DomainName;
pub use crate::record::FlowState;

/// The kernel's flow map, as the table uses it (the probe's map; a fake in tests).
pub trait KernelFlows {
    /// Calls `f` for every flow in the map.
    fn for_each(&mut self, f: &mut dyn FnMut(&FlowKey, &FlowValue)) -> std::io::Result<()>;
    /// Removes a flow and returns its final value (None if it was already gone).
    fn take(&mut self, key: &FlowKey) -> std::io::Result<Option<FlowValue>>;
}

#[derive(Debug, Clone, Copy)]
pub struct TableSettings {
    pub flush_interval: Duration,
    pub idle_timeout: Duration,
    pub close_grace: Duration,
}

/// A flow as the agent knows it. Counts are totals over every incarnation of the kernel entry
/// (an entry evicted and re-created is continued, not restarted).
#[derive(Debug, Clone)]
pub struct Flow {
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub class_id: u32,
    pub direction: u8,
    pub cookie: u64,
    pub sock_uid: u32,
    pub process: Option<ProcessInfo>,
    /// The destination's name, looked up when the flow was first reported (None: not yet;
    /// Some(None): no answer named it).
    pub name: Option<Option<Arc<DomainName>>>,
    /// The class was corrected by the agent (see [`FlowTable::reclassify`]); the kernel's
    /// stale value no longer overrides it.
    class_pinned: bool,
    /// `first_seen_ns` of the kernel entry currently tracked, and its counters when last read.
    entry_id: u64,
    entry_packets: u64,
    entry_bytes: u64,
    emitted_packets: u64,
    emitted_bytes: u64,
    emitted_class: u32,
    last_emit: Instant,
    closed_at: Option<Instant>,
    seen_sweep: u64,
    /// Carried over from a replaced program set: its kernel entry is in the old map, which is
    /// read no more; the same key in the current map continues it.
    carried: bool,
}

/// Flows of one class tracked now, and how many sockets they belong to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub flows: u64,
    pub sockets: u64,
}

/// What the table hands on: a flow and the stage it reached.
#[derive(Debug, Clone)]
pub struct FlowUpdate {
    pub key: FlowKey,
    pub flow: Flow,
    pub state: FlowState,
    /// Bytes and packets since this flow's previous update (all of them for a new flow).
    pub delta_bytes: u64,
    pub delta_packets: u64,
    /// The kernel entry's counters as of this update, for the kernel's record of what was
    /// reported (None once the flow ended: forget it).
    pub mark: Option<Reported>,
}

/// Things the agent noticed that mean data was lost or could be wrong.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TableCounters {
    /// Kernel entries that disappeared or restarted without the agent removing them: the LRU
    /// map was full. Packets sent between the last sweep and the eviction are not reported.
    pub flows_evicted: u64,
    /// New flows the kernel announced (classified ones the verdict tables do not approve).
    pub new_flow_events: u64,
    pub close_events: u64,
    /// Flows first found by a sweep: those the kernel does not announce (unclassified, or
    /// approved by the verdict tables), and any whose event was lost or late.
    pub found_by_sweep: u64,
}

pub struct FlowTable {
    settings: TableSettings,
    flows: HashMap<FlowKey, Flow>,
    /// What a previous agent reported of the flows in the adopted kernel map, by key, until
    /// the first sweep has matched them.
    adopted: HashMap<FlowKey, Reported>,
    /// Adopted entries whose flow is gone (ended just before the previous agent stopped), for
    /// the caller to remove from the kernel's record.
    stale: Vec<FlowKey>,
    /// Process per socket cookie, for flows whose entry lacks it: from the start-up scan, and
    /// from the connect events of a replaced older program set.
    processes: HashMap<u64, ProcessInfo>,
    /// Direction per socket cookie of the sockets open before the agent (see
    /// [`FlowTable::seed`]), for flows whose entry lacks it.
    directions: HashMap<u64, u8>,
    /// Sockets closed recently (by cookie): the sweep marks their flows closed.
    closed: HashMap<u64, Instant>,
    sweep: u64,
    pub counters: TableCounters,
}

/// Bound on the cookie -> process cache; cleared when exceeded (entries also leave on close).
const PROCESS_CACHE_LIMIT: usize = 1 << 17;

impl FlowTable {
    pub fn new(settings: TableSettings) -> Self {
        Self {
            settings,
            flows: HashMap::new(),
            adopted: HashMap::new(),
            stale: Vec::new(),
            processes: HashMap::new(),
            directions: HashMap::new(),
            closed: HashMap::new(),
            sweep: 0,
            counters: TableCounters::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Flows tracked now and the sockets they belong to, by class id (0: unclassified).
    pub fn by_class(&self) -> HashMap<u32, Tracked> {
        let mut n: HashMap<u32, (u64, std::collections::HashSet<u64>)> = HashMap::new();
        for f in self.flows.values() {
            let (flows, sockets) = n.entry(f.class_id).or_default();
            *flows += 1;
            if f.cookie != 0 {
                sockets.insert(f.cookie);
            }
        }
        n.into_iter().map(|(c, (flows, s))| (c, Tracked { flows, sockets: s.len() as u64 })).collect()
    }

    /// Applies one kernel event; a new flow is reported at once.
    pub fn on_event(&mut self, event: KernelEvent, now: Instant, out: &mut Vec<FlowUpdate>) {
        match event {
            KernelEvent::NewFlow(e) => {
                self.counters.new_flow_events += 1;
                self.observe(&e.key, &e.value, now, out);
            }
            KernelEvent::Connect(e) => self.on_connect(&e),
            KernelEvent::SockClosed { cookie } => {
                self.counters.close_events += 1;
                self.processes.remove(&cookie);
                self.directions.remove(&cookie);
                // The sweep marks its flows closed (no index by socket: it would cost memory per
                // flow to save a lookup per flow per sweep while sockets close).
                self.closed.insert(cookie, now);
            }
            // Not a flow: nothing left, or the packet was dropped (see FlowUpdate::refused).
            KernelEvent::Blocked(_) => {}
        }
    }

    /// A socket open before the agent started, found by scanning the processes' descriptors:
    /// its flows that the kernel first saw without a process or a direction (it sent before its
    /// storage was seeded) get them from here. Call before the first sweep.
    pub fn seed(&mut self, cookie: u64, process: ProcessInfo, direction: u8) {
        self.processes.insert(cookie, process);
        if direction != DIRECTION_UNKNOWN {
            self.directions.insert(cookie, direction);
        }
    }

    fn on_connect(&mut self, e: &SockEvent) {
        if self.processes.len() >= PROCESS_CACHE_LIMIT {
            self.processes.clear();
        }
        self.processes.insert(e.cookie, e.process);
    }

    /// Merges the kernel's view of one flow into the table.
    fn observe(&mut self, key: &FlowKey, v: &FlowValue, now: Instant, out: &mut Vec<FlowUpdate>) -> bool {
        let sweep = self.sweep;
        if let Some(f) = self.flows.get_mut(key) {
            if v.first_seen_ns != f.entry_id {
                // A new incarnation of the entry: the old one was evicted (or ended and a late
                // packet re-created it before we forgot the flow). Continue from its totals.
                if v.first_seen_ns > f.entry_id {
                    if !f.carried {
                        self.counters.flows_evicted += 1;
                    }
                    f.carried = false;
                    f.entry_id = v.first_seen_ns;
                    f.entry_packets = 0;
                    f.entry_bytes = 0;
                } else {
                    return true; // a stale event for an incarnation we already replaced
                }
            }
            if v.packets >= f.entry_packets {
                f.packets += v.packets - f.entry_packets;
                f.bytes += v.bytes.saturating_sub(f.entry_bytes);
                f.entry_packets = v.packets;
                f.entry_bytes = v.bytes;
            }
            f.last_seen_ns = f.last_seen_ns.max(v.last_seen_ns);
            if v.closed != 0 && f.closed_at.is_none() {
                f.closed_at = Some(now); // marked by sock_release, seen at this sweep
            }
            if !f.class_pinned {
                f.class_id = v.class_id;
            }
            f.seen_sweep = sweep;
            return true;
        }
        let process = if v.sock_flags & SOCK_HAS_PROCESS != 0 && v.process.tgid != 0 {
            Some(v.process)
        } else {
            self.processes.get(&v.cookie).copied()
        };
        // What a previous agent already reported of this very entry is not reported again.
        let before = self.adopted.remove(key).filter(|r| r.entry_id == v.first_seen_ns);
        let flow = Flow {
            first_seen_ns: v.first_seen_ns,
            last_seen_ns: v.last_seen_ns,
            packets: v.packets,
            bytes: v.bytes,
            class_id: v.class_id,
            direction: match v.direction {
                DIRECTION_UNKNOWN => self.directions.get(&v.cookie).copied().unwrap_or(v.direction),
                d => d,
            },
            cookie: v.cookie,
            sock_uid: v.sock_uid,
            process,
            name: None,
            class_pinned: false,
            entry_id: v.first_seen_ns,
            entry_packets: v.packets,
            entry_bytes: v.bytes,
            emitted_packets: v.packets,
            emitted_bytes: v.bytes,
            emitted_class: v.class_id,
            last_emit: now,
            closed_at: if v.closed != 0 { Some(now) } else { self.closed.get(&v.cookie).copied() },
            seen_sweep: sweep,
            carried: false,
        };
        match before {
            None => {
                out.push(FlowUpdate {
                    key: *key,
                    flow: flow.clone(),
                    state: FlowState::New,
                    delta_bytes: flow.bytes,
                    delta_packets: flow.packets,
                    mark: Some(flow.reported()),
                });
                self.flows.insert(*key, flow);
            }
            Some(r) => {
                // Counted from what was reported: a late event may show fewer packets than the
                // previous agent already reported; the next sweep brings the rest.
                let mut flow = flow;
                flow.entry_packets = v.packets.max(r.packets);
                flow.entry_bytes = v.bytes.max(r.bytes);
                flow.packets = flow.entry_packets;
                flow.bytes = flow.entry_bytes;
                flow.emitted_packets = r.packets;
                flow.emitted_bytes = r.bytes;
                if flow.packets != flow.emitted_packets {
                    out.push(flow.update(key, FlowState::Active, now));
                }
                self.flows.insert(*key, flow);
            }
        }
        false
    }

    /// Starts from an adopted kernel map (or one being carried over): `reported` is what the
    /// previous agent reported of each of its entries. Flows are then reported minus that; the
    /// next sweep forgets entries whose flow is gone.
    pub fn adopt(&mut self, reported: Vec<(FlowKey, Reported)>) {
        self.adopted.extend(reported);
    }

    /// Reports what the flow map of a replaced program set counted that no agent reported (its
    /// record of what was reported given to [`FlowTable::adopt`] first), and keeps its flows:
    /// the same key in the current map continues them. Returns the number of flows carried over.
    pub fn carry_over(
        &mut self,
        map: &mut dyn KernelFlows,
        now: Instant,
        out: &mut Vec<FlowUpdate>,
    ) -> std::io::Result<u64> {
        let mut keys = Vec::new();
        map.for_each(&mut |k, v| {
            self.observe(k, v, now, out);
            keys.push(*k);
        })?;
        for key in &keys {
            if let Some(f) = self.flows.get_mut(key) {
                f.carried = true;
                f.entry_id = 0;
                f.entry_packets = 0;
                f.entry_bytes = 0;
            }
        }
        Ok(keys.len() as u64)
    }

    /// Adopted entries whose flow was gone at the first sweep: remove them from the kernel's
    /// record of what was reported.
    pub fn take_stale(&mut self) -> Vec<FlowKey> {
        std::mem::take(&mut self.stale)
    }

    /// Corrects the class of known flows after the class maps changed: a socket is classified
    /// again on its next packet, but a flow that sends nothing more would keep the class it had
    /// before its cgroup was known. `class_of` maps a cgroup id to its configured class.
    pub fn reclassify(&mut self, mut class_of: impl FnMut(u64) -> Option<u32>) {
        for (key, f) in self.flows.iter_mut() {
            if let Some(class) = class_of(key.cgroup_id)
                && class != f.class_id
            {
                f.class_id = class;
                f.class_pinned = true;
            }
        }
    }

    /// The class of one flow, corrected as [`FlowTable::reclassify`] does, in an update
    /// already made with it.
    /// Keeps the name a flow's destination was given when it was first reported.
    pub fn set_name(&mut self, key: &FlowKey, name: Option<Arc<DomainName>>) {
        if let Some(f) = self.flows.get_mut(key) {
            f.name = Some(name);
        }
    }

    pub fn pin_class(&mut self, key: &FlowKey, class: u32) {
        if let Some(f) = self.flows.get_mut(key) {
            (f.class_id, f.emitted_class, f.class_pinned) = (class, class, true);
        }
    }

    /// Reads the whole kernel map, reports new, changed and ended flows, and removes ended
    /// flows from the kernel map. `now_ns` is CLOCK_MONOTONIC, the kernel programs' clock.
    pub fn sweep(
        &mut self,
        map: &mut dyn KernelFlows,
        now: Instant,
        now_ns: u64,
        out: &mut Vec<FlowUpdate>,
    ) -> std::io::Result<()> {
        self.sweep += 1;
        // Entries are merged as each batch arrives: no copy of the whole map is held.
        let mut found_by_sweep = 0;
        map.for_each(&mut |k, v| {
            if !self.observe(k, v, now, out) {
                found_by_sweep += 1;
            }
        })?;
        self.counters.found_by_sweep += found_by_sweep;
        // Entries the previous agent reported whose flow it ended just before it stopped.
        self.stale.extend(self.adopted.drain().map(|(key, _)| key));

        let s = self.settings;
        let sweep = self.sweep;
        let mut ended: Vec<FlowKey> = Vec::new();
        let closed = &self.closed;
        for (key, f) in self.flows.iter_mut() {
            if f.closed_at.is_none() && !closed.is_empty() {
                f.closed_at = closed.get(&f.cookie).copied();
            }
            let quiet_ns = now_ns.saturating_sub(f.last_seen_ns);
            if f.seen_sweep != sweep && !f.carried {
                // Gone from the kernel map without the agent removing it.
                self.counters.flows_evicted += 1;
                ended.push(*key);
            } else if quiet_ns >= s.idle_timeout.as_nanos() as u64 {
                ended.push(*key);
            } else if let Some(closed) = f.closed_at
                && now.duration_since(closed) >= s.close_grace
                && quiet_ns >= s.close_grace.as_nanos() as u64
            {
                ended.push(*key);
            } else if (f.packets != f.emitted_packets || f.class_id != f.emitted_class)
                && now.duration_since(f.last_emit) >= s.flush_interval
            {
                out.push(f.update(key, FlowState::Active, now));
            }
        }
        for key in ended {
            self.end(map, &key, now, out)?;
        }
        self.closed.retain(|_, at| now.duration_since(*at) < s.idle_timeout + s.close_grace);
        Ok(())
    }

    /// Reports the final state of a flow and forgets it, in the kernel too.
    fn end(
        &mut self,
        map: &mut dyn KernelFlows,
        key: &FlowKey,
        now: Instant,
        out: &mut Vec<FlowUpdate>,
    ) -> std::io::Result<()> {
        if let Some(last) = map.take(key)? {
            self.observe(key, &last, now, out);
        }
        let Some(mut f) = self.flows.remove(key) else { return Ok(()) };
        out.push(f.update(key, FlowState::Ended, now));
        Ok(())
    }

    /// Reports every flow whose counts changed since its last report (used at shutdown, so
    /// that nothing counted is left unreported).
    pub fn flush_all(&mut self, now: Instant, out: &mut Vec<FlowUpdate>) {
        for (key, f) in self.flows.iter_mut() {
            if f.packets != f.emitted_packets || f.class_id != f.emitted_class {
                out.push(f.update(key, FlowState::Active, now));
            }
        }
    }
}

impl Flow {
    /// The update to report now: what changed since the last one.
    fn update(&mut self, key: &FlowKey, state: FlowState, now: Instant) -> FlowUpdate {
        let (delta_bytes, delta_packets) = (
            self.bytes.saturating_sub(self.emitted_bytes),
            self.packets.saturating_sub(self.emitted_packets),
        );
        self.mark_emitted(now);
        let mark = (state != FlowState::Ended).then(|| self.reported());
        FlowUpdate { key: *key, flow: self.clone(), state, delta_bytes, delta_packets, mark }
    }

    /// The kernel entry's counters as of the latest report.
    fn reported(&self) -> Reported {
        Reported { entry_id: self.entry_id, packets: self.entry_packets, bytes: self.entry_bytes }
    }

    fn mark_emitted(&mut self, now: Instant) {
        self.emitted_packets = self.packets;
        self.emitted_bytes = self.bytes;
        self.emitted_class = self.class_id;
        self.last_emit = now;
    }
}

/// The probe's map is the kernel flow map the agent sweeps.
impl KernelFlows for crate::probe::FlowMap {
    fn for_each(&mut self, f: &mut dyn FnMut(&FlowKey, &FlowValue)) -> std::io::Result<()> {
        crate::probe::FlowMap::for_each(self, f)
    }
    fn take(&mut self, key: &FlowKey) -> std::io::Result<Option<FlowValue>> {
        crate::probe::FlowMap::take(self, key)
    }
}

/// An in-memory stand-in for the kernel map, for tests of the layers that sweep it.
#[cfg(test)]
pub mod fake;

#[cfg(test)]
mod tests;
