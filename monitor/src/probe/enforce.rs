//! The enforcement programs (monitor-ebpf `enforce.rs`), attached to the cgroups of enforcing
//! classes and never to the cgroup v2 root. Each attachment is a bpf_link pinned in the set's
//! `links/` as `<program>@<cgroup id>`, so enforcement goes on while no agent runs; the
//! programs themselves are pinned in `progs/`, so an agent that adopts the set can attach them
//! to a cgroup that appears later. Removing a link's pin detaches it.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, CgroupSockAddrAttachType, Program,
    links::FdLink,
};

use super::pins::SetDir;

/// The enforcement programs and their hooks.
pub const PROGRAMS: &[(&str, &str)] = &[
    ("enforce_connect4", "cgroup/connect4"),
    ("enforce_connect6", "cgroup/connect6"),
    ("enforce_sendmsg4", "cgroup/sendmsg4"),
    ("enforce_sendmsg6", "cgroup/sendmsg6"),
    ("enforce_ingress", "cgroup_skb/ingress"),
];

pub struct Enforcement {
    programs: Vec<(&'static str, Program)>,
    links: PathBuf,
    root: PathBuf,
}

/// Where the programs are pinned in a set.
pub(super) fn program_pin(set: &SetDir, name: &str) -> PathBuf {
    set.path.join("progs").join(name)
}

fn from_pin(path: &Path, name: &str) -> anyhow::Result<Program> {
    use CgroupSockAddrAttachType as T;
    let addr = |t| CgroupSockAddr::from_pin(path, t).map(Program::CgroupSockAddr);
    Ok(match name {
        "enforce_connect4" => addr(T::Connect4)?,
        "enforce_connect6" => addr(T::Connect6)?,
        "enforce_sendmsg4" => addr(T::UDPSendMsg4)?,
        "enforce_sendmsg6" => addr(T::UDPSendMsg6)?,
        "enforce_ingress" => Program::CgroupSkb(CgroupSkb::from_pin(path, CgroupSkbAttachType::Ingress)?),
        other => bail!("no enforcement program is named {other}"),
    })
}

impl Enforcement {
    /// The set's pinned enforcement programs (a new set pins them when it loads them).
    pub(super) fn open(set: &SetDir, root: &Path) -> anyhow::Result<Enforcement> {
        let mut programs = Vec::new();
        for (name, _) in PROGRAMS {
            let path = program_pin(set, name);
            let p = from_pin(&path, name)
                .with_context(|| format!("opening pinned program {}", path.display()))?;
            programs.push((*name, p));
        }
        Ok(Enforcement { programs, links: set.path.join("links"), root: root.to_owned() })
    }

    /// The cgroups (by id) the programs are attached to now, as the pinned links say.
    pub fn attached(&self) -> anyhow::Result<Vec<u64>> {
        let mut ids: Vec<u64> = Vec::new();
        for e in
            std::fs::read_dir(&self.links).with_context(|| format!("reading {}", self.links.display()))?
        {
            let name = e?.file_name();
            let Some((program, id)) = name.to_str().and_then(|n| n.split_once('@')) else { continue };
            if PROGRAMS.iter().any(|(p, _)| *p == program)
                && let Ok(id) = id.parse()
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Makes the programs attached to exactly the cgroups `wanted` (id, path): attaches them
    /// where missing, detaches them where no longer wanted. Refuses the cgroup v2 root.
    /// Returns the ids attached and detached.
    pub fn reconcile(&mut self, wanted: &[(u64, PathBuf)]) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
        let now = self.attached()?;
        let mut detached = Vec::new();
        for id in &now {
            if !wanted.iter().any(|(w, _)| w == id) {
                for (name, _) in PROGRAMS {
                    let pin = self.link(name, *id);
                    if pin.exists() {
                        std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
                    }
                }
                detached.push(*id);
            }
        }
        let mut attached = Vec::new();
        for (id, path) in wanted {
            if now.contains(id) {
                continue;
            }
            self.attach(*id, path)?;
            attached.push(*id);
        }
        Ok((attached, detached))
    }

    fn link(&self, program: &str, cgroup_id: u64) -> PathBuf {
        self.links.join(format!("{program}@{cgroup_id}"))
    }

    fn attach(&mut self, cgroup_id: u64, path: &Path) -> anyhow::Result<()> {
        let root_id = crate::cgroup::id_of(&self.root)?;
        if path == self.root || Some(cgroup_id) == root_id {
            bail!(
                "{}: refusing to attach enforcement to the cgroup v2 root (it carries the host's own connections)",
                path.display()
            );
        }
        let dir = crate::cgroup::open_root(path)?;
        let mode = CgroupAttachMode::Single;
        for (name, p) in &mut self.programs {
            let link: FdLink = match p {
                Program::CgroupSockAddr(p) => {
                    let l = p.attach(&dir, mode)?;
                    p.take_link(l)?.try_into()?
                }
                Program::CgroupSkb(p) => {
                    let l = p.attach(&dir, CgroupSkbAttachType::Ingress, mode)?;
                    p.take_link(l)?.try_into()?
                }
                _ => return Err(anyhow!("program {name} has an unexpected type")),
            };
            let pin = self.links.join(format!("{name}@{cgroup_id}"));
            link.pin(&pin).with_context(|| format!("pinning {}", pin.display()))?;
        }
        Ok(())
    }
}
