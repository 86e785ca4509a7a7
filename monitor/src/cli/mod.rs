//! The command line: one file per subcommand.

mod alerts;
mod check_config;
mod detach;
mod enforcing;
mod flows;
mod lookup;
mod output;
mod prepare;
mod run;
mod status;
mod top;

use std::{io::IsTerminal, net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, ConfigSource};

#[derive(Parser)]
#[command(
    name = "egress-monitor",
    version,
    about = "Proves with the kernel where classified data goes",
    long_about = "egress-monitor counts every outbound flow in the kernel (eBPF on the cgroup v2 hierarchy), \
tags it with the data class of the workload that sent it, attributes it to its process, places its \
destination on the map (country, autonomous system, cloud region, company site), and raises an alert \
when a class's data leaves its approved regions. For a class in mode = \"enforce\", the kernel refuses \
it instead: connect() and sendto() fail with EPERM, and incoming connections from unapproved places are \
dropped.\n\nLogging goes to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change its level.",
    after_help = "Run `egress-monitor <COMMAND> --help` for the options of each command."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel programs and report flows until SIGINT or SIGTERM; SIGHUP reloads the
    /// classes' policies (needs root)
    Run(ConfigArg),
    /// Validate a configuration file; exits 1 and names the line, key and value on error
    CheckConfig(ConfigArg),
    /// Remove the kernel programs and maps the agent leaves pinned (agent.pin_dir); stop the
    /// agent first
    #[command(
        long_about = "Remove the kernel programs and maps the agent leaves pinned under agent.pin_dir (default /sys/fs/bpf/egress-monitor). The programs keep counting (and enforcing classes keep being refused) when the agent stops, so that the next agent reports what happened meanwhile; detach ends that, enforcement included, and discards the counts no agent has reported. Refuses while an agent runs with the same state directory: stop it first."
    )]
    Detach(ConfigArg),
    /// Where is an address, and may each class send there? (no daemon needed)
    #[command(
        after_help = "Examples:\n  egress-monitor lookup 175.16.199.1 2001:db8::1 --config /etc/egress-monitor/egress-monitor.toml\n  egress-monitor lookup 8.8.8.8 -o json | jq .destination.country"
    )]
    Lookup(LookupArgs),
    /// Flow summaries from a running agent: bytes and packets per flow or per group
    #[command(
        after_help = "Examples:\n  egress-monitor flows --since 24h --class us-user-data --verdict violation --group-by country\n  egress-monitor flows --dst 10.60.0.0/16 --group-by process -o csv"
    )]
    Flows {
        #[command(flatten)]
        filters: flows::FlowArgs,
        #[command(flatten)]
        api: output::ApiArgs,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Alerts from a running agent, newest first
    #[command(after_help = "Example:\n  egress-monitor alerts --since 7d --severity critical,high")]
    Alerts {
        #[command(flatten)]
        filters: alerts::AlertArgs,
        #[command(flatten)]
        api: output::ApiArgs,
        #[command(flatten)]
        output: OutputArg,
    },
    /// A running agent's health: programs, flows, losses, sinks, databases
    Status {
        #[command(flatten)]
        api: output::ApiArgs,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Live view of where data goes now, refreshed like top (Ctrl-C stops)
    Top {
        #[command(flatten)]
        args: top::TopArgs,
        #[command(flatten)]
        api: output::ApiArgs,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Args, Debug)]
struct OutputArg {
    /// Output format: aligned table, JSON, or CSV
    #[arg(short, long, value_enum, default_value = "table")]
    output: output::Format,
}

#[derive(Args)]
struct LookupArgs {
    /// IPv4 or IPv6 addresses to place
    #[arg(value_name = "ADDRESS", required = true)]
    addresses: Vec<IpAddr>,
    #[command(flatten)]
    config: ConfigArg,
    /// Output format: tables, one JSON object per address (destination fields, and each class's
    /// verdict and what the kernel does: block or allow), or CSV (one row per address and class)
    #[arg(short, long, value_enum, default_value = "table")]
    output: output::Format,
    /// The same as -o json
    #[arg(long, hide = true, conflicts_with = "output")]
    json: bool,
}

#[derive(Args, Debug)]
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
        Command::Detach(arg) => detach::detach(&arg),
        Command::Lookup(args) => {
            let format = if args.json { output::Format::Json } else { args.output };
            lookup::lookup(&args.config.load()?, &args.addresses, format)
        }
        Command::Flows { filters, api, output } => flows::flows(&api, &filters, output.output),
        Command::Alerts { filters, api, output } => alerts::alerts(&api, &filters, output.output),
        Command::Status { api, output } => status::status(&api, output.output),
        Command::Top { args, api, output } => top::top(&api, &args, output.output),
    }
}
