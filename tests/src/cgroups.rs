//! A cgroup of the test's own under the cgroup v2 root (the shared test world's, failing the
//! test on error). On drop, its processes are killed and its directories removed.

use std::{ops::Deref, path::PathBuf};

pub struct TestCgroup(test_world::TestCgroup);

impl TestCgroup {
    pub fn new() -> TestCgroup {
        TestCgroup(test_world::TestCgroup::new("emcg").expect("create test cgroup"))
    }

    /// Creates a child cgroup (and its parents) and returns its directory.
    pub fn create(&self, name: &str) -> PathBuf {
        self.0.create(name).unwrap_or_else(|e| panic!("{e:#}"))
    }
}

impl Deref for TestCgroup {
    type Target = test_world::TestCgroup;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}
