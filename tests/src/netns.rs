//! Two hosts in their own network namespaces, joined by a veth pair (the shared test world's
//! topology, failing the test on error). Deleted on drop.

use std::ops::Deref;

pub use test_world::Netns;

pub struct Topology(test_world::Topology);

impl Topology {
    /// A pair on private test addresses.
    pub fn new() -> Topology {
        Topology::with_addresses(["10.99.0.1", "10.99.0.2"], ["fd99::1", "fd99::2"])
    }

    /// A pair with the given addresses (/24 for IPv4, /64 for IPv6).
    pub fn with_addresses(v4: [&str; 2], v6: [&str; 2]) -> Topology {
        Topology(test_world::Topology::with_addresses(v4, v6).unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// Gives host `b` one more address and routes everything from `a` over the veth to it.
    pub fn add_remote_address(&self, ip: &str) {
        self.0.add_remote_address(ip).unwrap_or_else(|e| panic!("{e:#}"));
    }
}

impl Deref for Topology {
    type Target = test_world::Topology;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}
