//! The benchmark's report: the machine it ran on, and BENCHMARKS.md (the table and how each
//! row is measured).

use std::time::Duration;

use serde_json::{Value, json};

use super::{Row, run};

pub(super) fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_default();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").and_then(|v| v.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0);
    json!({
        "kernel": run("uname", &["-r"]).unwrap_or_default().trim(),
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "iperf3": run("iperf3", &["--version"]).unwrap_or_default().lines().next().unwrap_or("").to_owned(),
        "date": run("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_default().trim(),
        "commit": run("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_default().trim(),
    })
}

/// BENCHMARKS.md. `previous`: the BENCHMARKS.md of the previous full run, whose results are shown
/// beside this run's (a target counts as met when both runs met it).
pub(super) fn markdown(
    rows: &[Row],
    results: &serde_json::Map<String, Value>,
    quick: bool,
    elapsed: Duration,
    previous: &str,
) -> String {
    let m = &results["machine"];
    let mut s = String::from("# Benchmarks\n\n");
    s += "What egress-monitor costs the datapath and the host, measured by `cargo xtask bench` on the machine \
          below, side by side with no monitor and with `tcpdump -w /dev/null`. Everything runs in network \
          namespaces joined by a veth pair that the benchmark creates and deletes. A missed target is \
          reported here, not hidden; it does not fail the build. Raw numbers: `target/bench/results.json`.\n\n";
    s += &format!(
        "Run: {} at commit {} ({}, {} s). Machine: {} cores ({}), {} GiB, kernel {}, {}.\n\n",
        m["date"].as_str().unwrap_or(""),
        m["commit"].as_str().unwrap_or("?"),
        if quick { "`--quick`" } else { "full" },
        elapsed.as_secs(),
        m["cores"],
        m["cpu"].as_str().unwrap_or(""),
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or(""),
        m["iperf3"].as_str().unwrap_or(""),
    );
    let (before, before_run) = previous_rows(previous);
    s += &format!(
        "The last column is the previous full run, {before_run}: its result, and whether it met the target.\n\n"
    );
    let mut seen = std::collections::HashMap::new();
    s += "| measurement | result | target | met | previous run |\n|---|---|---|---|---|\n";
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let name = r.name.trim_start();
        let was = before.get(&row_key(name, &mut seen)).map(String::as_str).unwrap_or("");
        s += &format!("| {name} | {} | {} | {met} | {was} |\n", r.value, r.target);
    }
    s += TRIED;
    s += "\n## How each is measured\n\n\
- **Cost per packet**: `kernel.bpf_stats_enabled=1` during an iperf3 run, a run of 64-byte datagrams from \
a connected UDP socket (`em-traffic udp-rate --connect`) and a burst of short connections (restored \
afterwards); `run_time_ns / run_cnt` per program from `bpftool prog show`, per phase. One run of the egress \
program is one skb: a GSO skb carries several segments. The kernel's own accounting is in every number, so \
the egress rows subtract the floor: an empty cgroup_skb egress program (`r0 = 1; exit`, loaded by the bench \
with the bpf() system call) attached to the bench's cgroup during the same runs, measured the same way. \
The DNS ingress program (it runs on every packet a socket receives; none of the bench's is DNS) is \
measured against an empty cgroup_skb ingress program attached the same way.\n\
- **DNS answers**: `em-traffic dns-flood` in the client's cgroup asks `em-traffic dns-serve` on the other \
host for a new name each time (`n<i>.bench.example`), paced at 25,000, 50,000 and 100,000 queries a second \
for the round's seconds. The rate is the agent's: answers it took in (`dns.answers` in its status) per \
second of sending, counted only when it took in at least every answer the client received, with none lost \
in the kernel's ring and none unreadable (at high rates the client's socket drops answers the hook had \
already copied).\n\
- **Side by side**: throughput, connection rate and small datagrams are each measured with nothing beside \
the workload, with egress-monitor, with `tcpdump -i veth0 -w /dev/null`, and with pmacct's `pmacctd -i veth0 \
-P print -r 60 -c src_host,dst_host,src_port,dst_port,proto` (flow accounting from a packet capture, printed \
once a minute to /dev/null), both tools capturing the client's veth in namespace a (Debian packages). Rounds \
run every mode once, in an order rotating between rounds; a percentage is the median over rounds of each \
round's ratio to its own no-monitor run (runs of one mode spread by several percent on this shared machine; \
pairing within a round cancels its slow drifts). \"its processes\" is the CPU time (user + system) of the \
tool's process and its children (pmacctd runs each plugin in a process of its own) during the run over the run's wall time: what egress-monitor's kernel programs cost lands \
in the workload's own rate instead (and tcpdump's and pmacctd's capture path in the kernel likewise). Only \
egress-monitor attributes a flow to its process, short-lived ones included (its hooks run in the process at \
connect, sendto and listen); tcpdump and pmacctd see packets and 5-tuples, not processes.\n\
- **Throughput**: iperf3 (Debian) from namespace a (the client in a classified cgroup) to b over the veth, \
client on CPU 0 and server on CPU 1 (`-A 0,1`). Rates are the receiver's.\n\
- **Connection rate**: `em-traffic tcp-rate`: connect, send 16 bytes, half-close, read to EOF, close, back \
to back, against `em-traffic tcp-accept`; both pinned to CPU 0, so every cost lands on the same CPU as the \
work it slows (unpinned, each connection is a chain of cross-CPU wakeups whose latency on a VM depends on \
how idle the other CPU is: a running agent then made the *baseline* look slower). Both ends of each \
connection are on this host, so the monitor sees two flows and two sockets per connection.\n\
- **Small datagrams**: `em-traffic udp-rate` sends 64-byte payloads back to back from one UDP socket of the \
classified client, for the round's seconds: connected to one port, then unconnected to 1,000 ports in turn \
(1,000 flows), to `em-traffic udp-sink` in namespace b, which binds the ports and never reads (no ICMP \
error comes back). Both on CPU 0.\n\
- **Enforcement**: the agent with the bench class in `mode = \"enforce\"` and two more classes (three in \
the tables) on the DB-IP database: `compile_seconds` (judging every interval of every source and merging \
them into networks), `write_seconds` (writing both families' tables into the kernel) and `kernel_bytes` (the tables' `memlock` in the agent's `/proc/self/fdinfo`) from its status. \
`em-traffic tcp-connect-time` times 10,000 `connect()` calls of the classified process (each connection \
closed before the next; pinned to CPU 0 with the accepting server) with no agent, an observing agent and an \
enforcing one. The enforcing class's short-connection rate is measured like the connection rate above, in \
rounds alternating the same agent with the class observing and enforcing (the baseline of the target: what \
enforcement adds; what the whole monitor costs is the connection-rate row's). Earlier runs also measured it \
against no agent (77.9% and 81.4%, close to the observing class's connection-rate row); dropped to keep a \
full run under 15 minutes.\n\
- **New flows without loss**: `em-traffic udp-flows` opens 200 sockets and sends one datagram per \
(socket, port), paced at each rate (5,000 to 100,000 a second); a fresh agent must report every flow in its store \
and no ring-buffer drop. The agent's CPU is its process's user + system time from the first datagram until \
every flow is in its store, over that time.\n\
- **Active flows**: UDP flows held by the agent (idle timeout 300 s) at 10k and then 100k; CPU is user+system \
time over the sampling window; memory is `RssAnon` (heap), with the memory-mapped country database \
(`RssFile`) shown aside.\n\
- **Geolocation + policy**: criterion (`monitor/benches/lookup.rs`) with the DB-IP database and a \
2,000-network cloud table; warm is the per-address cache.\n\
- **API under load**: a fresh agent's store is filled with one million flow rows by real traffic \
(`em-traffic udp-flows`, 20,000 new flows/s, one datagram each; `idle_timeout = \"5s\"` so ended flows \
leave the kernel's table), then 50 client threads query `/v1/flows?since=1h&group_by=` \
(country, class, process, destination in turn) over the API's unix socket, back to back for 60 s, while \
20,000 new flows/s (to 6,000 destination ports) keep being written; latency is per request, at the \
client; errors are failed requests; store drops are records the store's writer could not take \
meanwhile. Grouped questions read the store's per-bucket group sums, and identical questions asked \
between two store commits share one answer (README, \"The store\").\n\
- **Store**: criterion (`monitor/benches/store.rs`): the writer thread committing 50,000 new flows \
(flow ids as the agent makes them, 200 destinations, 3 classes, 4 countries) into a growing store; \
then each grouped question once, on one connection, against one million flow rows.\n\
- **MMDB verification**: criterion, the check every database passes when it is loaded (at start and at \
each reload: the reader's `verify`, or a walk of every network and record when the metadata lacks a \
description), on the embedded DB-IP Lite country database and on a generated city-sized database (1,000,000 \
IPv4 networks with country and subdivision).\n\
- **Accuracy**: the agent's bytes for iperf3's data connection against iperf3's `sum_sent.bytes` plus the \
headers the kernel adds (52 bytes per packet for IPv4 + TCP with timestamps, 8 more on the SYN) and the \
segments it sent again (iperf3's `retransmits`, one MSS each).\n";
    s
}

/// What was tried against the targets still missed, and what each attempt did: kept true to the
/// code by whoever changes either.
/// The rows of a previous BENCHMARKS.md, by [`row_key`]: "result (met)"; and its run line.
fn previous_rows(md: &str) -> (std::collections::HashMap<(String, usize), String>, String) {
    let run = md
        .lines()
        .find_map(|l| l.strip_prefix("Run: "))
        .and_then(|l| l.split(". Machine").next())
        .unwrap_or("none recorded")
        .to_owned();
    let mut rows = std::collections::HashMap::new();
    let mut seen = std::collections::HashMap::new();
    for line in md.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| measurement")) {
        let cells: Vec<&str> =
            line.split(" | ").map(|c| c.trim_matches(|ch| ch == '|' || ch == ' ')).collect();
        if cells.len() < 4 {
            continue;
        }
        let shown =
            if cells[3].is_empty() { cells[1].to_owned() } else { format!("{} ({})", cells[1], cells[3]) };
        rows.insert(row_key(cells[0], &mut seen), shown);
    }
    (rows, run)
}

/// A row's measurement without what varies between runs (the parenthesised CPU share), and
/// which occurrence of that name it is: "with egress-monitor" is a row of several sections.
fn row_key(name: &str, seen: &mut std::collections::HashMap<String, usize>) -> (String, usize) {
    let base = name.split(" (").next().unwrap_or(name).trim().to_owned();
    let n = seen.entry(base.clone()).or_insert(0);
    *n += 1;
    (base, *n)
}

const TRIED: &str = "\n## Missed targets: what was tried\n\n\
- **Egress program cost and throughput**: per packet the program reads the headers, looks up the \
socket's storage, and updates the flow map (one hash lookup on the 48-byte flow key, two atomic adds, a \
coarse clock read). Quick runs (one round each) with the program cut short at each stage measured, above \
an empty program: reading the headers about 15 ns, the socket storage about 40-50 ns more, the flow-map \
update about 75 ns (connected UDP) and 150 ns or more (TCP). Attempts:\n  - \
Headers read by direct packet access, events submitted without a wakeup (earlier work): about 400 ns \
to 250 ns (TCP) and 190 ns (UDP).\n  - \
The flow key was zeroed by a call to a byte-at-a-time `memset` (the BPF linker expands no memset \
inline): 48 rounds of a loop on every packet, about 65 ns. Zeroed with six 8-byte stores now (and IPv6 \
addresses read as four 4-byte loads instead of a byte-wise `memmove`): connected UDP from 190 to about \
125 ns; TCP from about 250 to 190-270 ns (one-round runs of the TCP phase spread by 100 ns).\n  - \
Padding each flow-map entry to whole cache lines (a 96-byte value), on the guess that the data flow \
and its ACK flow, written from two CPUs, shared a line: six quick runs each way, 185-340 ns with and \
without: no difference beyond the noise. Not kept (it would also change the maps' layout).\n  - \
Counting in the socket storage instead of the flow map (an experiment: the counts then went \
nowhere): about 60 ns less on both phases, which would bring connected UDP near its target but not \
TCP. Doing it for real means the agent reading every socket's storage with the sock_diag dump of \
socket-local storage in every network namespace at each sweep and each live question, and the socket's \
release flushing its counts into the flow map (verified to work on this kernel; bpf iterators are not \
available here). Not done yet. A flush into the flow map on a timer was rejected: live answers must be \
exact.\n  - \
Throughput with the memset fix: 99.2% in one full run, 97.1% and 96.8% in the next two (96.5% before \
it); the no-monitor baseline itself moved between 14.8 and 21.0 Gbit/s from run to run on this shared \
machine, so the target is not met reliably.\n\
- **Throughput, first run with the DNS ingress program** (29 November): 93.8% of the baseline and a \
tcpdump/monitor ratio of 3.8x, where the three runs before it gave 96.8-99.2% and 8.0-16.4x. The \
ingress program now runs on every packet a socket receives: 11 ns above an empty ingress program, which \
itself costs 47 ns (the price of any cgroup program on receive). One run, and the baseline moved from \
21.0 to 24.5 Gbit/s between these runs. The throughput step alone afterwards (five rounds each, \
same commit): with the agent not attaching the ingress program, 103.4% of the baseline; with it, \
98.7% and 17.7x. The 93.8% run was mostly the machine; what the ingress hook costs is within the \
few percent runs spread by.\n\
- **Short connections and small datagrams**: dropping the connect event and the new-flow events of \
unclassified flows (and of flows the verdict tables approve) made no measurable difference to the \
connection rate (quick runs before and after: 69.5% to 80%, within the noise). Stopping the agent's \
process (SIGSTOP) during the rounds gave 80%: the agent's process costs a few percent, the kernel side \
about 20%, some 18 µs per connection, of which the programs' own bpf_stats account for about 10 µs \
(connect4 about 1.5 µs, the egress program about 0.65 µs on each of some nine packets, release about 0.3 µs \
twice). The rest is the kernel's cost of running cgroup programs and of creating and freeing socket \
storage; the same socket-storage counting would remove the flow-map insert of each new TCP flow.\n\
- **New flows per second**: from 40,000/s the ring buffer (1 MiB, about 7,000 events; drained every \
20 ms, and at once when an eighth full) overflows: those flows are found by the next sweep instead, and \
the drops are counted. At 100,000/s the agent uses a whole CPU and its store's writer cannot keep up: \
flow records it cannot take are dropped and counted (`store_dropped` in status and in results.json), so \
flows are missing from the store, counted rather than silent. Announcing fewer flows (tables in force) \
and the socket-storage counting above would cut the agent's work per flow; the writer is the limit \
after that.\n";
