//! Fuzz target: see monitor::fuzzing::cloud_ranges.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| monitor::fuzzing::cloud_ranges(data));
