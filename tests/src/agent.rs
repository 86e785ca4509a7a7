//! The real agent binary, started with a configuration the test writes, its JSON records
//! collected as they arrive. Stopped with SIGTERM on drop (SIGKILL if it does not stop).

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::built_binary;

#[derive(Default)]
struct Shared {
    records: Vec<Value>,
    stderr: String,
}

pub struct Agent {
    child: Child,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    _dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
    /// This agent's own bpffs directory: its programs stay pinned there between runs, and
    /// `egress-monitor detach` removes them when the agent is dropped.
    pub pin_dir: std::path::PathBuf,
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Agent {
    /// Starts `egress-monitor run` on this configuration and waits until it is running.
    /// `{agent_dir}` in the configuration is replaced by a directory of this agent's own (for
    /// its state directory and API socket), and `agent.pin_dir` is set to a bpffs directory of
    /// its own unless the configuration sets one.
    pub fn start(config: &str) -> Agent {
        crate::require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("egress-monitor.toml");
        let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/em-test-{}", crate::unique("pins")));
        let config = with_pin_dir(&config.replace("{agent_dir}", dir.path().to_str().unwrap()), &pin_dir);
        std::fs::write(&config_path, config).expect("write config");
        let (child, shared) = spawn(&config_path);
        let mut agent = Agent { child, shared, _dir: dir, config_path, pin_dir };
        agent.wait_stderr("agent running", START_TIMEOUT);
        agent
    }

    /// A CLI command against this agent (over the socket its configuration names); its
    /// stdout. Fails the test when the command fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(crate::built_binary("egress-monitor"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts the agent again on its configuration, changed by `edit`, once the previous run
    /// has exited (killed, or stopped). Returns the previous run's records; from now on the
    /// agent's records and log are the new run's.
    pub fn restart(&mut self, edit: impl FnOnce(String) -> String) -> Vec<Value> {
        assert!(matches!(self.child.try_wait(), Ok(Some(_))), "restart: the agent is still running");
        let config = std::fs::read_to_string(&self.config_path).expect("read config");
        std::fs::write(&self.config_path, edit(config)).expect("write config");
        let (child, shared) = spawn(&self.config_path);
        self.child = child;
        let old = std::mem::replace(&mut self.shared, shared);
        self.wait_stderr("agent running", START_TIMEOUT);
        old.0.lock().unwrap().records.clone()
    }

    /// Kills the agent with SIGKILL (no chance to report anything) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
    }

    /// Runs `egress-monitor detach` on this agent's configuration and returns its output.
    pub fn detach(&self) -> String {
        let out = Command::new(built_binary("egress-monitor"))
            .args(["detach", "--config"])
            .arg(&self.config_path)
            .output()
            .expect("run egress-monitor detach");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "egress-monitor detach failed: {text}");
        text
    }

    /// Waits until the agent's log contains `text`.
    pub fn wait_stderr(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.shared;
        let mut g = lock.lock().unwrap();
        while !g.stderr.contains(text) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the agent exited ({status}) before logging {text:?}:\n{}", g.stderr);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the agent did not log {text:?} within {timeout:?}:\n{}", g.stderr);
            g = cond.wait_timeout(g, left.min(Duration::from_millis(200))).unwrap().0;
        }
    }

    /// Edits the configuration file and sends the agent SIGHUP; returns the log line that
    /// answers it (the reload done, or why not).
    pub fn reload(&mut self, edit: impl FnOnce(String) -> String) -> String {
        let config = std::fs::read_to_string(&self.config_path).expect("read config");
        std::fs::write(&self.config_path, edit(config)).expect("write config");
        let answers = |stderr: &str| stderr.lines().filter(|l| l.contains("SIGHUP:")).count();
        let before = answers(&self.shared.0.lock().unwrap().stderr);
        // SAFETY: signalling the agent we started.
        unsafe { libc::kill(self.pid() as i32, libc::SIGHUP) };
        let deadline = Instant::now() + START_TIMEOUT;
        let (lock, cond) = &*self.shared;
        let mut g = lock.lock().unwrap();
        while answers(&g.stderr) == before {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the agent did not answer SIGHUP within {START_TIMEOUT:?}:\n{}",
                g.stderr
            );
            g = cond.wait_timeout(g, left.min(Duration::from_millis(200))).unwrap().0;
        }
        g.stderr.lines().filter(|l| l.contains("SIGHUP:")).nth(before).unwrap().to_owned()
    }

    /// Waits for the first record that satisfies `pred`; panics with `what` and the agent's
    /// log after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.shared;
        let mut g = lock.lock().unwrap();
        loop {
            if let Some(v) = g.records.iter().find(|v| pred(v)) {
                return v.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no record {what} within {timeout:?}; {} records; agent log:\n{}",
                    g.records.len(),
                    g.stderr
                );
            }
            g = cond.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Every record so far that satisfies `pred`.
    pub fn records(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.shared.0.lock().unwrap().records.iter().filter(|v| pred(v)).cloned().collect()
    }

    pub fn stderr(&self) -> String {
        self.shared.0.lock().unwrap().stderr.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// This agent's own directory (what `{agent_dir}` stood for).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Kernel program ids the agent logged as attached.
    pub fn program_ids(&self) -> Vec<u32> {
        program_ids(&self.stderr())
    }

    /// Sends `signal` and waits for the agent to exit.
    pub fn stop_with(&mut self, signal: i32) -> ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait agent") {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the agent did not stop within 20 s of signal {signal}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
    }
}

/// Kernel program ids an agent's text log names as attached.
pub fn program_ids(log: &str) -> Vec<u32> {
    log.lines()
        .filter(|l| l.contains("attached") && l.contains("program="))
        .filter_map(|l| {
            l.split_whitespace().find_map(|w| w.strip_prefix("id=")).and_then(|id| id.parse().ok())
        })
        .collect()
}

/// The configuration with `agent.pin_dir` set, unless it sets one.
fn with_pin_dir(config: &str, pin_dir: &std::path::Path) -> String {
    if config.contains("pin_dir") {
        return config.to_owned();
    }
    let line = format!("pin_dir = {:?}\n", pin_dir.to_str().unwrap());
    match config.find("[agent]\n") {
        Some(i) => format!("{}[agent]\n{line}{}", &config[..i], &config[i + 8..]),
        None => format!("[agent]\n{line}{config}"),
    }
}

fn spawn(config_path: &std::path::Path) -> (Child, Arc<(Mutex<Shared>, Condvar)>) {
    let mut child = Command::new(built_binary("egress-monitor"))
        .arg("run")
        .arg("--config")
        .arg(config_path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn egress-monitor");
    let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let s = shared.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let v: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("agent printed {line:?}: {e}"));
            s.0.lock().unwrap().records.push(v);
            s.1.notify_all();
        }
    });
    let s = shared.clone();
    std::thread::spawn(move || {
        let mut r = BufReader::new(err);
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            s.0.lock().unwrap().stderr.push_str(&String::from_utf8_lossy(&buf[..n]));
            s.1.notify_all();
        }
    });
    (child, shared)
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // The programs outlive the agent: remove them, also when the test failed.
        let _ = Command::new(built_binary("egress-monitor"))
            .args(["detach", "--config"])
            .arg(&self.config_path)
            .output();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}
