//! The record shapes: what the agent reports (flow records, alerts, alert updates, loss
//! records), the values they are made of, and the field tables every other encoding (store and
//! ClickHouse rows, syslog parameters, API answers) is derived from. Field names are public
//! API, pinned by the golden tests. Every layer speaks these types; this module imports no
//! other module of the agent.

mod alert;
pub mod fields;
mod flow;
mod values;

pub use alert::{Alert, AlertUpdate};
pub use flow::{DestinationRecord, Endpoint, FlowRecord, LossRecord, Process};
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

/// The `type` field of each record, checked when a record is read back (from the outbox).
mod kind {
    use serde::{Deserialize, Deserializer, de};

    fn expect<'de, D: Deserializer<'de>>(d: D, want: &'static str) -> Result<&'static str, D::Error> {
        let got = String::deserialize(d)?;
        if got == want {
            Ok(want)
        } else {
            Err(de::Error::custom(format!("type {got:?}, expected {want:?}")))
        }
    }

    pub fn alert<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
        expect(d, "alert")
    }

    pub fn alert_update<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
        expect(d, "alert_update")
    }

    pub fn loss<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
        expect(d, "loss")
    }
}
