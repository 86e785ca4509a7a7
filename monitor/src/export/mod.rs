//! Sending flow summaries and alerts to a fleet-wide store. Exporters read what the embedded
//! store holds and remember how far they got (in the store itself), so nothing is lost while the
//! remote end is down (within the store's retention), and rows are sent at least once with ids
//! the remote end deduplicates on.

pub mod clickhouse;
