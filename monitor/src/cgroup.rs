//! The cgroup v2 hierarchy: where it is mounted, and the mapping between a cgroup's path and
//! its id (the inode number of its directory, which is what the kernel programs see).

use std::{
    collections::HashMap,
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};

/// Finds the cgroup v2 mount point in `/proc/self/mountinfo` (`/sys/fs/cgroup` on most hosts,
/// `/sys/fs/cgroup/unified` on hybrid layouts).
pub fn detect_root() -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    match find_cgroup2_mount(&text) {
        Some(p) => Ok(p),
        None => bail!(
            "no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo); \
             mount it (mount -t cgroup2 none /sys/fs/cgroup) or set agent.cgroup_root"
        ),
    }
}

/// The mount point of the first cgroup2 entry of a mountinfo text.
pub fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> <source> <super opts>"
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks that `root` is a cgroup v2 mount and opens it (for attaching programs).
pub fn open_root(root: &Path) -> anyhow::Result<File> {
    let cpath = CString::new(root.as_os_str().as_bytes())?;
    // SAFETY: statfs on a valid C string into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(cpath.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("cgroup root {}", root.display()));
    }
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    if st.f_type as i64 != CGROUP2_SUPER_MAGIC {
        bail!("{} is not a cgroup v2 mount (filesystem magic {:#x})", root.display(), st.f_type);
    }
    File::open(root).with_context(|| format!("opening cgroup root {}", root.display()))
}

/// The id of the cgroup at `dir`, or None when it does not exist (yet).
pub fn id_of(dir: &Path) -> io::Result<Option<u64>> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(Some(m.ino())),
        Ok(_) => Err(io::Error::new(io::ErrorKind::InvalidInput, "not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Resolves cgroup ids to paths relative to the root ("/payments/userdata"), with a cache.
/// Uses `open_by_handle_at` with the kernfs file handle (the id itself), so no tree walk.
pub struct CgroupNames {
    root: PathBuf,
    root_dir: File,
    root_id: u64,
    cache: HashMap<u64, Option<String>>,
}

/// Entries kept before the cache is cleared (cgroups come and go with containers).
const CACHE_LIMIT: usize = 16384;

impl CgroupNames {
    pub fn new(root: &Path) -> anyhow::Result<Self> {
        let root_dir = File::open(root).with_context(|| format!("opening {}", root.display()))?;
        let root_id = root_dir.metadata()?.ino();
        Ok(Self { root: root.to_owned(), root_dir, root_id, cache: HashMap::new() })
    }

    /// Path of the cgroup, or None when it no longer exists.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if id == self.root_id {
            return Some("/".into());
        }
        if let Some(p) = self.cache.get(&id) {
            return p.clone();
        }
        let resolved = self.resolve(id);
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        // A failed lookup is not cached: the id may belong to a cgroup we cannot see yet.
        if resolved.is_some() {
            self.cache.insert(id, resolved.clone());
        }
        resolved
    }

    fn resolve(&self, id: u64) -> Option<String> {
        #[repr(C)]
        struct Handle {
            handle_bytes: u32,
            handle_type: i32,
            id: u64,
        }
        const FILEID_KERNFS: i32 = 0xfe;
        let mut handle = Handle { handle_bytes: 8, handle_type: FILEID_KERNFS, id };
        // SAFETY: the handle struct matches `struct file_handle` with an 8-byte payload.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                self.root_dir.as_raw_fd(),
                &mut handle as *mut Handle,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd was just returned by the kernel and is owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let rel = target.strip_prefix(&self.root).ok()?;
        Some(format!("/{}", rel.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_unified_mount_in_hybrid_layout() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2_mount(text), Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn finds_plain_mount_with_optional_fields() {
        let text = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(find_cgroup2_mount(text), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn no_cgroup2_mount() {
        assert_eq!(find_cgroup2_mount("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), None);
    }

    #[test]
    fn unescapes_spaces() {
        let text = "41 31 0:38 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2_mount(text), Some(PathBuf::from("/mnt/cg two")));
    }
}
