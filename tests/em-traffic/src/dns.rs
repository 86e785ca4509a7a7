//! A small DNS server and client for the tests of names on flows.
//!
//!   em-traffic dns-serve LISTEN_ADDR TTL RECORD...  answers over UDP and TCP (TCP answers are
//!                        written in two segments); RECORD is NAME=IP (A or AAAA), NAME=NAME
//!                        (CNAME) or NAME=!malformed (an answer no parser can read); a NAME
//!                        of *.SUFFIX stands for every name below SUFFIX
//!   em-traffic resolve   SERVER NAME [--aaaa] [--tcp] [--connect PORT BYTES]
//!                        asks SERVER (UDP, or TCP) for NAME's A (or AAAA) records, reports the
//!                        addresses, then connects to the first one and sends BYTES
//!   em-traffic dns-flood SERVER RATE SECONDS
//!                        queries for n<i>.bench.example at RATE/s from one UDP socket for
//!                        SECONDS, counting the answers; reports sent and received

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    str::FromStr,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RData, Record, RecordType, rdata},
};

use crate::report;

/// What a zone entry says about a name.
enum Target {
    Address(IpAddr),
    Alias(String),
    Malformed,
}

fn zone(records: &[String]) -> Vec<(String, Target)> {
    records
        .iter()
        .map(|r| {
            let (name, target) = r.split_once('=').expect("RECORD is NAME=TARGET");
            let target = match target {
                "!malformed" => Target::Malformed,
                t => t.parse().map(Target::Address).unwrap_or_else(|_| Target::Alias(t.to_owned())),
            };
            (name.trim_end_matches('.').to_lowercase(), target)
        })
        .collect()
}

fn fqdn(name: &str) -> Name {
    Name::from_str(&format!("{name}.")).expect("a valid name")
}

/// The answer to one query, as bytes.
fn answer(zone: &[(String, Target)], query: &[u8], ttl: u32) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let question = q.queries.first()?.clone();
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.add_query(question.clone());
    let asked = question.name().to_ascii().trim_end_matches('.').to_lowercase();
    let mut at = asked.clone();
    for _ in 0..16 {
        let mut alias = None;
        let matches = |n: &str| n == at || n.strip_prefix('*').is_some_and(|suffix| at.ends_with(suffix));
        for (_, target) in zone.iter().filter(|(n, _)| matches(n)) {
            let name = &at;
            match target {
                Target::Malformed => return Some(malformed(&m)),
                Target::Alias(t) => {
                    m.add_answer(Record::from_rdata(fqdn(name), ttl, RData::CNAME(rdata::CNAME(fqdn(t)))));
                    alias = Some(t.clone());
                }
                Target::Address(IpAddr::V4(a)) if question.query_type() == RecordType::A => {
                    m.add_answer(Record::from_rdata(fqdn(name), ttl, RData::A(rdata::A(*a))));
                }
                Target::Address(IpAddr::V6(a)) if question.query_type() == RecordType::AAAA => {
                    m.add_answer(Record::from_rdata(fqdn(name), ttl, RData::AAAA(rdata::AAAA(*a))));
                }
                Target::Address(_) => {}
            }
        }
        match alias {
            Some(next) => at = next,
            None => break,
        }
    }
    m.to_vec().ok()
}

/// A response whose one answer's owner name is a compression pointer to itself.
fn malformed(m: &Message) -> Vec<u8> {
    let mut bytes = m.to_vec().expect("encode");
    bytes[7] = 1; // ANCOUNT = 1
    let at = bytes.len();
    bytes.extend([0xc0 | (at >> 8) as u8, at as u8, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
    bytes
}

pub fn serve(addr: SocketAddr, ttl: u32, records: &[String]) {
    let zone = std::sync::Arc::new(zone(records));
    let udp = UdpSocket::bind(addr).expect("bind udp");
    let tcp = TcpListener::bind(addr).expect("bind tcp");
    let z = zone.clone();
    std::thread::spawn(move || {
        for s in tcp.incoming().flatten() {
            let z = z.clone();
            std::thread::spawn(move || serve_tcp(s, &z, ttl));
        }
    });
    report(&[("event", "ready".into())]);
    let mut buf = [0u8; 4096];
    loop {
        let (n, peer) = udp.recv_from(&mut buf).expect("recv");
        if let Some(a) = answer(&zone, &buf[..n], ttl) {
            udp.send_to(&a, peer).expect("send");
        }
    }
}

fn serve_tcp(mut s: TcpStream, zone: &[(String, Target)], ttl: u32) {
    s.set_nodelay(true).unwrap();
    loop {
        let mut len = [0u8; 2];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut q).expect("read query");
        let Some(a) = answer(zone, &q, ttl) else { return };
        let mut framed = (a.len() as u16).to_be_bytes().to_vec();
        framed.extend(&a);
        // Two segments: the agent must join them.
        let (first, rest) = framed.split_at(7);
        s.write_all(first).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        s.write_all(rest).unwrap();
    }
}

/// Asks `server` for `name`; returns the addresses of the answer (empty when it was unreadable).
pub fn resolve(server: SocketAddr, name: &str, aaaa: bool, tcp: bool) -> Vec<IpAddr> {
    let mut q = Message::new(0x4d2, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(fqdn(name), if aaaa { RecordType::AAAA } else { RecordType::A }));
    let query = q.to_vec().expect("encode");
    let reply = if tcp {
        let mut s = TcpStream::connect(server).expect("connect to the DNS server");
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend(&query);
        s.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).expect("read the answer's length");
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut reply).expect("read the answer");
        reply
    } else {
        let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
        let s = UdpSocket::bind(bind).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.send_to(&query, server).expect("send the query");
        let mut buf = [0u8; 4096];
        let (n, _) = s.recv_from(&mut buf).expect("the answer");
        buf[..n].to_vec()
    };
    let Ok(m) = Message::from_vec(&reply) else { return Vec::new() };
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// Queries at `rate` per second for `seconds`, each for a new name, from one socket; the
/// answers are counted by a second thread until a second after the last query.
pub fn flood(server: SocketAddr, rate: u64, seconds: u64) {
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
    let s = std::sync::Arc::new(UdpSocket::bind(bind).unwrap());
    s.connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (rs, rdone) = (s.clone(), done.clone());
    let receiver = std::thread::spawn(move || {
        let (mut received, mut buf) = (0u64, [0u8; 2048]);
        let mut quiet_since = None;
        loop {
            match rs.recv(&mut buf) {
                Ok(_) => {
                    received += 1;
                    quiet_since = None;
                }
                Err(_) if rdone.load(std::sync::atomic::Ordering::Acquire) => {
                    let since = *quiet_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= Duration::from_secs(1) {
                        return received;
                    }
                }
                Err(_) => {}
            }
        }
    });
    let total = rate * seconds;
    let start = std::time::Instant::now();
    let mut sent = 0u64;
    while sent < total {
        // Paced: as many as are due by now.
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let mut q = Message::new((sent & 0xffff) as u16, MessageType::Query, OpCode::Query);
            q.add_query(Query::query(fqdn(&format!("n{sent}.bench.example")), RecordType::A));
            if s.send(&q.to_vec().expect("encode")).is_ok() {
                sent += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let took = start.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Release);
    let received = receiver.join().unwrap();
    report(&[
        ("event", "flooded".into()),
        ("sent", sent.into()),
        ("received", received.into()),
        ("seconds", took.into()),
    ]);
}
