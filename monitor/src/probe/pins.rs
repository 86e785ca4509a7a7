//! Where the kernel programs and maps live between agents: a directory on bpffs
//! (`agent.pin_dir`, by default `/sys/fs/bpf/egress-monitor`) holding
//! - `CONFIG`: the one map every program set shares (its layout is frozen), whose
//!   `CONFIG_ACTIVE_EPOCH` slot says which set counts;
//! - `set-<digest>/`: one program set, `links/<program>` (the pinned bpf_links that keep the
//!   programs attached) and `maps/<map>`. The digest covers the kernel object, the map sizes
//!   and the cgroup root, so an agent finds the set it would have created itself (and adopts
//!   it) or an older one (which it replaces, carrying its counters over).

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, anyhow, bail};
use sha2::{Digest, Sha256};

/// `statfs.f_type` of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is mounted when nothing is.
const BPFFS: &str = "/sys/fs/bpf";

/// The name of the shared map in the pin directory.
pub const SHARED_CONFIG: &str = "CONFIG";

/// Maps pinned with each program set, by their name in the kernel object.
pub const SET_MAPS: &[&str] = &[
    "FLOWS",
    "REPORTED",
    "CGROUP_CLASSES",
    "UID_CLASSES",
    "STATS",
    "EVENTS",
    "DNS_ANSWERS",
    "DNS_STATS",
    "AGENT",
    "OVERFLOW_CLASSES",
    "OVERFLOW_CGROUPS",
    "SOCKS",
    "VERDICTS_V4_A",
    "VERDICTS_V4_B",
    "VERDICTS_V6_A",
    "VERDICTS_V6_B",
    "POLICY",
];

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs into a zeroed struct we own.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == BPF_FS_MAGIC }
}

/// Creates the pin directory, mounting bpffs at /sys/fs/bpf first when the directory is
/// under it and nothing is mounted there. Refuses a directory that is not on bpffs.
pub fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    let bpffs = Path::new(BPFFS);
    if dir.starts_with(bpffs) && !is_bpffs(bpffs) {
        std::fs::create_dir_all(bpffs).with_context(|| format!("creating {BPFFS}"))?;
        let (src, target, fstype) = (c"bpf", CString::new(BPFFS)?, c"bpf");
        // SAFETY: mount(2) with valid C strings.
        if unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(anyhow!("mounting bpffs at {BPFFS} (for agent.pin_dir {}): {e}", dir.display()));
        }
        tracing::info!(path = BPFFS, "mounted bpffs");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating agent.pin_dir {}", dir.display()))?;
    if !is_bpffs(dir) {
        bail!("agent.pin_dir {} is not on a bpf filesystem (mount -t bpf bpf DIR)", dir.display());
    }
    Ok(())
}

/// The digest naming a program set: the kernel object, the map sizes (flows, events, DNS
/// answers) and the cgroup root.
pub fn set_digest(object: &[u8], sizes: &[u32], cgroup_root: &Path) -> String {
    let mut h = Sha256::new();
    h.update(object);
    for size in sizes {
        h.update(size.to_le_bytes());
    }
    h.update(cgroup_root.as_os_str().as_bytes());
    // A set pinned with other maps is another layout: replaced (its counts carried over).
    for name in SET_MAPS {
        h.update(name.as_bytes());
    }
    let d = h.finalize();
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// One program set's directory.
#[derive(Debug, Clone)]
pub struct SetDir {
    pub path: PathBuf,
}

impl SetDir {
    pub fn new(pin_dir: &Path, digest: &str) -> Self {
        SetDir { path: pin_dir.join(format!("set-{digest}")) }
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.path.join("maps").join(name)
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.path.join("links").join(program)
    }

    /// Whether any program link of the set is pinned (its programs are attached).
    pub fn has_links(&self) -> bool {
        std::fs::read_dir(self.path.join("links")).is_ok_and(|mut d| d.next().is_some())
    }

    /// Every map and every link of `programs` is pinned.
    pub fn is_complete(&self, programs: &[&str]) -> bool {
        SET_MAPS.iter().all(|m| self.map(m).exists()) && programs.iter().all(|p| self.link(p).exists())
    }

    pub fn create(&self) -> anyhow::Result<()> {
        for sub in ["maps", "links", "progs"] {
            let d = self.path.join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(())
    }

    /// Unpins everything in the set: its programs are detached once no process holds their
    /// links, its maps freed once no process or program holds them.
    pub fn remove(&self) -> anyhow::Result<()> {
        std::fs::remove_dir_all(&self.path).with_context(|| format!("removing {}", self.path.display()))
    }
}

/// The program sets in the pin directory other than `except`.
pub fn other_sets(pin_dir: &Path, except: &SetDir) -> anyhow::Result<Vec<SetDir>> {
    let mut sets = Vec::new();
    for e in std::fs::read_dir(pin_dir).with_context(|| format!("reading {}", pin_dir.display()))? {
        let e = e?;
        let path = e.path();
        if e.file_name().as_bytes().starts_with(b"set-") && path != except.path {
            sets.push(SetDir { path });
        }
    }
    sets.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(sets)
}

/// What `egress-monitor detach` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub sets: usize,
    pub links: usize,
    pub maps: usize,
}

/// Removes the agent's program sets and shared map under `pin_dir`, then the directory when
/// nothing else is in it. Refuses a directory that is not on bpffs, or that is a bpffs mount
/// itself (other tools pin there too): only what the agent pinned is touched.
pub fn remove_all(pin_dir: &Path) -> anyhow::Result<Removed> {
    let mut removed = Removed::default();
    if !pin_dir.exists() {
        return Ok(removed);
    }
    let parent_on_bpffs = pin_dir.parent().is_some_and(is_bpffs);
    if !is_bpffs(pin_dir) || !parent_on_bpffs {
        bail!(
            "agent.pin_dir {} is not a directory inside a bpf filesystem: refusing to remove anything there",
            pin_dir.display()
        );
    }
    for e in std::fs::read_dir(pin_dir).with_context(|| format!("reading {}", pin_dir.display()))? {
        let e = e?;
        let path = e.path();
        if e.file_name().as_bytes().starts_with(b"set-") && path.is_dir() {
            removed.sets += 1;
            let count = |sub: &str| std::fs::read_dir(path.join(sub)).map(|d| d.count()).unwrap_or(0);
            removed.links += count("links");
            removed.maps += count("maps");
            std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        } else if e.file_name() == SHARED_CONFIG {
            removed.maps += 1;
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    if let Err(e) = std::fs::remove_dir(pin_dir) {
        tracing::warn!(dir = %pin_dir.display(), error = %e, "left the pin directory in place (something else is pinned in it)");
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn detach_refuses_a_directory_that_is_not_inside_bpffs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("set-0011")).unwrap();
        let e = super::remove_all(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a directory inside a bpf filesystem"), "{e}");
        assert!(dir.path().join("set-0011").exists(), "nothing was removed");
    }
}
