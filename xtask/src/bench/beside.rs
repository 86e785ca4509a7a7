//! What runs beside the workload when the bench compares costs: nothing, egress-monitor, or
//! what an admin would install from Debian instead (tcpdump writing to /dev/null; pmacct's
//! `pmacctd`, flow accounting from a packet capture). Each is started before a run and stopped
//! after it; the CPU its processes used during the run is measured too (the agent's own process;
//! what its kernel programs cost shows in the workload's rate instead).

#[allow(unused_imports)]
use super::*;

/// One of the things compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Nothing,
    Monitor,
    Tcpdump,
    Pmacctd,
}

impl Tool {
    /// Every tool, the baseline first.
    pub const ALL: [Tool; 4] = [Tool::Nothing, Tool::Monitor, Tool::Tcpdump, Tool::Pmacctd];

    /// Its name in BENCHMARKS.md.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Nothing => "no monitor",
            Tool::Monitor => "egress-monitor",
            Tool::Tcpdump => "tcpdump -w /dev/null",
            Tool::Pmacctd => "pmacctd (pmacct)",
        }
    }

    /// Its key in results.json.
    pub fn key(self) -> &'static str {
        match self {
            Tool::Nothing => "baseline",
            Tool::Monitor => "egress_monitor",
            Tool::Tcpdump => "tcpdump",
            Tool::Pmacctd => "pmacctd",
        }
    }
}

/// A tool while it runs.
pub enum Running {
    Nothing,
    Agent(Agent),
    Proc(Proc),
}

impl Running {
    pub fn pid(&self) -> Option<u32> {
        match self {
            Running::Nothing => None,
            Running::Agent(a) => Some(a.pid()),
            Running::Proc(p) => Some(p.pid()),
        }
    }

    pub fn agent(&self) -> Option<&Agent> {
        if let Running::Agent(a) = self { Some(a) } else { None }
    }

    pub fn stop(self) {
        match self {
            Running::Nothing => {}
            Running::Agent(a) => a.stop(),
            Running::Proc(mut p) => p.stop(),
        }
    }
}

/// CPU seconds (user + system) of a process and its descendants (pmacctd runs each plugin in a
/// process of its own).
fn tree_cpu(pid: u32) -> f64 {
    let children: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).ok().and_then(|s| {
                let fields: Vec<String> =
                    s.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect();
                fields.get(1)?.parse::<u32>().ok()
            }) == Some(pid)
        })
        .collect();
    usage(pid).map_or(0.0, |u| u.cpu_seconds) + children.into_iter().map(tree_cpu).sum::<f64>()
}

/// What [`Bench::alternating`] measured, per mode (in the order given; the first is the
/// baseline): the samples, the median of each round's ratio to the baseline, the median
/// sample, and the median share of one CPU the mode's process used.
pub struct Compared {
    pub samples: Vec<Vec<f64>>,
    pub ratio: Vec<f64>,
    pub median: Vec<f64>,
    pub cpu: Vec<f64>,
}

/// Starts one mode of a comparison.
pub type Starter<'s, 'b> = &'s dyn Fn(&Bench<'b>) -> anyhow::Result<Running>;

impl<'b> Bench<'b> {
    /// Starts a tool on host a (where the measured client runs), capturing its veth.
    pub fn start_tool(&self, tool: Tool) -> anyhow::Result<Running> {
        let capture = |program: &str, args: &[&str]| -> anyhow::Result<Running> {
            let p = self.world.spawn(&self.world.a, "server", program, args, Stdio::null(), Stdio::null())?;
            // Both open the capture before they see a packet.
            std::thread::sleep(Duration::from_millis(500));
            Ok(Running::Proc(p))
        };
        match tool {
            Tool::Nothing => Ok(Running::Nothing),
            Tool::Monitor => Ok(Running::Agent(self.agent(&[])?)),
            Tool::Tcpdump => capture("tcpdump", &["-i", "veth0", "-n", "-s", "0", "-w", "/dev/null"]),
            // Flows by 5-tuple in memory, printed (to /dev/null) once a minute.
            Tool::Pmacctd => capture(
                "pmacctd",
                &[
                    "-i",
                    "veth0",
                    "-P",
                    "print",
                    "-r",
                    "60",
                    "-c",
                    "src_host,dst_host,src_port,dst_port,proto",
                ],
            ),
        }
    }

    /// `measure` in rounds, each running every mode once (the order rotating between rounds,
    /// so slow drifts of a shared machine cancel out in the per-round ratios).
    pub fn alternating(
        &self,
        modes: &[Starter<'_, 'b>],
        measure: &mut dyn FnMut(&Self, &Running) -> anyhow::Result<f64>,
    ) -> anyhow::Result<Compared> {
        let n = modes.len();
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); n];
        for round in 0..self.plan.rounds {
            for k in 0..n {
                let m = (round + k) % n;
                let running = modes[m](self)?;
                let before = running.pid().map(tree_cpu);
                let started = Instant::now();
                samples[m].push(measure(self, &running)?);
                let wall = started.elapsed().as_secs_f64();
                if let (Some(pid), Some(before)) = (running.pid(), before) {
                    cpu[m].push((tree_cpu(pid) - before) / wall);
                }
                running.stop();
            }
        }
        let ratio = (0..n)
            .map(|m| {
                let mut r: Vec<f64> = samples[m].iter().zip(&samples[0]).map(|(x, b)| x / b).collect();
                median(&mut r)
            })
            .collect();
        let med = samples.clone().iter_mut().map(|s| median(s)).collect();
        let cpu = cpu.iter_mut().map(|c| if c.is_empty() { 0.0 } else { median(c) }).collect();
        Ok(Compared { samples, ratio, median: med, cpu })
    }

    /// [`Bench::alternating`] over every [`Tool`].
    pub fn side_by_side(
        &self,
        measure: &mut dyn FnMut(&Self, &Running) -> anyhow::Result<f64>,
    ) -> anyhow::Result<Compared> {
        let [a, b, c, d] = Tool::ALL.map(|t| move |bench: &Bench<'b>| bench.start_tool(t));
        self.alternating(&[&a, &b, &c, &d], measure)
    }

    /// The rows of a side-by-side comparison: the baseline, then each tool's rate against it
    /// (egress-monitor's with `target`) and the CPU its processes used.
    pub fn side_by_side_rows(&mut self, what: &str, unit: impl Fn(f64) -> String, c: &Compared, target: f64) {
        self.row(&format!("{what}, no monitor"), unit(c.median[0]), "", None);
        for (i, tool) in Tool::ALL.iter().enumerate().skip(1) {
            let monitor = *tool == Tool::Monitor;
            self.row(
                &format!("  with {} (its processes: {:.0}% of a CPU)", tool.name(), c.cpu[i] * 100.0),
                format!("{} ({:.1}%)", unit(c.median[i]), c.ratio[i] * 100.0),
                if monitor { format!(">= {:.0}% of baseline", target * 100.0) } else { String::new() }
                    .as_str(),
                monitor.then_some(c.ratio[i] >= target),
            );
        }
    }

    /// Samples and medians of a comparison over every tool, for results.json.
    pub fn side_by_side_json(c: &Compared) -> Value {
        let per = |v: &[f64]| -> serde_json::Map<String, Value> {
            Tool::ALL.iter().zip(v).map(|(t, x)| (t.key().to_owned(), json!(x))).collect()
        };
        let samples: serde_json::Map<String, Value> =
            Tool::ALL.iter().zip(&c.samples).map(|(t, s)| (t.key().to_owned(), json!(s))).collect();
        json!({"samples": samples, "median": per(&c.median), "ratio": per(&c.ratio), "process_cpu": per(&c.cpu)})
    }
}
