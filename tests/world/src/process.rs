//! Processes placed in a cgroup, a network namespace and optionally under another uid before
//! they exec, and killed on drop.

use std::{
    fs::OpenOptions,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::Netns;

/// Where a process runs.
pub struct Placement<'a> {
    pub netns: &'a Netns,
    /// Directory of the cgroup to join.
    pub cgroup: &'a Path,
    /// Run under this uid (and gid), not root.
    pub uid: Option<u32>,
}

/// Spawns `cmd` in the placement: it joins the cgroup, then the namespace, then drops to the
/// uid, between fork and exec.
pub fn spawn(cmd: &mut Command, place: &Placement<'_>) -> anyhow::Result<Child> {
    let procs = OpenOptions::new()
        .write(true)
        .open(place.cgroup.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", place.cgroup.display()))?;
    let ns = place.netns.file().with_context(|| format!("opening namespace {}", place.netns.name))?;
    let uid = place.uid;
    let (procs_fd, ns_fd) = (procs.as_raw_fd(), ns.as_raw_fd());
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Join the cgroup first ("0" = the writing process), then the namespace.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(uid) = uid
                && (libc::setgid(uid) != 0 || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    drop((procs, ns));
    Ok(child)
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (SIGKILL after 20 s).
    pub fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(None) = self.child.try_wait() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
