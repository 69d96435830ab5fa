#![no_main]
// Fuzz target: see rtcam::fuzzing::shared_port.
libfuzzer_sys::fuzz_target!(|data: &[u8]| rtcam::fuzzing::shared_port(data));
