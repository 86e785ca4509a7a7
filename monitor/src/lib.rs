//! egress-monitor's agent as a library: the binary (`main.rs`) only parses the command line.
//! Modules follow one packet to one alert: probe (kernel) -> flows -> enrich -> policy ->
//! alerts -> sinks; config and classes say what to classify; cli holds one file per subcommand.

pub mod alerts;
pub mod cgroup;
pub mod classes;
pub mod cli;
pub mod config;
pub mod enrich;
pub mod flows;
pub mod policy;
pub mod probe;
pub mod sinks;
