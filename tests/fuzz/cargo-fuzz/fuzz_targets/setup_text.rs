#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pollux_fuzz::setup_text(data));
