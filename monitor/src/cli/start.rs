//! What the agent records as it starts, beside loading the programs: the sockets open before
//! it (their process and direction), its run in the store (the coverage of reports) and the
//! configurations it counts under.

use std::time::Instant;

use tracing::{info, warn};

use crate::{
    config::Config,
    probe::{Probe, SocketSeed},
    sockets, status,
    store::{self, runs::Heartbeat},
};

/// Sockets opened before the programs were attached: the hooks that record a socket's process
/// and direction ran before them, so the agent records what they would have, in the kernel (the
/// connections a listener accepts from now on inherit it) and for the flows the kernel already
/// saw.
pub(super) fn seed_open_sockets(probe: &mut Probe) -> (Vec<sockets::OpenSocket>, status::SocketsAtStart) {
    let started = Instant::now();
    let mut counts = status::SocketsAtStart::default();
    let mut first_error = None;
    let (found, scan) = sockets::scan(|fd, s| {
        let seed = SocketSeed { process: s.process, direction: s.direction, listener: s.listening };
        match probe.sockets.seed(fd, &seed) {
            Ok(wrote) => counts.seeded += wrote as u64,
            Err(e) => {
                counts.failed += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
    });
    (counts.found, counts.listening, counts.unreadable_processes) =
        (scan.sockets, scan.listening, scan.unreadable);
    info!(
        found = counts.found,
        listening = counts.listening,
        seeded = counts.seeded,
        took = ?started.elapsed(),
        "sockets open before the agent: process and direction recorded"
    );
    if let Some(error) = first_error {
        warn!(
            failed = counts.failed,
            error,
            "recording the process of sockets open before the agent failed for some; their flows have no process"
        );
    }
    (found, counts)
}

/// This run's record in the store, its heartbeat written every few seconds (a store that
/// cannot be written costs the reports their coverage, not the agent its start).
pub(super) fn store_runs(config: &Config, probe: &Probe) -> Option<Heartbeat> {
    let start = probe.start_info();
    let since = chrono::DateTime::<chrono::Utc>::from(start.attached_since).timestamp_millis();
    Heartbeat::start(&config.agent.state_dir, start.kind.name(), since, env!("CARGO_PKG_VERSION"))
        .inspect_err(|e| warn!(error = %format!("{e:#}"), "recording this run in the store failed: reports will show it as a gap"))
        .ok()
}

/// Records the configuration now in force in the store (`cause`: start, reload, sources), so
/// that reports name it for the time it counted.
pub(super) fn record_configuration(config: &Config, cause: &str, sources: Vec<(String, String)>) {
    let c = config.recorded(cause, sources);
    if let Err(e) = store::configs::record(&config.agent.state_dir, &c) {
        warn!(error = %format!("{e:#}"), digest = %c.digest, cause, "recording the configuration in force in the store failed: reports will name the one before it");
    }
}
