//! Sockets that were open before the agent started, found the way `ss -p` finds their owners:
//! every process's file descriptors under /proc. Each TCP and UDP socket is duplicated into the
//! agent (pidfd_getfd), in whatever network namespace it lives, to read its cookie (the id the
//! kernel programs know it by), whether it listens, and its ports; its owner gives the process.
//! A connected TCP socket whose local port a listener of its namespace holds was accepted
//! (inbound); other connected sockets connected out (outbound); an unconnected UDP socket's
//! direction is left to the kernel hooks (its next send or receive tells).

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
};

use monitor_common::{COMM_LEN, DIRECTION_INBOUND, DIRECTION_OUTBOUND, DIRECTION_UNKNOWN, ProcessInfo};

/// An open TCP or UDP socket of some process.
#[derive(Debug, Clone, Copy)]
pub struct OpenSocket {
    /// The socket cookie (`SO_COOKIE`), as the kernel programs see it.
    pub cookie: u64,
    /// The process holding it (the lowest pid when several share it).
    pub process: ProcessInfo,
    pub proto: u8,
    pub listening: bool,
    /// `DIRECTION_*` as far as the scan can tell.
    pub direction: u8,
}

/// What a scan found, and what it could not read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanCounts {
    pub sockets: u64,
    pub listening: u64,
    /// Processes gone during the scan or whose descriptors could not be duplicated.
    pub unreadable: u64,
}

/// Finds every open TCP and UDP socket; `visit` gets each with a duplicate of its descriptor
/// (closed after the call), to write what the kernel should know of it.
pub fn scan(mut visit: impl FnMut(&OwnedFd, &OpenSocket)) -> (Vec<OpenSocket>, ScanCounts) {
    let mut counts = ScanCounts::default();
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut listeners: HashMap<u64, HashSet<(u8, u16)>> = HashMap::new();
    for pid in pids() {
        let Some((pidfd, process, netns)) = owner(pid) else {
            counts.unreadable += 1;
            continue;
        };
        let ports = listeners.entry(netns).or_insert_with(|| listening_ports(pid));
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            counts.unreadable += 1;
            continue;
        };
        for entry in fds.flatten() {
            let Ok(target) = fs::read_link(entry.path()) else { continue };
            let Some(inode) = socket_inode(&target.to_string_lossy()) else { continue };
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            if !seen.insert(inode) {
                continue; // shared with a process already seen (a lower pid)
            }
            // SAFETY: pidfd_getfd returns a new descriptor this process owns, or -1.
            let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
            if dup < 0 {
                continue; // closed meanwhile
            }
            let sock = unsafe { OwnedFd::from_raw_fd(dup as i32) };
            let Some(mut s) = describe(&sock, process) else { continue };
            let local = local_port(&sock);
            let tcp = s.proto == libc::IPPROTO_TCP as u8;
            s.direction = match (s.listening, connected(&sock)) {
                (true, _) => DIRECTION_INBOUND,
                (_, true) if tcp && local.is_some_and(|p| ports.contains(&(s.proto, p))) => DIRECTION_INBOUND,
                (_, true) => DIRECTION_OUTBOUND,
                _ => DIRECTION_UNKNOWN,
            };
            counts.sockets += 1;
            counts.listening += s.listening as u64;
            visit(&sock, &s);
            found.push(s);
        }
    }
    (found, counts)
}

/// Process ids under /proc, lowest first.
fn pids() -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// A pidfd on `pid`, its process as the kernel programs would record it, and its network
/// namespace's inode.
fn owner(pid: u32) -> Option<(OwnedFd, ProcessInfo, u64)> {
    // SAFETY: pidfd_open returns a new descriptor this process owns, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let uid = fs::metadata(format!("/proc/{pid}")).ok()?.uid();
    let netns = fs::metadata(format!("/proc/{pid}/ns/net")).ok()?.ino();
    let name = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let mut comm = [0u8; COMM_LEN];
    let name = name.trim_end_matches('\n').as_bytes();
    let n = name.len().min(COMM_LEN - 1);
    comm[..n].copy_from_slice(&name[..n]);
    Some((pidfd, ProcessInfo { tgid: pid, pid, uid, _pad: 0, comm }, netns))
}

/// The inode of a "socket:[12345]" link target.
fn socket_inode(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The (protocol, port) pairs of the TCP listeners in `pid`'s network namespace, from
/// /proc/PID/net/tcp and tcp6 (state 0A: LISTEN).
fn listening_ports(pid: u32) -> HashSet<(u8, u16)> {
    let mut out = HashSet::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) != Some(&"0A") {
                continue;
            }
            let port =
                f.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
            if let Some(p) = port {
                out.insert((libc::IPPROTO_TCP as u8, p));
            }
        }
    }
    out
}

fn int_option(sock: &OwnedFd, level: i32, name: i32) -> Option<i32> {
    let mut v: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: getsockopt into an int of the given length.
    let r = unsafe { libc::getsockopt(sock.as_raw_fd(), level, name, (&raw mut v).cast(), &mut len) };
    (r == 0).then_some(v)
}

/// A TCP or UDP socket over IPv4 or IPv6 (None for any other descriptor).
fn describe(sock: &OwnedFd, process: ProcessInfo) -> Option<OpenSocket> {
    let domain = int_option(sock, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return None;
    }
    let proto = int_option(sock, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    if proto != libc::IPPROTO_TCP && proto != libc::IPPROTO_UDP {
        return None;
    }
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes a u64.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return None;
    }
    let listening = int_option(sock, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).is_some_and(|v| v != 0);
    Some(OpenSocket { cookie, process, proto: proto as u8, listening, direction: DIRECTION_UNKNOWN })
}

fn address(sock: &OwnedFd, peer: bool) -> Option<libc::sockaddr_storage> {
    // SAFETY: a zeroed sockaddr_storage is valid; the calls write at most its length.
    let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let f = if peer { libc::getpeername } else { libc::getsockname };
    let r = unsafe { f(sock.as_raw_fd(), (&raw mut sa).cast(), &mut len) };
    (r == 0).then_some(sa)
}

fn connected(sock: &OwnedFd) -> bool {
    address(sock, true).is_some()
}

fn local_port(sock: &OwnedFd) -> Option<u16> {
    let sa = address(sock, false)?;
    // SAFETY: the family says which layout the kernel wrote.
    unsafe {
        match sa.ss_family as i32 {
            libc::AF_INET => Some(u16::from_be((*(&raw const sa).cast::<libc::sockaddr_in>()).sin_port)),
            libc::AF_INET6 => Some(u16::from_be((*(&raw const sa).cast::<libc::sockaddr_in6>()).sin6_port)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream, UdpSocket};

    use super::*;

    #[test]
    fn finds_this_process_sockets_with_cookie_and_direction() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let out = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let cookie = |fd: &dyn AsRawFd| {
            let mut c: u64 = 0;
            let mut len = 8;
            unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_COOKIE,
                    (&raw mut c).cast(),
                    &mut len,
                )
            };
            c
        };
        let mut visited = 0;
        let (found, counts) = scan(|_, _| visited += 1);
        assert_eq!(visited as u64, counts.sockets);
        let of = |c: u64| *found.iter().find(|s| s.cookie == c).unwrap_or_else(|| panic!("{c} in {found:?}"));
        let me = std::process::id();
        for (s, listening, proto, direction) in [
            (of(cookie(&listener)), true, libc::IPPROTO_TCP, DIRECTION_INBOUND),
            (of(cookie(&out)), false, libc::IPPROTO_TCP, DIRECTION_OUTBOUND),
            (of(cookie(&accepted)), false, libc::IPPROTO_TCP, DIRECTION_INBOUND),
            (of(cookie(&udp)), false, libc::IPPROTO_UDP, DIRECTION_UNKNOWN),
        ] {
            assert_eq!((s.listening, s.proto, s.direction), (listening, proto as u8, direction), "{s:?}");
            assert_eq!((s.process.tgid, s.process.uid), (me, unsafe { libc::geteuid() }), "{s:?}");
        }
    }
}
