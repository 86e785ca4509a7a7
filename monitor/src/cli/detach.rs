//! `egress-monitor detach`: remove the pinned kernel programs and maps, so nothing of the
//! agent is left in the kernel (package removal and tests use it).

use std::process::ExitCode;

use anyhow::Context;

use super::ConfigArg;
use crate::{probe::pins, state};

pub(super) fn detach(arg: &ConfigArg) -> anyhow::Result<ExitCode> {
    let config = arg.load()?;
    let dir = &config.agent.pin_dir;
    // A running agent holds the programs' links open: removing the pins would not detach them,
    // and it would go on counting into maps nobody can adopt. Its state lock says it runs.
    let _lock = state::lock(&config.agent.state_dir)
        .context("an agent may be running with this configuration: stop it first (its programs stay pinned), then detach")?;
    let removed = pins::remove_all(dir)?;
    if removed.sets == 0 && removed.maps == 0 {
        println!("{}: nothing pinned", dir.display());
    } else {
        println!(
            "{}: removed {} program set(s): {} program link(s) and {} map(s); counts no agent had reported are discarded",
            dir.display(),
            removed.sets,
            removed.links,
            removed.maps
        );
    }
    Ok(ExitCode::SUCCESS)
}
