//! `[[classes]]`: a data class, what selects its sockets, where it may go, and whether the
//! kernel only observes it or enforces its policy.

use std::{collections::HashMap, ops::Range};

use serde::Deserialize;
use toml::Spanned;

use super::{CgroupPath, ClassName, SiteConfig};
use crate::policy::{ApprovedEntry, Decision, Severity};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    pub name: Spanned<ClassName>,
    /// cgroup paths relative to the cgroup v2 root; each covers its descendants.
    #[serde(default)]
    pub cgroups: Vec<Spanned<CgroupPath>>,
    /// Socket owner uids whose traffic carries this class.
    #[serde(default)]
    pub uids: Vec<Spanned<u32>>,
    /// Where this class may go: countries, subdivisions, cloud regions, sites, ASNs.
    #[serde(default)]
    pub approved: Vec<Spanned<ApprovedEntry>>,
    /// Destinations with no geolocation data at all.
    #[serde(default = "Decision::violation")]
    pub unknown: Decision,
    /// Private, loopback and link-local destinations that match no site.
    #[serde(default = "Decision::allow")]
    pub internal: Decision,
    #[serde(default)]
    pub severity: Severity,
    /// `observe` (the default): violations are recorded and alerted. `enforce`: the kernel also
    /// refuses them (connect and sendto fail, incoming SYNs and datagrams are dropped).
    #[serde(default = "Mode::observe")]
    pub mode: Spanned<Mode>,
}

/// What the kernel does with a class's traffic to unapproved places.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Observe,
    Enforce,
}

impl Mode {
    fn observe() -> Spanned<Mode> {
        Spanned::new(0..0, Mode::Observe)
    }
}

/// Classes the kernel's verdict tables speak for: the first 64 may enforce.
pub const ENFORCING_CLASSES: usize = 64;

type Invalid = (Range<usize>, String, String);

/// Checks the classes against each other and the sites: names, selectors and sites used
/// twice or missing, and enforcement that could not work. Returns the names and their index.
pub(super) fn validate<'a>(
    classes: &'a [ClassConfig],
    sites: &[SiteConfig],
) -> Result<HashMap<&'a str, usize>, Invalid> {
    let sites_by_name: HashMap<&str, usize> =
        sites.iter().enumerate().map(|(i, s)| (s.name.get_ref().0.as_str(), i)).collect();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut cgroups: HashMap<&str, &str> = HashMap::new();
    let mut uids: HashMap<u32, &str> = HashMap::new();
    for (i, class) in classes.iter().enumerate() {
        let name = class.name.get_ref().0.as_str();
        if let Some(first) = names.insert(name, i) {
            return Err((
                class.name.span(),
                format!("classes[{i}].name"),
                format!("class name {name:?} is already used by classes[{first}]"),
            ));
        }
        if class.cgroups.is_empty() && class.uids.is_empty() {
            return Err((
                class.name.span(),
                format!("classes[{i}]"),
                format!("class {name:?} selects nothing: give it `cgroups` or `uids`"),
            ));
        }
        if *class.mode.get_ref() == Mode::Enforce {
            if class.cgroups.is_empty() {
                return Err((
                    class.mode.span(),
                    format!("classes[{i}].mode"),
                    format!(
                        "class {name:?} is selected by uid alone and cannot enforce: enforcement attaches to the class's cgroups (a uid's processes may be anywhere, the host's own connections included); give it `cgroups`, or keep mode = \"observe\""
                    ),
                ));
            }
            if let Some((j, root)) = class.cgroups.iter().enumerate().find(|(_, c)| c.get_ref().0 == "/") {
                return Err((
                    root.span(),
                    format!("classes[{i}].cgroups[{j}]"),
                    format!(
                        "class {name:?} enforces and selects the cgroup v2 root \"/\": enforcement never attaches there (it carries the host's own connections); select the workload's own cgroups"
                    ),
                ));
            }
            if i >= ENFORCING_CLASSES {
                return Err((
                    class.mode.span(),
                    format!("classes[{i}].mode"),
                    format!("only the first {ENFORCING_CLASSES} classes can enforce: move class {name:?} up"),
                ));
            }
        }
        for (j, cg) in class.cgroups.iter().enumerate() {
            if let Some(other) = cgroups.insert(cg.get_ref().0.as_str(), name) {
                return Err((
                    cg.span(),
                    format!("classes[{i}].cgroups[{j}]"),
                    format!("cgroup {:?} is already selected by class {other:?}", cg.get_ref().0),
                ));
            }
        }
        for (j, entry) in class.approved.iter().enumerate() {
            if let ApprovedEntry::Site(site) = entry.get_ref()
                && !sites_by_name.contains_key(site.as_str())
            {
                let known: Vec<&str> = sites.iter().map(|s| s.name.get_ref().0.as_str()).collect();
                return Err((
                    entry.span(),
                    format!("classes[{i}].approved[{j}]"),
                    format!(
                        "{site:?} is not a country, subdivision, cloud region or ASN, and no [[sites]] entry has that name (sites: {})",
                        if known.is_empty() { "none configured".to_owned() } else { known.join(", ") }
                    ),
                ));
            }
        }
        for (j, uid) in class.uids.iter().enumerate() {
            if let Some(other) = uids.insert(*uid.get_ref(), name) {
                return Err((
                    uid.span(),
                    format!("classes[{i}].uids[{j}]"),
                    format!("uid {} is already selected by class {other:?}", uid.get_ref()),
                ));
            }
        }
    }
    Ok(names)
}
