//! The world egress-monitor's integration tests and benchmarks run in, one crate both use:
//! hosts in network namespaces joined by a veth pair, a cgroup of the caller's own under the
//! cgroup v2 root, and processes placed in both before they exec. Everything is removed on
//! drop, also when the caller fails.

mod cgroup;
mod netns;
mod process;

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, bail};
pub use cgroup::{TestCgroup, cgroup_root};
pub use netns::{Netns, Topology};
pub use process::{Placement, Proc, spawn};

/// A name unique to this process and call: "<prefix><pid>x<n>".
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Runs a command; its standard output, or an error with what it printed.
pub fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("starting {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
