//! Per-packet cost of each kernel program: bpf_stats during a bulk TCP transfer, a run of small
//! datagrams from a connected UDP socket and a burst of short connections, with empty
//! cgroup_skb programs (see `empty`), on egress and on ingress, measured the same way as the
//! floors.

#[allow(unused_imports)]
use super::*;

/// Restores kernel.bpf_stats_enabled on drop.
struct BpfStats {
    old: String,
}

impl BpfStats {
    fn enable() -> anyhow::Result<BpfStats> {
        let old = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")?.trim().to_owned();
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
        Ok(BpfStats { old })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.old);
    }
}

/// The names the empty programs' numbers go by in results.json.
const EMPTY: &str = "empty_cgroup_skb";
const EMPTY_INGRESS: &str = "empty_cgroup_skb_ingress";

/// (run_time_ns, run_cnt) of a program.
fn prog_stats(id: u64) -> anyhow::Result<(u64, u64)> {
    let v: Value =
        serde_json::from_str(&run("bpftool", &["prog", "show", "id", &id.to_string(), "--json"])?)?;
    Ok((v["run_time_ns"].as_u64().unwrap_or(0), v["run_cnt"].as_u64().unwrap_or(0)))
}

impl Bench<'_> {
    pub(super) fn program_cost(&mut self) -> anyhow::Result<()> {
        let _server =
            self.world.spawn(&self.world.b, "server", "iperf3", &["-s"], Stdio::null(), Stdio::null())?;
        let _accept =
            self.world.traffic_server(&self.world.b, "server", &["tcp-accept", &format!("{B_ADDR}:7000")])?;
        let _sink = self.world.traffic_server(
            &self.world.b,
            "server",
            &["udp-sink", &format!("{B_ADDR}:9000"), "1"],
        )?;
        std::thread::sleep(Duration::from_millis(500));
        let agent = self.agent(&[])?;
        // The floor: an empty egress program on the bench's cgroup (client and server both).
        let empty = empty::EmptyProgram::attach(&self.world.cgroup_dir(""), false)?;
        let empty_ingress = empty::EmptyProgram::attach(&self.world.cgroup_dir(""), true)?;
        let mut programs: Vec<(String, u64)> = agent.get("/v1/status")?["programs"]
            .as_array()
            .context("programs")?
            .iter()
            .map(|p| (p["name"].as_str().unwrap_or("").to_owned(), p["id"].as_u64().unwrap_or(0)))
            .collect();
        programs.push((EMPTY_INGRESS.into(), empty_ingress.id as u64));
        programs.push((EMPTY.into(), empty.id as u64));
        let snapshot = || -> anyhow::Result<Vec<(u64, u64)>> {
            programs.iter().map(|(_, id)| prog_stats(*id)).collect()
        };
        let stats = BpfStats::enable()?;
        // Two phases: bulk transfer on an established flow, then short connections (every
        // packet of those is on a new or young flow: inserts, events, classification).
        let start = snapshot()?;
        self.iperf(self.plan.seconds)?;
        let after_bulk = snapshot()?;
        self.world.traffic(
            &self.world.a,
            "client",
            &["udp-rate", &format!("{B_ADDR}:9000"), &self.plan.seconds.to_string(), "1", "--connect"],
        )?;
        let after_udp = snapshot()?;
        self.world.traffic(
            &self.world.a,
            "client",
            &["tcp-rate", &format!("{B_ADDR}:7000"), &self.plan.seconds.to_string()],
        )?;
        let end = snapshot()?;
        drop(stats);
        drop(empty);
        drop(empty_ingress);
        agent.stop();
        let per_run = |a: &(u64, u64), b: &(u64, u64)| {
            let (ns, runs) = (a.0 - b.0, a.1 - b.1);
            (if runs > 0 { ns as f64 / runs as f64 } else { 0.0 }, runs)
        };
        let mut per = serde_json::Map::new();
        let floor = programs.len() - 1;
        let (floor_bulk, floor_udp) =
            (per_run(&after_bulk[floor], &start[floor]).0, per_run(&after_udp[floor], &after_bulk[floor]).0);
        let floor_in = floor - 1;
        let (floor_in_bulk, floor_in_udp) = (
            per_run(&after_bulk[floor_in], &start[floor_in]).0,
            per_run(&after_udp[floor_in], &after_bulk[floor_in]).0,
        );
        for (i, (name, _)) in programs.iter().enumerate() {
            let (bulk, bulk_runs) = per_run(&after_bulk[i], &start[i]);
            let (udp, udp_runs) = per_run(&after_udp[i], &after_bulk[i]);
            let (short, short_runs) = per_run(&end[i], &after_udp[i]);
            let (all, runs) = per_run(&end[i], &start[i]);
            per.insert(
                name.clone(),
                json!({"ns_per_run": all, "runs": runs, "bulk": {"ns_per_run": bulk, "runs": bulk_runs},
                       "connected_udp": {"ns_per_run": udp, "runs": udp_runs},
                       "short_connections": {"ns_per_run": short, "runs": short_runs}}),
            );
            if name == "flow_egress" {
                let (tcp_added, udp_added) = (bulk - floor_bulk, udp - floor_udp);
                self.row(
                    "egress program: added cost per run over an empty one, established TCP (iperf3)",
                    format!("{tcp_added:.0} ns ({bulk:.0} - {floor_bulk:.0} ns, {bulk_runs} runs)"),
                    "<= 60 ns",
                    Some(tcp_added <= 60.0),
                );
                self.row(
                    "  same, connected UDP socket (64-byte datagrams)",
                    format!("{udp_added:.0} ns ({udp:.0} - {floor_udp:.0} ns, {udp_runs} runs)"),
                    "<= 80 ns",
                    Some(udp_added <= 80.0),
                );
                self.row(
                    "  cost per run, short connections (new flows)",
                    format!("{short:.0} ns ({short_runs} runs)"),
                    "",
                    None,
                );
            } else if name == "dns_ingress" {
                // Every packet a socket receives; the bench's packets are none of them DNS.
                let (tcp_added, udp_added) = (bulk - floor_in_bulk, udp - floor_in_udp);
                self.row(
                    "DNS ingress program: added cost per packet over an empty one, TCP received (iperf3)",
                    format!("{tcp_added:.0} ns ({bulk:.0} - {floor_in_bulk:.0} ns, {bulk_runs} runs)"),
                    "<= 25 ns",
                    Some(tcp_added <= 25.0),
                );
                self.row(
                    "  same, 64-byte UDP datagrams received",
                    format!("{udp_added:.0} ns ({udp:.0} - {floor_in_udp:.0} ns, {udp_runs} runs)"),
                    "<= 25 ns",
                    Some(udp_added <= 25.0),
                );
            } else if name == EMPTY || name == EMPTY_INGRESS {
                continue;
            } else if runs > 0 {
                self.row(&format!("  cost per run, {name}"), format!("{all:.0} ns ({runs} runs)"), "", None);
            }
        }
        self.results.insert("program_cost".into(), Value::Object(per));
        Ok(())
    }
}
