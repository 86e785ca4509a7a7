//! The syslog sink: each alert as one RFC 5424 message with a structured-data element holding
//! its key fields (or RFC 3164 for old receivers), over a unix socket, UDP, TCP with RFC 6587
//! octet counting, or TLS. App name `egress-monitor`; the alert's severity maps onto syslog's.
//! The parameters are the alert fields [`crate::record::fields::ALERT`] gives a syslog name.

use std::{
    any::Any,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpStream, UdpSocket, UnixDatagram, UnixStream},
};
use tokio_rustls::{TlsConnector, client::TlsStream, rustls};

pub use super::syslog_address::SyslogAddress;
use super::{
    AlertSink, AlertSinkConfig, AlertSinkOptions, Delivery, FieldError, SinkConfig, SinkTable, SinkType,
    delivery::DeliveryError,
};
use crate::record::{Alert, Severity, fields};

pub const TYPE: SinkType = SinkType {
    name: "syslog",
    keys: &[
        "name",
        "address",
        "format",
        "facility",
        "ca_file",
        "min_severity",
        "classes",
        "retry_initial",
        "retry_max",
        "max_age",
    ],
    parse,
};

/// The syslog sink's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogOptions {
    pub address: SyslogAddress,
    pub format: SyslogFormat,
    pub facility: Facility,
    /// PEM file of CA certificates that sign the server's certificate (tls:// only); the
    /// system's trust store when absent.
    pub ca_file: Option<PathBuf>,
}

fn parse(t: &SinkTable) -> Result<SinkConfig, FieldError> {
    let options = SyslogOptions {
        address: t
            .parsed("address", SyslogAddress::parse)?
            .ok_or_else(|| t.missing("address", "udp://127.0.0.1:514"))?,
        format: match t.choice("format", &["rfc5424", "rfc3164"])? {
            Some("rfc3164") => SyslogFormat::Rfc3164,
            _ => SyslogFormat::Rfc5424,
        },
        facility: t.parsed("facility", Facility::parse)?.unwrap_or_default(),
        ca_file: t.text("ca_file")?.map(|(p, _)| PathBuf::from(p)),
    };
    Ok(SinkConfig::Alerts(AlertSinkConfig::read(t, Arc::new(options))?))
}

impl AlertSinkOptions for SyslogOptions {
    fn default_name(&self) -> String {
        format!("syslog:{}", self.address)
    }

    fn build(&self) -> anyhow::Result<Box<dyn AlertSink>> {
        Ok(Box::new(SyslogSink::new(self)?))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The enterprise number in the structured-data id: 32473 is the number RFC 5612 sets aside
/// for examples and documentation, as this project has none registered.
pub const SD_ID: &str = "alert@32473";

/// How long connecting to the receiver may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long writing one message may take. A stream receiver that stops reading fills the
/// socket buffers and would otherwise stall this sink for good: the write fails, the
/// connection is dropped (a half-written message must not be completed later) and the alert
/// is retried on a new one.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

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
    write_timeout: Duration,
}

impl SyslogSink {
    /// Prepares the sink (reads the CA file for tls://); connects on first delivery.
    pub fn new(c: &SyslogOptions) -> anyhow::Result<SyslogSink> {
        let tls = match &c.address {
            SyslogAddress::Tls { .. } => Some(tls_connector(c.ca_file.as_deref())?),
            _ => None,
        };
        Ok(SyslogSink {
            address: c.address.clone(),
            format: c.format,
            facility: c.facility,
            tls,
            conn: None,
            write_timeout: WRITE_TIMEOUT,
        })
    }

    async fn send(&mut self, alert: &Alert) -> Result<(), DeliveryError> {
        let message = message(alert, self.format, self.facility, std::process::id());
        if self.conn.as_ref().is_some_and(|c| !alive(c)) {
            self.conn = None; // the receiver closed it: do not write into a dead connection
        }
        if self.conn.is_none() {
            self.conn = Some(
                self.connect().await.map_err(|e| retry(format!("connecting to {}: {e}", self.address)))?,
            );
        }
        let timeout = self.write_timeout;
        let conn = self.conn.as_mut().expect("connected above");
        let write = async {
            match conn {
                Conn::Udp(s) => s.send(message.as_bytes()).await.map(drop),
                Conn::UnixDgram(s) => s.send(message.as_bytes()).await.map(drop),
                Conn::UnixStream(s) => s.write_all(format!("{message}\n").as_bytes()).await,
                Conn::Tcp(s) => s.write_all(octet_counted(&message).as_bytes()).await,
                Conn::Tls(s) => match s.write_all(octet_counted(&message).as_bytes()).await {
                    Ok(()) => s.flush().await,
                    Err(e) => Err(e),
                },
            }
        };
        let sent = match tokio::time::timeout(timeout, write).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("write timed out after {timeout:?} (the receiver stopped reading)"),
            )),
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
fn syslog_severity(severity: Severity) -> u8 {
    match severity {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
    }
}

fn pri(a: &Alert, facility: Facility) -> u16 {
    facility.0 as u16 * 8 + syslog_severity(a.severity) as u16
}

/// The alert's key fields, in the field table's order: (parameter name, value); empty values
/// are left out.
fn key_fields(a: &Alert) -> impl Iterator<Item = (&'static str, String)> + '_ {
    fields::ALERT
        .iter()
        .filter_map(move |f| f.syslog.map(|name| (name, (f.value)(a).text())))
        .filter(|(_, v)| !v.is_empty())
}

/// RFC 5424 PARAM-VALUE escaping: '"', '\' and ']' are escaped with a backslash.
fn sd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    // Control characters become spaces: over a newline-framed transport a line break would
    // start a forged message.
    for c in s.chars().map(|c| if c.is_control() { ' ' } else { c }) {
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
pub fn message(alert: &Alert, format: SyslogFormat, facility: Facility, procid: u32) -> String {
    match format {
        SyslogFormat::Rfc5424 => rfc5424(alert, facility, procid),
        SyslogFormat::Rfc3164 => rfc3164(alert, facility, procid),
    }
}

/// One alert as an RFC 5424 message (without framing).
fn rfc5424(a: &Alert, facility: Facility, procid: u32) -> String {
    let mut sd = format!("[{SD_ID}");
    for (name, value) in key_fields(a) {
        let _ = write!(sd, " {name}=\"{}\"", sd_escape(&value));
    }
    sd.push(']');
    format!(
        "<{}>1 {} {} egress-monitor {procid} residency-violation {sd} {}",
        pri(a, facility),
        header(&a.time.rfc3339(), 64),
        header(&a.host, 255),
        a.reason,
    )
}

/// One alert as an RFC 3164 message: the key fields as key=value pairs after the reason.
fn rfc3164(a: &Alert, facility: Facility, procid: u32) -> String {
    let time = a.time.0.format("%b %e %H:%M:%S");
    let mut msg = a.reason.clone();
    for (name, value) in key_fields(a) {
        let _ = write!(msg, " {name}={}", pair_value(&value));
    }
    format!("<{}>{time} {} egress-monitor[{procid}]: {msg}", pri(a, facility), header(&a.host, 255))
}

/// A value of an RFC 3164 key=value pair that cannot forge another pair: quoted (with `"` and
/// `\` escaped) when it holds a space, `=`, a quote or a backslash; control characters become
/// spaces, so a value cannot end the line either.
fn pair_value(value: &str) -> String {
    let clean: String = value.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if !clean.contains([' ', '=', '"', '\\']) {
        return clean;
    }
    let mut out = String::with_capacity(clean.len() + 2);
    out.push('"');
    for c in clean.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

impl AlertSink for SyslogSink {
    fn deliver<'a>(&'a mut self, alert: &'a Alert) -> Delivery<'a> {
        Box::pin(self.send(alert))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyslogFormat {
    #[default]
    Rfc5424,
    Rfc3164,
}

/// A syslog facility by its conventional name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facility(pub u8);

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

impl Default for Facility {
    fn default() -> Self {
        Facility(4) // auth
    }
}

impl Facility {
    pub fn parse(name: &str) -> Result<Facility, String> {
        FACILITIES.iter().position(|f| *f == name).map(|i| Facility(i as u8)).ok_or_else(|| {
            format!(
                "unknown syslog facility {name:?}: expected one of auth, authpriv, daemon, user, security, local0 ... local7"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        serde_json::from_value(serde_json::json!({
            "type": "alert", "id": "0123456789abcdef0123456789abcdef", "time": "2026-11-25T10:00:00.120Z",
            "host": "h1", "class": "us-user-data", "severity": "critical",
            "reason": "destination country CN is not approved for class us-user-data",
            "direction": "outbound", "protocol": "tcp",
            "process": {"pid": 1234, "tid": 1234, "comm": "api", "uid": 1001, "cgroup": "/payments/userdata", "cgroup_id": 8},
            "destination": {"ip": "175.16.199.1", "port": 443, "country": "CN", "subdivision": null, "asn": null,
                            "as_org": null, "cloud_provider": null, "cloud_region": null, "site": null, "internal": false},
            "bytes": 5120, "packets": 9, "first_seen": "2026-11-25T10:00:00.003Z", "last_seen": "2026-11-25T10:00:00.110Z"
        }))
        .unwrap()
    }

    #[test]
    fn rfc5424_message_with_structured_data() {
        assert_eq!(
            rfc5424(&alert(), Facility(4), 77),
            "<34>1 2026-11-25T10:00:00.120Z h1 egress-monitor 77 residency-violation \
             [alert@32473 id=\"0123456789abcdef0123456789abcdef\" class=\"us-user-data\" severity=\"critical\" action=\"observed\" \
             direction=\"outbound\" protocol=\"tcp\" pid=\"1234\" comm=\"api\" uid=\"1001\" cgroup=\"/payments/userdata\" \
             dst=\"175.16.199.1\" dport=\"443\" country=\"CN\" bytes=\"5120\" packets=\"9\"] \
             destination country CN is not approved for class us-user-data"
        );
    }

    #[test]
    fn severities_and_facilities_make_the_priority() {
        let mut v = alert();
        for (sev, pri) in
            [(Severity::Critical, 34), (Severity::High, 35), (Severity::Medium, 36), (Severity::Low, 37)]
        {
            v.severity = sev;
            assert!(rfc5424(&v, Facility(4), 1).starts_with(&format!("<{pri}>1 ")), "{sev:?}");
        }
        assert!(rfc5424(&v, Facility(16), 1).starts_with("<133>1 "), "local0.notice");
    }

    #[test]
    fn structured_data_values_are_escaped() {
        let mut v = alert();
        v.process.comm = Some("a\"b]c\\d".into());
        assert!(rfc5424(&v, Facility(4), 1).contains(r#"comm="a\"b\]c\\d""#));
    }

    #[test]
    fn rfc3164_message() {
        assert_eq!(
            rfc3164(&alert(), Facility(10), 77),
            "<82>Nov 25 10:00:00 h1 egress-monitor[77]: destination country CN is not approved for class us-user-data \
             id=0123456789abcdef0123456789abcdef class=us-user-data severity=critical action=observed direction=outbound protocol=tcp \
             pid=1234 comm=api uid=1001 cgroup=/payments/userdata dst=175.16.199.1 dport=443 country=CN bytes=5120 packets=9"
        );
    }

    #[test]
    fn rfc3164_values_cannot_forge_pairs() {
        let mut a = alert();
        a.process.comm = Some("x country=US \"y".into());
        let line = rfc3164(&a, Facility(10), 77);
        assert!(line.contains(r#" comm="x country=US \"y" "#), "{line}");
        assert!(line.contains(r#"\"y" uid=1001 "#), "the quoted value ends where it should: {line}");
        a.process.comm = Some("a\nb".into());
        assert!(rfc3164(&a, Facility(10), 77).contains(" comm=\"a b\" "), "no line break");
    }

    #[tokio::test]
    async fn a_tcp_receiver_that_stops_reading_is_a_timed_out_write_not_a_stall() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts, then holds the connection without ever reading from it.
        std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().flatten().collect();
            drop(held);
        });
        let options = SyslogOptions {
            address: SyslogAddress::Tcp { host: "127.0.0.1".into(), port },
            format: SyslogFormat::Rfc5424,
            facility: Facility::default(),
            ca_file: None,
        };
        let mut sink = SyslogSink::new(&options).unwrap();
        sink.write_timeout = Duration::from_millis(200);
        let mut a = alert();
        a.reason = "x".repeat(4000);
        let started = std::time::Instant::now();
        let failure = loop {
            match sink.send(&a).await {
                Ok(()) => assert!(started.elapsed() < Duration::from_secs(60), "the buffers never filled"),
                Err(e) => break e,
            }
        };
        let DeliveryError::Retry { reason, .. } = failure else { panic!("{failure:?}") };
        assert!(reason.contains("timed out"), "{reason}");
        assert!(sink.conn.is_none(), "the half-written connection is dropped");
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
