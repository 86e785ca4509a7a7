//! egress-monitor: parse the command line and hand off to a command.

use std::process::ExitCode;

use clap::Parser;
use monitor::cli;

fn main() -> ExitCode {
    // Internal: the kernel's task_struct offsets, asked by the agent in a process of its own.
    if std::env::args().nth(1).as_deref() == Some(monitor::probe::btf::SUBCOMMAND) {
        return if monitor::probe::btf::print_task_offsets() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let args = cli::Cli::parse();
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
