//! Talking to a test agent's API: over its unix socket, or TCP with a token.

use std::{path::Path, time::Duration};

use serde_json::Value;

pub struct Api {
    client: reqwest::blocking::Client,
    base: String,
}

/// An answer: status code and JSON body (or the text in a JSON string when not JSON).
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Api {
    pub fn unix(socket: &Path) -> Api {
        let client = crate::http_client()
            .unix_socket(socket.to_path_buf())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Api { client, base: "http://agent".into() }
    }

    pub fn tcp(addr: &str) -> Api {
        let client = crate::http_client().timeout(Duration::from_secs(20)).build().unwrap();
        Api { client, base: format!("http://{addr}") }
    }

    pub fn get_with(&self, path_and_query: &str, token: Option<&str>) -> Answer {
        let mut req = self.client.get(format!("{}{path_and_query}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        Answer { status, body, text }
    }

    pub fn get(&self, path_and_query: &str) -> Answer {
        self.get_with(path_and_query, None)
    }

    /// GETs and asserts 200; the JSON body.
    pub fn ok(&self, path_and_query: &str) -> Value {
        let a = self.get(path_and_query);
        assert_eq!(a.status, 200, "GET {path_and_query}: {}", a.text);
        a.body
    }
}
