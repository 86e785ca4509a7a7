//! Loading, attaching and adopting the kernel programs, and handles on their maps. This is the
//! only module that touches aya: the rest of the agent sees flows, events and counters.
//!
//! The programs and maps outlive the agent: they are pinned under `agent.pin_dir` (see
//! [`pins`]), so the kernel keeps counting whatever happens to the agent, and a starting agent
//! adopts what it finds, or replaces an older set after switching counting over to its own.

mod batch;
pub mod btf;
mod enforce;
mod events;
mod load;
mod maps;
pub mod pins;
mod seed;
mod sys;
mod verdicts;

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::links::{FdLink, PinnedLink},
};
pub use batch::{BatchMap, FlowMap, ReportedMap};
pub use enforce::Enforcement;
pub use events::{
    DRAIN_INTERVAL, DnsPacket, EventStream, KernelBatch, KernelEvent, KernelLog, KernelLogStream, parse_dns,
    parse_event,
};
use load::{attach_program, load, map_data};
pub use maps::{ClassMaps, KernelStats, StatsMap};
use monitor_common::{CONFIG_ACTIVE_EPOCH, CONFIG_GENERATION, FlowKey, FlowValue, Reported, agent_slot};
use pins::SetDir;
pub use seed::{SocketSeed, SocketStorage};
use tokio::io::{Interest, unix::AsyncFd};
pub use verdicts::{Installed, VerdictTables};

/// The object built by monitor/build.rs from monitor-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

pub struct ProbeOptions {
    pub max_flows: u32,
    pub ring_buffer_size: u32,
    /// Bytes of the ring buffer of DNS answers.
    pub dns_ring_buffer_size: u32,
    /// Turn the kernel programs' debug messages on (rare paths only: a socket that got no
    /// storage, a flow that got no slot); they are logged with target `kernel`. Only for a
    /// program set this agent loads (an adopted set was loaded with them off).
    pub kernel_log: bool,
    /// The bpffs directory the programs and maps are pinned under.
    pub pin_dir: PathBuf,
    /// The cgroup v2 root the programs attach to.
    pub cgroup_root: PathBuf,
}

/// One program attached to the cgroup root.
#[derive(Debug, Clone)]
pub struct AttachedProgram {
    pub name: &'static str,
    pub hook: &'static str,
    pub id: u32,
}

/// The programs attached to the cgroup v2 root, in attach order: attribution hooks first, so
/// that by the time the egress program counts a socket's packets, the socket's process is being
/// recorded. The root carries the host's own connections: these programs count and attribute,
/// and always allow.
pub const ROOT_PROGRAMS: &[(&str, &str)] = &[
    ("sock_lifecycle", "sock_ops"),
    ("sock_release", "cgroup/sock_release"),
    ("sock_connect4", "cgroup/connect4"),
    ("sock_connect6", "cgroup/connect6"),
    ("sock_sendmsg4", "cgroup/sendmsg4"),
    ("sock_sendmsg6", "cgroup/sendmsg6"),
    ("sock_recvmsg4", "cgroup/recvmsg4"),
    ("sock_recvmsg6", "cgroup/recvmsg6"),
    ("flow_egress", "cgroup_skb/egress"),
    ("dns_ingress", "cgroup_skb/ingress"),
];

/// Programs attached only to the cgroups of enforcing classes, never to the root: the only
/// ones that refuse anything.
pub const CGROUP_PROGRAMS: &[(&str, &str)] = enforce::PROGRAMS;

/// How the agent found the kernel side when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// Nothing was pinned: the programs were loaded and attached now.
    Fresh,
    /// The pinned programs were this agent's own (same object, same map sizes): adopted.
    Adopted,
    /// Older programs were pinned (another build or other map sizes): counting was switched to
    /// new programs and the old counters carried over.
    Replaced,
}

impl StartKind {
    pub fn name(self) -> &'static str {
        match self {
            StartKind::Fresh => "fresh",
            StartKind::Adopted => "adopted",
            StartKind::Replaced => "replaced",
        }
    }
}

/// What the agent found at start.
#[derive(Debug, Clone, Copy)]
pub struct StartInfo {
    pub kind: StartKind,
    /// When the counting program set was attached.
    pub attached_since: SystemTime,
    /// The previous agent's last heartbeat (None when no program set was pinned).
    pub previous_heartbeat: Option<SystemTime>,
}

/// A program set being replaced: its maps, still open after its pins are gone, for the agent
/// to report what it counted that no agent reported.
pub struct Retired {
    pub path: PathBuf,
    pub flows: FlowMap,
    pub reported: ReportedMap,
    events: RingBuf<MapData>,
    pub stats: StatsMap,
    heartbeat: Option<SystemTime>,
}

impl Retired {
    /// Every event left in its ring buffer, with the number of malformed records.
    pub fn drain_events(&mut self) -> (Vec<KernelEvent>, u64) {
        events::drain(&mut self.events)
    }
}

/// The counting program set and its maps.
pub struct Probe {
    set: SetDir,
    /// The loaded object, when this agent loaded the set (None when it adopted one).
    ebpf: Option<Ebpf>,
    epoch: u32,
    attached: Vec<AttachedProgram>,
    root: PathBuf,
    pub flows: FlowMap,
    pub reported: ReportedMap,
    pub classes: ClassMaps,
    pub stats: StatsMap,
    /// The sockets' storage, for sockets opened before the programs were attached.
    pub sockets: SocketStorage,
    /// The residency policy as the enforcement programs read it.
    pub verdicts: VerdictTables,
    /// The enforcement programs and the cgroups they are attached to.
    pub enforcement: Enforcement,
    agent: Array<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    dns: Option<RingBuf<MapData>>,
    kernel_log: Option<aya_log::EbpfLogger<KernelLog>>,
    /// Older sets to replace once this one counts.
    to_retire: Vec<(SetDir, Retired)>,
    retired: Vec<Retired>,
    start: StartInfo,
}

fn open_map(set: &SetDir, name: &str) -> anyhow::Result<MapData> {
    let path = set.map(name);
    MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))
}

fn realtime_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn time_of(ns: u64) -> Option<SystemTime> {
    (ns > 0).then(|| UNIX_EPOCH + Duration::from_nanos(ns))
}

/// Maps of one set, opened from their pins or taken from a loaded object.
struct SetMaps {
    flows: FlowMap,
    reported: ReportedMap,
    stats: StatsMap,
    agent: Array<MapData, u64>,
    events: RingBuf<MapData>,
}

impl SetMaps {
    fn new(mut take: impl FnMut(&str) -> anyhow::Result<MapData>) -> anyhow::Result<Self> {
        Ok(SetMaps {
            flows: BatchMap::new(checked::<FlowKey, FlowValue>("FLOWS", take("FLOWS")?)?),
            reported: BatchMap::new(checked::<FlowKey, Reported>("REPORTED", take("REPORTED")?)?),
            stats: StatsMap {
                map: PerCpuArray::try_from(Map::PerCpuArray(take("STATS")?))?,
                overflow_classes: BatchMap::new(take("OVERFLOW_CLASSES")?),
                overflow_cgroups: BatchMap::new(take("OVERFLOW_CGROUPS")?),
                dns: None,
            },
            agent: Array::try_from(Map::Array(take("AGENT")?))?,
            events: RingBuf::try_from(Map::RingBuf(take("EVENTS")?))?,
        })
    }

    fn slot(&self, slot: u32) -> Option<SystemTime> {
        self.agent.get(&slot, 0).ok().and_then(time_of)
    }
}

/// The DNS maps of the counting set (older sets, replaced at start, may lack them).
struct DnsMaps {
    answers: RingBuf<MapData>,
    stats: PerCpuArray<MapData, u64>,
}

impl DnsMaps {
    fn new(mut take: impl FnMut(&str) -> anyhow::Result<MapData>) -> anyhow::Result<Self> {
        Ok(DnsMaps {
            answers: RingBuf::try_from(Map::RingBuf(take("DNS_ANSWERS")?))?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(take("DNS_STATS")?))?,
        })
    }
}

fn class_maps(
    mut take: impl FnMut(&str) -> anyhow::Result<MapData>,
    config: MapData,
) -> anyhow::Result<ClassMaps> {
    let config = Array::try_from(Map::Array(config))?;
    let generation = config.get(&CONFIG_GENERATION, 0).unwrap_or(0);
    Ok(ClassMaps {
        cgroups: HashMap::try_from(Map::HashMap(take("CGROUP_CLASSES")?))?,
        uids: HashMap::try_from(Map::HashMap(take("UID_CLASSES")?))?,
        config,
        generation,
    })
}

/// Refuses a map whose key or value size is not this agent's (a layout it cannot read).
fn checked<K, V>(name: &str, map: MapData) -> anyhow::Result<MapData> {
    let info = map.info()?;
    if info.key_size() as usize != size_of::<K>() || info.value_size() as usize != size_of::<V>() {
        bail!(
            "map {name} has {}-byte keys and {}-byte values; this agent reads {} and {}",
            info.key_size(),
            info.value_size(),
            size_of::<K>(),
            size_of::<V>()
        );
    }
    Ok(map)
}

impl Probe {
    /// Finds the program set pinned under `opts.pin_dir` that this agent would create and
    /// adopts it, or loads a new one (not attached yet: see [`Probe::attach`]). Older sets are
    /// opened to be replaced; one whose maps this agent cannot read stops the start.
    pub fn open(opts: &ProbeOptions) -> anyhow::Result<Probe> {
        pins::prepare_dir(&opts.pin_dir)?;
        let digest = pins::set_digest(
            OBJECT,
            &[opts.max_flows, opts.ring_buffer_size, opts.dns_ring_buffer_size],
            &opts.cgroup_root,
        );
        let set = SetDir::new(&opts.pin_dir, &digest);
        let names: Vec<&str> = ROOT_PROGRAMS.iter().map(|(n, _)| *n).collect();
        let adopt = set.is_complete(&names);
        if !adopt && set.path.exists() {
            // A start that failed half-way: that set never counted (it was never made active).
            set.remove()?;
        }
        let mut to_retire = Vec::new();
        // Epochs in use: a new set's must differ from every set's, active or not.
        let mut highest_epoch = 0u32;
        for old in pins::other_sets(&opts.pin_dir, &set)? {
            if !old.has_links() {
                // No program of it is attached: the remains of a replacement that died while
                // unpinning it (counting had already moved on), or of a start that failed
                // before it attached anything.
                tracing::warn!(set = %old.path.display(), "removing a program set with no program attached");
                old.remove()?;
                continue;
            }
            let maps = SetMaps::new(|n| open_map(&old, n)).with_context(|| {
                format!(
                    "the program set pinned at {} cannot be carried over; stopping rather than losing its counts \
                     (`egress-monitor detach` removes it, and what it counted)",
                    old.path.display()
                )
            })?;
            let heartbeat = maps.slot(agent_slot::HEARTBEAT_NS);
            highest_epoch = highest_epoch.max(maps.agent.get(&agent_slot::EPOCH, 0).unwrap_or(0) as u32);
            let SetMaps { flows, reported, stats, events, .. } = maps;
            to_retire
                .push((old.clone(), Retired { path: old.path, flows, reported, events, stats, heartbeat }));
        }
        let config_pin = opts.pin_dir.join(pins::SHARED_CONFIG);
        let (mut maps, classes, sockets, verdicts, dns, ebpf, epoch, kernel_log, kind) = if adopt {
            let maps = SetMaps::new(|n| open_map(&set, n))?;
            let dns = DnsMaps::new(|n| open_map(&set, n))?;
            let sockets = SocketStorage::new(open_map(&set, "SOCKS")?)?;
            let verdicts = VerdictTables::new(|n| open_map(&set, n))?;
            let config = MapData::from_pin(&config_pin)
                .with_context(|| format!("opening pinned map {}", config_pin.display()))?;
            let classes = class_maps(|n| open_map(&set, n), config)?;
            let epoch = maps.agent.get(&agent_slot::EPOCH, 0)? as u32;
            (maps, classes, sockets, verdicts, dns, None, epoch, None, StartKind::Adopted)
        } else {
            let active = match MapData::from_pin(&config_pin) {
                Ok(m) => Array::<_, u32>::try_from(Map::Array(m))?.get(&CONFIG_ACTIVE_EPOCH, 0).unwrap_or(0),
                Err(_) => 0,
            };
            let epoch = active.max(highest_epoch).wrapping_add(1).max(1);
            set.create()?;
            let (mut ebpf, kernel_log) = load(opts, &set, &config_pin, epoch)?;
            let mut take = |name: &str| {
                ebpf.take_map(name).map(map_data).ok_or_else(|| anyhow!("map {name} missing from the object"))
            };
            let mut maps = SetMaps::new(&mut take)?;
            let config = take("CONFIG")?;
            let classes = class_maps(&mut take, config)?;
            let sockets = SocketStorage::new(take("SOCKS")?)?;
            let verdicts = VerdictTables::new(&mut take)?;
            let dns = DnsMaps::new(&mut take)?;
            maps.agent.set(agent_slot::EPOCH, epoch as u64, 0)?;
            let kind = if to_retire.is_empty() { StartKind::Fresh } else { StartKind::Replaced };
            (maps, classes, sockets, verdicts, dns, Some(ebpf), epoch, kernel_log, kind)
        };
        maps.stats.dns = Some(dns.stats);
        let enforcement = Enforcement::open(&set, &opts.cgroup_root)?;
        let own_heartbeat = if adopt { maps.slot(agent_slot::HEARTBEAT_NS) } else { None };
        let previous_heartbeat = to_retire.iter().filter_map(|(_, r)| r.heartbeat).chain(own_heartbeat).max();
        let attached_since = if adopt { maps.slot(agent_slot::ATTACHED_NS) } else { None };
        Ok(Probe {
            set,
            ebpf,
            epoch,
            attached: Vec::new(),
            root: opts.cgroup_root.clone(),
            flows: maps.flows,
            reported: maps.reported,
            classes,
            stats: maps.stats,
            sockets,
            verdicts,
            enforcement,
            agent: maps.agent,
            events: Some(maps.events),
            dns: Some(dns.answers),
            kernel_log,
            to_retire,
            retired: Vec::new(),
            start: StartInfo {
                kind,
                attached_since: attached_since.unwrap_or_else(SystemTime::now),
                previous_heartbeat,
            },
        })
    }

    /// Attaches the programs to the cgroup v2 root (an adopted set is attached already), pins
    /// their links, and makes this set the one that counts; older sets are then unpinned (their
    /// programs detach) and handed over by [`Probe::take_retired`]. Fill the class maps first,
    /// so that the first packets counted are classified.
    pub fn attach(&mut self) -> anyhow::Result<()> {
        let root_path = self.root.clone();
        if let Some(ebpf) = &mut self.ebpf {
            let root = crate::cgroup::open_root(&root_path)?;
            for (name, hook) in ROOT_PROGRAMS {
                let id = attach_program(ebpf, (name, hook), &root, &self.set.link(name))
                    .with_context(|| format!("attaching {name} ({hook}) to {}", root_path.display()))?;
                self.attached.push(AttachedProgram { name, hook, id });
            }
            self.agent.set(agent_slot::ATTACHED_NS, realtime_ns(), 0)?;
        } else {
            for (name, hook) in ROOT_PROGRAMS {
                let path = self.set.link(name);
                let link = PinnedLink::from_pin(&path)
                    .with_context(|| format!("opening pinned link {}", path.display()))?;
                let id = FdLink::from(link).info()?.program_id();
                self.attached.push(AttachedProgram { name, hook, id });
            }
        }
        // The handover: one write, after which the old sets count nothing and this one all.
        self.classes.activate(self.epoch)?;
        for (dir, retired) in std::mem::take(&mut self.to_retire) {
            dir.remove()?;
            tracing::info!(set = %dir.path.display(), "replaced the older program set; carrying its counters over");
            self.retired.push(retired);
        }
        Ok(())
    }

    pub fn attached(&self) -> &[AttachedProgram] {
        &self.attached
    }

    pub fn start_info(&self) -> StartInfo {
        self.start
    }

    /// The pinned set's directory.
    pub fn set_dir(&self) -> &Path {
        &self.set.path
    }

    /// Another handle on the kernel's record of what was reported (for the store's writer).
    pub fn reported_handle(&self) -> anyhow::Result<ReportedMap> {
        Ok(BatchMap::new(open_map(&self.set, "REPORTED")?))
    }

    /// The older program sets replaced at start, to be drained once.
    pub fn take_retired(&mut self) -> Vec<Retired> {
        std::mem::take(&mut self.retired)
    }

    /// Records that the agent is alive now (the next agent learns how long it was away).
    pub fn heartbeat(&mut self) -> anyhow::Result<()> {
        self.agent.set(agent_slot::HEARTBEAT_NS, realtime_ns(), 0).context("writing the agent heartbeat")
    }

    /// The ring buffers of kernel events and DNS answers, registered with the tokio reactor.
    /// Can be taken once.
    pub fn take_events(&mut self) -> anyhow::Result<EventStream> {
        let ring = self.events.take().ok_or_else(|| anyhow!("the event stream was already taken"))?;
        let dns = self.dns.take().ok_or_else(|| anyhow!("the event stream was already taken"))?;
        let register = |ring| {
            // SAFETY: the ring buffer owns its fd for as long as the AsyncFd lives.
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
                .context("registering the ring buffers with the event loop")
        };
        Ok(EventStream { fd: register(ring)?, dns: register(dns)? })
    }

    /// The kernel programs' debug messages, when [`ProbeOptions::kernel_log`] turned them on.
    pub fn take_kernel_log(&mut self) -> anyhow::Result<Option<KernelLogStream>> {
        let Some(logger) = self.kernel_log.take() else { return Ok(None) };
        // SAFETY: the logger owns the ring buffer's fd for as long as the AsyncFd lives.
        let fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("registering the kernel messages with the event loop")?;
        Ok(Some(KernelLogStream { fd }))
    }
}
