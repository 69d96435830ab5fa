#![no_main]
// Fuzz target: see rtcam::fuzzing::sdp.
libfuzzer_sys::fuzz_target!(|data: &[u8]| rtcam::fuzzing::sdp(data));
