//! The kernel's ring buffer of events, and the programs' own debug messages.

use aya::maps::{MapData, RingBuf};
use monitor_common::{
    BlockEvent, DnsHeader, EVENT_BLOCKED, EVENT_CONNECT, EVENT_NEW_FLOW, EVENT_SOCK_CLOSED, NewFlowEvent,
    SockEvent,
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

/// A packet from port 53 some socket received, as the kernel copied it: its header, and at
/// most `DNS_CAPTURE_MAX` bytes of its DNS payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsPacket {
    pub header: DnsHeader,
    pub payload: Vec<u8>,
}

/// What the kernel handed over since the last batch: DNS answers first (they name the flows
/// announced after them), then events.
#[derive(Debug, Default)]
pub struct KernelBatch {
    pub dns: Vec<DnsPacket>,
    pub events: Vec<KernelEvent>,
    /// Records of either ring the agent could not decode (agent and kernel object disagree).
    pub malformed: u64,
}

/// The kernel's two ring buffers: events, and DNS answers.
pub struct EventStream {
    pub(super) fd: AsyncFd<RingBuf<MapData>>,
    pub(super) dns: AsyncFd<RingBuf<MapData>>,
}

/// How often the agent drains the ring buffer without being woken: the programs submit most
/// events without a wakeup (waking costs the sender microseconds) and force one only when the
/// ring fills up.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

impl EventStream {
    /// Waits until the kernel wakes the agent and returns everything available in both rings.
    pub async fn next_batch(&mut self) -> anyhow::Result<KernelBatch> {
        // Readiness is cleared before draining: what arrives after the drain wakes us again.
        tokio::select! {
            g = self.fd.readable_mut() => g?.clear_ready(),
            g = self.dns.readable_mut() => g?.clear_ready(),
        }
        Ok(self.drain())
    }

    /// Everything available now, without waiting: the DNS ring first, so that an answer is
    /// known before the event of a flow it names.
    pub fn drain(&mut self) -> KernelBatch {
        let (dns, bad) = drain_with(self.dns.get_mut(), parse_dns);
        let (events, malformed) = drain(self.fd.get_mut());
        KernelBatch { dns, events, malformed: malformed + bad }
    }
}

/// Decodes one record of the DNS ring: the header, then the bytes it says were copied.
pub fn parse_dns(bytes: &[u8]) -> Option<DnsPacket> {
    let head = bytes.get(..size_of::<DnsHeader>())?;
    // SAFETY: plain old data of the checked length.
    let header: DnsHeader = unsafe { std::ptr::read_unaligned(head.as_ptr().cast()) };
    let payload = bytes.get(size_of::<DnsHeader>()..size_of::<DnsHeader>() + header.captured as usize)?;
    Some(DnsPacket { header, payload: payload.to_vec() })
}

/// Every record of the kernel's event ring, with the number of malformed ones.
pub(super) fn drain(ring: &mut RingBuf<MapData>) -> (Vec<KernelEvent>, u64) {
    drain_with(ring, parse_event)
}

/// Every record of a ring decoded by `parse`, with the number it could not decode.
fn drain_with<T>(ring: &mut RingBuf<MapData>, parse: fn(&[u8]) -> Option<T>) -> (Vec<T>, u64) {
    let mut batch = Vec::new();
    let mut malformed = 0;
    while let Some(item) = ring.next() {
        match parse(&item) {
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
