//! Longest-prefix-match tables in the kernel (BPF_MAP_TYPE_LPM_TRIE) holding, per network, a
//! 64-bit value: the compiled residency policy's class masks. aya 0.14 creates maps only from
//! an object, so these are direct bpf(2) calls.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use super::sys::{ElemAttr, bpf};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
const BPF_F_NO_PREALLOC: u32 = 1;

#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// Key of an LPM trie: the prefix length, then the address in network order.
#[repr(C)]
struct Key<const N: usize> {
    prefix_len: u32,
    addr: [u8; N],
}

/// One family's table.
pub struct LpmTable<const N: usize> {
    fd: OwnedFd,
}

impl<const N: usize> LpmTable<N> {
    /// A new, empty table for up to `max_entries` networks.
    pub fn create(max_entries: u32) -> io::Result<Self> {
        let mut attr = CreateAttr {
            map_type: BPF_MAP_TYPE_LPM_TRIE,
            key_size: (4 + N) as u32,
            value_size: 8,
            max_entries,
            map_flags: BPF_F_NO_PREALLOC,
        };
        let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
        // SAFETY: a new fd the kernel just returned, owned from here on.
        Ok(LpmTable { fd: unsafe { OwnedFd::from_raw_fd(fd as i32) } })
    }

    /// Sets the value of one network.
    pub fn insert(&mut self, addr: [u8; N], prefix_len: u8, value: u64) -> io::Result<()> {
        let key = Key { prefix_len: prefix_len as u32, addr };
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: &key as *const Key<N> as u64,
            value: &value as *const u64 as u64,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }

    /// The value of the longest prefix that contains `addr`, as the kernel finds it.
    pub fn lookup(&self, addr: [u8; N]) -> io::Result<Option<u64>> {
        let key = Key { prefix_len: (N * 8) as u32, addr };
        let mut value = 0u64;
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: &key as *const Key<N> as u64,
            value: &mut value as *mut u64 as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Both families' tables.
pub struct PolicyTables {
    pub v4: LpmTable<4>,
    pub v6: LpmTable<16>,
}

impl PolicyTables {
    pub fn create(max_entries: u32) -> io::Result<Self> {
        Ok(PolicyTables { v4: LpmTable::create(max_entries)?, v6: LpmTable::create(max_entries)? })
    }

    /// Looks `ip` up as the kernel programs do: IPv4 in the IPv4 table, IPv6 in the IPv6 one
    /// (the caller maps v4-mapped and NAT64 addresses to IPv4 first, as the programs do).
    pub fn lookup(&self, ip: IpAddr) -> io::Result<Option<u64>> {
        match ip {
            IpAddr::V4(a) => self.v4.lookup(a.octets()),
            IpAddr::V6(a) => self.v6.lookup(a.octets()),
        }
    }
}
