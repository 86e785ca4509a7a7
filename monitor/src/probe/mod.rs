//! Loading, attaching and detaching the kernel programs, and handles on their maps. This is the
//! only module that touches aya: the rest of the agent sees flows, events and counters.

mod flow_map;

use std::{collections::HashMap as StdHashMap, fs::File, path::Path};

use anyhow::{Context, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSkbAttachType, Program},
};
pub use flow_map::FlowMap;
use monitor_common::{
    CONFIG_GENERATION, EVENT_CONNECT, EVENT_NEW_FLOW, EVENT_SOCK_CLOSED, NewFlowEvent, SockEvent, stat,
};
use tokio::io::{Interest, unix::AsyncFd};

/// The object built by monitor/build.rs from monitor-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

pub struct ProbeOptions {
    pub max_flows: u32,
    pub ring_buffer_size: u32,
    /// Turn the kernel programs' debug messages on (rare paths only: a socket that got no
    /// storage, a flow that got no slot); they are logged with target `kernel`.
    pub kernel_log: bool,
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
];

/// Programs attached only to chosen cgroups (those of the classes that need them), never to
/// the root: the place for programs that may deny traffic. None yet.
pub const CGROUP_PROGRAMS: &[(&str, &str)] = &[];

/// The loaded programs and their maps. Dropping it (or calling [`Probe::detach`]) detaches
/// every program: the attachments are bpf_links owned by this process, so they also go away
/// when the process dies, even by SIGKILL.
pub struct Probe {
    ebpf: Ebpf,
    attached: Vec<AttachedProgram>,
    /// The cgroup v2 root the root programs are attached to.
    root: Option<std::path::PathBuf>,
    /// Programs of [`CGROUP_PROGRAMS`] and the cgroup each is attached to.
    attached_to_cgroups: Vec<(std::path::PathBuf, AttachedProgram)>,
    pub flows: FlowMap,
    pub classes: ClassMaps,
    pub stats: StatsMap,
    events: Option<RingBuf<MapData>>,
    kernel_log: Option<aya_log::EbpfLogger<KernelLog>>,
}

/// Kernel messages (aya-log) into the agent's log, with target `kernel`.
pub struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::debug!(target: "kernel", "{}", record.args());
    }

    fn flush(&self) {}
}

/// The kernel programs' messages, registered with the tokio reactor.
pub struct KernelLogStream {
    fd: AsyncFd<aya_log::EbpfLogger<KernelLog>>,
}

impl KernelLogStream {
    /// Logs messages as they arrive, until the programs are unloaded.
    pub async fn run(mut self) {
        while let Ok(mut guard) = self.fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }
}

impl Probe {
    /// Loads the programs and creates the maps; nothing is attached yet.
    pub fn load(opts: &ProbeOptions) -> anyhow::Result<Probe> {
        // Off, the level check is a constant the verifier prunes: no cost on the packet path.
        let level: u8 = if opts.kernel_log { aya_log::Level::Debug as u8 } else { 0 };
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, false)
            .map_max_entries("FLOWS", opts.max_flows)
            .map_max_entries("EVENTS", opts.ring_buffer_size)
            .load(OBJECT)
            .context(
                "loading the kernel programs (needs root or CAP_BPF + CAP_NET_ADMIN, and a kernel with BTF)",
            )?;
        let mut take =
            |name: &str| ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the object"));
        let flows = match take("FLOWS")? {
            Map::LruHashMap(m) => FlowMap::new(m),
            other => return Err(anyhow!("map FLOWS has unexpected type {other:?}")),
        };
        let classes = ClassMaps {
            cgroups: HashMap::try_from(take("CGROUP_CLASSES")?)?,
            uids: HashMap::try_from(take("UID_CLASSES")?)?,
            config: Array::try_from(take("CONFIG")?)?,
            generation: 0,
        };
        let stats = StatsMap { map: PerCpuArray::try_from(take("STATS")?)? };
        let events = Some(RingBuf::try_from(take("EVENTS")?)?);
        let kernel_log = if opts.kernel_log {
            Some(
                aya_log::EbpfLogger::init_with_logger(&mut ebpf, KernelLog)
                    .context("reading kernel messages")?,
            )
        } else {
            None
        };
        for (name, _) in ROOT_PROGRAMS.iter().chain(CGROUP_PROGRAMS) {
            load_program(&mut ebpf, name).with_context(|| format!("loading program {name}"))?;
        }
        Ok(Probe {
            ebpf,
            attached: Vec::new(),
            root: None,
            attached_to_cgroups: Vec::new(),
            flows,
            classes,
            stats,
            events,
            kernel_log,
        })
    }

    /// Attaches every program to the cgroup v2 root. On error, whatever was attached is
    /// detached again when the probe is dropped.
    pub fn attach(&mut self, cgroup_root: &Path) -> anyhow::Result<()> {
        let root = crate::cgroup::open_root(cgroup_root)?;
        self.root = Some(cgroup_root.to_owned());
        for (name, hook) in ROOT_PROGRAMS {
            let id = attach_program(&mut self.ebpf, name, &root)
                .with_context(|| format!("attaching {name} ({hook}) to {}", cgroup_root.display()))?;
            self.attached.push(AttachedProgram { name, hook, id });
        }
        Ok(())
    }

    pub fn attached(&self) -> &[AttachedProgram] {
        &self.attached
    }

    /// Attaches every program of [`CGROUP_PROGRAMS`] to one chosen cgroup. Refuses the cgroup
    /// v2 root: programs that may deny traffic never go there.
    pub fn attach_to_cgroup(&mut self, cgroup: &Path) -> anyhow::Result<()> {
        if self.root.as_deref().is_some_and(|r| r == cgroup) {
            return Err(anyhow!(
                "{}: refusing to attach per-cgroup programs to the cgroup v2 root",
                cgroup.display()
            ));
        }
        let dir = crate::cgroup::open_root(cgroup)?;
        for (name, hook) in CGROUP_PROGRAMS {
            let id = attach_program(&mut self.ebpf, name, &dir)
                .with_context(|| format!("attaching {name} ({hook}) to {}", cgroup.display()))?;
            self.attached_to_cgroups.push((cgroup.to_owned(), AttachedProgram { name, hook, id }));
        }
        Ok(())
    }

    /// Programs attached to chosen cgroups, with their cgroup.
    pub fn attached_to_cgroups(&self) -> &[(std::path::PathBuf, AttachedProgram)] {
        &self.attached_to_cgroups
    }

    /// The ring buffer of kernel events, registered with the tokio reactor. Can be taken once.
    pub fn take_events(&mut self) -> anyhow::Result<EventStream> {
        let ring = self.events.take().ok_or_else(|| anyhow!("the event stream was already taken"))?;
        // SAFETY: the ring buffer owns its fd for as long as the AsyncFd lives.
        let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("registering the ring buffer with the event loop")?;
        Ok(EventStream { fd })
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

    /// Detaches and unloads every program.
    pub fn detach(self) -> usize {
        let n = self.attached.len();
        drop(self.ebpf);
        n
    }
}

fn load_program(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
    let prog = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    match prog {
        Program::CgroupSkb(p) => p.load()?,
        Program::CgroupSockAddr(p) => p.load()?,
        Program::CgroupSock(p) => p.load()?,
        Program::SockOps(p) => p.load()?,
        other => return Err(anyhow!("program {name} has unexpected type {:?}", other.prog_type())),
    }
    Ok(())
}

/// Attaches one program and returns its kernel program id. `Single` mode: on this kernel
/// bpf_link attachments are multi-attach anyway, and ALLOW_MULTI is rejected for links.
fn attach_program(ebpf: &mut Ebpf, name: &str, root: &File) -> anyhow::Result<u32> {
    let prog = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?;
    let mode = CgroupAttachMode::Single;
    let id = match prog {
        Program::CgroupSkb(p) => {
            p.attach(root, CgroupSkbAttachType::Egress, mode)?;
            p.info()?.id()
        }
        Program::CgroupSockAddr(p) => {
            p.attach(root, mode)?;
            p.info()?.id()
        }
        Program::CgroupSock(p) => {
            p.attach(root, mode)?;
            p.info()?.id()
        }
        Program::SockOps(p) => {
            p.attach(root, mode)?;
            p.info()?.id()
        }
        _ => return Err(anyhow!("program {name} has an unexpected type")),
    };
    Ok(id)
}

/// The class maps the kernel classifies sockets with.
pub struct ClassMaps {
    cgroups: HashMap<MapData, u64, u32>,
    uids: HashMap<MapData, u32, u32>,
    config: Array<MapData, u32>,
    generation: u32,
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
}

/// Totals of the kernel's per-CPU failure counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KernelStats {
    pub ringbuf_drops: u64,
    pub flow_insert_failed: u64,
    pub sock_storage_failed: u64,
    pub unparsed_packets: u64,
}

pub struct StatsMap {
    map: PerCpuArray<MapData, u64>,
}

impl StatsMap {
    pub fn read(&self) -> anyhow::Result<KernelStats> {
        let sum = |i: u32| -> anyhow::Result<u64> { Ok(self.map.get(&i, 0)?.iter().sum()) };
        Ok(KernelStats {
            ringbuf_drops: sum(stat::RINGBUF_DROPS)?,
            flow_insert_failed: sum(stat::FLOW_INSERT_FAILED)?,
            sock_storage_failed: sum(stat::SOCK_STORAGE_FAILED)?,
            unparsed_packets: sum(stat::UNPARSED_PACKETS)?,
        })
    }
}

/// A record from the kernel's ring buffer.
#[derive(Debug, Clone, Copy)]
pub enum KernelEvent {
    NewFlow(NewFlowEvent),
    Connect(SockEvent),
    SockClosed { cookie: u64 },
}

pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
}

/// How often the agent drains the ring buffer without being woken: the programs submit most
/// events without a wakeup (waking costs the sender microseconds) and force one only when the
/// ring fills up.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

impl EventStream {
    /// Waits until the kernel wakes the agent and returns every available event, with the
    /// number of malformed records (which would mean the agent and the kernel object disagree).
    pub async fn next_batch(&mut self) -> anyhow::Result<(Vec<KernelEvent>, u64)> {
        let mut guard = self.fd.readable_mut().await?;
        let batch = drain(guard.get_inner_mut());
        guard.clear_ready();
        Ok(batch)
    }

    /// Every event available now, without waiting.
    pub fn drain(&mut self) -> (Vec<KernelEvent>, u64) {
        drain(self.fd.get_mut())
    }
}

fn drain(ring: &mut RingBuf<MapData>) -> (Vec<KernelEvent>, u64) {
    let mut batch = Vec::new();
    let mut malformed = 0;
    while let Some(item) = ring.next() {
        match parse_event(&item) {
            Some(e) => batch.push(e),
            None => malformed += 1,
        }
    }
    (batch, malformed)
}

fn parse_event(bytes: &[u8]) -> Option<KernelEvent> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    // SAFETY: both event types are plain old data; the length is checked before reading.
    unsafe {
        match kind {
            EVENT_NEW_FLOW if bytes.len() >= size_of::<NewFlowEvent>() => {
                Some(KernelEvent::NewFlow(std::ptr::read_unaligned(bytes.as_ptr().cast())))
            }
            EVENT_CONNECT if bytes.len() >= size_of::<SockEvent>() => {
                Some(KernelEvent::Connect(std::ptr::read_unaligned(bytes.as_ptr().cast())))
            }
            EVENT_SOCK_CLOSED if bytes.len() >= size_of::<SockEvent>() => {
                let e: SockEvent = std::ptr::read_unaligned(bytes.as_ptr().cast());
                Some(KernelEvent::SockClosed { cookie: e.cookie })
            }
            _ => None,
        }
    }
}
