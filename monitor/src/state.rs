//! The agent's state directory (the store, the alert outbox): created with mode 0700 and
//! locked for the agent's lifetime, so two agents never share it.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::DirBuilderExt},
    path::Path,
};

use anyhow::Context;

/// Holds the lock until dropped.
pub struct StateLock {
    _file: File,
}

pub fn lock(dir: &Path) -> anyhow::Result<StateLock> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating agent.state_dir {}", dir.display()))?;
    let path = dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "another egress-monitor agent is using agent.state_dir {} (its lock {} is held): give each agent its own state_dir",
            dir.display(),
            path.display()
        );
    }
    Ok(StateLock { _file: file })
}
