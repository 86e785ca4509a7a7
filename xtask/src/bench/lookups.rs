//! Geolocation + policy lookups and MMDB verification, measured by criterion
//! (`monitor/benches/lookup.rs`).

#[allow(unused_imports)]
use super::*;

impl Bench<'_> {
    /// Runs one criterion benchmark of the monitor crate for the plan's time.
    pub(super) fn criterion(&self, bench: &[&str]) -> anyhow::Result<()> {
        let secs = self.plan.criterion_seconds.to_string();
        crate::sh(crate::cargo().args(bench).args([
            "--",
            "--warm-up-time",
            "1",
            "--measurement-time",
            &secs,
            "--noplot",
        ]))
    }

    pub(super) fn lookups(&mut self, root: &Path) -> anyhow::Result<()> {
        self.criterion(&LOOKUP_BENCH)?;
        let mut per = serde_json::Map::new();
        for (name, dir) in [("cold", "cold (new destination)"), ("warm", "warm (cached destination)")] {
            let path = root.join("target/criterion/geolocation+policy").join(dir).join("new/estimates.json");
            let v: Value = serde_json::from_str(
                &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
            )?;
            let ns = v["mean"]["point_estimate"].as_f64().context("criterion mean")?;
            per.insert(name.into(), json!({"ns_per_lookup": ns, "lookups_per_second": 1e9 / ns}));
            let value = format!("{:.2} M/s ({ns:.0} ns)", 1e3 / ns);
            if name == "warm" {
                self.row(
                    "geolocation + policy, warm cache, one core",
                    value,
                    ">= 2 M/s",
                    Some(1e9 / ns >= 2e6),
                );
            } else {
                self.row("geolocation + policy, new destination", value, "", None);
            }
        }
        for (name, dir, label) in [
            (
                "embedded",
                "embedded country (DB-IP Lite)",
                "MMDB verification at load: embedded DB-IP country",
            ),
            ("city", "city-sized (1M networks)", "MMDB verification at load: city-sized (1M networks)"),
        ] {
            let path = root.join("target/criterion/mmdb verification").join(dir).join("new/estimates.json");
            let v: Value = serde_json::from_str(
                &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
            )?;
            let ms = v["mean"]["point_estimate"].as_f64().context("criterion mean")? / 1e6;
            per.insert(format!("verify_{name}"), json!({"ms": ms}));
            self.row(label, format!("{ms:.0} ms"), "", None);
        }
        self.results.insert("lookups".into(), Value::Object(per));
        Ok(())
    }
}
