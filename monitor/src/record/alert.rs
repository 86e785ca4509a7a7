//! The alert and its later updates, as sinks deliver them and the store keeps them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{DestinationRecord, Direction, Process, Protocol, Severity, Timestamp, kind};

/// An alert as sinks deliver it. Field names are public API; [`super::fields::ALERT`] says how
/// each one appears in every other encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    #[serde(rename = "type", skip_deserializing, default = "kind::alert")]
    pub kind: &'static str,
    /// Stable for the alert's whole life (deliveries and retries carry the same id).
    pub id: String,
    pub time: Timestamp,
    pub host: Arc<str>,
    pub class: Arc<str>,
    pub severity: Severity,
    /// `observed` (the data went; the class observes, or the flow began before enforcement)
    /// or `blocked` (the kernel refused it: the class enforces).
    #[serde(default)]
    pub action: Action,
    pub reason: String,
    pub direction: Direction,
    pub protocol: Protocol,
    pub process: Process,
    pub destination: DestinationRecord,
    /// Bytes and packets of the flow that raised it, when it was raised.
    pub bytes: u64,
    pub packets: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
}

/// What became of the traffic an alert is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Observed,
    Blocked,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Observed => "observed",
            Action::Blocked => "blocked",
        }
    }
}

/// New totals of an open alert: every flow of its key since it was raised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertUpdate {
    #[serde(rename = "type", skip_deserializing, default = "kind::alert_update")]
    pub kind: &'static str,
    pub id: String,
    pub time: Timestamp,
    pub host: Arc<str>,
    pub class: Arc<str>,
    pub bytes: u64,
    pub packets: u64,
    /// Flows counted in the totals.
    pub flows: u64,
    pub last_seen: Timestamp,
}
