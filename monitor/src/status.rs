//! What `GET /v1/status` reports: the agent's health in one document, refreshed by the agent
//! on every sweep, and decoded as the same type by the CLI.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub host: String,
    /// RFC 3339 start time.
    pub started: String,
    pub uptime_seconds: u64,
    pub cgroup_root: String,
    pub programs: Vec<ProgramStatus>,
    pub kernel: KernelSide,
    pub flows_tracked: u64,
    /// Each class: what selects it, whether its cgroups exist, and what it sent.
    #[serde(default)]
    pub classes: Vec<ClassStatus>,
    pub events: EventCounts,
    pub losses: Losses,
    pub alerts: AlertCounts,
    pub geolocation: LookupCounts,
    pub dns: DnsCounts,
    pub sinks: Vec<SinkStatus>,
    pub databases: Databases,
    pub export: Vec<ExportStatus>,
}

/// The pinned program set the agent counts with, and how it found it at start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KernelSide {
    /// The set's directory on bpffs (under `agent.pin_dir`).
    pub pinned_at: String,
    /// `fresh` (nothing was pinned), `adopted` (the previous agent's set, kept counting) or
    /// `replaced` (an older set: counting switched to a new one, its counters carried over).
    pub start: String,
    /// RFC 3339: since when the counting programs have been attached.
    pub attached_since: String,
    /// Seconds between the previous agent's last heartbeat and this agent's start, while the
    /// kernel counted alone (null when nothing was pinned).
    pub agent_away_seconds: Option<f64>,
    /// Flows carried over from replaced program sets.
    pub carried_flows: u64,
    /// The residency policy as the kernel's verdict tables hold it (null while no class
    /// enforces): networks per table, and how long the latest compile and write took.
    #[serde(default)]
    pub verdict_tables: Option<VerdictTablesStatus>,
    /// The cgroups (by id) the enforcement programs are attached to.
    #[serde(default)]
    pub enforcing_cgroups: Vec<u64>,
    /// The TCP and UDP sockets open when the agent started, whose process and direction it
    /// recorded for the kernel (the hooks that would have were not attached when they opened).
    #[serde(default)]
    pub sockets_at_start: SocketsAtStart,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VerdictTablesStatus {
    pub ipv4_networks: u64,
    pub ipv6_networks: u64,
    /// Compiling the policy (judging every interval of every source), and writing the tables
    /// into the kernel.
    pub compile_seconds: f64,
    #[serde(default)]
    pub write_seconds: f64,
    /// Kernel memory the tables take (as the kernel accounts it).
    #[serde(default)]
    pub kernel_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SocketsAtStart {
    pub found: u64,
    pub listening: u64,
    /// Sockets whose kernel storage got a process, a direction or the listener mark.
    pub seeded: u64,
    /// Writes of the kernel storage that failed, and processes that could not be read.
    pub failed: u64,
    pub unreadable_processes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClassStatus {
    pub name: String,
    /// `observe` or `enforce`.
    #[serde(default)]
    pub mode: String,
    pub cgroups: Vec<CgroupSelector>,
    pub uids: Vec<u32>,
    /// Flows of this class the agent tracks now, and the sockets they belong to (the sockets
    /// the kernel classified into this class that sent since they were last reported).
    pub flows_tracked: u64,
    #[serde(default)]
    pub sockets_tracked: u64,
    /// Attempts the kernel refused since the agent started (enforcing classes).
    #[serde(default)]
    pub blocked: u64,
    /// Bytes this class sent in the last hour, by verdict, as the store has them.
    pub last_hour: VerdictBytes,
}

/// A class's cgroup selector: the path (from the cgroup v2 root) and, when the cgroup exists,
/// its id (null: not there, or not yet: it is classified as soon as it is created).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CgroupSelector {
    pub path: String,
    pub cgroup_id: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerdictBytes {
    pub allowed: u64,
    pub violation: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub name: String,
    pub hook: String,
    pub id: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventCounts {
    /// New flows the kernel announced at once: every classified flow, except those the verdict
    /// tables approve while a class enforces.
    pub new_flow: u64,
    pub close: u64,
    /// Flows first found by a sweep: every unclassified flow, those the verdict tables approve,
    /// and any whose event was lost or late.
    pub found_by_sweep: u64,
}

/// Everything that means data was lost, since the agent started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Losses {
    pub ringbuf_drops: u64,
    pub flow_insert_failed: u64,
    pub sock_storage_failed: u64,
    pub unparsed_packets: u64,
    pub flows_evicted: u64,
    /// Packets and bytes that found the kernel flow map full (see the loss records for the
    /// classes and cgroups they belong to).
    pub overflow_packets: u64,
    pub overflow_bytes: u64,
    /// Reads of the kernel maps that failed and were retried at the next sweep (counts arrive
    /// late; none is lost while the kernel keeps counting).
    pub kernel_read_errors: u64,
    pub store_dropped: u64,
    pub store_write_errors: u64,
    pub outbox_dropped: u64,
    /// DNS answers the kernel could not hand over (its DNS ring buffer was full), and their
    /// payload bytes: flows to the addresses they gave may lack their name.
    pub dns_answers_lost: u64,
    pub dns_answers_lost_bytes: u64,
}

/// What became of the DNS packets the kernel copied (counted by `names::NameTable`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsCounts {
    /// Packets from port 53 received by any socket and copied by the kernel.
    pub packets: u64,
    /// DNS messages that named at least one address, and the names kept now.
    pub answers: u64,
    pub names: u64,
    /// Well-formed messages naming no address (queries, NXDOMAIN, other record types).
    pub no_address: u64,
    /// Messages no parser could read, and their bytes: counted and ignored.
    pub malformed: u64,
    pub malformed_bytes: u64,
    /// UDP answers longer than the kernel copies (2047 bytes), and their bytes: ignored.
    pub truncated: u64,
    pub truncated_bytes: u64,
    /// TCP segments dropped with their stream (a segment missed or copied short), and bytes.
    pub tcp_dropped: u64,
    pub tcp_dropped_bytes: u64,
    /// Names forgotten while still valid to make room (`dns.max_names`).
    pub evicted: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AlertCounts {
    pub raised: u64,
    pub open: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LookupCounts {
    pub lookups: u64,
    pub cache_hits: u64,
    pub decode_errors: u64,
    pub reloads: u64,
    pub reload_failures: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SinkStatus {
    pub name: String,
    pub backlog: u64,
    pub delivered: u64,
    pub retries: u64,
    pub failed: u64,
    /// Alerts given up on (`egress-monitor alerts --undelivered` lists them).
    #[serde(default)]
    pub dead_lettered: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Databases {
    pub store_path: String,
    /// Why the store cannot be opened or written, while it cannot (the agent goes on without
    /// it: alerts still reach the sinks).
    pub store_error: Option<String>,
    pub store_bytes: u64,
    pub outbox_bytes: u64,
    /// Every source of places in force, in the order they are asked: each file with what it is
    /// (database type, build date, size; a range file's networks).
    #[serde(default)]
    pub sources: Vec<SourceStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceStatus {
    /// `sites`, `cloud`, `country`, `city` or `asn`.
    pub kind: String,
    pub description: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExportStatus {
    pub name: String,
    /// Start of the first bucket not yet sent (RFC 3339).
    pub next_bucket: Option<String>,
    pub rows_sent: u64,
    pub alerts_sent: u64,
    pub failures: u64,
    pub last_error: Option<String>,
}
