use std::{str::FromStr, time::Duration};

use hickory_proto::{
    op::{Message, OpCode, Query},
    rr::{Name, RData, Record, RecordType, rdata},
};
use monitor_common::DnsHeader;

use super::*;

const S: u64 = 1_000_000_000;

fn table(max_names: usize) -> NameTable {
    NameTable::new(NameOptions { grace: Duration::from_secs(5), max_names })
}

/// A UDP answer to `question` giving `ips` (ttl 10 s), received by `cgroup` at `at` seconds.
fn answer(cgroup: u64, at: u64, question: &str, ips: &[&str]) -> DnsPacket {
    let mut m = Message::response(1, OpCode::Query);
    m.add_query(Query::query(Name::from_str(question).unwrap(), RecordType::A));
    for ip in ips {
        let data = match ip.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => RData::A(rdata::A(a)),
            IpAddr::V6(a) => RData::AAAA(rdata::AAAA(a)),
        };
        m.add_answer(Record::from_rdata(Name::from_str(question).unwrap(), 10, data));
    }
    packet(cgroup, at, 17, m.to_vec().unwrap())
}

fn packet(cgroup: u64, at: u64, proto: u8, payload: Vec<u8>) -> DnsPacket {
    let header = DnsHeader {
        ktime_ns: at * S,
        cgroup_id: cgroup,
        cookie: 1,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 53,
        dport: 40000,
        family: 4,
        proto,
        _pad: 0,
        tcp_seq: 0,
        payload_len: payload.len() as u32,
        captured: payload.len() as u32,
        _pad2: 0,
    };
    DnsPacket { header, payload }
}

fn domain(t: &mut NameTable, cgroup: u64, ip: &str, at: u64) -> Option<String> {
    t.name_of(cgroup, ip.parse().unwrap(), at * S).map(|n| n.domain.to_string())
}

#[test]
fn a_cgroup_s_own_answer_wins_and_others_fall_back_to_the_host_s() {
    let mut t = table(100);
    t.on_packet(&answer(1, 100, "api.example.com.", &["192.0.2.1"]));
    t.on_packet(&answer(2, 101, "mirror.example.net.", &["192.0.2.1"]));
    assert_eq!(domain(&mut t, 1, "192.0.2.1", 102).as_deref(), Some("api.example.com"));
    assert_eq!(domain(&mut t, 2, "192.0.2.1", 102).as_deref(), Some("mirror.example.net"));
    // A cgroup that resolved nothing: the latest answer on the host.
    assert_eq!(domain(&mut t, 3, "192.0.2.1", 102).as_deref(), Some("mirror.example.net"));
    assert_eq!(domain(&mut t, 1, "192.0.2.2", 102), None);
    // An IPv4-mapped destination is the IPv4 address.
    assert_eq!(domain(&mut t, 1, "::ffff:192.0.2.1", 102).as_deref(), Some("api.example.com"));
    assert_eq!(t.counters().answers, 2);
}

#[test]
fn names_expire_after_ttl_and_grace() {
    let mut t = table(100);
    t.on_packet(&answer(1, 100, "api.example.com.", &["2001:db8::1"]));
    // TTL 10 s + grace 5 s.
    assert!(domain(&mut t, 1, "2001:db8::1", 115).is_some());
    assert_eq!(domain(&mut t, 1, "2001:db8::1", 116), None);
}

#[test]
fn evictions_of_valid_names_are_counted() {
    let mut t = table(4);
    // Each address takes two entries: the cgroup's and the host's.
    t.on_packet(&answer(1, 100, "a.example.", &["192.0.2.1", "192.0.2.2"]));
    assert_eq!(t.counters().evicted, 0);
    t.on_packet(&answer(1, 101, "b.example.", &["192.0.2.3"]));
    assert_eq!(t.counters().evicted, 2);
    assert_eq!(t.len(), 4);
    assert_eq!(domain(&mut t, 1, "192.0.2.1", 101), None);
    assert_eq!(domain(&mut t, 1, "192.0.2.3", 101).as_deref(), Some("b.example"));
}

#[test]
fn malformed_truncated_and_addressless_messages_are_counted_and_ignored() {
    let mut t = table(100);
    let good = answer(1, 100, "api.example.com.", &["192.0.2.1"]);
    let mut bad = good.clone();
    bad.payload.truncate(20);
    (bad.header.payload_len, bad.header.captured) = (20, 20);
    t.on_packet(&bad);
    let mut cut = good.clone();
    cut.header.payload_len = 5000;
    t.on_packet(&cut);
    t.on_packet(&answer(1, 100, "none.example.", &[]));
    let c = t.counters();
    assert_eq!((c.packets, c.malformed, c.malformed_bytes), (3, 1, 20));
    assert_eq!((c.truncated, c.truncated_bytes), (1, 5000));
    assert_eq!((c.no_address, c.answers), (1, 0));
    assert!(t.is_empty());
}

#[test]
fn answers_over_tcp_are_joined_across_segments() {
    let mut t = table(100);
    let a = answer(1, 100, "api.example.com.", &["192.0.2.1"]).payload;
    let mut stream = (a.len() as u16).to_be_bytes().to_vec();
    stream.extend(&a);
    let (first, rest) = stream.split_at(9);
    let mut p1 = packet(1, 100, 6, first.to_vec());
    p1.header.tcp_seq = 5000;
    let mut p2 = packet(1, 100, 6, rest.to_vec());
    p2.header.tcp_seq = 5009;
    t.on_packet(&p1);
    assert_eq!(domain(&mut t, 1, "192.0.2.1", 100), None);
    t.on_packet(&p2);
    assert_eq!(domain(&mut t, 1, "192.0.2.1", 100).as_deref(), Some("api.example.com"));
}

#[test]
fn the_fuzz_seed_with_a_cname_chain_names_both_addresses() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/dns_answer/cname_chain");
    let Ok(Parsed::Answer(a)) = parse(&std::fs::read(path).unwrap()) else { panic!("not an answer") };
    assert_eq!(&*a.domain, "api.example.com");
    let ips: Vec<String> = a.addresses.iter().map(|r| r.ip.to_string()).collect();
    assert_eq!(ips, ["192.0.2.7", "2001:db8::7"]);
    assert!(a.addresses.iter().all(|r| r.cname_chain == vec![Arc::<str>::from("edge.cdn.example.net")]));
}

#[test]
fn an_answer_received_after_a_flow_started_does_not_name_it_but_the_one_before_still_does() {
    let mut t = table(100);
    t.on_packet(&answer(1, 100, "old.example.", &["192.0.2.1"]));
    // Re-resolved to another name at 103 (the first still valid until 115).
    t.on_packet(&answer(1, 103, "new.example.", &["192.0.2.1"]));
    // A flow opened at 102, first reported now: the name it was opened with.
    assert_eq!(domain(&mut t, 1, "192.0.2.1", 102).as_deref(), Some("old.example"));
    assert_eq!(domain(&mut t, 1, "192.0.2.1", 104).as_deref(), Some("new.example"));
    // Before any answer: none.
    assert_eq!(domain(&mut t, 1, "192.0.2.1", 99), None);
    // An expired name followed by a new answer: a flow opened in between has no name.
    t.on_packet(&answer(1, 200, "later.example.", &["192.0.2.1"]));
    assert_eq!(domain(&mut t, 1, "192.0.2.1", 150), None);
}

#[test]
fn the_same_name_again_keeps_the_different_one_before_it() {
    let mut t = table(100);
    t.on_packet(&answer(1, 100, "a.example.", &["192.0.2.1"]));
    t.on_packet(&answer(1, 103, "b.example.", &["192.0.2.1"]));
    // b again, twice: a flow opened at 102 is still a's, one at 112 is b's (b valid from 103
    // to 108 + 15).
    t.on_packet(&answer(1, 106, "b.example.", &["192.0.2.1"]));
    t.on_packet(&answer(1, 108, "b.example.", &["192.0.2.1"]));
    assert_eq!(domain(&mut t, 1, "192.0.2.1", 102).as_deref(), Some("a.example"));
    assert_eq!(domain(&mut t, 1, "192.0.2.1", 104).as_deref(), Some("b.example"));
    assert_eq!(domain(&mut t, 1, "192.0.2.1", 123).as_deref(), Some("b.example"));
    assert_eq!(domain(&mut t, 1, "192.0.2.1", 124), None);
}

#[test]
fn an_ipv4_mapped_answer_names_ipv4_flows_and_a_ttl_with_its_top_bit_set_is_zero() {
    let mut t = table(100);
    t.on_packet(&answer(1, 100, "mapped.example.", &["::ffff:192.0.2.7"]));
    assert_eq!(domain(&mut t, 1, "192.0.2.7", 101).as_deref(), Some("mapped.example"));
    // TTL 2^31: taken as 0, so valid for the grace (5 s) only.
    let mut m = Message::response(1, OpCode::Query);
    m.add_query(Query::query(Name::from_str("huge.example.").unwrap(), RecordType::A));
    let ip: std::net::Ipv4Addr = "192.0.2.8".parse().unwrap();
    m.add_answer(Record::from_rdata(
        Name::from_str("huge.example.").unwrap(),
        1 << 31,
        RData::A(rdata::A(ip)),
    ));
    t.on_packet(&packet(1, 200, 17, m.to_vec().unwrap()));
    assert_eq!(domain(&mut t, 1, "192.0.2.8", 205).as_deref(), Some("huge.example"));
    assert_eq!(domain(&mut t, 1, "192.0.2.8", 206), None);
}
