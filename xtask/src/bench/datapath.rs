//! Datapath benchmarks: TCP throughput side by side with tcpdump (and the accuracy of the
//! reported bytes), the short-connection rate, and small UDP datagrams.

#[allow(unused_imports)]
use super::*;

impl Bench<'_> {
    pub(super) fn throughput(&mut self) -> anyhow::Result<()> {
        let _server =
            self.world.spawn(&self.world.b, "server", "iperf3", &["-s"], Stdio::null(), Stdio::null())?;
        std::thread::sleep(Duration::from_millis(500));
        let mut accuracy = None;
        let c = self.side_by_side(&mut |b, running| {
            let result = b.iperf(b.plan.seconds)?;
            let bps = result["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .context("iperf3 bits_per_second")?;
            if let Some(agent) = running.agent() {
                accuracy = Some(b.accuracy(agent, &result)?);
            }
            Ok(bps)
        })?;
        self.results.insert("throughput".into(), Self::side_by_side_json(&c));
        self.side_by_side_rows("TCP throughput (median)", |b| format!("{:.2} Gbit/s", b / 1e9), &c, 0.99);
        let (lost, lost_tcpdump) = ((1.0 - c.ratio[1]).max(0.0), (1.0 - c.ratio[2]).max(0.0));
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
                "within 0.1%",
                Some(err <= 0.001),
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
        let c = self.side_by_side(&mut |b, _| b.tcp_rate())?;
        self.results.insert("connection_rate".into(), Self::side_by_side_json(&c));
        self.side_by_side_rows("short TCP connections per second", |r| format!("{r:.0}/s"), &c, 0.97);
        Ok(())
    }

    /// Short connections per second of the classified client against the accepting server
    /// (already running on CPU 0 at B_ADDR:7000), for one round's seconds.
    fn tcp_rate(&self) -> anyhow::Result<f64> {
        let r = self.world.traffic_on(
            Some(0),
            &self.world.a,
            "client",
            &["tcp-rate", &format!("{B_ADDR}:7000"), &self.plan.seconds.to_string()],
        )?;
        Ok(r["connections"].as_f64().unwrap_or(0.0) / r["seconds"].as_f64().unwrap_or(1.0))
    }

    /// Short connections per second (see [`Bench::tcp_rate`]) with the agent `start` gives,
    /// in rounds alternating with the baseline (no agent, or the one `baseline` gives).
    pub(super) fn short_connections(
        &self,
        baseline: impl Fn(&Self) -> anyhow::Result<Option<Agent>>,
        start: impl Fn(&Self) -> anyhow::Result<Agent>,
    ) -> anyhow::Result<Compared> {
        let baseline = |b: &Self| Ok(baseline(b)?.map_or(Running::Nothing, Running::Agent));
        let start = |b: &Self| Ok(Running::Agent(start(b)?));
        self.alternating(&[&baseline, &start], &mut |b, _| b.tcp_rate())
    }

    /// 64-byte UDP datagrams per second from one socket of the classified client: connected,
    /// and unconnected to 1,000 destinations in turn (ports of a sink that never reads, so no
    /// ICMP error comes back), with and without the agent.
    pub(super) fn small_datagrams(&mut self) -> anyhow::Result<()> {
        const DESTINATIONS: usize = 1000;
        let _sink = self.world.traffic_server_on(
            Some(0),
            &self.world.b,
            "server",
            &["udp-sink", &format!("{B_ADDR}:9000"), &DESTINATIONS.to_string()],
        )?;
        let mut results = serde_json::Map::new();
        for (name, key, destinations, connect) in [
            ("64-byte UDP datagrams/s, one connected socket", "connected", 1, true),
            ("64-byte UDP datagrams/s, one socket to 1,000 destinations", "unconnected", DESTINATIONS, false),
        ] {
            let (seconds, destinations) = (self.plan.seconds.to_string(), destinations.to_string());
            let to = format!("{B_ADDR}:9000");
            let mut args = vec!["udp-rate", &to, &seconds, &destinations];
            if connect {
                args.push("--connect");
            }
            let c = self.side_by_side(&mut |b, _| {
                let r = b.world.traffic_on(Some(0), &b.world.a, "client", &args)?;
                Ok(r["datagrams"].as_f64().unwrap_or(0.0) / r["seconds"].as_f64().unwrap_or(1.0))
            })?;
            results.insert(key.into(), Self::side_by_side_json(&c));
            self.side_by_side_rows(name, |r| format!("{r:.0}/s"), &c, 0.95);
        }
        self.results.insert("small_datagrams".into(), Value::Object(results));
        Ok(())
    }
}
