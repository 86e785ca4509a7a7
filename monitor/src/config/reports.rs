//! The `[reports]` schema: whether the agent writes residency reports by itself, and how often.

use serde::Deserialize;

use super::Interval;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportsConfig {
    /// Write a signed residency report of each period this long (from the end of the previous
    /// report) into state_dir/reports/; none: only `egress-monitor report` makes them.
    pub interval: Option<Interval>,
}
