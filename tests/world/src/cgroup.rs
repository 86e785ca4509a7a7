//! A cgroup of the caller's own under the cgroup v2 root. On drop, every process still in it or
//! its descendants is killed and the directories are removed, deepest first.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::unique;

/// Mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo.
pub fn cgroup_root() -> anyhow::Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(unescape(mount)))
        })
        .context("no cgroup2 mount in /proc/self/mountinfo")
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(super::unescape("/sys/fs/cgroup\\040x"), "/sys/fs/cgroup x");
        assert_eq!(super::unescape("/plain"), "/plain");
    }
}

pub struct TestCgroup {
    /// Mount point of the cgroup v2 hierarchy.
    pub root: PathBuf,
    /// This cgroup, relative to the root ("/emcg123x4").
    pub rel: String,
}

impl TestCgroup {
    /// A new cgroup named `<prefix><pid>x<n>` under the root.
    pub fn new(prefix: &str) -> anyhow::Result<TestCgroup> {
        let root = cgroup_root()?;
        let rel = format!("/{}", unique(prefix));
        std::fs::create_dir(root.join(&rel[1..])).with_context(|| format!("creating cgroup {rel}"))?;
        Ok(TestCgroup { root, rel })
    }

    /// The path of a child, relative to the cgroup v2 root ("/emcg123x4/classified").
    pub fn child_rel(&self, name: &str) -> String {
        format!("{}/{name}", self.rel)
    }

    /// Creates a child cgroup (and its parents) and returns its directory.
    pub fn create(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.dir(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        Ok(dir)
    }

    /// Directory of a child cgroup, whether it exists or not.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(&self.child_rel(name)[1..])
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let top = self.root.join(&self.rel[1..]);
        let mut dirs = Vec::new();
        collect(&top, &mut dirs);
        // Deepest first.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                if procs.trim().is_empty() || Instant::now() > deadline {
                    break;
                }
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: killing a process the caller placed in this cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect(&e.path(), out);
            }
        }
    }
    out.push(dir.to_owned());
}
