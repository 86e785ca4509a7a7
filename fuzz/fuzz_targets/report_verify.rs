//! Fuzz target: see monitor::fuzzing::report_verify.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| monitor::fuzzing::report_verify(data));
