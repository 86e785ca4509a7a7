//! `egress-monitor check-config`: validate and say what the configuration selects.

use std::process::ExitCode;

use super::ConfigArg;

pub(super) fn check(arg: &ConfigArg) -> ExitCode {
    let checked = arg.load().map_err(anyhow::Error::from).and_then(|config| {
        // The files it names must load too (databases, range files, secrets), as at start.
        super::prepare::prepare(&config)?;
        Ok(config)
    });
    match checked {
        Ok(config) => {
            let origin = &config.origin;
            let n = |count: usize, one: &str, many: &str| {
                format!("{count} {}", if count == 1 { one } else { many })
            };
            println!(
                "{origin}: ok ({}, {}, {}, {})",
                n(config.classes.len(), "class", "classes"),
                n(config.sites.len(), "site", "sites"),
                n(config.geoip.cloud_ranges.len(), "cloud range file", "cloud range files"),
                n(config.effective_sinks().len(), "sink", "sinks"),
            );
            // Allowed (a cgroup may appear later, and is classified then), but likely a typo.
            match crate::cgroup::detect_root() {
                Ok(root) => {
                    for (key, line, dir) in config.missing_cgroups(&root) {
                        let at = if line > 0 { format!("{origin}:{line}: ") } else { String::new() };
                        println!(
                            "warning: {at}{key}: no cgroup at {} (yet): the class selects nothing there until it is created",
                            dir.display()
                        );
                    }
                }
                Err(e) => println!("warning: cannot check the class cgroups: {e:#}"),
            }
            for (i, class) in config.classes.iter().enumerate() {
                if class.approved.is_empty() {
                    println!(
                        "note: classes[{i}] ({}) approves no destination: every flow of it to a public address is a violation",
                        class.name.get_ref().0
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
