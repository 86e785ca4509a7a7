//! DNS answers the agent handles with zero loss: a client in the bench's cgroup asks a
//! resolver on the other host for a new name each time, at rising rates; every answer it
//! receives must be taken in by the agent (the kernel copies it, the agent parses it and names
//! its address), none lost in the kernel's ring or unreadable. The rate is the agent's: answers
//! taken in per second of sending.

#[allow(unused_imports)]
use super::*;

/// The agent's DNS counters that matter here: answers parsed, packets taken in, lost, malformed.
fn counters(agent: &Agent) -> anyhow::Result<[u64; 4]> {
    let s = agent.get("/v1/status")?;
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    Ok([
        n(&s["dns"]["answers"]),
        n(&s["dns"]["packets"]),
        n(&s["losses"]["dns_answers_lost"]),
        n(&s["dns"]["malformed"]),
    ])
}

impl Bench<'_> {
    pub(super) fn dns_rate(&mut self) -> anyhow::Result<()> {
        let resolver = format!("{B_ADDR}:53");
        let _dns = self.world.traffic_server(
            &self.world.b,
            "server",
            &["dns-serve", &resolver, "60", "*.bench.example=192.0.2.80"],
        )?;
        let agent = self.agent(&[])?;
        let rates: &[u64] = if self.plan.quick { &[25_000] } else { &[25_000, 50_000, 100_000] };
        let mut best = 0.0f64;
        let mut runs = Vec::new();
        for &rate in rates {
            let before = counters(&agent)?;
            let r = self.world.traffic(
                &self.world.a,
                "client",
                &["dns-flood", &resolver, &rate.to_string(), &self.plan.seconds.to_string()],
            )?;
            let received = r["received"].as_u64().unwrap_or(0);
            let seconds = r["seconds"].as_f64().unwrap_or(1.0).max(0.001);
            // The agent drains its ring every 20 ms: give it a moment to catch up.
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut after = counters(&agent)?;
            while after[1] - before[1] < received && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                after = counters(&agent)?;
            }
            let [answers, packets, lost, malformed] =
                [0, 1, 2, 3].map(|i| after[i].saturating_sub(before[i]));
            // The hook copies an answer before the client's socket takes it: at high rates the
            // client may drop some (its buffer full) that the agent took in all the same.
            let achieved = answers as f64 / seconds;
            let clean = received > 0 && answers >= received && lost == 0 && malformed == 0;
            runs.push(json!({"offered": rate, "sent": r["sent"], "received": received, "seconds": seconds,
                             "answers": answers, "packets": packets, "lost": lost, "malformed": malformed}));
            if clean {
                best = best.max(achieved);
            }
            eprintln!(
                "xtask: bench:   {rate}/s offered: {received} answers received by the client, {answers} taken in by the agent ({achieved:.0}/s), {lost} lost"
            );
        }
        agent.stop();
        self.results.insert("dns".into(), json!(runs));
        self.row(
            "DNS answers handled per second with zero loss (UDP, a new name each)",
            format!("{best:.0}/s"),
            ">= 20,000/s",
            Some(best >= 20_000.0),
        );
        Ok(())
    }
}
