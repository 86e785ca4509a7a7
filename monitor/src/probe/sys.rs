//! The bpf(2) system call for the commands aya 0.14 does not wrap.

use std::io;

/// `bpf_attr` for the element commands (lookup, update, lookup-and-delete).
#[repr(C)]
#[derive(Default)]
pub struct ElemAttr {
    pub map_fd: u32,
    pub _pad: u32,
    pub key: u64,
    pub value: u64,
    pub flags: u64,
}

/// Calls bpf(2) with `cmd` and `attr`; returns the kernel's non-negative answer (an fd for
/// BPF_MAP_CREATE).
pub fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: attr is a correctly laid out bpf_attr prefix for `cmd`; size passed explicitly.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as u32) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}
