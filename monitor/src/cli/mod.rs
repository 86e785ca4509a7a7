//! The command line: one file per subcommand.

mod alerts;
mod check_config;
mod detach;
mod enforcing;
mod flows;
mod generate;
mod logging;
mod lookup;
mod output;
mod prepare;
mod reload;
mod report;
mod run;
mod start;
mod status;
mod systemd;
mod top;

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, ConfigSource, LogFormat};

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
    /// Log lines on stderr: text (under systemd, without timestamps and with the journal's
    /// priorities) or json (one object per line) [default: agent.log_format of the
    /// configuration, else text]
    #[arg(long, value_enum, global = true, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel programs and report flows until SIGINT or SIGTERM; SIGHUP reloads the
    /// configuration (needs root)
    #[command(
        long_about = "Load the kernel programs (or adopt the ones a previous agent left pinned), attach them to the cgroup v2 root, and report flows to the sinks until SIGINT or SIGTERM. The programs stay attached and counting after the agent exits, so that the next agent reports what happened meanwhile; `egress-monitor detach` removes them. Needs root (or the capabilities the README lists).\n\nSIGHUP re-reads the configuration file and applies its classes (selectors and policies; new classes after the existing ones), sites, [geoip] sources and sinks, all together, while the kernel goes on counting. A file with an error is refused with the message check-config prints; a change to [agent], [dns], [alerts], [store], [api], [export] or [reports], or classes removed, renamed or reordered, are refused with the keys named (restart for those). A refused file changes nothing.\n\nUnder systemd (Type=notify) the agent sends READY=1 once its programs are attached and the pinned maps adopted, RELOADING=1 and READY=1 around a reload, feeds the watchdog at every sweep, and logs each line with the journal's priority and without a timestamp.\n\nFiles: /etc/egress-monitor/egress-monitor.toml (the configuration), /var/lib/egress-monitor (agent.state_dir: the store, the alert outbox, the host key host.key and reports/), /run/egress-monitor/api.sock (api.socket, mode 0660), /sys/fs/bpf/egress-monitor (agent.pin_dir: the pinned programs and maps)."
    )]
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
    /// A residency report of a period from the store: where each class's bytes went, its
    /// violations, and what the agent could not see; signed with the host key and chained
    #[command(
        long_about = "A residency report of a period, from the agent's store: per class, the bytes, packets and flows by destination (country, cloud region, company site, internal, unknown), its violations with their alert ids and the alerts of attempts the kernel blocked; the host, agent version, and every configuration the agent counted under in the period (its digest, classes and databases, as the agent recorded them); and the coverage: when no agent ran (from the heartbeat the agent records in the store) and whether the kernel programs went on counting meanwhile, kernel losses, store drops and geolocation errors. It carries a digest of the store rows it sums and the digest of the host's previous report, and is signed with the host's Ed25519 key (state_dir/host.key, created at first use, mode 0600). Every figure is of the same whole store buckets (those over when the report is made), so consecutive reports count nothing twice. Each report is recorded in the store, numbered after the previous one, and kept as state_dir/reports/report-<seq>.json beside the agent's periodic ones. Reads the store directly: run it as root on the host, with or without the agent running.",
        after_help = "Examples:
  egress-monitor report --since 2026-11-01T00:00:00Z --until 2026-12-01T00:00:00Z > november.json
  egress-monitor report --since 7d --class us-user-data -o html > week.html
  egress-monitor verify november.json --key host.pub"
    )]
    Report(report::ReportArgs),
    /// Print the host's public key (the form `verify --key` reads); creates the key pair in
    /// state_dir on first use
    Key(ConfigArg),
    /// Check reports without trusting the host: signatures, the chain, the figures, and with
    /// --store the rows they sum; exits 1 naming each failure
    Verify(report::VerifyArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout
    #[command(
        after_help = "Example:\n  egress-monitor completions bash > /etc/bash_completion.d/egress-monitor"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (egress-monitor.8 and one per command) into a directory
    #[command(hide = true)]
    Manpages {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
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

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let log_format = cli.log_format;
    if !matches!(cli.command, Command::Run(_)) {
        logging::init(log_format.unwrap_or_default());
    }
    match cli.command {
        Command::Run(arg) => {
            // The configuration may set the log format: read first (an error goes to stderr
            // as it is).
            let config = arg.load()?;
            logging::init(log_format.unwrap_or(config.agent.log_format));
            run::run(config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            generate::completions(shell);
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpages { dir } => {
            generate::manpages(&dir)?;
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
        Command::Report(args) => report::report(&args),
        Command::Key(arg) => report::key(&arg),
        Command::Verify(args) => report::verify(&args),
    }
}
