//! The command line: one file per subcommand.

mod check_config;
mod run;

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, ConfigSource};

#[derive(Parser)]
#[command(
    name = "egress-monitor",
    version,
    about = "Proves with the kernel where classified data goes",
    long_about = "egress-monitor counts every outbound flow in the kernel (eBPF on the cgroup v2 hierarchy), \
tags it with the data class of the workload that sent it, attributes it to its process, and reports \
flow records as JSON lines.\n\nLogging goes to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change its level.",
    after_help = "Run `egress-monitor <COMMAND> --help` for the options of each command."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel programs and report flows until SIGINT or SIGTERM (needs root)
    Run(ConfigArg),
    /// Validate a configuration file; exits 1 and names the line, key and value on error
    CheckConfig(ConfigArg),
}

#[derive(Args)]
struct ConfigArg {
    /// Configuration file [default: /etc/egress-monitor/egress-monitor.toml if it exists,
    /// else the built-in defaults]
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn load(&self) -> Result<Config, ConfigError> {
        match &self.config {
            Some(p) => Config::load(ConfigSource::Explicit(p)),
            None => Config::load(ConfigSource::Default),
        }
    }
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(arg) => {
            let config = arg.load()?;
            run::run(config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(arg) => Ok(check_config::check(&arg)),
    }
}
