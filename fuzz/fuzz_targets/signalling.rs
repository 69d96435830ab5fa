#![no_main]
// Fuzz target: see rtcam::fuzzing::signalling.
libfuzzer_sys::fuzz_target!(|data: &[u8]| rtcam::fuzzing::signalling(data));
