//! Replays the committed fuzz seeds (fuzz/seeds/<target>/) through the same entry points the
//! fuzzers use: the hand-made inputs of each target, and every input that ever found a crash,
//! stay a test. The corpus cargo fuzz grows from them is not committed (fuzz/README.md).

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
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
        (
            "signalling",
            replay("signalling", rtcam::fuzzing::signalling),
        ),
        ("command", replay("command", rtcam::fuzzing::command)),
        (
            "topic_and_token",
            replay("topic_and_token", rtcam::fuzzing::topic_and_token),
        ),
        ("sdp", replay("sdp", rtcam::fuzzing::sdp)),
        (
            "shared_port",
            replay("shared_port", rtcam::fuzzing::shared_port),
        ),
        (
            "gate_packets",
            replay("gate_packets", rtcam::fuzzing::gate_packets),
        ),
    ];
    for (target, n) in counts {
        assert!(n > 0, "seeds for {target}: none");
        eprintln!("{target}: {n} inputs");
    }
}

/// The gate's hand-made seeds are what their names say: whole sessions read to the end, with
/// the requests they name, and the broken ones refused; a seed that silently stopped parsing
/// would leave the fuzzer starting from nothing.
#[test]
fn gate_seeds_read_as_named() {
    use bytes::BytesMut;
    use rtcam::gate::codec::{read, Request, Version};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/gate_packets");
    let seed = |name: &str| BytesMut::from(&std::fs::read(dir.join(name)).unwrap()[..]);
    let session = |name: &str, version: Option<Version>| {
        let mut buf = seed(name);
        let mut version = version;
        let mut requests = Vec::new();
        while !buf.is_empty() {
            let (_, request) = read(&mut buf, version, rtcam::gate::MAX_INBOUND)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .unwrap_or_else(|| panic!("{name}: a whole packet"));
            if let Request::Connect(c) = &request {
                version = Some(c.version);
            }
            requests.push(request);
        }
        requests
    };
    for (name, version, want) in [
        ("connect_311_viewer_session", None, Version::V311),
        ("connect_311_login_will", None, Version::V311),
        ("connect_5_viewer_session", None, Version::V5),
        ("connect_5_login_will", None, Version::V5),
    ] {
        let requests = session(name, version);
        assert!(
            matches!(&requests[0], Request::Connect(c) if c.version == want),
            "{name}: {requests:?}"
        );
    }
    let alias = session("publish_topic_alias_5", Some(Version::V5));
    assert!(
        matches!(&alias[1], Request::Publish { topic, alias: Some(1), .. } if topic.is_empty()),
        "{alias:?}"
    );
    let wildcards = session("subscribe_wildcards_311", Some(Version::V311));
    assert!(
        matches!(&wildcards[0], Request::Subscribe { filters, .. } if filters.len() == 7),
        "{wildcards:?}"
    );
    session("publish_retained_and_qos2_311", Some(Version::V311));
    for broken in ["remaining_length_overflow", "remaining_length_too_large"] {
        assert!(
            read(&mut seed(broken), None, rtcam::gate::MAX_INBOUND).is_err(),
            "{broken}"
        );
    }
    assert!(matches!(
        read(
            &mut seed("truncated_connect"),
            None,
            rtcam::gate::MAX_INBOUND
        ),
        Ok(None)
    ));
}
