//! A configuration reload (SIGHUP): what may change while the agent runs. Each class's policy
//! (`approved`, `unknown`, `internal`, `severity`, `mode`) is applied at once: judged anew, and
//! compiled into the kernel's verdict tables. Anything else (selectors, sources, sites, sinks,
//! the store, the API) needs a restart: a reload that changes it is refused as a whole, so a
//! running agent never works on half of a new file.

use super::{Config, ConfigError, Origin};

/// The keys of a `[[classes]]` table a reload applies.
pub const RELOADABLE_CLASS_KEYS: [&str; 5] = ["approved", "unknown", "internal", "severity", "mode"];

impl Config {
    /// Reads the configuration again from where this one came from. Refused, with the reason,
    /// when the file does not load (the error names file, line, key and value) or when it
    /// changes more than the classes' policies (the message names the keys).
    pub fn reload(&self) -> Result<Config, String> {
        let new = match &self.origin {
            Origin::File(path) => Config::from_file(path).map_err(|e: ConfigError| e.to_string())?,
            Origin::Embedded => {
                return Err("the agent runs on the embedded defaults: there is no file to reload".into());
            }
        };
        let changed = changed_outside_policies(&self.text, &new.text);
        if !changed.is_empty() {
            return Err(format!(
                "{}: changes to {} need a restart (a reload applies only the classes' {}); nothing was applied",
                self.origin,
                changed.join(", "),
                RELOADABLE_CLASS_KEYS.join(", ")
            ));
        }
        Ok(new)
    }
}

/// The top-level keys (or `classes[i].key`) whose values differ between two configuration
/// texts, the reloadable class keys aside. Both texts parsed before.
fn changed_outside_policies(old: &str, new: &str) -> Vec<String> {
    let (Ok(mut old), Ok(mut new)) = (old.parse::<toml::Table>(), new.parse::<toml::Table>()) else {
        return vec!["the whole file".into()];
    };
    let mut changed = Vec::new();
    let (old_classes, new_classes) = (take_classes(&mut old), take_classes(&mut new));
    if old_classes.len() != new_classes.len() {
        changed.push("the number of [[classes]]".to_owned());
    } else {
        for (i, (o, n)) in old_classes.iter().zip(&new_classes).enumerate() {
            let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
            for k in keys {
                if !RELOADABLE_CLASS_KEYS.contains(&k.as_str()) && o.get(k) != n.get(k) {
                    changed.push(format!("classes[{i}].{k}"));
                }
            }
        }
    }
    let keys: std::collections::BTreeSet<String> = old.keys().chain(new.keys()).cloned().collect();
    for k in keys {
        if old.get(&k) != new.get(&k) {
            changed.push(k);
        }
    }
    changed
}

fn take_classes(t: &mut toml::Table) -> Vec<toml::Table> {
    match t.remove("classes") {
        Some(toml::Value::Array(a)) => a
            .into_iter()
            .map(|v| if let toml::Value::Table(t) = v { t } else { toml::Table::new() })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::changed_outside_policies as changed;

    const BASE: &str =
        "[agent]\nhost = \"h\"\n[[classes]]\nname = \"a\"\ncgroups = [\"/a\"]\napproved = [\"US\"]\n";

    #[test]
    fn class_policies_may_change() {
        let new =
            BASE.replace("[\"US\"]", "[\"US\", \"CA\"]") + "mode = \"enforce\"\ninternal = \"violation\"\n";
        assert_eq!(changed(BASE, &new), Vec::<String>::new());
        // Comments and layout are not changes.
        assert_eq!(changed(BASE, &format!("# note\n{BASE}\n")), Vec::<String>::new());
    }

    #[test]
    fn anything_else_is_named() {
        assert_eq!(changed(BASE, &BASE.replace("\"/a\"", "\"/b\"")), ["classes[0].cgroups"]);
        assert_eq!(changed(BASE, &BASE.replace("\"h\"", "\"g\"")), ["agent"]);
        let more = format!("{BASE}[[classes]]\nname = \"b\"\nuids = [1]\n");
        assert_eq!(changed(BASE, &more), ["the number of [[classes]]"]);
        assert_eq!(
            changed(BASE, &format!("{BASE}[[sites]]\nname = \"s\"\ncountry = \"US\"\ncidrs = []\n")),
            ["sites"]
        );
    }
}
