//! Replays the committed fuzz corpus (fuzz/corpus/<target>/) through the same entry points the
//! fuzzers use: every input that ever found a new path, and every past crash, stays a test.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        run(&data);
        n += 1;
    }
    n
}

#[test]
fn corpus_replays_without_panics() {
    let counts = [
        ("signalling", replay("signalling", rtcam::fuzzing::signalling)),
        ("command", replay("command", rtcam::fuzzing::command)),
        ("topic_and_token", replay("topic_and_token", rtcam::fuzzing::topic_and_token)),
        ("sdp", replay("sdp", rtcam::fuzzing::sdp)),
    ];
    for (target, n) in counts {
        assert!(n > 0, "corpus for {target} is empty");
        eprintln!("{target}: {n} inputs");
    }
}
