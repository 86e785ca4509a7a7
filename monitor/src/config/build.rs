//! The configuration builds the components: each domain module takes its own options type,
//! and this is the one place that turns the checked TOML into them (the way ripgrep's argument
//! layer alone turns flags into library objects). Errors the components raise about what the
//! configuration names are prefixed with the configuration file here.

use std::{path::PathBuf, sync::Arc};

use super::{Config, SinkConfig};
use crate::{
    alerts::AlertBook,
    api::ApiOptions,
    classes::ClassSelector,
    enrich::{EnrichOptions, Site, SourceFile},
    export::clickhouse::ClickHouseOptions,
    flows::TableSettings,
    names::NameOptions,
    policy::{ClassPolicy, Policy},
    probe::ProbeOptions,
    sinks::OutboxOptions,
    store::StoreSettings,
};

/// How often the store prunes rows past their retention.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Config {
    /// Where the enricher reads its sources from.
    pub fn enrich_options(&self) -> EnrichOptions {
        let g = &self.geoip;
        let file =
            |label: String, p: &toml::Spanned<PathBuf>| SourceFile { label, path: p.get_ref().clone() };
        EnrichOptions {
            country_db: g.country_db.as_ref().map(|p| file("geoip.country_db".into(), p)),
            city_db: g.city_db.as_ref().map(|p| file("geoip.city_db".into(), p)),
            asn_db: g.asn_db.as_ref().map(|p| file("geoip.asn_db".into(), p)),
            cloud_ranges: g
                .cloud_ranges
                .iter()
                .enumerate()
                .map(|(i, p)| file(format!("geoip.cloud_ranges[{i}]"), p))
                .collect(),
            sites: self
                .sites
                .iter()
                .map(|s| Site {
                    name: Arc::from(s.name.get_ref().0.as_str()),
                    country: Arc::from(s.country.get_ref().0.as_str()),
                    cidrs: s.cidrs.iter().map(|c| c.get_ref().0).collect(),
                })
                .collect(),
        }
    }

    /// Every class's residency rules, by class id.
    pub fn policy(&self) -> Policy {
        Policy::new(
            self.classes
                .iter()
                .map(|c| ClassPolicy {
                    name: Arc::from(c.name.get_ref().0.as_str()),
                    approved: c.approved.iter().map(|e| e.get_ref().clone()).collect(),
                    unknown: c.unknown,
                    internal: c.internal,
                    severity: c.severity,
                })
                .collect(),
        )
    }

    /// What selects each class's traffic, in class-id order.
    pub fn class_selectors(&self) -> Vec<ClassSelector> {
        self.classes
            .iter()
            .map(|c| ClassSelector {
                name: c.name.get_ref().0.clone(),
                cgroups: c.cgroups.iter().map(|p| p.get_ref().0.clone()).collect(),
                uids: c.uids.iter().map(|u| *u.get_ref()).collect(),
            })
            .collect()
    }

    /// Each class's mode, in class-id order.
    pub fn class_modes(&self) -> Vec<super::Mode> {
        self.classes.iter().map(|c| *c.mode.get_ref()).collect()
    }

    /// Options of the kernel side, for the cgroup v2 root at `cgroup_root`.
    pub fn probe_options(&self, cgroup_root: &std::path::Path) -> ProbeOptions {
        ProbeOptions {
            max_flows: self.agent.max_flows(),
            ring_buffer_size: self.agent.ring_buffer_size.0,
            dns_ring_buffer_size: self.dns.ring_buffer_size.0,
            kernel_log: false,
            pin_dir: self.agent.pin_dir.clone(),
            cgroup_root: cgroup_root.to_owned(),
        }
    }

    /// The name records give this host: `agent.host`, else the system's host name.
    pub fn host_name(&self) -> String {
        if let Some(h) = &self.agent.host {
            return h.clone();
        }
        let mut buf = [0u8; 256];
        // SAFETY: buffer and its length.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
            let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        "localhost".into()
    }

    /// SHA-256 of the configuration's text (the embedded defaults: of an empty text), as
    /// reports name the configuration in force.
    pub fn digest(&self) -> String {
        crate::reports::sha256(self.text.as_bytes())
    }

    /// This configuration as the store records it (and reports name it), put in force now for
    /// `cause`; `sources`: the places (as the enricher describes them).
    pub fn recorded(
        &self,
        cause: &str,
        sources: Vec<(String, String)>,
    ) -> crate::store::configs::Configuration {
        crate::store::configs::Configuration {
            at_ms: chrono::Utc::now().timestamp_millis(),
            cause: cause.into(),
            digest: self.digest(),
            classes: self.class_names(),
            sources,
        }
    }

    /// The agent's own reports (`[reports] interval`), when set.
    /// `sources`: the places in force (as the agent's enricher describes them).
    pub fn report_schedule(
        &self,
        sources: Vec<(String, String)>,
    ) -> Option<crate::reports::schedule::Schedule> {
        let interval = self.reports.interval.as_ref()?.0;
        Some(crate::reports::schedule::Schedule {
            interval,
            state_dir: self.agent.state_dir.clone(),
            host: self.host_name(),
            own: self.recorded("report", sources),
            bucket_secs: self.store.bucket.get_ref().0.as_secs().max(1) as i64,
        })
    }

    /// How long names are valid and how many are kept.
    pub fn name_options(&self) -> NameOptions {
        NameOptions { grace: self.dns.grace.0, max_names: self.dns.max_names.0 as usize }
    }

    pub fn table_settings(&self) -> TableSettings {
        let a = &self.agent;
        TableSettings {
            flush_interval: a.flush_interval(),
            idle_timeout: a.idle_timeout.0,
            close_grace: a.close_grace.0,
        }
    }

    pub fn alert_book(&self) -> AlertBook {
        AlertBook::new(self.alerts.cooldown.0, self.agent.flush_interval())
    }

    pub fn store_settings(&self) -> StoreSettings {
        StoreSettings {
            bucket: self.store.bucket.get_ref().0,
            retention: self.store.retention.0,
            prune_every: PRUNE_EVERY,
        }
    }

    pub fn api_options(&self) -> ApiOptions {
        ApiOptions {
            socket: self.api.socket.clone(),
            listen: self.api.listen.as_ref().map(|l| *l.get_ref()),
            token_file: self.api.token_file.as_ref().map(|t| t.get_ref().clone()),
        }
    }

    pub fn clickhouse_options(&self) -> Option<ClickHouseOptions> {
        self.export.clickhouse.as_ref().map(|c| ClickHouseOptions {
            url: c.url.0.clone(),
            database: c.database.clone(),
            user: c.user.clone(),
            password_file: c.password_file.clone(),
            interval: c.interval.0,
            timeout: c.timeout.0,
            bucket: self.store.bucket.get_ref().0,
            state_dir: self.agent.state_dir.clone(),
        })
    }

    /// Where the alert outbox lives, and how many alerts it holds.
    pub fn outbox_options(&self) -> OutboxOptions {
        OutboxOptions { dir: self.agent.state_dir.clone(), max: *self.alerts.outbox_max.get_ref() as u64 }
    }

    /// The sinks to build; stdout when none is configured.
    pub fn effective_sinks(&self) -> Vec<SinkConfig> {
        if self.sinks.is_empty() { vec![SinkConfig::Stdout {}] } else { self.sinks.clone() }
    }
}
