#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pollux_fuzz::nbd_wire(data));
