//! Where a syslog receiver listens, as a sink's `address` key writes it.

use std::{fmt, path::PathBuf};

/// Where a syslog receiver listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogAddress {
    Unix(PathBuf),
    Udp {
        host: String,
        port: u16,
    },
    /// RFC 6587 octet-counted framing.
    Tcp {
        host: String,
        port: u16,
    },
    Tls {
        host: String,
        port: u16,
    },
}

impl fmt::Display for SyslogAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyslogAddress::Unix(p) => write!(f, "unix://{}", p.display()),
            SyslogAddress::Udp { host, port } => write!(f, "udp://{host}:{port}"),
            SyslogAddress::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            SyslogAddress::Tls { host, port } => write!(f, "tls://{host}:{port}"),
        }
    }
}

impl SyslogAddress {
    pub fn parse(text: &str) -> Result<SyslogAddress, String> {
        let expected =
            "expected unix:///path/to/socket, udp://host[:port], tcp://host[:port] or tls://host[:port]";
        let (scheme, rest) =
            text.split_once("://").ok_or_else(|| format!("invalid syslog address {text:?}: {expected}"))?;
        if scheme == "unix" {
            if !rest.starts_with('/') {
                return Err(format!(
                    "invalid syslog address {text:?}: the socket path must be absolute, like unix:///dev/log"
                ));
            }
            return Ok(SyslogAddress::Unix(PathBuf::from(rest)));
        }
        let default_port = match scheme {
            "udp" => 514,
            "tcp" => 601,
            "tls" => 6514,
            _ => {
                return Err(format!(
                    "invalid syslog address {text:?}: unknown scheme {scheme:?}; {expected}"
                ));
            }
        };
        let (host, port) = match rest.rsplit_once(':') {
            // IPv6 literals come in brackets: [::1]:514.
            Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.starts_with('[')) => {
                let port = p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    format!("invalid syslog address {text:?}: {p:?} is not a port (1-65535)")
                })?;
                (h, port)
            }
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("invalid syslog address {text:?}: no host; {expected}"));
        }
        let host = host.to_owned();
        Ok(match scheme {
            "udp" => SyslogAddress::Udp { host, port },
            "tcp" => SyslogAddress::Tcp { host, port },
            _ => SyslogAddress::Tls { host, port },
        })
    }
}
