//! What packages ship beside the binary, generated from the command line's own definitions so
//! they cannot drift from it: shell completions and manual pages.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use super::Cli;

/// The completion script for `shell`, on stdout.
pub fn completions(shell: clap_complete::Shell) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "egress-monitor", &mut std::io::stdout());
}

/// `egress-monitor.8` and `egress-monitor-<command>.8` for each visible command, in `dir`.
pub fn manpages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    write_page(dir, "egress-monitor", cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let name = format!("egress-monitor-{}", sub.get_name());
        // The page's synopsis names the command as it is typed.
        let page = sub.clone().name(name.clone()).bin_name(format!("egress-monitor {}", sub.get_name()));
        write_page(dir, &name, page)?;
    }
    Ok(())
}

fn write_page(dir: &Path, name: &str, cmd: clap::Command) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.8"));
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .title(name.to_uppercase())
        .section("8")
        .manual("System Administration")
        .source(format!("egress-monitor {}", env!("CARGO_PKG_VERSION")))
        .render(&mut out)
        .with_context(|| format!("rendering {}", path.display()))?;
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
}
