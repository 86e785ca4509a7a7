//! `cargo xtask`: everything a newcomer needs on a fresh machine, in two commands
//! (`cargo xtask run`, `cargo xtask test`), plus the steps they are made of.

mod bench;
mod fuzz;
mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set up, build, run and test egress-monitor"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install whatever is missing (apt packages, rust-src, bpf-linker); safe to run again
    Setup,
    /// Set up, then build the agent with its kernel programs
    Build {
        /// Optimised build
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, and run the agent on examples/egress-monitor.toml until Ctrl-C
    Run {
        /// Configuration file to run with
        #[arg(long, default_value = "examples/egress-monitor.toml")]
        config: PathBuf,
        /// Optimised build
        #[arg(long)]
        release: bool,
    },
    /// Set up, build (release), and write the Debian package to target/debian/
    /// (egress-monitor_<version>_amd64.deb)
    Package,
    /// Set up, build, and run every unit and integration test (needs root)
    Test {
        /// Only run tests whose name contains this
        filter: Option<String>,
    },
    /// Set up, then run each fuzz target (config, cloud ranges, MMDB, API queries, kernel
    /// events, DNS answers) for a while; fails on a crash and names its input
    Fuzz {
        /// Seconds per target
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target
        #[arg(long)]
        target: Option<String>,
    },
    /// Set up, build (release), and measure what the monitor costs; writes BENCHMARKS.md and
    /// target/bench/results.json (needs root)
    Bench {
        /// Fewer and shorter rounds (about three minutes once built); the table goes to
        /// target/bench/BENCHMARKS.quick.md, not BENCHMARKS.md
        #[arg(long)]
        quick: bool,
        /// Only these steps (cost, throughput, connections, datagrams, enforce, flow-rate,
        /// active-flows, api-load, store, lookups); BENCHMARKS.md is written only by a full run
        /// of every step
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match task {
        Task::Setup => setup::run(),
        Task::Build { release } => {
            setup::run()?;
            build(release)
        }
        Task::Run { config, release } => {
            setup::run()?;
            build(release)?;
            run_agent(&config, release)
        }
        Task::Package => {
            setup::run()?;
            build(true)?;
            package::build(&root).map(drop)
        }
        Task::Test { filter } => {
            setup::run()?;
            test(filter.as_deref())
        }
        Task::Fuzz { seconds, target } => {
            setup::run()?;
            let results = fuzz::run(&root, seconds, target.as_deref(), false)?;
            if target.is_none() {
                fuzz::write_readme(&root, seconds, &results)?;
            }
            Ok(())
        }
        Task::Bench { quick, only } => {
            setup::run()?;
            require_root("the benchmarks")?;
            build(true)?;
            // The criterion benchmark is built before the clock starts.
            sh(cargo().args(bench::LOOKUP_BENCH).arg("--no-run"))?;
            sh(cargo().args(bench::STORE_BENCH).arg("--no-run"))?;
            bench::run_bench(&root, quick, &only)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

/// Runs a command, echoing it first, and fails with its exit status.
pub fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: $ {}", show(cmd));
    let status = cmd.status().with_context(|| format!("starting {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // bpf-linker is installed into cargo's bin dir; make sure the eBPF build finds it.
    c.env("PATH", setup::path_with_cargo_bin());
    c
}

fn build(release: bool) -> anyhow::Result<()> {
    let mut c = cargo();
    c.args(["build", "--package", "monitor", "--package", "em-traffic", "--bins"]);
    if release {
        c.arg("--release");
    }
    sh(&mut c)
}

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} loads eBPF programs and needs root: run `sudo -E cargo xtask ...`");
    }
    Ok(())
}

fn run_agent(config: &Path, release: bool) -> anyhow::Result<()> {
    require_root("the agent")?;
    let bin = Path::new("target").join(if release { "release" } else { "debug" }).join("egress-monitor");
    let mut cmd = Command::new(&bin);
    cmd.arg("run").arg("--config").arg(config);
    eprintln!("xtask: $ {}  (Ctrl-C stops it and detaches its programs)", show(&cmd));
    let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
    // Ctrl-C goes to the whole foreground group: let the agent handle it and wait for it.
    // SAFETY: ignoring SIGINT in this process only; the child was spawned with the default.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = child.wait()?;
    if !status.success() {
        bail!("the agent exited with {status}");
    }
    Ok(())
}

fn test(filter: Option<&str>) -> anyhow::Result<()> {
    require_root("the integration tests")?;
    // The integration tests start the real agent binary and the traffic helper: build them first,
    // and the Debian package that the packaging tests install.
    build(false)?;
    build(true)?;
    package::build(&workspace_root())?;
    let mut unit = cargo();
    unit.args(["test", "--package", "monitor-common", "--package", "monitor", "--package", "xtask"]);
    if let Some(f) = filter {
        unit.arg(f);
    }
    sh(&mut unit)?;
    let mut integration = cargo();
    integration.args(["test", "--package", "integration-tests", "--"]);
    if let Some(f) = filter {
        integration.arg(f);
    }
    // The tests mostly wait on the network and the agent; run a few at a time.
    integration.arg("--test-threads=4");
    sh(&mut integration)?;
    // Each fuzz target for a short while: a crash fails the run and names its input.
    if filter.is_none() {
        fuzz::run(&workspace_root(), 15, None, true)?;
    }
    Ok(())
}
