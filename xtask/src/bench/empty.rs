//! An empty cgroup_skb program (`r0 = 1; exit`), loaded with the bpf() system call and attached,
//! on egress or ingress, to the bench's cgroup beside the agent's programs. bpf_stats accounts
//! it the same way as the agent's, so its cost per run is the floor any such program pays: the
//! egress (or DNS ingress) program's added cost is its own cost per run minus this one's.

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::Context;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_CGROUP_INET_INGRESS: u32 = 0;
const BPF_CGROUP_INET_EGRESS: u32 = 1;

pub struct EmptyProgram {
    pub id: u32,
    // The link detaches the program when closed; closed before the program.
    _link: OwnedFd,
    _prog: OwnedFd,
}

/// The bpf() system call on an attribute buffer (a `union bpf_attr`, zero beyond what is set).
fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i32> {
    // SAFETY: the buffer outlives the call and is larger than every attribute used here.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r as i32) }
}

fn put_u32(attr: &mut [u8; 128], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; 128], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

impl EmptyProgram {
    pub fn attach(cgroup: &std::path::Path, ingress: bool) -> anyhow::Result<EmptyProgram> {
        let hook = if ingress { BPF_CGROUP_INET_INGRESS } else { BPF_CGROUP_INET_EGRESS };
        // mov64 r0, 1; exit
        let insns: [u8; 16] = [0xb7, 0, 0, 0, 1, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
        let license = c"GPL";
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, BPF_PROG_TYPE_CGROUP_SKB);
        put_u32(&mut attr, 4, 2);
        put_u64(&mut attr, 8, insns.as_ptr() as u64);
        put_u64(&mut attr, 16, license.as_ptr() as u64);
        attr[48..48 + 14].copy_from_slice(b"em_bench_empty");
        put_u32(&mut attr, 68, hook);
        let fd = bpf(BPF_PROG_LOAD, &mut attr).context("loading an empty cgroup_skb program")?;
        // SAFETY: a new descriptor the kernel returned, owned from here on.
        let prog = unsafe { OwnedFd::from_raw_fd(fd) };

        let dir = std::fs::File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, fd as u32);
        put_u32(&mut attr, 4, std::os::fd::AsRawFd::as_raw_fd(&dir) as u32);
        put_u32(&mut attr, 8, hook);
        let link = bpf(BPF_LINK_CREATE, &mut attr)
            .with_context(|| format!("attaching the empty program to {}", cgroup.display()))?;
        // SAFETY: as above.
        let link = unsafe { OwnedFd::from_raw_fd(link) };

        // Its id, for bpftool: struct bpf_prog_info starts with type, then id.
        let mut info = [0u8; 8];
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, fd as u32);
        put_u32(&mut attr, 4, info.len() as u32);
        put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("reading the empty program's id")?;
        let id = u32::from_ne_bytes(info[4..8].try_into().expect("4 bytes"));
        Ok(EmptyProgram { id, _link: link, _prog: prog })
    }
}
