//! The sinks of a reloaded configuration: the running ones are stopped as at exit (every alert
//! handed over is in the outbox first; stdout is flushed), then the new set starts on the same
//! outbox, whose pending alerts go to the sinks of the same name; the store's writer is handed
//! over untouched, so no record is lost or written twice.

use super::{OutboxOptions, Prepared, Sinks};

impl Sinks {
    /// Replaces every sink with `prepared`'s, keeping the store's writer. An error (the outbox
    /// the agent opened at start cannot be opened again) leaves only the store taking records.
    pub async fn reopen(&mut self, outbox: &OutboxOptions, prepared: Prepared) -> anyhow::Result<()> {
        let store = self.store.take();
        let none = Prepared { sinks: Vec::new() };
        let old = std::mem::replace(self, Sinks::start(outbox, none, store)?);
        old.close().await?;
        let store = self.store.take();
        *self = Sinks::start(outbox, prepared, store)?;
        Ok(())
    }
}
