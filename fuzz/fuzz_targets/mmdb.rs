//! Fuzz target: see monitor::fuzzing::mmdb.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| monitor::fuzzing::mmdb(data));
