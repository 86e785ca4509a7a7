//! egress-monitor: parse the command line and hand off to a command.

mod cgroup;
mod classes;
mod cli;
mod config;
mod flows;
mod probe;
mod sinks;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging();
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
