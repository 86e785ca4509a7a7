//! A configuration reload (SIGHUP): what may change while the agent runs. The classes (their
//! selectors and policies; new classes after the existing ones), the sites, the geolocation
//! sources and the sinks are applied; anything else (`[agent]`, `[dns]`, `[alerts]`, `[store]`,
//! `[api]`, `[export]`, `[reports]`) needs a restart, and a reload that changes it is refused as a whole, so a running
//! agent never works on half of a new file.

use super::{Config, ConfigError, Origin};

/// The top-level keys a reload applies.
pub const RELOADABLE: [&str; 4] = ["classes", "sites", "geoip", "sinks"];

impl Config {
    /// Reads the configuration again from where this one came from. Refused, with the reason,
    /// when the file does not load (the error names file, line, key and value, as
    /// `check-config` prints it), when it changes what needs a restart (the message names the
    /// keys), or when it removes, renames or reorders classes (a class keeps its id, which the
    /// kernel and the flows it counts carry, for as long as the agent runs).
    pub fn reload(&self) -> Result<Config, String> {
        let new = match &self.origin {
            Origin::File(path) => Config::from_file(path).map_err(|e: ConfigError| e.to_string())?,
            Origin::Embedded => {
                return Err("the agent runs on the embedded defaults: there is no file to reload".into());
            }
        };
        let changed = changed_outside_reloadable(&self.text, &new.text);
        if !changed.is_empty() {
            return Err(format!(
                "{}: changes to {} need a restart (a reload applies {}); nothing was applied",
                self.origin,
                changed.join(", "),
                RELOADABLE.map(|k| format!("[{k}]")).join(", ")
            ));
        }
        let (old, now) = (self.class_names(), new.class_names());
        if !now.starts_with(&old) {
            return Err(format!(
                "{}: the classes were {old:?} and would be {now:?}: while the agent runs, classes may \
                 be added after the existing ones, not removed, renamed or reordered (each keeps its \
                 id); that needs a restart; nothing was applied",
                self.origin
            ));
        }
        Ok(new)
    }
}

/// The top-level keys whose values differ between two configuration texts, the reloadable ones
/// aside. Both texts parsed before.
fn changed_outside_reloadable(old: &str, new: &str) -> Vec<String> {
    let (Ok(old), Ok(new)) = (old.parse::<toml::Table>(), new.parse::<toml::Table>()) else {
        return vec!["the whole file".into()];
    };
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| !RELOADABLE.contains(&k.as_str()) && old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::changed_outside_reloadable as changed;

    const BASE: &str =
        "[agent]\nhost = \"h\"\n[[classes]]\nname = \"a\"\ncgroups = [\"/a\"]\napproved = [\"US\"]\n";

    #[test]
    fn classes_sites_sources_and_sinks_may_change() {
        let new = BASE.replace("[\"US\"]", "[\"US\", \"CA\"]").replace("\"/a\"", "\"/b\"")
            + "mode = \"enforce\"\n[[classes]]\nname = \"b\"\nuids = [1]\n\
               [[sites]]\nname = \"s\"\ncountry = \"US\"\ncidrs = []\n\
               [geoip]\nreload_interval = \"5s\"\n[[sinks]]\ntype = \"stdout\"\n";
        assert_eq!(changed(BASE, &new), Vec::<String>::new());
        // Comments and layout are not changes.
        assert_eq!(changed(BASE, &format!("# note\n{BASE}\n")), Vec::<String>::new());
    }

    #[test]
    fn anything_else_is_named() {
        assert_eq!(changed(BASE, &BASE.replace("\"h\"", "\"g\"")), ["agent"]);
        assert_eq!(changed(BASE, &format!("{BASE}[store]\nretention = \"7d\"\n")), ["store"]);
        assert_eq!(
            changed(BASE, &format!("{BASE}[alerts]\ncooldown = \"1m\"\n[api]\nsocket = \"/x\"\n")),
            ["alerts", "api"]
        );
    }
}
