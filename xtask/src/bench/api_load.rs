//! The API under load: concurrent clients querying flow summaries with `group_by` against a
//! store of a million rows, while new flows keep being written; and the store alone, measured
//! by criterion (`monitor/benches/store.rs`).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::json;

use super::{Bench, STORE_BENCH, world::B_ADDR};

/// Flows per second written while the clients query (and while the store is filled).
const WRITE_RATE: u64 = 20_000;
const CLIENTS: usize = 50;
const QUERIES: [&str; 4] = ["country", "class", "process", "destination"];

impl Bench<'_> {
    pub(super) fn api_load(&mut self) -> anyhow::Result<()> {
        let (rows, seconds) = if self.plan.quick { (100_000u64, 5u64) } else { (1_000_000, 60) };
        // Each flow is one datagram: a short idle timeout ends it and frees its slot in the
        // kernel's flow table, which would otherwise fill long before a million flows.
        let agent = self.agent(&[("idle_timeout", "\"5s\"")])?;
        // Fill the store: one row per flow, written by the agent from real traffic.
        let fill = self.world.traffic(
            &self.world.a,
            "client",
            &[
                "udp-flows",
                &format!("{B_ADDR}:20000"),
                "200",
                &(rows / 200).to_string(),
                &WRITE_RATE.to_string(),
            ],
        )?;
        let sent = fill["flows"].as_u64().unwrap_or(0);
        let (stored, _) = self.flows_seen(&agent, sent)?;
        let dropped_before = agent.get("/v1/status")?["losses"]["store_dropped"].as_u64().unwrap_or(0);

        let latencies = Mutex::new(Vec::new());
        let errors = Mutex::new(Vec::new());
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let written = std::thread::scope(|s| -> anyhow::Result<u64> {
            let writer = s.spawn(|| {
                self.world.traffic(
                    &self.world.a,
                    "client",
                    &[
                        "udp-flows",
                        &format!("{B_ADDR}:40000"),
                        "200",
                        &(WRITE_RATE * seconds / 200).to_string(),
                        &WRITE_RATE.to_string(),
                    ],
                )
            });
            for c in 0..CLIENTS {
                let (agent, latencies, errors) = (&agent, &latencies, &errors);
                s.spawn(move || {
                    let mut mine = Vec::new();
                    let mut i = c;
                    while Instant::now() < deadline {
                        let q = format!("/v1/flows?since=1h&group_by={}", QUERIES[i % QUERIES.len()]);
                        i += 1;
                        let t = Instant::now();
                        match agent.fetch(&q) {
                            Ok(_) => mine.push(t.elapsed().as_secs_f64() * 1000.0),
                            Err(e) => errors.lock().unwrap().push(format!("{e:#}")),
                        }
                    }
                    latencies.lock().unwrap().extend(mine);
                });
            }
            let r = writer.join().map_err(|_| anyhow::anyhow!("the writing traffic panicked"))??;
            Ok(r["flows"].as_u64().unwrap_or(0))
        })?;
        let status = agent.get("/v1/status")?;
        let dropped = status["losses"]["store_dropped"].as_u64().unwrap_or(0) - dropped_before;
        agent.stop();

        let mut l = latencies.into_inner().unwrap();
        l.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
        };
        let (p50, p99) = (pct(0.50), pct(0.99));
        let errors = errors.into_inner().unwrap();
        self.results.insert(
            "api_load".into(),
            json!({
                "clients": CLIENTS, "seconds": seconds, "store_rows": stored, "queries": l.len(),
                "p50_ms": p50, "p99_ms": p99, "errors": errors.len(), "first_errors": &errors[..errors.len().min(5)],
                "flows_written_meanwhile": written, "store_dropped": dropped,
            }),
        );
        self.row(
            &format!(
                "API: {CLIENTS} clients, group_by queries, {stored} rows, {WRITE_RATE} new flows/s: p50 / p99"
            ),
            format!("{p50:.0} / {p99:.0} ms ({} queries)", l.len()),
            "p99 <= 250 ms",
            Some(p99 <= 250.0),
        );
        self.row(
            "API under load: errors / store drops",
            format!("{} / {dropped}", errors.len()),
            "0 / 0",
            Some(errors.is_empty() && dropped == 0),
        );
        Ok(())
    }

    pub(super) fn store(&mut self, root: &std::path::Path) -> anyhow::Result<()> {
        self.criterion(&STORE_BENCH)?;
        let mean_ns = |group: &str, name: &str| -> anyhow::Result<f64> {
            let path = root.join("target/criterion").join(group).join(name).join("new/estimates.json");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)?;
            v["mean"]["point_estimate"]
                .as_f64()
                .ok_or_else(|| anyhow::anyhow!("no mean in {}", path.display()))
        };
        // One measurement writes 50,000 new flows and waits for their commit.
        let per_second = 50_000.0 / (mean_ns("store", "write new flows")? / 1e9);
        let mut questions = Vec::new();
        for key in QUERIES {
            questions.push(mean_ns("store query", &format!("group_by={key}, 1M rows"))? / 1e6);
        }
        self.results.insert(
            "store".into(),
            json!({"rows_per_second": per_second, "group_by_ms": QUERIES.iter().zip(&questions).map(|(k, ms)| json!({"group_by": k, "ms": ms})).collect::<Vec<_>>()}),
        );
        self.row("store: new flow rows written per second, one core", format!("{per_second:.0}/s"), "", None);
        self.row(
            &format!("store: one grouped question on 1M flow rows ({})", QUERIES.join(" / ")),
            questions.iter().map(|ms| format!("{ms:.1}")).collect::<Vec<_>>().join(" / ") + " ms",
            "",
            None,
        );
        Ok(())
    }
}
