//! What the benchmarks run in, all created here and removed on drop (also on failure): two
//! network namespaces joined by a veth pair, a cgroup with a classified `client` and a `server`
//! child, processes placed in them, and the real agent (release build).

use std::{
    fs::{File, OpenOptions},
    io::Read,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

pub const A_ADDR: &str = "10.200.0.1";
pub const B_ADDR: &str = "10.200.0.2";

/// Runs a command, failing with its output.
pub fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("starting {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct World {
    pub a: String,
    pub b: String,
    cg_root: PathBuf,
    /// This benchmark's cgroup, relative to the root ("/em-bench-123").
    pub rel: String,
    pub bin_dir: PathBuf,
}

impl World {
    pub fn new(bin_dir: &Path) -> anyhow::Result<World> {
        let id = std::process::id();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let cg_root = mountinfo
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let mount = left.split_whitespace().nth(4)?;
                (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
            })
            .context("no cgroup2 mount in /proc/self/mountinfo")?;
        let w = World {
            a: format!("emb{id}a"),
            b: format!("emb{id}b"),
            cg_root,
            rel: format!("/em-bench-{id}"),
            bin_dir: bin_dir.to_owned(),
        };
        // From here on, drop cleans up whatever was made.
        for ns in [&w.a, &w.b] {
            run("ip", &["netns", "add", ns])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        run(
            "ip",
            &["link", "add", "veth0", "netns", &w.a, "type", "veth", "peer", "name", "veth0", "netns", &w.b],
        )?;
        for (ns, addr) in [(&w.a, A_ADDR), (&w.b, B_ADDR)] {
            run("ip", &["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "veth0"])?;
            run("ip", &["-n", ns, "link", "set", "veth0", "up"])?;
        }
        // Minutes of short connections leave tens of thousands in TIME_WAIT on the client:
        // let it reuse them and use the whole port range (both settings are per namespace).
        run(
            "ip",
            &[
                "netns",
                "exec",
                &w.a,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.tcp_tw_reuse=1",
                "net.ipv4.ip_local_port_range=1024 65000",
            ],
        )?;
        for child in ["client", "server"] {
            std::fs::create_dir_all(w.cgroup_dir(child))?;
        }
        Ok(w)
    }

    pub fn cgroup_dir(&self, child: &str) -> PathBuf {
        self.cg_root.join(&self.rel[1..]).join(child)
    }

    /// Starts `program args` in namespace `ns` and cgroup child `cgroup`.
    pub fn spawn(
        &self,
        ns: &str,
        cgroup: &str,
        program: &str,
        args: &[&str],
        stdout: Stdio,
        stderr: Stdio,
    ) -> anyhow::Result<Proc> {
        let procs = OpenOptions::new().write(true).open(self.cgroup_dir(cgroup).join("cgroup.procs"))?;
        let netns = File::open(format!("/run/netns/{ns}"))?;
        let (procs_fd, ns_fd) = (procs.as_raw_fd(), netns.as_raw_fd());
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1
                    || libc::setns(ns_fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {program}"))?;
        Ok(Proc { child })
    }

    /// Runs `em-traffic args` in (ns, cgroup) to completion; its last JSON line.
    pub fn traffic(&self, ns: &str, cgroup: &str, args: &[&str]) -> anyhow::Result<Value> {
        self.traffic_on(None, ns, cgroup, args)
    }

    /// As [`World::traffic`], pinned to one CPU when `cpu` is given.
    pub fn traffic_on(
        &self,
        cpu: Option<usize>,
        ns: &str,
        cgroup: &str,
        args: &[&str],
    ) -> anyhow::Result<Value> {
        let bin = self.bin_dir.join("em-traffic");
        let (program, all) = pinned(cpu, bin.to_str().unwrap(), args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut p = self.spawn(ns, cgroup, &program, &all, Stdio::piped(), Stdio::inherit())?;
        let mut out = String::new();
        p.child.stdout.take().unwrap().read_to_string(&mut out)?;
        let status = p.child.wait()?;
        if !status.success() {
            bail!("em-traffic {args:?} failed: {status}");
        }
        serde_json::from_str(out.lines().last().unwrap_or("null")).context("em-traffic's report")
    }

    /// Starts a long-running em-traffic (a server, or a sender that holds its sockets open)
    /// and returns it with the first line it reports.
    pub fn traffic_held(&self, ns: &str, cgroup: &str, args: &[&str]) -> anyhow::Result<(Proc, Value)> {
        self.traffic_held_on(None, ns, cgroup, args)
    }

    pub fn traffic_held_on(
        &self,
        cpu: Option<usize>,
        ns: &str,
        cgroup: &str,
        args: &[&str],
    ) -> anyhow::Result<(Proc, Value)> {
        let bin = self.bin_dir.join("em-traffic");
        let (program, all) = pinned(cpu, bin.to_str().unwrap(), args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut p = self.spawn(ns, cgroup, &program, &all, Stdio::piped(), Stdio::inherit())?;
        let mut byte = [0u8; 1];
        let mut line = Vec::new();
        let out = p.child.stdout.as_mut().unwrap();
        while out.read(&mut byte)? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let v =
            serde_json::from_slice(&line).with_context(|| format!("em-traffic {args:?} reported nothing"))?;
        Ok((p, v))
    }

    /// Starts a long-running em-traffic server and waits for its "ready".
    pub fn traffic_server(&self, ns: &str, cgroup: &str, args: &[&str]) -> anyhow::Result<Proc> {
        self.traffic_server_on(None, ns, cgroup, args)
    }

    pub fn traffic_server_on(
        &self,
        cpu: Option<usize>,
        ns: &str,
        cgroup: &str,
        args: &[&str],
    ) -> anyhow::Result<Proc> {
        let (p, v) = self.traffic_held_on(cpu, ns, cgroup, args)?;
        if v["event"] != "ready" {
            bail!("em-traffic {args:?} did not get ready: {v}");
        }
        Ok(p)
    }
}

/// The command line that runs `program args`, through `taskset` when pinned to a CPU.
fn pinned(cpu: Option<usize>, program: &str, args: &[&str]) -> (String, Vec<String>) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    match cpu {
        None => (program.to_owned(), args),
        Some(c) => {
            ("taskset".into(), [vec!["-c".to_owned(), c.to_string(), program.to_owned()], args].concat())
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let top = self.cg_root.join(&self.rel[1..]);
        for child in ["client", "server", ""] {
            let dir = if child.is_empty() { top.clone() } else { top.join(child) };
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                if procs.trim().is_empty() || Instant::now() > deadline {
                    break;
                }
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: killing a benchmark process we placed in this cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::fs::remove_dir(&dir);
        }
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (SIGKILL after 20 s).
    pub fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(None) = self.child.try_wait() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The agent (release build) with a configuration for benchmarking: the bench cgroup's
/// `client` is classified; records go to /dev/null; the API on a socket of its own.
pub struct Agent {
    proc: Proc,
    pub dir: tempfile::TempDir,
    client: reqwest::blocking::Client,
}

impl Agent {
    pub fn start(world: &World, agent_bin: &Path, country_db: &Path, extra: &str) -> anyhow::Result<Agent> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().display();
        let config = format!(
            r#"[agent]
host = "bench"
state_dir = "{d}/state"
sweep_interval = "1s"
flush_interval = "10s"
idle_timeout = "300s"
close_grace = "300ms"
max_flows = 524288
{extra}
[api]
socket = "{d}/api.sock"

[geoip]
country_db = "{db}"

[[classes]]
name = "bench-data"
cgroups = ["{rel}/client"]
approved = ["US"]
"#,
            db = country_db.display(),
            rel = world.rel,
        );
        std::fs::write(dir.path().join("egress-monitor.toml"), config)?;
        let log = File::create(dir.path().join("agent.log"))?;
        let config = dir.path().join("egress-monitor.toml");
        let child = Command::new(agent_bin)
            .args(["run", "--config", config.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the agent")?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::blocking::Client::builder()
            .unix_socket(dir.path().join("api.sock"))
            .timeout(Duration::from_secs(30))
            .build()?;
        let agent = Agent { proc: Proc { child }, dir, client };
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent.get("/v1/status").is_err() {
            if Instant::now() > deadline {
                bail!("the agent did not start: {}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self.client.get(format!("http://agent{path}")).send()?;
        if !resp.status().is_success() {
            bail!("GET {path}: {}", resp.status());
        }
        Ok(serde_json::from_str(&resp.text()?)?)
    }

    pub fn stop(mut self) {
        self.proc.stop();
    }
}

/// CPU time (user + system, in seconds) and memory of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_kib: u64,
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
}

pub fn usage(pid: u32) -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').context("/proc/pid/stat")?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok(Usage {
        cpu_seconds: (ticks(11) + ticks(12)) / hz,
        rss_kib: kib("VmRSS:"),
        rss_anon_kib: kib("RssAnon:"),
        rss_file_kib: kib("RssFile:"),
    })
}
