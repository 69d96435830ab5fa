//! The watchdog withholds pings when a part stops beating, and resumes when it beats again.
//! In-process, so a heartbeat can be stalled on purpose; its own test binary (not a module of
//! tests/it/) because it sets NOTIFY_SOCKET for the whole process, which every rtcam started in
//! that process would then notify.

use rtcam::health::Heartbeat;
use rtcam::service::{run_watchdog, Notifier};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn drain(socket: &UnixDatagram, for_how_long: Duration) -> Vec<String> {
    let until = Instant::now() + for_how_long;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => seen.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_pipeline_stops_the_pings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    // The only test in this binary, set before any thread reads the environment.
    std::env::set_var("NOTIFY_SOCKET", &path);
    std::env::set_var("WATCHDOG_USEC", "1500000");
    let notifier = Notifier::from_env();
    let timeout = notifier
        .watchdog()
        .expect("watchdog enabled from the environment");
    assert_eq!(timeout, Duration::from_millis(1500));

    let media = Heartbeat::new("media pipeline");
    let mqtt = Heartbeat::new("MQTT loop");
    let beating = CancellationToken::new();
    let media_beats = {
        let (media, beating) = (media.clone(), beating.clone());
        tokio::spawn(async move {
            while !beating.is_cancelled() {
                media.beat();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mqtt_beats = {
        let mqtt = mqtt.clone();
        tokio::spawn(async move {
            loop {
                mqtt.beat();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let done = CancellationToken::new();
    let watchdog = tokio::spawn(run_watchdog(
        notifier,
        vec![media.clone(), mqtt],
        timeout,
        done.clone(),
    ));

    // A ping every 500 ms.
    let healthy = tokio::task::block_in_place(|| drain(&socket, Duration::from_millis(1600)));
    assert!(
        healthy
            .iter()
            .filter(|m| m.trim_end() == "WATCHDOG=1")
            .count()
            >= 3,
        "{healthy:#?}"
    );

    // The pipeline stops producing: after MIN_STALL (2 s) plus at most a tick the pings stop
    // and STATUS names the part.
    beating.cancel();
    media_beats.await.unwrap();
    let stalled = tokio::task::block_in_place(|| drain(&socket, Duration::from_millis(3000)));
    let status = stalled
        .iter()
        .position(|m| m.starts_with("STATUS=unhealthy: media pipeline silent for"))
        .unwrap_or_else(|| panic!("no unhealthy status: {stalled:#?}"));
    assert!(
        !stalled[status..]
            .iter()
            .any(|m| m.trim_end() == "WATCHDOG=1"),
        "{stalled:#?}"
    );

    // It recovers (a camera came back): pings resume.
    media.beat();
    let recovered = tokio::task::block_in_place(|| drain(&socket, Duration::from_millis(700)));
    assert!(
        recovered.iter().any(|m| m.trim_end() == "WATCHDOG=1"),
        "{recovered:#?}"
    );

    done.cancel();
    watchdog.await.unwrap();
    mqtt_beats.abort();
}
