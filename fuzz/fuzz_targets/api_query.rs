//! Fuzz target: see monitor::fuzzing::api_query.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| monitor::fuzzing::api_query(data));
