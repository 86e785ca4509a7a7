//! Enforcement benchmarks: the verdict tables of the embedded DB-IP database with three classes
//! (compile time, networks, kernel memory), the time connect() takes for an enforcing class,
//! and an enforcing class's short-connection rate against the same class observing (what
//! enforcement adds) and against no agent.

#[allow(unused_imports)]
use super::*;

/// The bench class enforces; two more classes (whose cgroups do not exist) make three in the
/// tables.
const CLASSES: &str = r#"mode = "enforce"

[[classes]]
name = "bench-eu"
cgroups = ["/em-bench-absent-eu"]
approved = ["DE", "FR", "NL"]
unknown = "allow"

[[classes]]
name = "bench-strict"
cgroups = ["/em-bench-absent-strict"]
internal = "violation"
"#;

impl Bench<'_> {
    fn enforcing_agent(&self) -> anyhow::Result<Agent> {
        Agent::start_with_classes(self.world, &self.agent_bin, &self.country_db, &[], CLASSES)
    }

    /// The same agent with the bench class observing.
    fn observing_agent(&self) -> anyhow::Result<Agent> {
        let classes = CLASSES.replace("mode = \"enforce\"", "mode = \"observe\"");
        Agent::start_with_classes(self.world, &self.agent_bin, &self.country_db, &[], &classes)
    }

    /// connect() times (p50, p99 in µs) of `count` connects from the classified cgroup.
    fn connect_times(&self, count: usize) -> anyhow::Result<(f64, f64)> {
        let r = self.world.traffic_on(
            Some(0),
            &self.world.a,
            "client",
            &["tcp-connect-time", &format!("{B_ADDR}:7000"), &count.to_string()],
        )?;
        Ok((r["p50_us"].as_f64().unwrap_or(0.0), r["p99_us"].as_f64().unwrap_or(0.0)))
    }

    pub(super) fn enforcement(&mut self) -> anyhow::Result<()> {
        // The tables, as the agent reports them once it has written them.
        let agent = self.enforcing_agent()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let tables = loop {
            let s = agent.get("/v1/status")?;
            if !s["kernel"]["verdict_tables"].is_null() {
                break s["kernel"]["verdict_tables"].clone();
            }
            if Instant::now() > deadline {
                bail!("the agent wrote no verdict tables: {}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        agent.stop();
        let seconds = |k: &str| tables[k].as_f64().unwrap_or(0.0);
        let (compile, write) = (seconds("compile_seconds"), seconds("write_seconds"));
        let networks =
            tables["ipv4_networks"].as_u64().unwrap_or(0) + tables["ipv6_networks"].as_u64().unwrap_or(0);
        let mib = tables["kernel_bytes"].as_u64().unwrap_or(0) as f64 / (1024.0 * 1024.0);
        self.results.insert("verdict_tables".into(), tables.clone());
        self.row(
            "verdict tables, DB-IP + 3 classes: compile time",
            format!("{compile:.2} s"),
            "<= 3 s",
            Some(compile <= 3.0),
        );
        self.row("  written into the kernel (both families)", format!("{write:.2} s"), "", None);
        self.row("  networks (IPv4 + IPv6)", networks.to_string(), "", None);
        self.row("  kernel memory", format!("{mib:.1} MiB"), "<= 64 MiB", Some(mib <= 64.0));

        // connect() of a classified process: no agent, an observing agent, an enforcing one.
        let _accept = self.world.traffic_server_on(
            Some(0),
            &self.world.b,
            "server",
            &["tcp-accept", &format!("{B_ADDR}:7000")],
        )?;
        let count = if self.plan.quick { 2_000 } else { 10_000 };
        let none = self.connect_times(count)?;
        let observing = {
            let agent = self.agent(&[])?;
            let t = self.connect_times(count)?;
            agent.stop();
            t
        };
        let enforcing = {
            let agent = self.enforcing_agent()?;
            let t = self.connect_times(count)?;
            agent.stop();
            t
        };
        self.results.insert(
            "connect_us".into(),
            json!({"connects": count, "no_agent": [none.0, none.1], "observing": [observing.0, observing.1], "enforcing": [enforcing.0, enforcing.1]}),
        );
        let show = |(p50, p99): (f64, f64)| format!("{p50:.1} / {p99:.1} µs");
        self.row(&format!("connect() p50 / p99 over {count}, no agent"), show(none), "", None);
        self.row("  observing class", show(observing), "", None);
        self.row(
            "  enforcing class",
            format!("{} (+{:.1} µs median)", show(enforcing), enforcing.0 - none.0),
            "",
            None,
        );

        // Short connections of an enforcing class against the same class observing: what
        // enforcement adds. (What the whole monitor costs is the connection-rate row above.)
        let observing = self.short_connections(|b| b.observing_agent().map(Some), |b| b.enforcing_agent())?;
        self.results.insert(
            "enforcing_connection_rate".into(),
            json!({"per_second": {"observing": observing.samples[0], "enforcing": observing.samples[1]}}),
        );
        self.row(
            "short TCP connections/s of an enforcing class, against the class observing",
            format!(
                "{:.0}/s ({:.1}% of {:.0}/s)",
                observing.median[1],
                observing.ratio[1] * 100.0,
                observing.median[0]
            ),
            ">= 97% of baseline",
            Some(observing.ratio[1] >= 0.97),
        );
        Ok(())
    }
}
