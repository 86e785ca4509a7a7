//! The syslog sink: each alert as one RFC 5424 message with a structured-data element holding
//! its key fields (or RFC 3164 for old receivers), over a unix socket, UDP, TCP with RFC 6587
//! octet counting, or TLS. App name `egress-monitor`; the alert's severity maps onto syslog's.

use std::{fmt::Write as _, path::Path, sync::Arc, time::Duration};

use serde_json::Value;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpStream, UdpSocket, UnixDatagram, UnixStream},
};
use tokio_rustls::{TlsConnector, client::TlsStream, rustls};

use super::{delivery::DeliveryError, outbox::Pending};
use crate::config::{Facility, SyslogAddress, SyslogConfig, SyslogFormat};

/// The enterprise number in the structured-data id: 32473 is the number RFC 5612 sets aside
/// for examples and documentation, as this project has none registered.
pub const SD_ID: &str = "alert@32473";

/// How long connecting to the receiver may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

enum Conn {
    Udp(UdpSocket),
    UnixDgram(UnixDatagram),
    UnixStream(UnixStream),
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

pub struct SyslogSink {
    address: SyslogAddress,
    format: SyslogFormat,
    facility: Facility,
    tls: Option<TlsConnector>,
    conn: Option<Conn>,
}

impl SyslogSink {
    /// Prepares the sink (reads the CA file for tls://); connects on first delivery.
    pub fn new(c: &SyslogConfig) -> anyhow::Result<SyslogSink> {
        let tls = match &c.address {
            SyslogAddress::Tls { .. } => Some(tls_connector(c.ca_file.as_deref())?),
            _ => None,
        };
        Ok(SyslogSink { address: c.address.clone(), format: c.format, facility: c.facility, tls, conn: None })
    }

    pub async fn deliver(&mut self, alert: &Pending) -> Result<(), DeliveryError> {
        let v: Value = serde_json::from_str(&alert.body)
            .map_err(|e| DeliveryError::Permanent(format!("the stored alert is not JSON: {e}")))?;
        let message = match self.format {
            SyslogFormat::Rfc5424 => rfc5424(&v, self.facility, std::process::id()),
            SyslogFormat::Rfc3164 => rfc3164(&v, self.facility, std::process::id()),
        };
        if self.conn.as_ref().is_some_and(|c| !alive(c)) {
            self.conn = None; // the receiver closed it: do not write into a dead connection
        }
        if self.conn.is_none() {
            self.conn = Some(
                self.connect().await.map_err(|e| retry(format!("connecting to {}: {e}", self.address)))?,
            );
        }
        let conn = self.conn.as_mut().expect("connected above");
        let sent = match conn {
            Conn::Udp(s) => s.send(message.as_bytes()).await.map(drop),
            Conn::UnixDgram(s) => s.send(message.as_bytes()).await.map(drop),
            Conn::UnixStream(s) => s.write_all(format!("{message}\n").as_bytes()).await,
            Conn::Tcp(s) => s.write_all(octet_counted(&message).as_bytes()).await,
            Conn::Tls(s) => match s.write_all(octet_counted(&message).as_bytes()).await {
                Ok(()) => s.flush().await,
                Err(e) => Err(e),
            },
        };
        sent.map_err(|e| {
            self.conn = None;
            retry(format!("sending to {}: {e}", self.address))
        })
    }

    async fn connect(&self) -> std::io::Result<Conn> {
        let connect = async {
            Ok(match &self.address {
                SyslogAddress::Unix(path) => match UnixDatagram::unbound() {
                    Ok(s) if s.connect(path).is_ok() => Conn::UnixDgram(s),
                    // A stream socket (some receivers listen that way).
                    _ => Conn::UnixStream(UnixStream::connect(path).await?),
                },
                SyslogAddress::Udp { host, port } => {
                    let target = tokio::net::lookup_host((host.as_str(), *port))
                        .await?
                        .next()
                        .ok_or_else(|| std::io::Error::other("the host name has no address"))?;
                    let bind = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                    let s = UdpSocket::bind(bind).await?;
                    // Connected: an ICMP port-unreachable then fails a later send, so a down
                    // receiver is noticed (the datagram in flight is lost: UDP has no receipt).
                    s.connect(target).await?;
                    Conn::Udp(s)
                }
                SyslogAddress::Tcp { host, port } => {
                    let s = TcpStream::connect((host.as_str(), *port)).await?;
                    s.set_nodelay(true)?;
                    Conn::Tcp(s)
                }
                SyslogAddress::Tls { host, port } => {
                    let s = TcpStream::connect((host.as_str(), *port)).await?;
                    s.set_nodelay(true)?;
                    let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| {
                        std::io::Error::other(format!("invalid TLS server name {host:?}: {e}"))
                    })?;
                    let tls = self.tls.as_ref().expect("tls:// sinks have a connector");
                    Conn::Tls(Box::new(tls.connect(name, s).await?))
                }
            })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

fn retry(reason: String) -> DeliveryError {
    DeliveryError::Retry { reason, after: None }
}

/// Whether a stream connection is still open. Syslog receivers never send, so a readable
/// socket means the peer closed it (or reset it).
fn alive(c: &Conn) -> bool {
    let tcp = match c {
        Conn::Tcp(s) => s,
        Conn::Tls(s) => s.get_ref().0,
        Conn::UnixStream(s) => {
            let mut buf = [0u8; 1];
            return matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        }
        Conn::Udp(_) | Conn::UnixDgram(_) => return true,
    };
    let mut buf = [0u8; 1];
    matches!(tcp.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn tls_connector(ca_file: Option<&Path>) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| anyhow::anyhow!("ca_file: {}: {e}", path.display()))?;
            if certs.is_empty() {
                anyhow::bail!("ca_file: {}: no PEM certificate in it", path.display());
            }
            for cert in certs {
                roots.add(cert).map_err(|e| anyhow::anyhow!("ca_file: {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                anyhow::bail!("address: no trusted CA certificates on this system for tls://: set ca_file");
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// RFC 6587 octet counting: "LEN SP MSG".
fn octet_counted(message: &str) -> String {
    format!("{} {message}", message.len())
}

/// Syslog severity for an alert severity: critical -> crit, high -> err, medium -> warning,
/// low -> notice.
fn syslog_severity(severity: &str) -> u8 {
    match severity {
        "critical" => 2,
        "high" => 3,
        "medium" => 4,
        _ => 5,
    }
}

fn pri(v: &Value, facility: Facility) -> u16 {
    facility.0 as u16 * 8 + syslog_severity(v["severity"].as_str().unwrap_or("")) as u16
}

/// A JSON field as text ("" for null).
fn field(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The alert's key fields, in a fixed order: (structured-data parameter name, value).
fn key_fields(v: &Value) -> Vec<(&'static str, String)> {
    let p = &v["process"];
    let d = &v["destination"];
    let cloud = match (d["cloud_provider"].as_str(), d["cloud_region"].as_str()) {
        (Some(p), Some(r)) => format!("{p}:{r}"),
        _ => String::new(),
    };
    vec![
        ("id", field(&v["id"])),
        ("class", field(&v["class"])),
        ("severity", field(&v["severity"])),
        ("direction", field(&v["direction"])),
        ("protocol", field(&v["protocol"])),
        ("pid", field(&p["pid"])),
        ("comm", field(&p["comm"])),
        ("uid", field(&p["uid"])),
        ("cgroup", field(&p["cgroup"])),
        ("dst", field(&d["ip"])),
        ("dport", field(&d["port"])),
        ("country", field(&d["country"])),
        ("subdivision", field(&d["subdivision"])),
        ("asn", field(&d["asn"])),
        ("cloud_region", cloud),
        ("site", field(&d["site"])),
        ("bytes", field(&v["bytes"])),
        ("packets", field(&v["packets"])),
    ]
}

/// RFC 5424 PARAM-VALUE escaping: '"', '\' and ']' are escaped with a backslash.
fn sd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header field: printable US-ASCII without spaces, at most `max` characters; "-" if empty.
fn header(s: &str, max: usize) -> String {
    let clean: String = s.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if clean.is_empty() { "-".into() } else { clean }
}

/// One alert as a syslog message in `format` (without framing).
pub fn message(
    alert: &crate::alerts::Alert,
    format: SyslogFormat,
    facility: Facility,
    procid: u32,
) -> String {
    let v = serde_json::to_value(alert).unwrap_or_default();
    match format {
        SyslogFormat::Rfc5424 => rfc5424(&v, facility, procid),
        SyslogFormat::Rfc3164 => rfc3164(&v, facility, procid),
    }
}

/// One alert as an RFC 5424 message (without framing).
pub fn rfc5424(v: &Value, facility: Facility, procid: u32) -> String {
    let mut sd = format!("[{SD_ID}");
    for (name, value) in key_fields(v) {
        if !value.is_empty() {
            let _ = write!(sd, " {name}=\"{}\"", sd_escape(&value));
        }
    }
    sd.push(']');
    format!(
        "<{}>1 {} {} egress-monitor {procid} residency-violation {sd} {}",
        pri(v, facility),
        header(v["time"].as_str().unwrap_or(""), 64),
        header(v["host"].as_str().unwrap_or(""), 255),
        v["reason"].as_str().unwrap_or("residency violation"),
    )
}

/// One alert as an RFC 3164 message: the key fields as key=value pairs after the reason.
pub fn rfc3164(v: &Value, facility: Facility, procid: u32) -> String {
    let time = v["time"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc).format("%b %e %H:%M:%S").to_string())
        .unwrap_or_else(|| chrono::Utc::now().format("%b %e %H:%M:%S").to_string());
    let mut msg = v["reason"].as_str().unwrap_or("residency violation").to_owned();
    for (name, value) in key_fields(v) {
        if !value.is_empty() {
            if value.contains(' ') {
                let _ = write!(msg, " {name}=\"{value}\"");
            } else {
                let _ = write!(msg, " {name}={value}");
            }
        }
    }
    format!(
        "<{}>{time} {} egress-monitor[{procid}]: {msg}",
        pri(v, facility),
        header(v["host"].as_str().unwrap_or(""), 255)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Value {
        serde_json::json!({
            "type": "alert", "id": "0123456789abcdef0123456789abcdef", "time": "2026-11-25T10:00:00.120Z",
            "host": "h1", "class": "us-user-data", "severity": "critical",
            "reason": "destination country CN is not approved for class us-user-data",
            "direction": "outbound", "protocol": "tcp",
            "process": {"pid": 1234, "tid": 1234, "comm": "api", "uid": 1001, "cgroup": "/payments/userdata", "cgroup_id": 8},
            "destination": {"ip": "175.16.199.1", "port": 443, "country": "CN", "subdivision": null, "asn": null,
                            "as_org": null, "cloud_provider": null, "cloud_region": null, "site": null, "internal": false},
            "bytes": 5120, "packets": 9, "first_seen": "2026-11-25T10:00:00.003Z", "last_seen": "2026-11-25T10:00:00.110Z"
        })
    }

    #[test]
    fn rfc5424_message_with_structured_data() {
        assert_eq!(
            rfc5424(&alert(), Facility(4), 77),
            "<34>1 2026-11-25T10:00:00.120Z h1 egress-monitor 77 residency-violation \
             [alert@32473 id=\"0123456789abcdef0123456789abcdef\" class=\"us-user-data\" severity=\"critical\" \
             direction=\"outbound\" protocol=\"tcp\" pid=\"1234\" comm=\"api\" uid=\"1001\" cgroup=\"/payments/userdata\" \
             dst=\"175.16.199.1\" dport=\"443\" country=\"CN\" bytes=\"5120\" packets=\"9\"] \
             destination country CN is not approved for class us-user-data"
        );
    }

    #[test]
    fn severities_and_facilities_make_the_priority() {
        let mut v = alert();
        for (sev, pri) in [("critical", 34), ("high", 35), ("medium", 36), ("low", 37)] {
            v["severity"] = sev.into();
            assert!(rfc5424(&v, Facility(4), 1).starts_with(&format!("<{pri}>1 ")), "{sev}");
        }
        assert!(rfc5424(&v, Facility(16), 1).starts_with("<133>1 "), "local0.notice");
    }

    #[test]
    fn structured_data_values_are_escaped() {
        let mut v = alert();
        v["process"]["comm"] = "a\"b]c\\d".into();
        assert!(rfc5424(&v, Facility(4), 1).contains(r#"comm="a\"b\]c\\d""#));
    }

    #[test]
    fn rfc3164_message() {
        assert_eq!(
            rfc3164(&alert(), Facility(10), 77),
            "<82>Nov 25 10:00:00 h1 egress-monitor[77]: destination country CN is not approved for class us-user-data \
             id=0123456789abcdef0123456789abcdef class=us-user-data severity=critical direction=outbound protocol=tcp \
             pid=1234 comm=api uid=1001 cgroup=/payments/userdata dst=175.16.199.1 dport=443 country=CN bytes=5120 packets=9"
        );
    }

    #[test]
    fn octet_counting_frames_by_length() {
        assert_eq!(octet_counted("<34>1 - - - - - -"), "17 <34>1 - - - - - -");
    }

    #[test]
    fn addresses_parse_with_default_ports() {
        let p = |s: &str| SyslogAddress::parse(s);
        assert_eq!(p("unix:///dev/log"), Ok(SyslogAddress::Unix("/dev/log".into())));
        assert_eq!(
            p("udp://logs.internal"),
            Ok(SyslogAddress::Udp { host: "logs.internal".into(), port: 514 })
        );
        assert_eq!(p("tcp://10.0.0.5:1601"), Ok(SyslogAddress::Tcp { host: "10.0.0.5".into(), port: 1601 }));
        assert_eq!(
            p("tls://siem.example"),
            Ok(SyslogAddress::Tls { host: "siem.example".into(), port: 6514 })
        );
        assert_eq!(p("udp://[::1]:5514"), Ok(SyslogAddress::Udp { host: "::1".into(), port: 5514 }));
        for (bad, expect) in [
            ("logs.internal:514", "expected unix:///"),
            ("http://x", "unknown scheme \"http\""),
            ("tcp://host:99999", "\"99999\" is not a port"),
            ("unix://dev/log", "must be absolute"),
            ("udp://", "no host"),
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.contains(expect), "{bad}: {e}");
        }
    }
}
