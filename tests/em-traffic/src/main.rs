//! Test traffic with known sizes. The integration tests start it inside a network namespace and
//! a cgroup; it prints one JSON line saying what it did (pid, local and remote endpoints), so
//! the test can compare the agent's records with the facts.
//!
//!   em-traffic tcp-serve  LISTEN_ADDR REPLY_BYTES CONNECTIONS
//!   em-traffic tcp-send   ADDR BYTES [CONNECTIONS] [--fork] [--thread NAME] [--pace MS]
//!                         (--pace: write 64 KiB, sleep MS, and so on; a "connected" line with
//!                         the local address comes first; --thread: send from a thread named
//!                         NAME, reporting its tid; --hold: once the peer has acknowledged
//!                         every byte, report "written" and wait for stdin to close before
//!                         closing the connection)
//!   em-traffic udp-serve  LISTEN_ADDR REPLY_BYTES DATAGRAMS
//!   em-traffic udp-send   ADDR BYTES COUNT [--connect] [--ports N] [--dstopts]
//!                         (--dstopts: IPv6 only, each datagram carries an 8-byte destination
//!                         options extension header)
//!   em-traffic dns-serve, resolve: see dns.rs
//!   em-traffic tcp-try    ADDR [--from ADDR]        connect (from a bound address; 3 s at most),
//!                                                 send 100 bytes, close; report whether it worked
//!   em-traffic udp-try    ADDR                      one 64-byte datagram with sendto
//!                         (both report {"event":"tried","ok":bool,"errno":N})
//!
//! and load for the benchmarks:
//!
//!   em-traffic tcp-accept LISTEN_ADDR                 accept forever; read each to EOF, close
//!   em-traffic tcp-rate   ADDR SECONDS                short connections back to back; counts them
//!   em-traffic tcp-connect-time ADDR COUNT            COUNT connects one after the other: the
//!                                                 median and p99 time of connect() in µs
//!   em-traffic udp-flows  ADDR SOCKETS PORTS RATE [HOLD]
//!                         one datagram per (socket, port): new flows at RATE/s; then keeps the
//!                         sockets open HOLD seconds (their flows stay active), reporting first
//!   em-traffic udp-sink   LISTEN_ADDR PORTS           binds PORTS consecutive UDP ports, never reads
//!   em-traffic udp-rate   ADDR SECONDS DESTINATIONS [--connect]
//!                         64-byte datagrams back to back for SECONDS from one socket: connected
//!                         to ADDR, or unconnected to DESTINATIONS consecutive ports in turn

mod dns;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let num = |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let addr: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).unwrap_or_else(|| usage());
    match args.first().map(String::as_str) {
        Some("tcp-serve") => tcp_serve(addr, num(2, 0), num(3, 1)),
        Some("tcp-send") => {
            let pace = args.iter().position(|a| a == "--pace").map(|i| num(i + 1, 0) as u64);
            let hold = flag("--hold");
            let thread = args.iter().position(|a| a == "--thread").and_then(|i| args.get(i + 1)).cloned();
            if flag("--fork") {
                fork_then(|| tcp_send(addr, num(2, 0), num(3, 1), pace, hold))
            } else if let Some(name) = thread {
                let (bytes, connections) = (num(2, 0), num(3, 1));
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || {
                        // SAFETY: gettid has no preconditions.
                        let tid = unsafe { libc::gettid() };
                        report(&[("event", "thread".into()), ("tid", tid.into())]);
                        tcp_send(addr, bytes, connections, pace, hold)
                    })
                    .expect("spawn the sending thread")
                    .join()
                    .expect("the sending thread panicked");
            } else {
                tcp_send(addr, num(2, 0), num(3, 1), pace, hold)
            }
        }
        Some("udp-serve") => udp_serve(addr, num(2, 0), num(3, 1)),
        Some("tcp-try") => {
            let from = args.iter().position(|a| a == "--from").and_then(|i| args.get(i + 1));
            tcp_try(addr, from.map(|f| f.parse().expect("--from ADDR")))
        }
        Some("udp-try") => udp_try(addr),
        Some("dns-flood") => dns::flood(addr, num(2, 1000) as u64, num(3, 1) as u64),
        Some("dns-serve") => dns::serve(addr, num(2, 60) as u32, &args[3..]),
        Some("resolve") => {
            let name = args.get(2).unwrap_or_else(|| usage());
            let addresses = dns::resolve(addr, name, flag("--aaaa"), flag("--tcp"));
            let list: Vec<serde_json::Value> = addresses.iter().map(|a| a.to_string().into()).collect();
            report(&[("event", "resolved".into()), ("addresses", list.into())]);
            if let (Some(i), Some(first)) = (args.iter().position(|a| a == "--connect"), addresses.first()) {
                tcp_send(SocketAddr::new(*first, num(i + 1, 0) as u16), num(i + 2, 0), 1, None, false);
            }
        }
        Some("tcp-accept") => tcp_accept(addr),
        Some("tcp-rate") => tcp_rate(addr, num(2, 1)),
        Some("udp-sink") => udp_sink(addr, num(2, 1)),
        Some("udp-rate") => udp_rate(addr, num(2, 1), num(3, 1), flag("--connect")),
        Some("tcp-connect-time") => tcp_connect_time(addr, num(2, 1000)),
        Some("udp-flows") => udp_flows(addr, num(2, 1), num(3, 1), num(4, 1000), num(5, 0)),
        Some("udp-send") => {
            let ports = args.iter().position(|a| a == "--ports").map_or(1, |i| num(i + 1, 1));
            udp_send(addr, num(2, 0), num(3, 1), flag("--connect"), ports, flag("--dstopts"))
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: em-traffic tcp-serve|tcp-send|udp-serve|udp-send ADDR ... (see the source)");
    std::process::exit(2)
}

fn report(fields: &[(&str, serde_json::Value)]) {
    let mut obj = serde_json::Map::new();
    obj.insert("pid".into(), std::process::id().into());
    for (k, v) in fields {
        obj.insert((*k).into(), v.clone());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::Value::Object(obj)).unwrap();
    out.flush().unwrap();
}

/// Runs `f` in a forked child and waits for it; the child reports its own pid.
fn fork_then(f: impl FnOnce()) {
    // SAFETY: single-threaded program; the child runs `f` and exits.
    match unsafe { libc::fork() } {
        0 => {
            f();
            std::process::exit(0);
        }
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        child => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(child, &mut status, 0) };
            report(&[("event", "parent".into()), ("child", child.into())]);
        }
    }
}

/// Accepts CONNECTIONS connections; for each reads to EOF, replies REPLY_BYTES, closes.
fn tcp_serve(addr: SocketAddr, reply: usize, connections: usize) {
    let listener = TcpListener::bind(addr).expect("bind");
    report(&[("event", "ready".into())]);
    for _ in 0..connections {
        let (mut s, peer) = listener.accept().expect("accept");
        s.set_nodelay(true).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        s.write_all(&vec![b'r'; reply]).expect("write");
        drop(s);
        report(&[
            ("event", "served".into()),
            ("peer", peer.to_string().into()),
            ("received", got.len().into()),
        ]);
    }
}

/// Opens CONNECTIONS connections one after the other; each sends BYTES, half-closes, reads the
/// reply to EOF and closes.
fn tcp_send(addr: SocketAddr, bytes: usize, connections: usize, pace_ms: Option<u64>, hold: bool) {
    let mut locals = Vec::new();
    for _ in 0..connections {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        let local = s.local_addr().unwrap().to_string();
        locals.push(serde_json::Value::from(local.clone()));
        match pace_ms {
            None => s.write_all(&vec![b's'; bytes]).expect("write"),
            Some(ms) => {
                report(&[("event", "connected".into()), ("local", local.clone().into())]);
                let chunk = vec![b's'; 65536];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(chunk.len());
                    s.write_all(&chunk[..n]).expect("write");
                    left -= n;
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
            }
        }
        if hold {
            wait_acknowledged(&s);
            report(&[("event", "written".into()), ("local", local.clone().into())]);
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).expect("read");
    }
    report(&[("event", "sent".into()), ("locals", locals.into())]);
}

fn tried(result: std::io::Result<()>) {
    let errno = match &result {
        Ok(()) => 0,
        // A connect timeout is the library's own error, without an errno.
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => libc::ETIMEDOUT,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    };
    report(&[("event", "tried".into()), ("ok", result.is_ok().into()), ("errno", errno.into())]);
}

/// One connection attempt, from `from` when given (an address of this host).
fn tcp_try(addr: SocketAddr, from: Option<std::net::IpAddr>) {
    let socket = match addr {
        SocketAddr::V4(_) => socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None),
        SocketAddr::V6(_) => socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None),
    }
    .expect("socket");
    if let Some(ip) = from {
        socket.bind(&SocketAddr::new(ip, 0).into()).expect("bind --from");
    }
    // A dropped SYN is retried for minutes: give up after 3 s (ETIMEDOUT).
    let result = socket.connect_timeout(&addr.into(), std::time::Duration::from_secs(3)).and_then(|()| {
        let mut s: TcpStream = socket.into();
        s.write_all(&[b't'; 100])?;
        s.shutdown(std::net::Shutdown::Write)?;
        s.read_to_end(&mut Vec::new()).map(drop)
    });
    tried(result);
}

/// One datagram sent with sendto (the socket is not connected).
fn udp_try(addr: SocketAddr) {
    let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
    let s = UdpSocket::bind(bind).expect("bind");
    tried(s.send_to(&[b'u'; 64], addr).map(drop));
}

/// Times COUNT connect() calls (each connection closed before the next).
fn tcp_connect_time(addr: SocketAddr, count: usize) {
    let mut us: Vec<f64> = Vec::with_capacity(count);
    for _ in 0..count {
        let t = std::time::Instant::now();
        let s = TcpStream::connect(addr).expect("connect");
        us.push(t.elapsed().as_secs_f64() * 1e6);
        drop(s);
    }
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
    report(&[("connects", count.into()), ("p50_us", at(0.5).into()), ("p99_us", at(0.99).into())]);
}

/// Waits until the peer has acknowledged everything written (the send queue is empty).
fn wait_acknowledged(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    loop {
        let mut unacked: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int.
        if unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut unacked) } != 0 || unacked == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Receives DATAGRAMS datagrams and answers each with REPLY_BYTES.
fn udp_serve(addr: SocketAddr, reply: usize, datagrams: usize) {
    let s = UdpSocket::bind(addr).expect("bind");
    report(&[("event", "ready".into())]);
    let mut buf = vec![0u8; 65536];
    let mut peer = None;
    for _ in 0..datagrams {
        let (_, from) = s.recv_from(&mut buf).expect("recv");
        s.send_to(&vec![b'r'; reply], from).expect("send");
        peer = Some(from);
    }
    report(&[("event", "served".into()), ("peer", peer.map(|p| p.to_string()).into())]);
}

/// Sends COUNT datagrams of BYTES to each of PORTS consecutive ports from one socket:
/// with sendto (default) or connect + send.
fn udp_send(addr: SocketAddr, bytes: usize, count: usize, connect: bool, ports: usize, dstopts: bool) {
    let bind: SocketAddr =
        if addr.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let s = UdpSocket::bind(bind).expect("bind");
    if dstopts {
        use std::os::fd::AsRawFd;
        // Next header (the kernel fills it in), length 0 (8 bytes), one PadN option of 4 bytes.
        let opts: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];
        // SAFETY: a valid socket and a buffer of the length given.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_DSTOPTS,
                opts.as_ptr().cast(),
                opts.len() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "IPV6_DSTOPTS: {}", std::io::Error::last_os_error());
    }
    let payload = vec![b'u'; bytes];
    for p in 0..ports {
        let mut to = addr;
        to.set_port(addr.port() + p as u16);
        if connect {
            s.connect(to).expect("connect");
        }
        for _ in 0..count {
            // A connected socket reports the ICMP port-unreachable of an earlier datagram on
            // a later send, which then sends nothing: send again so COUNT datagrams leave.
            loop {
                let sent = if connect { s.send(&payload) } else { s.send_to(&payload, to) };
                match sent {
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                    Err(e) => panic!("send to {to}: {e}"),
                }
            }
        }
    }
    report(&[("event", "sent".into()), ("local", s.local_addr().unwrap().to_string().into())]);
}

/// Accepts connections forever; reads each to EOF and closes it (the peer of tcp-rate).
fn tcp_accept(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).expect("bind");
    report(&[("event", "ready".into())]);
    for s in listener.incoming() {
        let Ok(mut s) = s else { continue };
        let mut buf = [0u8; 256];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// Opens short connections back to back for SECONDS: connect, send 16 bytes, half-close,
/// read to EOF, close. Reports how many.
fn tcp_rate(addr: SocketAddr, seconds: usize) {
    let start = std::time::Instant::now();
    let until = start + std::time::Duration::from_secs(seconds as u64);
    let mut n: u64 = 0;
    while std::time::Instant::now() < until {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(&[b'c'; 16]).expect("write");
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut buf = [0u8; 64];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    report(&[("event", "done".into()), ("connections", n.into()), ("seconds", secs.into())]);
}

/// Binds PORTS consecutive ports from ADDR and never reads: datagrams to them are taken (and
/// dropped once the buffers are full) without an ICMP error back.
fn udp_sink(addr: SocketAddr, ports: usize) {
    let socks: Vec<UdpSocket> = (0..ports)
        .map(|p| {
            let mut at = addr;
            at.set_port(addr.port() + p as u16);
            UdpSocket::bind(at).expect("bind")
        })
        .collect();
    report(&[("event", "ready".into())]);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
        let _ = &socks;
    }
}

/// Sends 64-byte datagrams back to back for SECONDS from one socket, connected to ADDR or to
/// DESTINATIONS consecutive ports in turn; reports how many per second.
fn udp_rate(addr: SocketAddr, seconds: usize, destinations: usize, connect: bool) {
    let bind: SocketAddr =
        if addr.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let s = UdpSocket::bind(bind).expect("bind");
    let to: Vec<SocketAddr> = (0..destinations.max(1))
        .map(|p| {
            let mut to = addr;
            to.set_port(addr.port() + p as u16);
            to
        })
        .collect();
    if connect {
        s.connect(addr).expect("connect");
    }
    let payload = [b'r'; 64];
    let start = std::time::Instant::now();
    let until = start + std::time::Duration::from_secs(seconds as u64);
    let (mut n, mut failed): (u64, u64) = (0, 0);
    while std::time::Instant::now() < until {
        // The clock is read once per 64 datagrams.
        for _ in 0..64 {
            let sent =
                if connect { s.send(&payload) } else { s.send_to(&payload, to[n as usize % to.len()]) };
            match sent {
                Ok(_) => n += 1,
                Err(_) => failed += 1,
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    report(&[
        ("event", "done".into()),
        ("datagrams", n.into()),
        ("failed", failed.into()),
        ("seconds", secs.into()),
    ]);
}

/// Sends one 16-byte datagram from each of SOCKETS sockets to each of PORTS consecutive ports,
/// paced at RATE datagrams per second: SOCKETS x PORTS new flows. Reports the rate achieved.
fn udp_flows(addr: SocketAddr, sockets: usize, ports: usize, rate: usize, hold: usize) {
    let bind: SocketAddr =
        if addr.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let socks: Vec<UdpSocket> = (0..sockets).map(|_| UdpSocket::bind(bind).expect("bind")).collect();
    let start = std::time::Instant::now();
    let mut sent: u64 = 0;
    for p in 0..ports {
        let mut to = addr;
        to.set_port(addr.port() + p as u16);
        for s in &socks {
            s.send_to(&[b'f'; 16], to).expect("send_to");
            sent += 1;
            // Pace: never ahead of RATE per second.
            let due = std::time::Duration::from_secs_f64(sent as f64 / rate as f64);
            let elapsed = start.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    report(&[("event", "done".into()), ("flows", sent.into()), ("seconds", secs.into())]);
    std::thread::sleep(std::time::Duration::from_secs(hold as u64));
    drop(socks);
}
