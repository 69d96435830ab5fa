#![no_main]
// Fuzz target: see rtcam::fuzzing::gate_packets.
libfuzzer_sys::fuzz_target!(|data: &[u8]| rtcam::fuzzing::gate_packets(data));
