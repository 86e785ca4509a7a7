//! Entry points for the fuzz targets (`fuzz/`, `cargo xtask fuzz`): each takes arbitrary bytes
//! the way the agent takes that input, and must return (an error is fine) without panicking.

use std::net::IpAddr;

use crate::{
    config::{Config, Origin},
    enrich::{GeoDb, RangeFile},
    names::{self, NameOptions, NameTable},
    probe, store,
    store::query::{AlertQuery, FlowQuery},
};

/// The configuration parser and its checks.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, Origin::Embedded);
    }
}

/// Every cloud range format (Oracle, AWS, Google Cloud, Azure): recognised by their content.
pub fn cloud_ranges(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RangeFile::parse(text);
    }
}

/// Loading a MaxMind DB (with its verification), then looking addresses up in it.
pub fn mmdb(data: &[u8]) {
    let Ok(db) = GeoDb::from_memory(data.to_vec()) else { return };
    for ip in ["1.1.1.1", "175.16.199.1", "10.0.0.1", "::1", "2001:db8::1", "2606:4700::1111"] {
        let ip: IpAddr = ip.parse().expect("valid address");
        let _ = db.lookup(ip);
    }
    let _ = db.describe();
}

/// A query string of `/v1/flows` and `/v1/alerts`, parsed and run against an empty store
/// (the SQL it builds must be valid whatever the input).
pub fn api_query(data: &[u8]) {
    thread_local! {
        static STORE: rusqlite::Connection = store::open_in_memory().expect("an in-memory store");
    }
    let params: Vec<(String, String)> =
        form_urlencoded::parse(data).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let now = chrono::Utc::now();
    STORE.with(|conn| {
        if let Ok(q) = FlowQuery::parse(&params, now) {
            q.run(conn, std::time::Duration::from_secs(60)).expect("a parsed flow query runs");
        }
        if let Ok(q) = AlertQuery::parse(&params, now) {
            q.run(conn).expect("a parsed alert query runs");
        }
    });
}

/// A ring-buffer record from the kernel programs.
pub fn kernel_event(data: &[u8]) {
    let _ = probe::parse_event(data);
}

/// A DNS message as a socket received it: parsed alone, then taken in by a name table as a
/// UDP answer and as a TCP stream cut after its first byte (two segments), as the agent does.
pub fn dns_answer(data: &[u8]) {
    let _ = names::answer::parse(data);
    let mut table = NameTable::new(NameOptions { grace: std::time::Duration::from_secs(60), max_names: 64 });
    let header = |proto, seq, len: usize| monitor_common::DnsHeader {
        ktime_ns: 1,
        cgroup_id: 1,
        cookie: 1,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 53,
        dport: 40000,
        family: monitor_common::FAMILY_V4,
        proto,
        _pad: 0,
        tcp_seq: seq,
        payload_len: len as u32,
        captured: len as u32,
        _pad2: 0,
    };
    table.on_packet(&probe::DnsPacket { header: header(17, 0, data.len()), payload: data.to_vec() });
    let (first, rest) = data.split_at(data.len().min(1));
    table.on_packet(&probe::DnsPacket { header: header(6, 0, first.len()), payload: first.to_vec() });
    table.on_packet(&probe::DnsPacket { header: header(6, 1, rest.len()), payload: rest.to_vec() });
    let _ = table.name_of(1, "192.0.2.1".parse().expect("an address"), 1);
}

/// Reports as `verify` reads them (untrusted JSON, several in a chain, cut at lines `---`):
/// parsed, then checked against a key and an empty store.
pub fn report_verify(data: &[u8]) {
    use crate::reports::{key::PublicKey, verify};
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut reports: Vec<verify::Loaded> = text
        .split("\n---\n")
        .enumerate()
        .filter_map(|(i, t)| verify::parse(std::path::Path::new(&format!("{i}.json")), t).ok())
        .collect();
    thread_local! {
        // Made once: migrating a store per input would be most of the work.
        static STORE: rusqlite::Connection = store::open_in_memory().expect("an empty store");
    }
    let key = PublicKey::parse("ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=").expect("a valid key");
    STORE.with(|store| verify::verify(&mut reports, &key, Some(store)));
    for l in &reports {
        let _ = crate::reports::render::text(&l.report);
        let _ = crate::reports::render::html(&l.report);
    }
}

#[cfg(test)]
mod tests {
    /// Every seed and every input a fuzz run once crashed on (fuzz/regressions/<target>/), through
    /// its entry point: none may panic.
    #[test]
    fn seeds_and_regression_inputs_pass_their_entry_points() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        type Entry = fn(&[u8]);
        let targets: [(&str, Entry); 7] = [
            ("config", super::config),
            ("cloud_ranges", super::cloud_ranges),
            ("mmdb", super::mmdb),
            ("api_query", super::api_query),
            ("kernel_event", super::kernel_event),
            ("dns_answer", super::dns_answer),
            ("report_verify", super::report_verify),
        ];
        let mut replayed = 0;
        for (target, entry) in targets {
            for dir in ["seeds", "regressions"] {
                let Ok(files) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
                for f in files {
                    let path = f.unwrap().path();
                    entry(&std::fs::read(&path).unwrap());
                    replayed += 1;
                }
            }
        }
        assert!(replayed >= 15, "seeds found: {replayed}");
    }
}
