//! A real ClickHouse (Debian's clickhouse-server) on loopback with its own data directory and
//! ports, the project's schema created in it, and a `writer` user with a password. Can be
//! stopped and started again on the same data (an outage). Killed on drop.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::free_port;

pub struct ClickHouse {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub http_port: u16,
}

pub const WRITER: &str = "writer";
pub const WRITER_PASSWORD: &str = "w-pass-for-tests";

impl ClickHouse {
    pub fn start() -> ClickHouse {
        let dir = tempfile::tempdir().expect("tempdir");
        let (http_port, tcp_port) = (free_port(), free_port());
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("config.xml"),
            format!(
                r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><console>1</console></logger>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>268435456</mark_cache_size>
</yandex>
"#
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("users.xml"),
            format!(
                r#"<?xml version="1.0"?>
<yandex>
    <profiles><default></default></profiles>
    <users>
        <default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>
        <{WRITER}><password>{WRITER_PASSWORD}</password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></{WRITER}>
    </users>
    <quotas><default></default></quotas>
</yandex>
"#
            ),
        )
        .unwrap();
        let mut ch = ClickHouse { child: None, dir, http_port };
        ch.resume();
        for statement in
            monitor::export::clickhouse::SCHEMA.split(';').map(str::trim).filter(|s| !s.is_empty())
        {
            ch.query(statement);
        }
        ch
    }

    /// Starts the server (again) on the same data and ports; waits until it answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let config = self.dir.path().join("config.xml");
        let child = Command::new("clickhouse-server")
            .arg(format!("--config-file={}", config.display()))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start clickhouse-server (installed by cargo xtask setup)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.try_query("SELECT 1").is_err() {
            assert!(Instant::now() < deadline, "clickhouse-server did not answer on port {}", self.http_port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGKILL, as an outage would); the data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.http_port)
    }

    pub fn try_query(&self, sql: &str) -> Result<String, String> {
        let resp = crate::http_client()
            .build()
            .unwrap()
            .post(self.url())
            .body(sql.to_owned())
            .timeout(Duration::from_secs(10))
            .send()
            .map_err(|e| e.to_string())?;
        let ok = resp.status().is_success();
        let text = resp.text().map_err(|e| e.to_string())?;
        if ok { Ok(text) } else { Err(text) }
    }

    pub fn query(&self, sql: &str) -> String {
        self.try_query(sql).unwrap_or_else(|e| panic!("ClickHouse refused {sql:?}: {e}"))
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}
