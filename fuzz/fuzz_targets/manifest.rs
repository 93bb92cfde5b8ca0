#![no_main]

#[path = "../harness/manifest.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(
    init: store_fuzz::write_seeds_if_asked(harness::seeds),
    |data: &[u8]| harness::run(data)
);
