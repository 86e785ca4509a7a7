//! A webhook receiver on loopback that answers from a script (500, hang, 429 with
//! Retry-After, 400, ...), then 200 to everything; it records every request with its arrival
//! time and headers so tests can check retries, waits and signatures. Stopped on drop.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// 429 with `Retry-After: <secs>`.
    TooManyRequests(u64),
    /// Answers 200 only after this long (past the sender's timeout).
    Hang(Duration),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub at: Instant,
    pub body: String,
    pub id: Option<String>,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    pub content_type: Option<String>,
    /// What the receiver answered (or is answering).
    pub reply: String,
}

pub struct Receiver {
    server: Arc<tiny_http::Server>,
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Request>>>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    pub fn start(script: Vec<Reply>) -> Receiver {
        Receiver::start_on(0, script)
    }

    /// Listens on 127.0.0.1:`port` (0 = any free port).
    pub fn start_on(port: u16, script: Vec<Reply>) -> Receiver {
        let server =
            Arc::new(tiny_http::Server::http(("127.0.0.1", port)).expect("bind the webhook receiver"));
        let port = server.server_addr().to_ip().expect("ip listener").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let (s, r) = (server.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            for mut req in s.incoming_requests() {
                let at = Instant::now();
                let header = |name: &'static str| {
                    req.headers().iter().find(|h| h.field.equiv(name)).map(|h| h.value.as_str().to_owned())
                };
                let (id, timestamp, signature, content_type) = (
                    header("X-Egress-Monitor-Alert-Id"),
                    header("X-Egress-Monitor-Timestamp"),
                    header("X-Egress-Monitor-Signature"),
                    header("Content-Type"),
                );
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let reply = script.lock().unwrap().pop_front().unwrap_or(Reply::Status(200));
                r.lock().unwrap().push(Request {
                    at,
                    body,
                    id,
                    timestamp,
                    signature,
                    content_type,
                    reply: format!("{reply:?}"),
                });
                // Answer on its own thread, so a hang does not hold up the next request.
                std::thread::spawn(move || {
                    let resp = match reply {
                        Reply::Status(code) => tiny_http::Response::from_string("").with_status_code(code),
                        Reply::TooManyRequests(secs) => {
                            tiny_http::Response::from_string("").with_status_code(429).with_header(
                                tiny_http::Header::from_bytes("Retry-After", secs.to_string()).unwrap(),
                            )
                        }
                        Reply::Hang(d) => {
                            std::thread::sleep(d);
                            tiny_http::Response::from_string("").with_status_code(200)
                        }
                    };
                    let _ = req.respond(resp);
                });
            }
        });
        Receiver { server, port, requests, thread: Some(thread) }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/egress", self.port)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the requests so far.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Request]) -> bool,
    ) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.requests();
            if pred(&now) {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver did not see {what} within {timeout:?}: {now:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops listening (the port then refuses connections).
    pub fn stop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}
