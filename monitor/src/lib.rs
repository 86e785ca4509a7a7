//! egress-monitor's agent as a library: the binary (`main.rs`) only parses the command line.
//! Modules follow one packet to one alert: probe (kernel) -> flows -> enrich -> policy ->
//! alerts -> sinks, with flows also going to the store, which the api (and the cli through it)
//! reads; config and classes say what to classify; cli holds one file per subcommand.

pub mod alerts;
pub mod api;
pub mod cgroup;
pub mod classes;
pub mod cli;
pub mod config;
pub mod enrich;
pub mod export;
pub mod flows;
#[cfg(test)]
mod golden;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod probe;
pub mod record;
pub mod sinks;
pub mod state;
pub mod status;
pub mod store;

/// Installs ring as the process's TLS crypto provider (reqwest and rustls are built without a
/// bundled one). Every HTTP or TLS client calls it first; later calls do nothing.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
