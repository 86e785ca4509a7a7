//! The kernel flow map, read in batches (one syscall per few thousand flows rather than two per
//! flow) and drained exactly (lookup-and-delete returns the final counters atomically).
//! aya 0.14 wraps neither command, so these are direct bpf(2) calls on the map's fd.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::maps::MapData;
use monitor_common::{FlowKey, FlowValue};

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Flows fetched per batch syscall.
const BATCH: usize = 4096;

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: attr is a correctly laid out bpf_attr prefix for `cmd`; size passed explicitly.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as u32) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

pub struct FlowMap {
    map: MapData,
    keys: Vec<FlowKey>,
    values: Vec<FlowValue>,
}

impl FlowMap {
    pub(super) fn new(map: MapData) -> Self {
        Self { map, keys: Vec::new(), values: Vec::new() }
    }

    fn fd(&self) -> u32 {
        self.map.fd().as_fd().as_raw_fd() as u32
    }
}

impl FlowMap {
    /// Calls `f` for every flow in the map, reading it in batches.
    pub fn for_each(&mut self, f: &mut dyn FnMut(&FlowKey, &FlowValue)) -> io::Result<()> {
        self.keys.resize(BATCH, FlowKey::ZERO);
        // SAFETY: FlowValue is plain old data; the kernel overwrites the slots it fills.
        self.values.resize(BATCH, unsafe { std::mem::zeroed() });
        let mut token: u64 = 0;
        let mut first = true;
        loop {
            let mut out_token: u64 = 0;
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { &token as *const u64 as u64 },
                out_batch: &mut out_token as *mut u64 as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: BATCH as u32,
                map_fd: self.fd(),
                ..Default::default()
            };
            let res = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
            let n = attr.count as usize;
            for i in 0..n.min(BATCH) {
                f(&self.keys[i], &self.values[i]);
            }
            match res {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(e) => return Err(e),
            }
            token = out_token;
            first = false;
        }
    }

    /// Removes a flow and returns its final value (None if it was already gone).
    pub fn take(&mut self, key: &FlowKey) -> io::Result<Option<FlowValue>> {
        // SAFETY: plain old data, filled by the kernel on success.
        let mut value: FlowValue = unsafe { std::mem::zeroed() };
        let mut attr = ElemAttr {
            map_fd: self.fd(),
            key: key as *const FlowKey as u64,
            value: &mut value as *mut FlowValue as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
            Ok(()) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
