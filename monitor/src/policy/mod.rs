//! Residency policy: each data class lists where it may go; a flow of that class to anywhere
//! else is a violation. Turns (class, destination) into a verdict with a reason a person can read.

mod approved;

use std::{net::IpAddr, sync::Arc};

pub use approved::ApprovedEntry;
use serde::{Deserialize, Serialize};

use crate::{config::Config, enrich::Destination};

/// What to do with a kind of destination the approved list cannot speak for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Violation,
}

impl Decision {
    pub fn allow() -> Self {
        Decision::Allow
    }
    pub fn violation() -> Self {
        Decision::Violation
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    #[default]
    High,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// The outcome for one flow, as records show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictKind {
    Allowed,
    Violation,
    Unclassified,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub kind: VerdictKind,
    /// Why: for a violation, what is not approved; for an allowed flow, what approved it.
    pub reason: String,
}

impl Verdict {
    fn allowed(reason: String) -> Self {
        Verdict { kind: VerdictKind::Allowed, reason }
    }
    fn violation(reason: String) -> Self {
        Verdict { kind: VerdictKind::Violation, reason }
    }
}

/// One class's rules.
#[derive(Debug, Clone)]
pub struct ClassPolicy {
    pub name: Arc<str>,
    pub approved: Vec<ApprovedEntry>,
    pub unknown: Decision,
    pub internal: Decision,
    pub severity: Severity,
}

/// Every class's rules, by class id (1-based, as the kernel stores it).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    classes: Vec<ClassPolicy>,
}

impl Policy {
    pub fn from_config(config: &Config) -> Policy {
        let classes = config
            .classes
            .iter()
            .map(|c| ClassPolicy {
                name: Arc::from(c.name.get_ref().0.as_str()),
                approved: c.approved.iter().map(|e| e.get_ref().clone()).collect(),
                unknown: c.unknown,
                internal: c.internal,
                severity: c.severity,
            })
            .collect();
        Policy { classes }
    }

    pub fn class(&self, class_id: u32) -> Option<&ClassPolicy> {
        class_id.checked_sub(1).and_then(|i| self.classes.get(i as usize))
    }

    pub fn classes(&self) -> &[ClassPolicy] {
        &self.classes
    }

    /// The verdict for a flow of `class_id` (0 = unclassified) to `ip`, placed at `d`.
    pub fn evaluate(&self, class_id: u32, ip: IpAddr, d: &Destination) -> Verdict {
        match self.class(class_id) {
            None => {
                Verdict { kind: VerdictKind::Unclassified, reason: "the flow carries no data class".into() }
            }
            Some(c) => c.evaluate(ip, d),
        }
    }
}

impl ClassPolicy {
    pub fn evaluate(&self, ip: IpAddr, d: &Destination) -> Verdict {
        let class = &self.name;
        if d.internal {
            return match self.internal {
                Decision::Allow => {
                    Verdict::allowed(format!("destination {ip} is internal (internal = \"allow\")"))
                }
                Decision::Violation => Verdict::violation(format!(
                    "destination {ip} is an internal address outside every configured site, and class {class} has internal = \"violation\""
                )),
            };
        }
        if let Some(entry) = self.approved.iter().find(|e| e.matches(d)) {
            return Verdict::allowed(format!("{} {entry} is approved for class {class}", noun(entry)));
        }
        if !d.has_location() {
            return match self.unknown {
                Decision::Allow => Verdict::allowed(format!(
                    "no geolocation data for destination {ip} (unknown = \"allow\")"
                )),
                Decision::Violation => Verdict::violation(format!(
                    "no geolocation data for destination {ip}, and class {class} has unknown = \"violation\""
                )),
            };
        }
        Verdict::violation(format!("{} is not approved for class {class}", describe(d)))
    }
}

fn noun(e: &ApprovedEntry) -> &'static str {
    match e {
        ApprovedEntry::Country(_) => "destination country",
        ApprovedEntry::Subdivision(_) => "destination subdivision",
        ApprovedEntry::CloudRegion { .. } => "cloud region",
        ApprovedEntry::Asn(_) => "destination network",
        ApprovedEntry::Site(_) => "site",
    }
}

/// The most specific thing known about a destination: its site, else its cloud region, else
/// its country, else its network.
fn describe(d: &Destination) -> String {
    let country = d.country.as_deref();
    let in_country = |s: String| match country {
        Some(c) => format!("{s} ({c})"),
        None => s,
    };
    if let Some(site) = &d.site {
        return in_country(format!("destination site {site}"));
    }
    if let (Some(provider), Some(region)) = (d.cloud_provider, &d.cloud_region) {
        return in_country(format!("destination cloud region {}:{region}", provider.name()));
    }
    if let Some(c) = country {
        return format!("destination country {c}");
    }
    match (&d.asn, &d.as_org) {
        (Some(n), Some(org)) => format!("destination network AS{n} ({org})"),
        (Some(n), None) => format!("destination network AS{n}"),
        _ => "destination".into(),
    }
}

#[cfg(test)]
mod tests;
