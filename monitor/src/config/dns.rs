//! The `[dns]` schema: how long a name seen in a DNS answer names the flows to its addresses,
//! how many names are kept, and the kernel's buffer for answers.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

use super::{Interval, RingBufferSize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// A name names flows to its addresses for its answer's TTL plus this long (a client may
    /// connect late, or keep using an address past its TTL).
    pub grace: Interval,
    /// Names kept at most (per cgroup and address, and host-wide per address); the least
    /// recently used is forgotten first, counted in the status as `dns.evicted`.
    pub max_names: MaxNames,
    /// Bytes of the kernel's ring buffer of DNS answers (a power of two).
    pub ring_buffer_size: RingBufferSize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            grace: Interval(Duration::from_secs(300)),
            max_names: MaxNames(100_000),
            ring_buffer_size: RingBufferSize(4 << 20),
        }
    }
}

/// From 1 to 10 million names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxNames(pub u32);

impl<'de> Deserialize<'de> for MaxNames {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        if !(1..=10_000_000).contains(&n) {
            return Err(de::Error::custom(format!("invalid number of names {n}: expected 1 to 10000000")));
        }
        Ok(MaxNames(n as u32))
    }
}
