//! The start-up step `run`, `check-config` and `lookup` share: open every file the
//! configuration names (databases, range files, secrets, CA files, tokens) and build the parts
//! from it, so a bad file is refused the same way by all three, before anything is attached.

use anyhow::anyhow;

use crate::{api, config::Config, enrich::Enricher, export::clickhouse::ClickHouse, policy::Policy, sinks};

/// What places and judges destinations (all `lookup` needs).
pub struct Places {
    pub enricher: Enricher,
    pub policy: Policy,
}

/// Everything `run` starts from, checked.
pub struct Prepared {
    pub places: Places,
    pub sinks: sinks::Prepared,
    pub token: Option<String>,
    pub clickhouse: Option<ClickHouse>,
}

/// Opens the geolocation sources and builds the policy.
pub fn places(config: &Config) -> anyhow::Result<Places> {
    let enricher =
        Enricher::open(&config.enrich_options()).map_err(|e| anyhow!("{}: {e:#}", config.origin))?;
    Ok(Places { enricher, policy: config.policy() })
}

/// Opens and checks everything the configuration names.
pub fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    let in_file = |e: anyhow::Error| anyhow!("{}: {e:#}", config.origin);
    let places = places(config)?;
    let sinks = sinks::prepare(&config.effective_sinks()).map_err(in_file)?;
    let token = api::read_token(&config.api_options()).map_err(in_file)?;
    let clickhouse = config.clickhouse_options().map(|o| ClickHouse::new(&o)).transpose().map_err(in_file)?;
    Ok(Prepared { places, sinks, token, clickhouse })
}
