//! Enforcement: a class in `mode = "enforce"` cannot send to unapproved places (connect and
//! sendto fail with EPERM, no packet leaves), while an observing class and unclassified
//! processes are untouched. Enforcement attaches only to cgroups this test creates.

use integration_tests::{
    Agent,
    capture::Capture,
    traffic::{Placement, Traffic},
    unique,
    world::{CN_V4, CN_V6, SITE_SG, US_V4, World},
};
use serde_json::Value;

/// Tries a connection (`tcp-try`) or a datagram (`udp-try`) from `cgroup` on host a.
fn attempt(w: &World, cgroup: &str, what: &str, to: &str) -> Value {
    let dir = w.cg.dir(cgroup);
    Traffic::start(&Placement { netns: &w.topo.a, cgroup: &dir, uid: None }, &[what, to]).finish()
}

fn refused(v: &Value) -> bool {
    v["ok"] == false && v["errno"] == libc::EPERM
}

#[test]
fn an_enforcing_class_cannot_send_to_unapproved_places() {
    let w = World::new();
    w.cg.create("watch");
    let watch = unique("watch");
    let agent = Agent::start(&w.config(&format!(
        "mode = \"enforce\"\n\n[[classes]]\nname = \"{watch}\"\ncgroups = [\"{}\"]\napproved = [\"US\"]\n",
        w.cg.child_rel("watch")
    )));
    let cn = Capture::start(&w.topo.b, &format!("host {CN_V4} or host {CN_V6}"));
    let server = w.serve("[::]:443", 4);

    // The enforcing class: refused before any packet leaves, over IPv4, IPv6 and v4-mapped.
    for (what, to) in [
        ("tcp-try", format!("{CN_V4}:443")),
        ("tcp-try", format!("[{CN_V6}]:443")),
        ("tcp-try", format!("[::ffff:{CN_V4}]:443")),
        ("udp-try", format!("{CN_V4}:53")),
        ("udp-try", format!("[{CN_V6}]:53")),
    ] {
        let r = attempt(&w, "app", what, &to);
        assert!(refused(&r), "{what} {to}: {r}");
    }
    // ... while its approved places work.
    for to in [format!("{US_V4}:443"), format!("{SITE_SG}:443")] {
        let r = attempt(&w, "app", "tcp-try", &to);
        assert_eq!(r["ok"], true, "{to}: {r}");
    }
    // The observing class and an unclassified process reach CN as before.
    for cgroup in ["watch", "plain"] {
        let r = attempt(&w, cgroup, "tcp-try", &format!("{CN_V4}:443"));
        assert_eq!(r["ok"], true, "{cgroup}: {r}");
    }
    server.finish();
    let seen = cn.packets();
    let from_app: Vec<&String> = seen.iter().filter(|l| l.contains("udp") || l.contains(".53:")).collect();
    assert!(from_app.is_empty(), "no datagram of the enforcing class reached CN: {from_app:?}");
    // Two connections reached CN (watch and plain), each with its SYN: nothing else tried.
    let syns = seen.iter().filter(|l| l.contains(&format!("> {CN_V4}.443: Flags [S]"))).count();
    assert_eq!(syns, 2, "{seen:#?}");
    drop(agent);
}
