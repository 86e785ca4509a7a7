//! The webhook sink: each alert POSTed as JSON (or as a chat-ready Slack message). With a
//! secret, each request is signed: HMAC-SHA256 over "<timestamp>.<body>", hex in
//! `X-Egress-Monitor-Signature: sha256=<hex>`, the Unix timestamp in
//! `X-Egress-Monitor-Timestamp`, so receivers can verify and refuse replays.

use std::{any::Any, collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use hmac::{Hmac, KeyInit, Mac};
use reqwest::{
    StatusCode,
    header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER},
};
use sha2::Sha256;

use super::{
    AlertSink, AlertSinkConfig, AlertSinkOptions, Delivery, FieldError, SinkConfig, SinkTable, SinkType,
    delivery::DeliveryError,
};
use crate::record::Alert;

pub const TYPE: SinkType = SinkType {
    name: "webhook",
    keys: &[
        "name",
        "url",
        "format",
        "secret_file",
        "headers",
        "timeout",
        "min_severity",
        "classes",
        "retry_initial",
        "retry_max",
        "max_age",
    ],
    parse,
};

/// The webhook sink's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookOptions {
    pub url: reqwest::Url,
    pub format: WebhookFormat,
    /// File holding the shared secret that signs each request (HMAC-SHA256).
    pub secret_file: Option<PathBuf>,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout (connect, send, answer).
    pub timeout: Duration,
}

fn parse(t: &SinkTable) -> Result<SinkConfig, FieldError> {
    let options = WebhookOptions {
        url: t
            .parsed("url", parse_http_url)?
            .ok_or_else(|| t.missing("url", "https://hooks.example/egress"))?,
        format: match t.choice("format", &["json", "slack"])? {
            Some("slack") => WebhookFormat::Slack,
            _ => WebhookFormat::Json,
        },
        secret_file: t.text("secret_file")?.map(|(p, _)| PathBuf::from(p)),
        headers: t.string_table("headers")?,
        timeout: t.duration("timeout")?.unwrap_or(Duration::from_secs(5)),
    };
    Ok(SinkConfig::Alerts(AlertSinkConfig::read(t, Arc::new(options))?))
}

/// An http:// or https:// URL with a host.
pub fn parse_http_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("invalid webhook URL {text:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("invalid webhook URL {text:?}: expected an http:// or https:// URL with a host"));
    }
    Ok(url)
}

/// A URL as logs, status, metrics, sink names and errors show it: scheme, host and port only.
/// Webhook URLs often carry their secret in the path (Slack's `/services/T../B../XXXX`), the
/// query (`?token=`) or the userinfo; none of it is ever shown.
pub fn redacted(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(p) => format!("{}://{host}:{p}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// A sink name of the form `webhook:<url>` with the URL redacted (None for other names).
pub fn redacted_name(name: &str) -> Option<String> {
    let url = reqwest::Url::parse(name.strip_prefix("webhook:")?).ok()?;
    Some(format!("webhook:{}", redacted(&url)))
}

impl AlertSinkOptions for WebhookOptions {
    fn default_name(&self) -> String {
        format!("webhook:{}", redacted(&self.url))
    }

    fn build(&self) -> anyhow::Result<Box<dyn AlertSink>> {
        Ok(Box::new(WebhookSink::new(self)?))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebhookFormat {
    /// The alert's JSON, as the stdout sink prints it.
    #[default]
    Json,
    /// A chat-ready message (`{"text": ...}`) with the key fields.
    Slack,
}

pub const ID_HEADER: &str = "x-egress-monitor-alert-id";
pub const TIMESTAMP_HEADER: &str = "x-egress-monitor-timestamp";
pub const SIGNATURE_HEADER: &str = "x-egress-monitor-signature";

pub struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    format: WebhookFormat,
    secret: Option<Vec<u8>>,
}

impl WebhookSink {
    /// Builds the client and reads the secret; errors name the file.
    pub fn new(c: &WebhookOptions) -> anyhow::Result<WebhookSink> {
        let secret = match &c.secret_file {
            Some(path) => {
                let text = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("secret_file: {}: cannot read it: {e}", path.display()))?;
                let secret = text.trim_ascii().to_vec();
                if secret.is_empty() {
                    anyhow::bail!("secret_file: {}: the file is empty", path.display());
                }
                Some(secret)
            }
            None => None,
        };
        let mut headers = HeaderMap::new();
        for (k, v) in &c.headers {
            let name =
                HeaderName::from_bytes(k.as_bytes()).map_err(|e| anyhow::anyhow!("headers: {k:?}: {e}"))?;
            let value =
                HeaderValue::from_str(v).map_err(|e| anyhow::anyhow!("headers: {k:?} = {v:?}: {e}"))?;
            headers.insert(name, value);
        }
        crate::install_crypto();
        let client = reqwest::Client::builder()
            .timeout(c.timeout)
            .default_headers(headers)
            .user_agent(concat!("egress-monitor/", env!("CARGO_PKG_VERSION")))
            .tls_backend_rustls()
            // A 3xx is an answer, and a permanent failure (see `classify`): never followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("url: cannot build an HTTP client: {e}"))?;
        Ok(WebhookSink { client, url: c.url.clone(), format: c.format, secret })
    }

    async fn send(&mut self, alert: &Alert) -> Result<(), DeliveryError> {
        let body = body(alert, self.format);
        let mut req = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ID_HEADER, &alert.id);
        if let Some(secret) = &self.secret {
            let timestamp = chrono::Utc::now().timestamp().to_string();
            req = req
                .header(TIMESTAMP_HEADER, &timestamp)
                .header(SIGNATURE_HEADER, signature(secret, &timestamp, &body));
        }
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_timeout() { "timed out" } else { "failed" };
                return Err(DeliveryError::Retry {
                    reason: format!("POST {} {what}: {}", redacted(&self.url), e.without_url()),
                    after: None,
                });
            }
        };
        classify(resp.status(), resp.headers().get(RETRY_AFTER))
    }
}

/// What an answer means for the alert: 2xx accepted; 408, 429 and 5xx retried (429 after its
/// Retry-After); any other answer is a permanent refusal.
pub fn classify(status: StatusCode, retry_after: Option<&HeaderValue>) -> Result<(), DeliveryError> {
    if status.is_success() {
        return Ok(());
    }
    let reason = format!("answered {status}");
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(DeliveryError::Retry { reason, after: retry_after.and_then(parse_retry_after) });
    }
    if status == StatusCode::REQUEST_TIMEOUT || status.is_server_error() {
        return Err(DeliveryError::Retry { reason, after: None });
    }
    Err(DeliveryError::Permanent(reason))
}

/// Retry-After as delay-seconds or an HTTP date.
fn parse_retry_after(v: &HeaderValue) -> Option<Duration> {
    let text = v.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// `sha256=<hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The request body for an alert in `format`.
pub fn body(alert: &Alert, format: WebhookFormat) -> String {
    match format {
        WebhookFormat::Json => serde_json::to_string(alert).unwrap_or_default(),
        WebhookFormat::Slack => serde_json::json!({ "text": slack_text(alert) }).to_string(),
    }
}

/// One line for people: severity, class, destination and place, process, reason, id.
fn slack_text(a: &Alert) -> String {
    let d = &a.destination;
    let place: Vec<String> =
        [d.place.site.as_deref(), d.place.country.as_deref(), d.place.subdivision.as_deref()]
            .into_iter()
            .flatten()
            .map(str::to_owned)
            .chain(d.place.cloud())
            .collect();
    let p = &a.process;
    let process = match (&p.comm, p.pid) {
        (Some(c), Some(pid)) => format!("{c}[{pid}]"),
        _ => "unknown process".into(),
    };
    let or_null = |v: Option<String>| v.unwrap_or_else(|| "null".into());
    let endpoint = format!("{}:{}", d.ip, or_null(d.port.map(|p| p.to_string())));
    // The name the workload resolved, when an answer named the address.
    let to = match (&d.domain, d.cname_chain.is_empty()) {
        (Some(n), true) => format!("`{n}` at {endpoint}"),
        (Some(n), false) => format!("`{n}` (via {}) at {endpoint}", d.cname_chain.join(", ")),
        (None, _) => endpoint,
    };
    format!(
        ":rotating_light: *{}* residency violation on `{}`: class `{}` sent {} bytes to {} ({}) from {} in {}. {}. (alert {})",
        a.severity.name(),
        a.host,
        a.class,
        a.bytes,
        to,
        if place.is_empty() { "unknown location".into() } else { place.join(", ") },
        process,
        or_null(p.cgroup.clone()),
        a.reason,
        a.id,
    )
}

impl AlertSink for WebhookSink {
    fn deliver<'a>(&'a mut self, alert: &'a Alert) -> Delivery<'a> {
        Box::pin(self.send(alert))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_body() {
        // Computed independently: printf '1764064800.{"id":"a1"}' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            signature(b"s3cret", "1764064800", r#"{"id":"a1"}"#),
            "sha256=".to_string() + &hmac_reference(b"s3cret", b"1764064800.{\"id\":\"a1\"}")
        );
    }

    /// HMAC-SHA256 from its definition (RFC 2104), to check the crate is used right.
    fn hmac_reference(key: &[u8], msg: &[u8]) -> String {
        use sha2::Digest;
        let mut k = [0u8; 64];
        k[..key.len()].copy_from_slice(key);
        let inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).chain(msg.iter().copied()).collect();
        let inner = Sha256::digest(&inner);
        let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).chain(inner.iter().copied()).collect();
        Sha256::digest(&outer).iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn answers_are_classified() {
        assert!(classify(StatusCode::OK, None).is_ok());
        assert!(classify(StatusCode::NO_CONTENT, None).is_ok());
        for retried in [500, 502, 503, 408] {
            let s = StatusCode::from_u16(retried).unwrap();
            assert!(matches!(classify(s, None), Err(DeliveryError::Retry { after: None, .. })), "{retried}");
        }
        for refused in [400, 401, 403, 404, 410, 422] {
            let s = StatusCode::from_u16(refused).unwrap();
            assert!(matches!(classify(s, None), Err(DeliveryError::Permanent(_))), "{refused}");
        }
        let after = HeaderValue::from_static("7");
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(&after)),
            Err(DeliveryError::Retry { after: Some(d), .. }) if d == Duration::from_secs(7)
        ));
        let date = HeaderValue::from_str(&httpdate::fmt_http_date(
            std::time::SystemTime::now() + Duration::from_secs(30),
        ))
        .unwrap();
        let Err(DeliveryError::Retry { after: Some(d), .. }) =
            classify(StatusCode::TOO_MANY_REQUESTS, Some(&date))
        else {
            panic!("an HTTP date is a Retry-After too")
        };
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30), "{d:?}");
    }

    #[test]
    fn slack_text_carries_the_key_fields() {
        let v: Alert = serde_json::from_value(serde_json::json!({
            "type": "alert", "id": "abc", "time": "2026-11-25T10:00:00.120Z", "host": "h1", "class": "us-user-data",
            "severity": "critical", "bytes": 5120, "packets": 9, "direction": "outbound", "protocol": "tcp",
            "reason": "destination country CN is not approved for class us-user-data",
            "process": {"pid": 1234, "tid": 1234, "comm": "api", "uid": 1001, "cgroup": "/payments/userdata", "cgroup_id": 8},
            "destination": {"ip": "175.16.199.1", "port": 443, "country": "CN", "internal": false},
            "first_seen": "2026-11-25T10:00:00.003Z", "last_seen": "2026-11-25T10:00:00.110Z"
        }))
        .unwrap();
        assert_eq!(
            slack_text(&v),
            ":rotating_light: *critical* residency violation on `h1`: class `us-user-data` sent 5120 bytes to \
             175.16.199.1:443 (CN) from api[1234] in /payments/userdata. destination country CN is not approved \
             for class us-user-data. (alert abc)"
        );
    }

    fn options(url: &str) -> WebhookOptions {
        WebhookOptions {
            url: parse_http_url(url).unwrap(),
            format: WebhookFormat::Json,
            secret_file: None,
            headers: BTreeMap::new(),
            timeout: Duration::from_secs(5),
        }
    }

    fn alert() -> Alert {
        serde_json::from_value(serde_json::json!({
            "type": "alert", "id": "abc", "time": "2026-11-25T10:00:00.120Z", "host": "h1", "class": "c",
            "severity": "critical", "bytes": 1, "packets": 1, "direction": "outbound", "protocol": "tcp", "reason": "r",
            "process": {"pid": 1, "tid": 1, "comm": "api", "uid": 0, "cgroup": "/x", "cgroup_id": 8},
            "destination": {"ip": "175.16.199.1", "port": 443, "internal": false},
            "first_seen": "2026-11-25T10:00:00.003Z", "last_seen": "2026-11-25T10:00:00.110Z"
        }))
        .unwrap()
    }

    /// An HTTP server on 127.0.0.1 answering every request with `response`; its URL and how
    /// many requests it got.
    fn server(response: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then as many body bytes as content-length says.
                while let Ok(n) = conn.read(&mut chunk) {
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                let _ = conn.write_all(response.as_bytes());
            }
        });
        (url, hits)
    }

    #[tokio::test]
    async fn a_redirect_is_a_permanent_failure_and_is_not_followed() {
        let (target, target_hits) = server("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".into());
        let (url, hits) = server(format!(
            "HTTP/1.1 302 Found\r\nlocation: {target}/elsewhere\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ));
        let mut sink = WebhookSink::new(&options(&url)).unwrap();
        let r = sink.send(&alert()).await;
        assert!(matches!(&r, Err(DeliveryError::Permanent(m)) if m.contains("302")), "{r:?}");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(target_hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the redirect was followed");
    }

    #[test]
    fn a_former_full_url_name_maps_to_the_redacted_one() {
        assert_eq!(
            redacted_name("webhook:https://hooks.example/services/T0/B0/SECRET").as_deref(),
            Some("webhook:https://hooks.example")
        );
        assert_eq!(redacted_name("syslog:udp://h:514"), None);
    }

    #[tokio::test]
    async fn the_secret_in_a_webhook_url_never_shows() {
        let o = options("https://user:pw@hooks.example:8443/services/T0/B0/SECRET?token=abc");
        assert_eq!(o.default_name(), "webhook:https://hooks.example:8443");
        // Nothing listens on this port: the error says where it tried, without the secret.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut sink =
            WebhookSink::new(&options(&format!("http://u:pw@127.0.0.1:{port}/hook/SECRET?token=abc")))
                .unwrap();
        let Err(DeliveryError::Retry { reason, .. }) = sink.send(&alert()).await else {
            panic!("a refused connection is retried")
        };
        assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
        for secret in ["SECRET", "token", "pw", "hook"] {
            assert!(!reason.contains(secret), "{secret} shows in {reason:?}");
        }
    }
}
