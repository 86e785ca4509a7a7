//! egress-monitor's agent as a library: the binary (`main.rs`) only parses the command line.
//! One road from packet to alert: probe (kernel) -> flows and names -> pipeline (enrich -> policy
//! -> record and alert) -> outputs (sinks, store, export); the api (and the cli through it) reads
//! the store. `record` holds the shapes every layer speaks; `config` alone knows TOML and builds
//! each part's options. The README's architecture section has the layers (a test checks them).

pub mod alerts;
pub mod api;
pub mod cgroup;
pub mod classes;
pub mod cli;
pub mod config;
pub mod enrich;
pub mod export;
pub mod flows;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod golden;
#[cfg(test)]
mod layering;
pub mod metrics;
pub mod names;
pub mod pipeline;
pub mod policy;
pub mod probe;
pub mod record;
pub mod reports;
pub mod sinks;
pub mod sockets;
pub mod state;
pub mod status;
pub mod store;

/// Installs ring as the process's TLS crypto provider (reqwest and rustls are built without a
/// bundled one). Every HTTP or TLS client calls it first; later calls do nothing.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
