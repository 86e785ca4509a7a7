//! Loading the kernel object with its maps pinned, and attaching its programs through pinned
//! bpf_links.

use std::{fs::File, path::Path};

use anyhow::{Context, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData},
    programs::{CgroupAttachMode, CgroupSkbAttachType, Program, links::FdLink},
};

use super::{CGROUP_PROGRAMS, KernelLog, OBJECT, ProbeOptions, ROOT_PROGRAMS, pins, pins::SetDir};

pub(super) fn map_data(map: Map) -> MapData {
    match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::RingBuf(m)
        | Map::SkStorage(m)
        | Map::LpmTrie(m) => m,
        other => panic!("unexpected map type {other:?}"),
    }
}

/// Loads the programs with every map of the set pinned in `set` and the shared configuration
/// map at `config_pin` (created there when missing, reused when present).
pub(super) fn load(
    opts: &ProbeOptions,
    set: &SetDir,
    config_pin: &Path,
    epoch: u32,
) -> anyhow::Result<(Ebpf, Option<aya_log::EbpfLogger<KernelLog>>)> {
    // Off, the level check is a constant the verifier prunes: no cost on the packet path.
    let level: u8 = if opts.kernel_log { aya_log::Level::Debug as u8 } else { 0 };
    // Where the process name is (the thread-group leader's); unknown: the thread's name.
    let task = super::btf::task_offsets().unwrap_or_default();
    if task.comm == 0 {
        tracing::warn!(
            "task_struct offsets not found in the kernel's BTF: process names are the calling thread's"
        );
    }
    let mut loader = EbpfLoader::new();
    loader
        .override_global(aya_log::LEVEL, &level, false)
        .override_global("EPOCH", &epoch, true)
        .override_global("TASK_GROUP_LEADER_OFFSET", &task.group_leader, true)
        .override_global("TASK_COMM_OFFSET", &task.comm, true)
        .map_max_entries("FLOWS", opts.max_flows)
        // Room for ended flows whose last record the store has not committed yet.
        .map_max_entries("REPORTED", opts.max_flows.saturating_mul(2))
        .map_max_entries("EVENTS", opts.ring_buffer_size)
        .map_max_entries("DNS_ANSWERS", opts.dns_ring_buffer_size)
        .map_max_entries("VERDICTS_V4_A", super::verdicts::MAX_ENTRIES)
        .map_max_entries("VERDICTS_V4_B", super::verdicts::MAX_ENTRIES)
        .map_max_entries("VERDICTS_V6_A", super::verdicts::MAX_ENTRIES)
        .map_max_entries("VERDICTS_V6_B", super::verdicts::MAX_ENTRIES)
        .map_pin_path(pins::SHARED_CONFIG, config_pin.to_owned());
    for name in pins::SET_MAPS {
        loader.map_pin_path(name, set.map(name));
    }
    let mut ebpf = loader.load(OBJECT).context(
        "loading the kernel programs (needs root or CAP_BPF + CAP_NET_ADMIN, and a kernel with BTF)",
    )?;
    let kernel_log = if opts.kernel_log {
        Some(aya_log::EbpfLogger::init_with_logger(&mut ebpf, KernelLog).context("reading kernel messages")?)
    } else {
        None
    };
    for (name, _) in ROOT_PROGRAMS.iter().chain(CGROUP_PROGRAMS) {
        load_program(&mut ebpf, name).with_context(|| format!("loading program {name}"))?;
    }
    // Pinned, so that an agent adopting the set can attach them to cgroups that appear later.
    for (name, _) in CGROUP_PROGRAMS {
        let pin = super::enforce::program_pin(set, name);
        let prog = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?;
        prog.pin(&pin).with_context(|| format!("pinning program {name} at {}", pin.display()))?;
    }
    Ok((ebpf, kernel_log))
}

fn load_program(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
    let prog = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the object"))?;
    match prog {
        Program::CgroupSkb(p) => p.load()?,
        Program::CgroupSockAddr(p) => p.load()?,
        Program::CgroupSock(p) => p.load()?,
        Program::SockOps(p) => p.load()?,
        other => return Err(anyhow!("program {name} has unexpected type {:?}", other.prog_type())),
    }
    Ok(())
}

/// Attaches one program through a bpf_link, pins the link at `pin` (so the program stays
/// attached when the agent exits) and returns the kernel program id.
pub(super) fn attach_program(
    ebpf: &mut Ebpf,
    (name, hook): (&str, &str),
    cgroup: &File,
    pin: &Path,
) -> anyhow::Result<u32> {
    let prog = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?;
    // On this kernel bpf_link attachments are multi-attach anyway; ALLOW_MULTI is rejected for links.
    let mode = CgroupAttachMode::Single;
    let (link, id): (FdLink, u32) = match prog {
        Program::CgroupSkb(p) => {
            let direction = match hook {
                "cgroup_skb/ingress" => CgroupSkbAttachType::Ingress,
                _ => CgroupSkbAttachType::Egress,
            };
            let l = p.attach(cgroup, direction, mode)?;
            (p.take_link(l)?.try_into()?, p.info()?.id())
        }
        Program::CgroupSockAddr(p) => {
            let l = p.attach(cgroup, mode)?;
            (p.take_link(l)?.try_into()?, p.info()?.id())
        }
        Program::CgroupSock(p) => {
            let l = p.attach(cgroup, mode)?;
            (p.take_link(l)?.try_into()?, p.info()?.id())
        }
        Program::SockOps(p) => {
            let l = p.attach(cgroup, mode)?;
            (p.take_link(l)?.try_into()?, p.info()?.id())
        }
        _ => return Err(anyhow!("program {name} has an unexpected type")),
    };
    link.pin(pin).with_context(|| format!("pinning the link at {}", pin.display()))?;
    Ok(id)
}
