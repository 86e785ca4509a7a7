//! The agent's side of the kernel's verdicts (part of `run`): when a class enforces, compiles
//! every class's residency policy into the kernel's verdict tables at start, whenever a database
//! or range file is replaced and at a reload, and keeps the enforcement programs attached to
//! exactly the existing cgroups of enforcing classes. While tables are in force, the egress
//! program announces only the new flows they do not approve (observing classes' too). With no
//! enforcing class, nothing is compiled (seconds and tens of MiB of kernel memory with a large
//! database) and nothing refuses: every classified new flow is announced.

use std::time::Instant;

use anyhow::Context;
use tracing::{info, warn};

use crate::{
    classes::ClassSelectors, config::Mode, pipeline::Pipeline, probe::Probe, status::VerdictTablesStatus,
};

pub struct Enforcer {
    /// Class ids that enforce.
    classes: Vec<u32>,
}

impl Enforcer {
    /// `modes`: each class's mode, in class-id order.
    pub fn new(modes: &[Mode]) -> Enforcer {
        let classes = modes
            .iter()
            .enumerate()
            .filter(|(_, m)| **m == Mode::Enforce)
            .map(|(i, _)| crate::classes::class_id(i))
            .collect();
        Enforcer { classes }
    }

    pub fn mode(&self, class_id: u32) -> &'static str {
        if self.classes.contains(&class_id) { "enforce" } else { "observe" }
    }

    /// Bit `id - 1` for every enforcing class.
    fn mask(&self) -> u64 {
        self.classes.iter().fold(0, |m, id| m | 1u64 << (id - 1))
    }

    /// Compiles the policy into the verdict tables not in force and puts them in force, with the
    /// mask of enforcing classes. Without an enforcing class, puts empty tables in force (the
    /// kernel then judges nothing) and compiles nothing.
    pub fn install(
        &self,
        probe: &mut Probe,
        pipeline: &mut Pipeline,
    ) -> anyhow::Result<Option<VerdictTablesStatus>> {
        if self.classes.is_empty() {
            // Tables a previous policy left in force (they cover every address) would still
            // decide which new flows the egress program announces: empty ones replace them.
            let left = probe.verdicts.lookup(std::net::Ipv4Addr::UNSPECIFIED.into())?.is_some();
            if probe.verdicts.enforcing() != 0 || left {
                probe.verdicts.install(std::iter::empty(), std::iter::empty(), 0)?;
            }
            return Ok(None);
        }
        let started = Instant::now();
        let compiled =
            pipeline.compile_policy().map_err(anyhow::Error::msg).context("compiling the policy")?;
        let compile_seconds = started.elapsed().as_secs_f64();
        let installed = probe
            .verdicts
            .install(
                compiled.v4.iter().map(|(n, m)| (n.addr(), n.prefix_len(), *m)),
                compiled.v6.iter().map(|(n, m)| (n.addr(), n.prefix_len(), *m)),
                self.mask(),
            )
            .context("writing the kernel's verdict tables")?;
        drop(compiled);
        // The compile's working memory (every interval of every source) goes back to the
        // system, not only to the allocator: the agent's RSS stays what it needs.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        info!(
            ipv4 = installed.v4_entries,
            ipv6 = installed.v6_entries,
            took = ?started.elapsed(),
            written_in = ?installed.took,
            pair = if installed.pair == 1 { "A" } else { "B" },
            "residency policy compiled into the kernel's verdict tables"
        );
        Ok(Some(VerdictTablesStatus {
            ipv4_networks: installed.v4_entries as u64,
            ipv6_networks: installed.v6_entries as u64,
            compile_seconds,
            write_seconds: installed.took.as_secs_f64(),
            kernel_bytes: crate::probe::VerdictTables::kernel_memory(),
        }))
    }

    /// Attaches the enforcement programs to every existing cgroup of an enforcing class and
    /// detaches them from every other cgroup (a class that no longer enforces, a cgroup gone).
    pub fn attach(&self, probe: &mut Probe, selectors: &ClassSelectors) -> anyhow::Result<()> {
        let wanted = selectors.cgroups_of(&self.classes);
        let (attached, detached) = probe.enforcement.reconcile(&wanted)?;
        for id in &attached {
            let path = wanted.iter().find(|(w, _)| w == id).map(|(_, p)| p.display().to_string());
            info!(cgroup_id = id, cgroup = path.unwrap_or_default(), "enforcement attached");
        }
        for id in detached {
            warn!(cgroup_id = id, "enforcement detached: no enforcing class selects this cgroup (any more)");
        }
        Ok(())
    }
}

/// Attaches enforcement to exactly the existing cgroups of enforcing classes; false when that
/// failed (the caller retries at the next sweep; logged the first time and every 60th).
pub fn attach_enforcement(
    enforcer: &Enforcer,
    probe: &mut Probe,
    selectors: &ClassSelectors,
    failures: &mut u64,
) -> bool {
    match enforcer.attach(probe, selectors) {
        Ok(()) => {
            *failures = 0;
            true
        }
        Err(e) => {
            if (*failures).is_multiple_of(60) {
                warn!(error = %format!("{e:#}"), failures = *failures + 1, "attaching enforcement to the classes' cgroups failed; retrying at every sweep");
            }
            *failures += 1;
            false
        }
    }
}
