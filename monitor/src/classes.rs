//! Data classes: their ids, and their selectors (cgroups, uids) resolved into the kernel's class
//! maps. Cgroups that do not exist yet are looked for again on every rescan, so a class covers
//! a cgroup created after the agent started.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use tracing::{info, warn};

use crate::cgroup;

/// What selects one class's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassSelector {
    pub name: String,
    /// cgroup paths relative to the cgroup v2 root, written absolute ("/payments/userdata");
    /// each covers its descendants.
    pub cgroups: Vec<String>,
    /// Socket owner uids whose traffic carries this class.
    pub uids: Vec<u32>,
}

/// A class as its selectors resolved: its cgroups with their ids when they exist (as of the
/// last rescan), and its uids.
pub struct ClassDescription {
    pub id: u32,
    pub name: String,
    pub cgroups: Vec<(String, Option<u64>)>,
    pub uids: Vec<u32>,
}

/// Class ids are 1-based positions in the config (0 means "no class" in the kernel).
pub fn class_id(index: usize) -> u32 {
    index as u32 + 1
}

/// The configured cgroup paths and their classes: a cgroup path's class by the kernel's rule.
#[derive(Debug, Clone, Default)]
pub struct ClassPaths(Vec<(String, u32)>);

impl ClassPaths {
    /// Class of a cgroup path by its deepest configured ancestor (or itself), the rule the
    /// kernel applies. Used to correct flows the kernel saw before a cgroup was known to it.
    pub fn class_of(&self, path: &str) -> Option<u32> {
        self.0
            .iter()
            .filter(|(p, _)| {
                path == p || (path.starts_with(p.as_str()) && path.as_bytes().get(p.len()) == Some(&b'/'))
            })
            .max_by_key(|(p, _)| p.len())
            .map(|(_, class)| *class)
    }
}

pub struct ClassSelectors {
    root: PathBuf,
    paths: ClassPaths,
    /// (path relative to the root, class id, class name)
    cgroups: Vec<(String, u32, String)>,
    uids: HashMap<u32, u32>,
    resolved: HashMap<u64, u32>,
    missing: HashSet<String>,
    /// Class names in class-id order.
    names: Vec<String>,
    /// The id of each configured cgroup that exists, by path (as of the last rescan).
    found: HashMap<String, u64>,
}

impl ClassSelectors {
    /// Selectors of every class, in class-id order.
    pub fn new(classes: &[ClassSelector], root: &Path) -> Self {
        let mut cgroups = Vec::new();
        let mut uids = HashMap::new();
        for (i, class) in classes.iter().enumerate() {
            for cg in &class.cgroups {
                cgroups.push((cg.clone(), class_id(i), class.name.clone()));
            }
            for uid in &class.uids {
                uids.insert(*uid, class_id(i));
            }
        }
        Self {
            root: root.to_owned(),
            paths: ClassPaths(cgroups.iter().map(|(p, c, _)| (p.clone(), *c)).collect()),
            cgroups,
            uids,
            resolved: HashMap::new(),
            missing: HashSet::new(),
            names: classes.iter().map(|c| c.name.clone()).collect(),
            found: HashMap::new(),
        }
    }

    /// The configured cgroup paths and their classes.
    pub fn paths(&self) -> &ClassPaths {
        &self.paths
    }

    pub fn uids(&self) -> &HashMap<u32, u32> {
        &self.uids
    }

    /// Each class, in class-id order.
    pub fn described(&self) -> Vec<ClassDescription> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let id = class_id(i);
                let cgroups = self
                    .cgroups
                    .iter()
                    .filter(|(_, c, _)| *c == id)
                    .map(|(p, _, _)| (p.clone(), self.found.get(p).copied()))
                    .collect();
                let mut uids: Vec<u32> =
                    self.uids.iter().filter(|(_, c)| **c == id).map(|(u, _)| *u).collect();
                uids.sort_unstable();
                ClassDescription { id, name: name.clone(), cgroups, uids }
            })
            .collect()
    }

    /// The existing cgroups (id, directory) of the classes `ids`, as of the last rescan.
    pub fn cgroups_of(&self, ids: &[u32]) -> Vec<(u64, PathBuf)> {
        self.cgroups
            .iter()
            .filter(|(_, class, _)| ids.contains(class))
            .filter_map(|(path, _, _)| {
                Some((*self.found.get(path)?, self.root.join(path.trim_start_matches('/'))))
            })
            .collect()
    }

    /// Looks every configured cgroup up again. Returns the new cgroup-id map when it differs
    /// from the last one (a cgroup appeared, vanished or was re-created).
    pub fn rescan(&mut self) -> Option<&HashMap<u64, u32>> {
        let mut now = HashMap::new();
        self.found.clear();
        for (path, class, name) in &self.cgroups {
            let dir = self.root.join(path.trim_start_matches('/'));
            match cgroup::id_of(&dir) {
                Ok(Some(id)) => {
                    self.found.insert(path.clone(), id);
                    if self.missing.remove(path) {
                        info!(class = %name, cgroup = %path, id, "cgroup now exists; its sockets carry the class");
                    }
                    now.insert(id, *class);
                }
                Ok(None) => {
                    if self.missing.insert(path.clone()) {
                        warn!(class = %name, cgroup = %path, dir = %dir.display(),
                            "cgroup does not exist (yet); it is classified as soon as it is created");
                    }
                }
                Err(e) => {
                    if self.missing.insert(path.clone()) {
                        warn!(class = %name, cgroup = %path, dir = %dir.display(), error = %e, "cannot read cgroup");
                    }
                }
            }
        }
        if now == self.resolved {
            return None;
        }
        self.resolved = now;
        Some(&self.resolved)
    }
}
