//! Traffic processes (the em-traffic helper) placed, through the shared test world, in a test
//! cgroup, a network namespace and optionally under another uid, before they exec. Killed on drop.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;
pub use test_world::Placement;

use crate::built_binary;

pub struct Traffic {
    child: Child,
    /// Its standard input: closing it lets a holding process (`tcp-send --hold`) go on.
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
    args: Vec<String>,
}

const TIMEOUT: Duration = Duration::from_secs(30);

impl Traffic {
    /// Starts `em-traffic ARGS` in the placement.
    pub fn start(place: &Placement<'_>, args: &[&str]) -> Traffic {
        Traffic::start_wrapped(place, &[], args)
    }

    /// Starts `WRAPPER... em-traffic ARGS` in the placement: the wrapper (`unshare --user`,
    /// say) execs em-traffic, which keeps the wrapper's pid.
    pub fn start_wrapped(place: &Placement<'_>, wrapper: &[&str], args: &[&str]) -> Traffic {
        let bin = built_binary("em-traffic");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child =
            test_world::spawn(&mut cmd, place).unwrap_or_else(|e| panic!("em-traffic {args:?}: {e:#}"));
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Traffic { child, stdin, lines, args: args.iter().map(|s| s.to_string()).collect() }
    }

    /// Closes its standard input: a holding process goes on.
    pub fn release(&mut self) {
        self.stdin.take();
    }

    /// Whether the process has not exited yet.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next JSON line the process printed.
    pub fn next_report(&mut self) -> Value {
        let line = self
            .lines
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("em-traffic {:?} printed nothing within {TIMEOUT:?}", self.args));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("em-traffic printed {line:?}: {e}"))
    }

    /// Waits for the process to exit successfully and returns the last line it printed.
    pub fn finish(mut self) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait em-traffic") {
                break status;
            }
            assert!(Instant::now() < deadline, "em-traffic {:?} still running after {TIMEOUT:?}", self.args);
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "em-traffic {:?} failed: {status}", self.args);
        // The reader thread ends at EOF; take everything it still holds.
        let last =
            self.lines.iter().last().unwrap_or_else(|| panic!("em-traffic {:?} printed nothing", self.args));
        serde_json::from_str(&last).unwrap_or_else(|e| panic!("em-traffic printed {last:?}: {e}"))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
