//! Residency policy: each data class lists where it may go; a flow of that class to anywhere
//! else is a violation. Turns (class, destination) into a verdict, and explains it on request.

mod approved;
pub mod compile;

use std::{net::IpAddr, sync::Arc};

pub use approved::ApprovedEntry;
use serde::{Deserialize, Serialize};

use crate::record::Destination;
pub use crate::record::{Severity, VerdictKind};

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

/// A verdict and what decided it. The sentence for people is written only when asked for
/// ([`ClassPolicy::explain`]): verdicts are computed for every flow record, reasons are read
/// for alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub kind: VerdictKind,
    pub because: Because,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Because {
    /// The flow carries no data class.
    Unclassified,
    /// An internal destination, judged by the class's `internal` setting.
    Internal,
    /// The class's `approved` entry at this index matches.
    Approved(usize),
    /// No geolocation data at all, judged by the class's `unknown` setting.
    Unknown,
    /// Placed, and no approved entry matches.
    NotApproved,
}

impl Verdict {
    fn new(because: Because, decision: Decision) -> Self {
        let kind = match decision {
            Decision::Allow => VerdictKind::Allowed,
            Decision::Violation => VerdictKind::Violation,
        };
        Verdict { kind, because }
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
    /// The rules of each class; class id `i + 1` is `classes[i]`.
    pub fn new(classes: Vec<ClassPolicy>) -> Policy {
        Policy { classes }
    }

    pub fn class(&self, class_id: u32) -> Option<&ClassPolicy> {
        class_id.checked_sub(1).and_then(|i| self.classes.get(i as usize))
    }

    pub fn classes(&self) -> &[ClassPolicy] {
        &self.classes
    }

    /// The verdict for a flow of `class_id` (0 = unclassified) to a destination placed at `d`.
    pub fn evaluate(&self, class_id: u32, d: &Destination) -> Verdict {
        match self.class(class_id) {
            None => Verdict { kind: VerdictKind::Unclassified, because: Because::Unclassified },
            Some(c) => c.evaluate(d),
        }
    }
}

impl ClassPolicy {
    pub fn evaluate(&self, d: &Destination) -> Verdict {
        if d.internal {
            return Verdict::new(Because::Internal, self.internal);
        }
        if let Some(i) = self.approved.iter().position(|e| e.matches(d)) {
            return Verdict::new(Because::Approved(i), Decision::Allow);
        }
        if !d.has_location() {
            return Verdict::new(Because::Unknown, self.unknown);
        }
        Verdict::new(Because::NotApproved, Decision::Violation)
    }

    /// Why this class got `verdict` for a flow to `ip`, placed at `d`, in one sentence.
    pub fn explain(&self, verdict: &Verdict, ip: IpAddr, d: &Destination) -> String {
        let class = &self.name;
        let allowed = verdict.kind == VerdictKind::Allowed;
        match verdict.because {
            Because::Unclassified => "the flow carries no data class".into(),
            Because::Internal if allowed => format!("destination {ip} is internal (internal = \"allow\")"),
            Because::Internal => format!(
                "destination {ip} is an internal address outside every configured site, and class {class} has internal = \"violation\""
            ),
            Because::Approved(i) => match self.approved.get(i) {
                Some(entry) => format!("{} {entry} is approved for class {class}", noun(entry)),
                None => format!("approved for class {class}"),
            },
            Because::Unknown if allowed => {
                format!("no geolocation data for destination {ip} (unknown = \"allow\")")
            }
            Because::Unknown => {
                format!(
                    "no geolocation data for destination {ip}, and class {class} has unknown = \"violation\""
                )
            }
            Because::NotApproved => format!("{} is not approved for class {class}", describe(d)),
        }
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
