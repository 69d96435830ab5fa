//! Picture loss indications as a browser sends them: when the decoder lost packets, at most
//! one per 300 ms, and again every 500 ms while no frame decodes, since a PLI can be lost too.

use crate::seen::Shared;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use webrtc::media_stream::track_remote::TrackRemote;

pub(crate) type VideoTrack = Arc<Mutex<Option<Arc<dyn TrackRemote>>>>;

/// Sends a PLI for the video track.
pub(crate) async fn send(track: &dyn TrackRemote) -> bool {
    let Some(media_ssrc) = track.ssrcs().await.first().copied() else {
        return false;
    };
    let pli = PictureLossIndication {
        sender_ssrc: 0,
        media_ssrc,
    };
    track.write_rtcp(vec![Box::new(pli)]).await.is_ok()
}

/// Turns the decoder's keyframe requests into paced PLIs until the decoder goes.
pub(crate) fn spawn(
    mut requests: mpsc::UnboundedReceiver<()>,
    track: VideoTrack,
    shared: Arc<Shared>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<Instant> = None;
        // Frames decoded when the picture broke, while it stays broken.
        let mut broken_at: Option<usize> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            // Cancel-safe: mpsc recv and an interval tick.
            let requested = tokio::select! {
                r = requests.recv() => match r {
                    Some(()) => true,
                    None => break,
                },
                _ = tick.tick() => false,
            };
            let frames = shared.seen().frames;
            if broken_at.is_some_and(|at| frames > at) {
                broken_at = None;
            }
            if requested {
                broken_at.get_or_insert(frames);
            }
            let due = if requested {
                Duration::from_millis(300)
            } else if broken_at.is_some() {
                Duration::from_millis(500)
            } else {
                continue;
            };
            if last.is_some_and(|t| t.elapsed() < due) {
                continue;
            }
            let Some(track) = track.lock().unwrap().clone() else {
                continue;
            };
            if send(&*track).await {
                shared.seen().plis_sent += 1;
                last = Some(Instant::now());
            }
        }
    })
}
