//! A real rsyslog (Debian's rsyslogd), started on loopback with a configuration the test
//! writes: UDP and TCP inputs, every message written to a file as
//! `facility|severity|hostname|app-name|procid|msgid|structured-data|msg`. Killed on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::free_port;

pub struct Rsyslog {
    child: Child,
    dir: tempfile::TempDir,
    pub udp_port: u16,
    pub tcp_port: u16,
}

/// One message as rsyslog parsed it.
#[derive(Debug, Clone)]
pub struct Received {
    pub facility: String,
    pub severity: String,
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
    pub msgid: String,
    pub structured_data: String,
    pub msg: String,
}

impl Received {
    /// A structured-data parameter's value (unescaped).
    pub fn sd_param(&self, name: &str) -> Option<String> {
        let start = self.structured_data.find(&format!(" {name}=\""))? + name.len() + 3;
        let mut out = String::new();
        let mut chars = self.structured_data[start..].chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?),
                '"' => return Some(out),
                c => out.push(c),
            }
        }
        None
    }
}

impl Rsyslog {
    pub fn start() -> Rsyslog {
        let dir = tempfile::tempdir().expect("tempdir");
        let (udp_port, tcp_port) = (free_port(), free_port());
        let d = dir.path().display();
        let conf = format!(
            r#"global(workDirectory="{d}")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{udp_port}" ruleset="test")
input(type="imtcp" address="127.0.0.1" port="{tcp_port}" ruleset="test")
template(name="fields" type="string"
         string="%syslogfacility-text%|%syslogseverity-text%|%hostname%|%app-name%|%procid%|%msgid%|%structured-data%|%msg%\n")
ruleset(name="test") {{ action(type="omfile" file="{d}/messages.log" template="fields") }}
"#
        );
        let conf_path = dir.path().join("rsyslog.conf");
        std::fs::write(&conf_path, conf).expect("write rsyslog.conf");
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rsyslogd (installed by cargo xtask setup)");
        let r = Rsyslog { child, dir, udp_port, tcp_port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(listening("/proc/net/tcp", tcp_port) && listening("/proc/net/udp", udp_port)) {
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not open ports {udp_port}/udp and {tcp_port}/tcp"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("messages.log")
    }

    pub fn messages(&self) -> Vec<Received> {
        std::fs::read_to_string(self.file())
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.splitn(8, '|').collect();
                assert_eq!(f.len(), 8, "unexpected line {l:?}");
                Received {
                    facility: f[0].into(),
                    severity: f[1].into(),
                    hostname: f[2].into(),
                    app_name: f[3].into(),
                    procid: f[4].into(),
                    msgid: f[5].into(),
                    structured_data: f[6].into(),
                    msg: f[7].trim_start().into(),
                }
            })
            .collect()
    }

    /// Waits for `n` messages that satisfy `pred`.
    pub fn wait_for(&self, n: usize, timeout: Duration, pred: impl Fn(&Received) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<Received> = self.messages().into_iter().filter(|m| pred(m)).collect();
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether a /proc/net table lists a socket bound to 127.0.0.1:`port` (listening, for TCP).
fn listening(table: &str, port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string(table).unwrap_or_default().lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&want.as_str()) && (table.ends_with("udp") || f.get(3) == Some(&"0A"))
    })
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
