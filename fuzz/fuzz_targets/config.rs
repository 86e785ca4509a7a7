//! Fuzz target: see monitor::fuzzing::config.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| monitor::fuzzing::config(data));
