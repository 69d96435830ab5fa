//! rtcam's doors side by side: its CPU and memory serving one WebRTC viewer over MQTT, one RTSP
//! client and one WHEP client at once, against three WebRTC viewers over MQTT, measured as the
//! fan-out rows are (the same settling, the same window, `ProcSample` of rtcam).

use crate::daemon::{ProcSample, Rtcam};
use crate::report::DoorsRow;
use anyhow::{bail, Context, Result};
use gstreamer as gst;
use gstreamer::prelude::*;
use rtcam_viewer::whep::{self, WhepPlayer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Both rows: three WebRTC viewers over MQTT, then one client of each door.
pub async fn measure(cam: &Rtcam, window: u64) -> Result<Vec<DoorsRow>> {
    let target = crate::Target::Rtcam {
        host: cam.broker.0.clone(),
        port: cam.broker.1,
        root: cam.root.clone(),
    };
    let three = crate::fanout(&target, 3, window, cam.pid()).await?;
    let mut rows = vec![DoorsRow {
        clients: "3 WebRTC (MQTT)",
        cpu: three.cpu,
        rss_kb: three.rss_kb,
        fps: three.fps.iter().map(|f| ("WebRTC", *f)).collect(),
    }];
    rows.push(one_of_each(cam, window).await?);
    Ok(rows)
}

/// One WebRTC viewer (MQTT), one RTSP client and one WHEP client together.
async fn one_of_each(cam: &Rtcam, window: u64) -> Result<DoorsRow> {
    let broker = (cam.broker.0.as_str(), cam.broker.1);
    let webrtc = crate::viewer(broker, &cam.root, false).await?;
    let (player, location) = whep_client(cam.http_addr).await?;
    let rtsp = RtspClient::start(&cam.rtsp_url)?;
    let wait = Duration::from_secs(20);
    if !webrtc.wait_first_frame(wait).await {
        eprintln!("doors: the WebRTC viewer got no frame in 20 s");
    }
    if !until(wait, || player.frames() > 0).await {
        eprintln!("doors: the WHEP client got no frame in 20 s");
    }
    if !until(wait, || rtsp.frames() > 0).await {
        eprintln!("doors: the RTSP client got no frame in 20 s");
    }
    // As the fan-out rows: settle, then rtcam's CPU and RSS over the window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = || [webrtc.decoded().rtp_frames, player.frames(), rtsp.frames()];
    let before = counts();
    let a = ProcSample::read(cam.pid())?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(window)).await;
    let b = ProcSample::read(cam.pid())?;
    let secs = started.elapsed().as_secs_f64();
    let after = counts();
    let fps = ["WebRTC", "WHEP", "RTSP"]
        .into_iter()
        .zip(before.iter().zip(&after))
        .map(|(name, (x, y))| (name, (y - x) as f64 / secs))
        .collect();
    let row = DoorsRow {
        clients: "1 WebRTC (MQTT) + 1 RTSP + 1 WHEP",
        cpu: a.cpu_percent(&b),
        rss_kb: b.rss_kb,
        fps,
    };
    eprintln!(
        "doors: server {:.1} % CPU, {} kB with one client of each door",
        row.cpu, row.rss_kb
    );
    webrtc.bye().await;
    // DELETE ends the session at once, so later rows (Janus's one-client check) see none.
    let _ = whep::request(cam.http_addr, "DELETE", &location, &[], b"").await;
    player.close().await;
    drop(rtsp);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(row)
}

/// Polls `done` every 50 ms until it holds or `timeout` passes; whether it held.
async fn until(timeout: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// A WHEP client of `rtcam_viewer::whep`: its offer with every candidate in it (no trickle),
/// rtcam's answer applied. Returns the player and the session's resource (`Location`).
async fn whep_client(addr: SocketAddr) -> Result<(WhepPlayer, String)> {
    let mut player = WhepPlayer::new().await?;
    let offer = player.offer(true).await?;
    let created = whep::post_offer(addr, &offer, &[]).await?;
    if created.status != 201 {
        bail!("WHEP offer refused: {} {}", created.status, created.text());
    }
    let location = created
        .header("location")
        .context("WHEP answer without Location")?
        .to_string();
    player.answer(created.text()).await?;
    Ok((player, location))
}

/// An RTSP client in this process: GStreamer's `rtspsrc` (RTP interleaved over the RTSP TCP
/// connection) and `rtph264depay` to whole access units, counted at a `fakesink`.
struct RtspClient {
    pipeline: gst::Pipeline,
    frames: Arc<AtomicUsize>,
}

impl RtspClient {
    fn start(url: &str) -> Result<RtspClient> {
        gst::init()?;
        let description = format!(
            "rtspsrc location={url} latency=0 protocols=tcp ! rtph264depay \
             ! video/x-h264,alignment=au ! fakesink name=sink sync=false"
        );
        let pipeline = gst::parse::launch(&description)?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow::anyhow!("the RTSP client is not a pipeline"))?;
        let frames = Arc::new(AtomicUsize::new(0));
        let counted = frames.clone();
        let pad = pipeline
            .by_name("sink")
            .and_then(|s| s.static_pad("sink"))
            .context("the RTSP client's fakesink has no sink pad")?;
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            counted.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
        pipeline.set_state(gst::State::Playing)?;
        Ok(RtspClient { pipeline, frames })
    }

    /// Access units (frames) received so far.
    fn frames(&self) -> usize {
        self.frames.load(Ordering::Relaxed)
    }
}

impl Drop for RtspClient {
    fn drop(&mut self) {
        // Null sends TEARDOWN and closes the connection.
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
