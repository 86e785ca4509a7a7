//! A cgroup of the test's own under the cgroup v2 root. On drop, every process still in it or
//! its descendants is killed and the directories are removed, deepest first.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::unique;

pub struct TestCgroup {
    /// Mount point of the cgroup v2 hierarchy.
    pub root: PathBuf,
    /// This test's cgroup, relative to the root ("/em123x4").
    pub rel: String,
}

impl TestCgroup {
    pub fn new() -> TestCgroup {
        let root = monitor::cgroup::detect_root().expect("cgroup v2 root");
        let rel = format!("/{}", unique("emcg"));
        std::fs::create_dir(root.join(&rel[1..])).expect("create test cgroup");
        TestCgroup { root, rel }
    }

    /// The path of a child, relative to the cgroup v2 root ("/em123x4/classified").
    pub fn child_rel(&self, name: &str) -> String {
        format!("{}/{name}", self.rel)
    }

    /// Creates a child cgroup (and its parents) and returns its directory.
    pub fn create(&self, name: &str) -> PathBuf {
        let dir = self.dir(name);
        std::fs::create_dir_all(&dir).expect("create child cgroup");
        dir
    }

    /// Directory of a child cgroup, whether it exists or not.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(&self.child_rel(name)[1..])
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
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
                    // SAFETY: killing a test process we placed in this cgroup.
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
