//! Where records go. Each sink runs as its own task behind a bounded queue, so a slow sink
//! slows the agent down (and the kernel's ring buffer then counts what it cannot hold) rather
//! than losing records silently.

mod stdout;

use std::sync::Arc;

use serde::Serialize;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    alerts::{Alert, AlertUpdate},
    config::SinkConfig,
    flows::record::{FlowRecord, LossRecord},
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

/// Records queued per sink before the agent waits for it.
const QUEUE: usize = 65536;

pub struct Sinks {
    queues: Vec<mpsc::Sender<Arc<Output>>>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Sinks {
    pub fn build(configs: &[SinkConfig]) -> Sinks {
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        for config in configs {
            let (tx, rx) = mpsc::channel(QUEUE);
            let task = match config {
                SinkConfig::Stdout {} => tokio::spawn(stdout::run(rx)),
            };
            queues.push(tx);
            tasks.push(task);
        }
        Sinks { queues, tasks }
    }

    pub async fn send(&self, output: Output) {
        let output = Arc::new(output);
        for q in &self.queues {
            // A closed queue means the sink task failed; its error is reported by close().
            let _ = q.send(output.clone()).await;
        }
    }

    /// Flushes every sink and waits for it to finish.
    pub async fn close(self) -> anyhow::Result<()> {
        drop(self.queues);
        for t in self.tasks {
            t.await??;
        }
        Ok(())
    }
}
