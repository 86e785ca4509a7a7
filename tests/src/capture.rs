//! A packet capture on a test host's veth (tcpdump, from the setup task), to assert what
//! crossed the wire. Stopped on drop.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::netns::Netns;

pub struct Capture {
    child: Child,
    file: tempfile::NamedTempFile,
}

impl Capture {
    /// Captures on `netns`'s veth0 the packets that match the tcpdump `filter`.
    pub fn start(netns: &Netns, filter: &str) -> Capture {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns.name,
                "tcpdump",
                "-i",
                "veth0",
                "-n",
                "-U",
                "--immediate-mode",
                "-w",
            ])
            .arg(file.path())
            .args(filter.split_whitespace())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump");
        // It says "listening on veth0" once the capture runs.
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while err.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("listening on") {}
        assert!(line.contains("listening on"), "tcpdump did not start: {line}");
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Capture { child, file }
    }

    /// Stops the capture and returns the packets it saw, one summary line each.
    pub fn packets(mut self) -> Vec<String> {
        // Let the last packets reach the capture, then stop it cleanly.
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let out = Command::new("tcpdump").args(["-n", "-r"]).arg(self.file.path()).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
