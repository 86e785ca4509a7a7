//! Hash maps read and written in batches (one syscall per few thousand entries rather than one
//! or two per entry), and the flow map drained exactly (lookup-and-delete returns the final
//! counters atomically). aya 0.14 wraps none of these commands, so they are direct bpf(2) calls
//! on the map's fd.

use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd},
};

use aya::{Pod, maps::MapData};
use monitor_common::{FlowKey, FlowValue, Reported};

use super::sys::ElemAttr;

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries per batch syscall.
const BATCH: usize = 4096;

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
    super::sys::bpf(cmd, attr).map(|_| ())
}

/// A hash map with `K` keys and `V` values, read and written in batches.
pub struct BatchMap<K, V> {
    map: MapData,
    keys: Vec<K>,
    values: Vec<V>,
    _types: PhantomData<(K, V)>,
}

/// The kernel's flow map.
pub type FlowMap = BatchMap<FlowKey, FlowValue>;
/// What the agent last reported of each flow (see `monitor_common::Reported`).
pub type ReportedMap = BatchMap<FlowKey, Reported>;

impl<K: Pod, V: Pod> BatchMap<K, V> {
    pub(super) fn new(map: MapData) -> Self {
        Self { map, keys: Vec::new(), values: Vec::new(), _types: PhantomData }
    }

    fn fd(&self) -> u32 {
        self.map.fd().as_fd().as_raw_fd() as u32
    }

    fn buffers(&mut self) {
        // SAFETY: K and V are plain old data; the kernel overwrites the slots it fills.
        self.keys.resize(BATCH, unsafe { std::mem::zeroed() });
        self.values.resize(BATCH, unsafe { std::mem::zeroed() });
    }

    /// Calls `f` for every entry in the map, reading it in batches.
    pub fn for_each(&mut self, f: &mut dyn FnMut(&K, &V)) -> io::Result<()> {
        self.buffers();
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

    /// Every entry, collected.
    pub fn collect(&mut self) -> io::Result<Vec<(K, V)>> {
        let mut all = Vec::new();
        self.for_each(&mut |k, v| all.push((*k, *v)))?;
        Ok(all)
    }

    /// Removes an entry and returns its final value (None if it was already gone).
    pub fn take(&mut self, key: &K) -> io::Result<Option<V>> {
        // SAFETY: plain old data, filled by the kernel on success.
        let mut value: V = unsafe { std::mem::zeroed() };
        let mut attr = ElemAttr {
            map_fd: self.fd(),
            key: key as *const K as u64,
            value: &mut value as *mut V as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
            Ok(()) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `entries` (creating or replacing each).
    pub fn update(&mut self, entries: &[(K, V)]) -> io::Result<()> {
        for chunk in entries.chunks(BATCH) {
            self.keys.clear();
            self.values.clear();
            for (k, v) in chunk {
                self.keys.push(*k);
                self.values.push(*v);
            }
            let mut attr = BatchAttr {
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: chunk.len() as u32,
                map_fd: self.fd(),
                ..Default::default()
            };
            bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
        }
        Ok(())
    }

    /// Removes `keys`; a key that is not there is skipped.
    pub fn remove(&mut self, keys: &[K]) -> io::Result<()> {
        let mut rest = keys;
        while !rest.is_empty() {
            let n = rest.len().min(BATCH);
            let mut attr = BatchAttr {
                keys: rest.as_ptr() as u64,
                count: n as u32,
                map_fd: self.fd(),
                ..Default::default()
            };
            match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
                Ok(()) => rest = &rest[n..],
                // The key at `count` was not there: skip it and go on after it.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    rest = &rest[(attr.count as usize + 1).min(rest.len())..]
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
