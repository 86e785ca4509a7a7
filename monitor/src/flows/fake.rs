//! An in-memory stand-in for the kernel map, for tests of the layers that sweep it.

use std::collections::BTreeMap;

use monitor_common::{FlowKey, FlowValue};

use super::KernelFlows;

#[derive(Default)]
pub struct FakeMap(pub BTreeMap<FlowKey, FlowValue>);

impl KernelFlows for FakeMap {
    fn for_each(&mut self, f: &mut dyn FnMut(&FlowKey, &FlowValue)) -> std::io::Result<()> {
        self.0.iter().for_each(|(k, v)| f(k, v));
        Ok(())
    }
    fn take(&mut self, key: &FlowKey) -> std::io::Result<Option<FlowValue>> {
        Ok(self.0.remove(key))
    }
}
