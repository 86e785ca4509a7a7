//! The record shapes: what the agent reports (flow records, alerts, alert updates, loss
//! records), the values they are made of, and the field tables every other encoding (store and
//! ClickHouse rows, syslog parameters, API answers) is derived from. Field names are public
//! API, pinned by the golden tests. Every layer speaks these types; this module imports no
//! other module of the agent.

mod alert;
pub mod fields;
mod flow;
mod values;

pub use alert::{Action, Alert, AlertUpdate};
pub use flow::{
    DestinationRecord, DomainName, Endpoint, FlowRecord, KernelMark, LossRecord, OverflowCount, Process,
};
use serde::Serialize;
pub use values::{
    CloudProvider, Destination, Direction, FlowState, Protocol, Severity, Timestamp, VerdictKind,
};

/// Anything the agent reports.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Output {
    Flow(FlowRecord),
    Alert(Alert),
    AlertUpdate(AlertUpdate),
    Loss(LossRecord),
}

/// The `type` field of each record, filled in when a record is read back (from the outbox).
mod kind {
    pub fn alert() -> &'static str {
        "alert"
    }

    pub fn alert_update() -> &'static str {
        "alert_update"
    }

    pub fn loss() -> &'static str {
        "loss"
    }
}
