//! `cargo xtask bench`: what the monitor costs the datapath and the host, side by side with the
//! baseline and with tcpdump, on the machine at hand. Writes BENCHMARKS.md (a table and the
//! machine) and target/bench/results.json. A missed target is reported, never a failure.

mod api_load;
mod beside;
mod cost;
mod datapath;
mod dns;
mod empty;
mod enforce;
mod lookups;
mod report;
mod world;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use self::{
    beside::{Compared, Running},
    report::{machine, markdown},
    world::{Agent, B_ADDR, Proc, World, run, usage},
};

/// How long and how often; `--quick` keeps the whole run under three minutes.
struct Plan {
    quick: bool,
    rounds: usize,
    seconds: u64,
    rates: Vec<u64>,
    flow_seconds: u64,
    sample_seconds: u64,
    criterion_seconds: u64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                rounds: 1,
                seconds: 2,
                rates: vec![20_000],
                flow_seconds: 2,
                sample_seconds: 3,
                criterion_seconds: 1,
            }
        } else {
            Plan {
                quick,
                rounds: 5,
                seconds: 4,
                rates: vec![5_000, 10_000, 20_000, 40_000, 100_000],
                flow_seconds: 4,
                sample_seconds: 10,
                criterion_seconds: 3,
            }
        }
    }
}

/// One row of the results table.
struct Row {
    name: String,
    value: String,
    target: String,
    met: Option<bool>,
}

struct Bench<'a> {
    world: &'a World,
    plan: Plan,
    agent_bin: PathBuf,
    country_db: PathBuf,
    rows: Vec<Row>,
    results: serde_json::Map<String, Value>,
}

/// How cargo runs the criterion benchmark of geolocation + policy.
pub const LOOKUP_BENCH: [&str; 7] =
    ["bench", "--package", "monitor", "--features", "fixtures", "--bench", "lookup"];

pub const STORE_BENCH: [&str; 7] =
    ["bench", "--package", "monitor", "--features", "fixtures", "--bench", "store"];

/// The steps, by the names `--only` takes.
pub const STEPS: [&str; 11] = [
    "cost",
    "throughput",
    "connections",
    "datagrams",
    "enforce",
    "flow-rate",
    "active-flows",
    "dns",
    "api-load",
    "store",
    "lookups",
];

pub fn run_bench(root: &Path, quick: bool, only: &[String]) -> anyhow::Result<()> {
    for o in only {
        if !STEPS.contains(&o.as_str()) {
            bail!("--only {o}: expected one of {}", STEPS.join(", "));
        }
    }
    let wanted = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    let started = Instant::now();
    let release = root.join("target/release");
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    // The country database as a file, so the agent maps it (as production does).
    let country_db = out_dir.join("dbip-country.mmdb");
    if !country_db.exists() {
        let xz = root.join("monitor/data/dbip-country.mmdb.xz");
        let out = Command::new("xz").arg("-dc").arg(&xz).output().context("running xz (xz-utils)")?;
        if !out.status.success() {
            bail!("xz -dc {} failed", xz.display());
        }
        std::fs::write(&country_db, out.stdout)?;
    }
    let world = World::new(&release)?;
    let mut b = Bench {
        world: &world,
        plan: Plan::new(quick),
        agent_bin: release.join("egress-monitor"),
        country_db,
        rows: Vec::new(),
        results: serde_json::Map::new(),
    };
    if wanted("cost") {
        step("per-packet cost of each program (kernel.bpf_stats_enabled)", || b.program_cost())?;
    }
    if wanted("throughput") {
        step("TCP throughput: no monitor, egress-monitor, tcpdump, pmacctd (iperf3)", || b.throughput())?;
    }
    if wanted("connections") {
        step("connection rate: no monitor, egress-monitor, tcpdump, pmacctd", || b.connection_rate())?;
    }
    if wanted("datagrams") {
        step("64-byte UDP datagrams: no monitor, egress-monitor, tcpdump, pmacctd", || b.small_datagrams())?;
    }
    if wanted("enforce") {
        step("enforcement: verdict tables, connect() time, an enforcing class's connection rate", || {
            b.enforcement()
        })?;
    }
    if wanted("flow-rate") {
        step("agent under load: new flows per second without loss", || b.new_flow_rate())?;
    }
    if wanted("active-flows") {
        step("agent CPU and memory with 10k and 100k active flows", || b.active_flows())?;
    }
    if wanted("dns") {
        step("DNS answers per second taken in with zero loss", || b.dns_rate())?;
    }
    if wanted("api-load") {
        step("the API under load: 50 clients, a store of a million rows, 20,000 new flows/s", || {
            b.api_load()
        })?;
    }
    if wanted("store") {
        step("the store: rows written per second, grouped questions on a million rows (criterion)", || {
            b.store(root)
        })?;
    }
    if wanted("lookups") {
        step("geolocation + policy lookups (criterion)", || b.lookups(root))?;
    }
    let elapsed = started.elapsed();
    b.results.insert("elapsed_seconds".into(), json!(elapsed.as_secs()));
    b.results.insert("quick".into(), json!(quick));
    b.results.insert("machine".into(), machine());
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&Value::Object(b.results.clone()))?,
    )?;
    if only.is_empty() {
        // The committed BENCHMARKS.md is a full run's; a quick one goes beside results.json.
        let md = if quick { out_dir.join("BENCHMARKS.quick.md") } else { root.join("BENCHMARKS.md") };
        let previous = std::fs::read_to_string(root.join("BENCHMARKS.md")).unwrap_or_default();
        std::fs::write(&md, markdown(&b.rows, &b.results, quick, elapsed, &previous))?;
        eprintln!(
            "xtask: bench: done in {} s; wrote {} and target/bench/results.json",
            elapsed.as_secs(),
            md.display()
        );
    } else {
        eprintln!(
            "xtask: bench: done in {} s; wrote target/bench/results.json (BENCHMARKS.md is written by a full run of every step)",
            elapsed.as_secs()
        );
    }
    for r in &b.rows {
        let mark = match r.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        eprintln!("  {:<58} {:>22}  {:<28} {mark}", r.name, r.value, r.target);
    }
    Ok(())
}

fn step(what: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    eprintln!("xtask: bench: {what}");
    let t = Instant::now();
    f().with_context(|| format!("benchmark step: {what}"))?;
    eprintln!("xtask: bench:   ({:.0} s)", t.elapsed().as_secs_f64());
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

impl Bench<'_> {
    fn agent(&self, settings: &[(&str, &str)]) -> anyhow::Result<Agent> {
        Agent::start(self.world, &self.agent_bin, &self.country_db, settings)
    }

    fn row(&mut self, name: &str, value: String, target: &str, met: Option<bool>) {
        self.rows.push(Row { name: name.into(), value, target: target.into(), met });
    }

    /// iperf3 from a to b for `seconds`, the client in the classified cgroup; its JSON.
    fn iperf(&self, seconds: u64) -> anyhow::Result<Value> {
        let mut p = self.world.spawn(
            &self.world.a,
            "client",
            "iperf3",
            &["-c", B_ADDR, "-t", &seconds.to_string(), "-J", "-A", "0,1"],
            Stdio::piped(),
            Stdio::null(),
        )?;
        let out = p.child.wait_with_output_take()?;
        serde_json::from_slice(&out).context("iperf3's JSON")
    }

    /// New UDP flows at each rate, to a fresh agent: ring-buffer drops and flows missing from
    /// its store must both be zero.
    fn new_flow_rate(&mut self) -> anyhow::Result<()> {
        let mut tried = Vec::new();
        let mut best: Option<f64> = None;
        let mut at_20k = None;
        for &rate in &self.plan.rates.clone() {
            let agent = self.agent(&[])?;
            let flows = rate * self.plan.flow_seconds;
            let sockets = 200u64;
            let ports = flows.div_ceil(sockets);
            let (before, started) = (usage(agent.pid())?, Instant::now());
            let r = self.world.traffic(
                &self.world.a,
                "client",
                &[
                    "udp-flows",
                    &format!("{B_ADDR}:20000"),
                    &sockets.to_string(),
                    &ports.to_string(),
                    &rate.to_string(),
                ],
            )?;
            let sent = r["flows"].as_u64().unwrap_or(0);
            let achieved = sent as f64 / r["seconds"].as_f64().unwrap_or(1.0);
            let (seen, drops) = self.flows_seen(&agent, sent)?;
            // The agent's CPU from the first datagram until every flow is in its store.
            let cpu =
                (usage(agent.pid())?.cpu_seconds - before.cpu_seconds) / started.elapsed().as_secs_f64();
            // Every loss the agent counted (a flow missing from the store should be one of them).
            let losses = agent.get("/v1/status")?["losses"].clone();
            agent.stop();
            let ok = drops == 0 && seen == sent;
            tried.push(json!({"target_rate": rate, "achieved_rate": achieved, "flows_sent": sent, "flows_reported": seen, "ringbuf_drops": drops, "agent_cpu": cpu, "losses": losses, "ok": ok}));
            if ok {
                best = Some(best.map_or(achieved, |b: f64| b.max(achieved)));
            }
            if rate == 20_000 {
                at_20k = Some((ok, achieved, seen, sent, drops, cpu));
            }
        }
        self.results.insert("new_flow_rate".into(), Value::Array(tried));
        self.row(
            "highest new-flow rate with no loss (tried up to)",
            best.map_or("none".into(), |b| format!("{b:.0}/s (of {}/s)", self.plan.rates.last().unwrap())),
            ">= 100000/s",
            Some(best.is_some_and(|b| b >= 99_000.0)),
        );
        if let Some((ok, achieved, seen, sent, drops, cpu)) = at_20k {
            self.row(
                "  agent CPU at 20,000 new flows/s (until every flow is stored)",
                format!("{:.0}% of a CPU", cpu * 100.0),
                "<= 25% of a CPU",
                Some(cpu <= 0.25),
            );
            self.row(
                "ring-buffer loss / missing flows at 20,000 new flows/s",
                format!("{drops} drops, {} missing ({achieved:.0}/s sent)", sent - seen.min(sent)),
                "0 and 0",
                Some(ok && achieved >= 19_000.0),
            );
        }
        Ok(())
    }

    /// Waits until the agent's store holds `sent` flows of the bench client (or stops growing);
    /// returns (flows stored, ring-buffer drops).
    fn flows_seen(&self, agent: &Agent, sent: u64) -> anyhow::Result<(u64, u64)> {
        let cgroup = format!("{}/client", self.world.rel);
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut last, mut stable_since) = (u64::MAX, Instant::now());
        loop {
            let b = agent.get(&format!("/v1/flows?since=10m&cgroup={cgroup}&group_by=class"))?;
            let seen: u64 =
                b["rows"].as_array().into_iter().flatten().filter_map(|r| r["flows"].as_u64()).sum();
            if seen != last {
                (last, stable_since) = (seen, Instant::now());
            }
            if seen >= sent || stable_since.elapsed() > Duration::from_secs(5) || Instant::now() > deadline {
                let drops = agent.get("/v1/status")?["losses"]["ringbuf_drops"].as_u64().unwrap_or(0);
                return Ok((seen, drops));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn active_flows(&mut self) -> anyhow::Result<()> {
        let agent = self.agent(&[])?;
        let mut out = serde_json::Map::new();
        let mut total = 0u64;
        // The senders keep their sockets open, so their flows stay active until they are killed.
        let mut senders = Vec::new();
        for (target, port) in [(10_000u64, 30000u16), (100_000, 40000)] {
            let more = target - total;
            let sockets = 500u64;
            let (sender, _) = self.world.traffic_held(
                &self.world.a,
                "client",
                &[
                    "udp-flows",
                    &format!("{B_ADDR}:{port}"),
                    &sockets.to_string(),
                    &more.div_ceil(sockets).to_string(),
                    "50000",
                    "600",
                ],
            )?;
            senders.push(sender);
            total = target;
            let deadline = Instant::now() + Duration::from_secs(60);
            while agent.get("/v1/status")?["flows_tracked"].as_u64().unwrap_or(0) < target {
                if Instant::now() > deadline {
                    bail!("the agent did not reach {target} tracked flows: {}", agent.get("/v1/status")?);
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            std::thread::sleep(Duration::from_secs(2)); // a couple of sweeps at this size
            let u0 = usage(agent.pid())?;
            std::thread::sleep(Duration::from_secs(self.plan.sample_seconds));
            let u1 = usage(agent.pid())?;
            let cpu = (u1.cpu_seconds - u0.cpu_seconds) / self.plan.sample_seconds as f64 * 100.0;
            let label = format!("{}k", target / 1000);
            out.insert(
                label.clone(),
                json!({"cpu_percent": cpu, "rss_kib": u1.rss_kib, "rss_anon_kib": u1.rss_anon_kib, "rss_file_kib": u1.rss_file_kib}),
            );
            let anon_mib = u1.rss_anon_kib as f64 / 1024.0;
            let value = format!(
                "{cpu:.1}% CPU, {anon_mib:.1} MiB (+{:.1} MiB mapped)",
                u1.rss_file_kib as f64 / 1024.0
            );
            if target == 100_000 {
                self.row(
                    &format!("agent with {label} active flows"),
                    value,
                    "RSS <= 64 MiB (mapped aside)",
                    Some(anon_mib <= 64.0),
                );
            } else {
                self.row(&format!("agent with {label} active flows"), value, "", None);
            }
        }
        agent.stop();
        drop(senders);
        self.results.insert("active_flows".into(), Value::Object(out));
        Ok(())
    }
}

/// Takes the child's stdout to the end, then waits for it.
trait WaitTake {
    fn wait_with_output_take(&mut self) -> anyhow::Result<Vec<u8>>;
}

impl WaitTake for std::process::Child {
    fn wait_with_output_take(&mut self) -> anyhow::Result<Vec<u8>> {
        use std::io::Read;
        let mut out = Vec::new();
        if let Some(mut s) = self.stdout.take() {
            s.read_to_end(&mut out)?;
        }
        let status = self.wait()?;
        if !status.success() {
            bail!("exited with {status}");
        }
        Ok(out)
    }
}
