//! What a configuration names on this host: files that must exist (an error names the line),
//! and class cgroups that do not exist yet (`check-config` warns, with the line).

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, Origin, locate};

impl Config {
    /// Every file the configuration names exists: an error names the line that names a missing
    /// one (what the file holds is checked when it is loaded).
    pub(super) fn files_exist(&self, text: &str) -> Result<(), ConfigError> {
        let g = &self.geoip;
        let named = [("geoip.country_db".to_owned(), &g.country_db), ("geoip.city_db".into(), &g.city_db)]
            .into_iter()
            .chain([("geoip.asn_db".to_owned(), &g.asn_db), ("api.token_file".into(), &self.api.token_file)])
            .filter_map(|(key, p)| p.as_ref().map(|p| (key, p)))
            .chain(g.cloud_ranges.iter().enumerate().map(|(i, p)| (format!("geoip.cloud_ranges[{i}]"), p)));
        for (key, path) in named {
            if let Err(e) = std::fs::metadata(path.get_ref()) {
                let (line, column, source_line) = locate(text, Some(path.span()));
                let message = match e.kind() {
                    std::io::ErrorKind::NotFound => format!("no such file: {}", path.get_ref().display()),
                    _ => format!("cannot read {}: {e}", path.get_ref().display()),
                };
                return Err(ConfigError {
                    origin: self.origin.clone(),
                    line,
                    column,
                    key,
                    message,
                    source_line,
                });
            }
        }
        Ok(())
    }

    /// The configured class cgroups that do not exist under `root` (yet): each with its key,
    /// the line that names it (0 for the built-in configuration) and its directory.
    pub fn missing_cgroups(&self, root: &Path) -> Vec<(String, usize, PathBuf)> {
        let text = match &self.origin {
            Origin::File(p) => std::fs::read_to_string(p).unwrap_or_default(),
            Origin::Embedded => String::new(),
        };
        let mut missing = Vec::new();
        for (i, class) in self.classes.iter().enumerate() {
            for (j, cg) in class.cgroups.iter().enumerate() {
                let dir = cg.get_ref().under(root);
                if !dir.is_dir() {
                    let (line, _, _) = locate(&text, Some(cg.span()));
                    missing.push((format!("classes[{i}].cgroups[{j}]"), line, dir));
                }
            }
        }
        missing
    }
}
