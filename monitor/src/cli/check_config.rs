//! `egress-monitor check-config`: validate and say what the configuration selects.

use std::process::ExitCode;

use super::ConfigArg;
use crate::config::Origin;

pub(super) fn check(arg: &ConfigArg) -> ExitCode {
    match arg.load() {
        Ok(config) => {
            let origin = match &arg.config {
                Some(p) => Origin::File(p.clone()),
                None if std::path::Path::new(crate::config::DEFAULT_CONFIG_PATH).exists() => {
                    Origin::File(crate::config::DEFAULT_CONFIG_PATH.into())
                }
                None => Origin::Embedded,
            };
            println!(
                "{origin}: ok ({} class{}, {} sink{})",
                config.classes.len(),
                if config.classes.len() == 1 { "" } else { "es" },
                config.effective_sinks().len(),
                if config.effective_sinks().len() == 1 { "" } else { "s" },
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
