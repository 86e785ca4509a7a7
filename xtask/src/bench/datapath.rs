//! Datapath benchmarks: TCP throughput side by side with tcpdump (and the accuracy of the
//! reported bytes), and the short-connection rate.

#[allow(unused_imports)]
use super::*;

impl Bench<'_> {
    pub(super) fn throughput(&mut self) -> anyhow::Result<()> {
        let _server =
            self.world.spawn(&self.world.b, "server", "iperf3", &["-s"], Stdio::null(), Stdio::null())?;
        std::thread::sleep(Duration::from_millis(500));
        let modes = ["baseline", "egress-monitor", "tcpdump"];
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); 3];
        let mut accuracy = None;
        for round in 0..self.plan.rounds {
            for k in 0..3 {
                let m = (round + k) % 3; // alternate the order between rounds
                let (agent, tcpdump) = match modes[m] {
                    "egress-monitor" => (Some(self.agent(&[])?), None),
                    "tcpdump" => {
                        let p = self.world.spawn(
                            &self.world.a,
                            "server",
                            "tcpdump",
                            &["-i", "veth0", "-n", "-s", "0", "-w", "/dev/null"],
                            Stdio::null(),
                            Stdio::null(),
                        )?;
                        std::thread::sleep(Duration::from_millis(1000));
                        (None, Some(p))
                    }
                    _ => (None, None),
                };
                let result = self.iperf(self.plan.seconds)?;
                let bps = result["end"]["sum_received"]["bits_per_second"]
                    .as_f64()
                    .context("iperf3 bits_per_second")?;
                samples[m].push(bps);
                if let Some(agent) = agent {
                    if round == self.plan.rounds - 1 {
                        accuracy = Some(self.accuracy(&agent, &result)?);
                    }
                    agent.stop();
                }
                if let Some(mut p) = tcpdump {
                    p.stop();
                }
            }
        }
        // Ratios are taken within each round (its three runs are minutes apart at most), then
        // the median over rounds: slow drifts of a shared machine cancel out.
        let paired = |m: usize| -> f64 {
            let mut r: Vec<f64> = samples[m].iter().zip(&samples[0]).map(|(x, b)| x / b).collect();
            median(&mut r)
        };
        let (ratio, tcpdump_ratio) = (paired(1), paired(2));
        let med: Vec<f64> = samples.clone().iter_mut().map(|s| median(s)).collect();
        let (lost, lost_tcpdump) = ((1.0 - ratio).max(0.0), (1.0 - tcpdump_ratio).max(0.0));
        self.results.insert(
            "throughput".into(),
            json!({"rounds": self.plan.rounds, "seconds": self.plan.seconds, "bits_per_second": {
                "baseline": samples[0], "egress_monitor": samples[1], "tcpdump": samples[2]},
                "median": {"baseline": med[0], "egress_monitor": med[1], "tcpdump": med[2]}}),
        );
        let gbps = |b: f64| format!("{:.2} Gbit/s", b / 1e9);
        self.row("TCP throughput, baseline (median)", gbps(med[0]), "", None);
        self.row(
            "TCP throughput with egress-monitor",
            format!("{} ({:.1}%)", gbps(med[1]), ratio * 100.0),
            ">= 97% of baseline",
            Some(ratio >= 0.97),
        );
        self.row(
            "TCP throughput with tcpdump -w /dev/null",
            format!("{} ({:.1}%)", gbps(med[2]), tcpdump_ratio * 100.0),
            "",
            None,
        );
        let times = if lost > 0.0 { lost_tcpdump / lost } else { f64::INFINITY };
        self.row(
            "throughput lost: tcpdump / egress-monitor",
            if times.is_finite() {
                format!("{times:.1}x")
            } else {
                format!("monitor lost none; tcpdump {:.1}%", lost_tcpdump * 100.0)
            },
            ">= 5x",
            Some(times >= 5.0),
        );
        if let Some((agent_bytes, expected, err)) = accuracy {
            self.row(
                "reported bytes vs what iperf3 sent (+ headers)",
                format!("{agent_bytes} vs {expected} ({:.3}%)", err * 100.0),
                "within 0.5%",
                Some(err <= 0.005),
            );
            self.results.insert(
                "accuracy".into(),
                json!({"agent_bytes": agent_bytes, "expected_bytes": expected, "error": err}),
            );
        }
        Ok(())
    }

    /// The agent's bytes for iperf3's data connection against what iperf3 sent plus what the
    /// kernel adds: 52 bytes of headers (IPv4 + TCP with timestamps) per packet, 8 more on the
    /// SYN, and retransmitted segments.
    fn accuracy(&self, agent: &Agent, iperf: &Value) -> anyhow::Result<(u64, u64, f64)> {
        let sent = iperf["end"]["sum_sent"]["bytes"].as_u64().context("iperf3 sum_sent.bytes")?;
        // Retransmitted segments go on the wire again (the kernel counts them; iperf3 does not).
        let retransmits = iperf["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
        let mss = iperf["start"]["tcp_mss_default"].as_u64().unwrap_or(1448);
        let cgroup = format!("{}/client", self.world.rel);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let flows =
                agent.get(&format!("/v1/flows?since=10m&cgroup={cgroup}&port=5201&direction=outbound"))?;
            let data = flows["rows"]
                .as_array()
                .and_then(|r| r.iter().max_by_key(|r| r["bytes"].as_u64().unwrap_or(0)).cloned());
            if let Some(d) = data {
                let (bytes, packets) = (d["bytes"].as_u64().unwrap_or(0), d["packets"].as_u64().unwrap_or(0));
                let expected = sent + retransmits * mss + packets * 52 + 8;
                if bytes >= sent || Instant::now() > deadline {
                    let err = (bytes as f64 - expected as f64).abs() / expected as f64;
                    return Ok((bytes, expected, err));
                }
            }
            if Instant::now() > deadline {
                bail!("the agent reported no flow for iperf3's data connection");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub(super) fn connection_rate(&mut self) -> anyhow::Result<()> {
        // Client and server share one CPU: otherwise each connection is a chain of cross-CPU
        // wakeups whose latency, on a VM, depends on how idle the other CPU is (an agent that
        // merely wakes every 20 ms made the baseline look slower).
        let _accept = self.world.traffic_server_on(
            Some(0),
            &self.world.b,
            "server",
            &["tcp-accept", &format!("{B_ADDR}:7000")],
        )?;
        let ShortConnections { samples, ratio, median: med } =
            self.short_connections(|_| Ok(None), |b| b.agent(&[]))?;
        self.results.insert(
            "connection_rate".into(),
            json!({"per_second": {"baseline": samples[0], "egress_monitor": samples[1]}, "median": {"baseline": med[0], "egress_monitor": med[1]}}),
        );
        self.row("short TCP connections per second, baseline", format!("{:.0}/s", med[0]), "", None);
        self.row(
            "  with egress-monitor",
            format!("{:.0}/s ({:.1}%)", med[1], ratio * 100.0),
            ">= 95% of baseline",
            Some(ratio >= 0.95),
        );
        Ok(())
    }

    /// Short connections per second of the classified client against the accepting server
    /// (already running on CPU 0 at B_ADDR:7000), rounds alternating the baseline (no agent, or
    /// the one `baseline` gives) and the agent `start` gives: the samples of each, the median
    /// of each round's ratio, and the medians.
    pub(super) fn short_connections(
        &self,
        baseline: impl Fn(&Self) -> anyhow::Result<Option<Agent>>,
        start: impl Fn(&Self) -> anyhow::Result<Agent>,
    ) -> anyhow::Result<ShortConnections> {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); 2];
        for round in 0..self.plan.rounds {
            for k in 0..2 {
                let m = (round + k) % 2;
                let agent = if m == 1 { Some(start(self)?) } else { baseline(self)? };
                let r = self.world.traffic_on(
                    Some(0),
                    &self.world.a,
                    "client",
                    &["tcp-rate", &format!("{B_ADDR}:7000"), &self.plan.seconds.to_string()],
                )?;
                samples[m]
                    .push(r["connections"].as_f64().unwrap_or(0.0) / r["seconds"].as_f64().unwrap_or(1.0));
                if let Some(a) = agent {
                    a.stop();
                }
            }
        }
        let mut per_round: Vec<f64> = samples[1].iter().zip(&samples[0]).map(|(m, b)| m / b).collect();
        let ratio = median(&mut per_round);
        let med = samples.clone().iter_mut().map(|s| median(s)).collect();
        Ok(ShortConnections { samples, ratio, median: med })
    }
}

/// What [`Bench::short_connections`] measured: [baseline, with agent] each.
pub(super) struct ShortConnections {
    pub samples: Vec<Vec<f64>>,
    pub ratio: f64,
    pub median: Vec<f64>,
}
