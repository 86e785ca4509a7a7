//! Fuzz target: see monitor::fuzzing::dns_answer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| monitor::fuzzing::dns_answer(data));
