#![no_main]
// Fuzz target: see rtcam::fuzzing::topic_and_token.
libfuzzer_sys::fuzz_target!(|data: &[u8]| rtcam::fuzzing::topic_and_token(data));
