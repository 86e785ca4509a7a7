//! The stdout sink: every record as one JSON line, flushed whenever the queue runs dry.

use std::sync::Arc;

use tokio::{
    io::{AsyncWriteExt, BufWriter},
    sync::mpsc,
};

use super::{FieldError, Output, SinkConfig, SinkTable, SinkType};

pub const TYPE: SinkType = SinkType { name: "stdout", keys: &[], parse };

fn parse(_: &SinkTable) -> Result<SinkConfig, FieldError> {
    Ok(SinkConfig::Stdout {})
}

pub async fn run(mut rx: mpsc::Receiver<Arc<Output>>) -> anyhow::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 16, tokio::io::stdout());
    let mut line = Vec::with_capacity(512);
    while let Some(record) = rx.recv().await {
        let mut next = Some(record);
        while let Some(record) = next {
            line.clear();
            serde_json::to_writer(&mut line, &*record)?;
            line.push(b'\n');
            out.write_all(&line).await?;
            next = rx.try_recv().ok();
        }
        out.flush().await?;
    }
    out.flush().await?;
    Ok(())
}
