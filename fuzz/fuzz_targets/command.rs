#![no_main]
// Fuzz target: see rtcam::fuzzing::command.
libfuzzer_sys::fuzz_target!(|data: &[u8]| rtcam::fuzzing::command(data));
