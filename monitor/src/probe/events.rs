//! The kernel's ring buffer of events, and the programs' own debug messages.

use aya::maps::{MapData, RingBuf};
use monitor_common::{
    BlockEvent, EVENT_BLOCKED, EVENT_CONNECT, EVENT_NEW_FLOW, EVENT_SOCK_CLOSED, NewFlowEvent, SockEvent,
};
use tokio::io::unix::AsyncFd;

/// A record from the kernel's ring buffer.
#[derive(Debug, Clone, Copy)]
pub enum KernelEvent {
    NewFlow(NewFlowEvent),
    /// A socket's process, sent at connect by program sets older than this agent (today's
    /// programs keep it in the socket's storage, which every flow copies): an upgrade still
    /// drains them from the set it replaces.
    Connect(SockEvent),
    SockClosed {
        cookie: u64,
    },
    /// An enforcing class's attempt the kernel refused.
    Blocked(BlockEvent),
}

pub struct EventStream {
    pub(super) fd: AsyncFd<RingBuf<MapData>>,
}

/// How often the agent drains the ring buffer without being woken: the programs submit most
/// events without a wakeup (waking costs the sender microseconds) and force one only when the
/// ring fills up.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

impl EventStream {
    /// Waits until the kernel wakes the agent and returns every available event, with the
    /// number of malformed records (which would mean the agent and the kernel object disagree).
    pub async fn next_batch(&mut self) -> anyhow::Result<(Vec<KernelEvent>, u64)> {
        let mut guard = self.fd.readable_mut().await?;
        let batch = drain(guard.get_inner_mut());
        guard.clear_ready();
        Ok(batch)
    }

    /// Every event available now, without waiting.
    pub fn drain(&mut self) -> (Vec<KernelEvent>, u64) {
        drain(self.fd.get_mut())
    }
}

pub(super) fn drain(ring: &mut RingBuf<MapData>) -> (Vec<KernelEvent>, u64) {
    let mut batch = Vec::new();
    let mut malformed = 0;
    while let Some(item) = ring.next() {
        match parse_event(&item) {
            Some(e) => batch.push(e),
            None => malformed += 1,
        }
    }
    (batch, malformed)
}

/// Decodes one ring-buffer record; None for a record of unknown kind or too short.
pub fn parse_event(bytes: &[u8]) -> Option<KernelEvent> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    // SAFETY: both event types are plain old data; the length is checked before reading.
    unsafe {
        match kind {
            EVENT_NEW_FLOW if bytes.len() >= size_of::<NewFlowEvent>() => {
                Some(KernelEvent::NewFlow(std::ptr::read_unaligned(bytes.as_ptr().cast())))
            }
            EVENT_CONNECT if bytes.len() >= size_of::<SockEvent>() => {
                Some(KernelEvent::Connect(std::ptr::read_unaligned(bytes.as_ptr().cast())))
            }
            EVENT_SOCK_CLOSED if bytes.len() >= size_of::<SockEvent>() => {
                let e: SockEvent = std::ptr::read_unaligned(bytes.as_ptr().cast());
                Some(KernelEvent::SockClosed { cookie: e.cookie })
            }
            EVENT_BLOCKED if bytes.len() >= size_of::<BlockEvent>() => {
                Some(KernelEvent::Blocked(std::ptr::read_unaligned(bytes.as_ptr().cast())))
            }
            _ => None,
        }
    }
}

/// Kernel messages (aya-log) into the agent's log, with target `kernel`.
pub struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::debug!(target: "kernel", "{}", record.args());
    }

    fn flush(&self) {}
}

/// The kernel programs' messages, registered with the tokio reactor.
pub struct KernelLogStream {
    pub(super) fd: AsyncFd<aya_log::EbpfLogger<KernelLog>>,
}

impl KernelLogStream {
    /// Logs messages as they arrive, until the programs are unloaded.
    pub async fn run(mut self) {
        while let Ok(mut guard) = self.fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }
}
