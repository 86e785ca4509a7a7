//! egress-monitor: parse the command line and hand off to a command.

use std::process::ExitCode;

use clap::Parser;
use monitor::cli;

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
