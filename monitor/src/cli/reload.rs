//! SIGHUP (part of `run`): the configuration file read again and applied whole, or not at all.
//! Everything the new file names is opened and checked first (databases, range files, sink
//! files), as at start; then the places, the policy and the kernel's verdict tables are put in
//! force together. The caller then writes the new classes into the kernel's class maps and
//! starts the new sinks. The kernel counts throughout: no program is detached or replaced.

use std::{path::Path, sync::Arc};

use anyhow::anyhow;

use crate::{
    classes::ClassSelectors,
    cli::{
        enforcing::Enforcer,
        prepare::{Places, places},
    },
    config::Config,
    pipeline::Pipeline,
    probe::Probe,
    sinks,
    status::VerdictTablesStatus,
};

/// A reload put in force: what the caller applies next.
pub struct Reloaded {
    pub config: Config,
    pub enforcer: Enforcer,
    pub tables: Option<VerdictTablesStatus>,
    /// The classes' selectors as the new file has them (not scanned yet).
    pub selectors: ClassSelectors,
    /// The new file's sinks, built and checked.
    pub sinks: sinks::Prepared,
}

/// Reads `config`'s file again and, when it loads and changes only what a reload applies,
/// puts its places, policy and class names in force and compiles the verdict tables. On an
/// error nothing has changed; the message is the one `check-config` prints for a bad file.
pub fn reload(
    config: &Config,
    root: &Path,
    probe: &mut Probe,
    pipeline: &mut Pipeline,
) -> anyhow::Result<Reloaded> {
    let new = config.reload().map_err(anyhow::Error::msg)?;
    let Places { enricher, policy } = places(&new)?;
    let sinks = sinks::prepare(&new.effective_sinks()).map_err(|e| anyhow!("{}: {e:#}", new.origin))?;
    let enforcer = Enforcer::new(&new.class_modes());
    let old_enricher = std::mem::replace(&mut pipeline.enricher, enricher);
    let old_policy = pipeline.replace_policy(policy);
    let tables = match enforcer.install(probe, pipeline) {
        Ok(tables) => tables,
        Err(e) => {
            pipeline.enricher = old_enricher;
            pipeline.replace_policy(old_policy);
            return Err(e);
        }
    };
    pipeline.set_class_names(new.class_names().into_iter().map(Arc::from).collect());
    let selectors = ClassSelectors::new(&new.class_selectors(), root);
    Ok(Reloaded { config: new, enforcer, tables, selectors, sinks })
}
