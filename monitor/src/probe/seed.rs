//! The kernel's socket storage, written for sockets opened before the programs were attached:
//! the hooks that record a socket's process and direction (connect, listen, accept) ran before
//! the agent, so the agent fills in what they would have recorded. A listener seeded this way
//! passes its process to the connections it accepts from now on (the storage is cloned).

use std::os::fd::AsRawFd;

use aya::maps::{MapData, MapError, SkStorage};
use monitor_common::{DIRECTION_UNKNOWN, ProcessInfo, SOCK_HAS_PROCESS, SOCK_LISTENER, SockInfo};

/// What the agent found of an open socket.
#[derive(Debug, Clone, Copy)]
pub struct SocketSeed {
    pub process: ProcessInfo,
    /// `DIRECTION_*`; unknown leaves the kernel's hooks to decide.
    pub direction: u8,
    pub listener: bool,
}

pub struct SocketStorage {
    map: SkStorage<MapData, SockInfo>,
}

impl SocketStorage {
    pub(super) fn new(map: MapData) -> anyhow::Result<SocketStorage> {
        Ok(SocketStorage { map: SkStorage::try_from(aya::maps::Map::SkStorage(map))? })
    }

    /// Fills in what the kernel does not know yet of `socket` (a duplicate of the owner's fd):
    /// its process, its direction and whether it listens. What the kernel recorded itself is
    /// kept. Returns whether anything was written.
    ///
    /// The read and the write are two calls: a hook writing the same storage in between (the
    /// socket's first packet since the programs were attached) has its write replaced. What it
    /// wrote is then recomputed (the class) or only saves work (the flow the socket sends on,
    /// without which its release sends an event instead).
    pub fn seed(&mut self, socket: &impl AsRawFd, seed: &SocketSeed) -> anyhow::Result<bool> {
        let mut info = match self.map.get(socket, 0) {
            Ok(info) => info,
            // SAFETY: SockInfo is plain data (aya::Pod): all zeroes is the storage the kernel
            // creates for a socket.
            Err(MapError::KeyNotFound) => unsafe { std::mem::zeroed() },
            Err(e) => return Err(e.into()),
        };
        let before = (info.flags, info.direction);
        if info.flags & SOCK_HAS_PROCESS == 0 {
            info.process = seed.process;
            info.flags |= SOCK_HAS_PROCESS;
        }
        if seed.listener {
            info.flags |= SOCK_LISTENER;
        }
        if info.direction == DIRECTION_UNKNOWN {
            info.direction = seed.direction;
        }
        if (info.flags, info.direction) == before {
            return Ok(false);
        }
        self.map.insert(socket, info, 0)?;
        Ok(true)
    }
}
