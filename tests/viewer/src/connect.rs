//! Setting a viewer up: MQTT, rtcam's ICE servers if asked for, the peer connection and its
//! decoders, the offer (trickled or whole), the answer; then the tasks that keep it going.

use crate::decode::{self, Decoder, VideoSettings};
use crate::mqtt::{self, candidate_init, is_candidate, publish, Inbox};
use crate::peer::{self, Gathered, Peer};
use crate::seen::Shared;
use crate::{channel, pli, tracks, Viewer, ViewerError, ViewerOptions, STEP};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rumqttc::AsyncClient;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{
    PeerConnection, RTCIceServer, RTCPeerConnectionState, RTCSessionDescription,
};

/// Tasks spawned so far, aborted if setup fails.
struct Spawned(Vec<JoinHandle<()>>);

impl Drop for Spawned {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// What setup has made so far.
struct Setup {
    opts: ViewerOptions,
    step: Duration,
    sid: String,
    in_topic: String,
    client: AsyncClient,
    inbox: Inbox,
    messages: Arc<Mutex<Vec<Value>>>,
    shared: Arc<Shared>,
    spawned: Spawned,
}

pub(crate) async fn run(
    broker: (&str, u16),
    root: &str,
    opts: ViewerOptions,
) -> Result<Viewer, ViewerError> {
    let sid = format!(
        "{}{:016x}",
        opts.sid_prefix.unwrap_or("t"),
        rand::random::<u64>()
    );
    let step = opts.step_timeout.unwrap_or(STEP);
    let out_topic = format!("{root}/session/{sid}/out");
    let session = mqtt::connect(broker, &sid, &out_topic, opts.token.as_deref(), step).await?;
    let mut setup = Setup {
        in_topic: format!("{root}/session/{sid}/in"),
        opts,
        step,
        sid,
        client: session.client,
        inbox: session.inbox,
        messages: Arc::default(),
        shared: Arc::default(),
        spawned: Spawned(vec![session.task]),
    };
    let ice_servers = setup.ice_servers().await?;
    let peer = peer::build(&setup.opts, ice_servers, &setup.shared).await?;
    let pc = peer.pc.clone();
    match setup.negotiate(peer).await {
        Ok(viewer) => Ok(viewer),
        Err(e) => {
            let _ = pc.close().await;
            Err(e)
        }
    }
}

/// The decoders and where the tracks' packets go.
struct Media {
    decoders: Vec<Decoder>,
    video_track: pli::VideoTrack,
}

impl Setup {
    /// The options' ICE servers, and rtcam's if asked for.
    async fn ice_servers(&mut self) -> Result<Vec<RTCIceServer>, ViewerError> {
        let mut servers = self.opts.ice_servers.clone();
        if !self.opts.ask_ice_servers {
            return Ok(servers);
        }
        let ask = json!({"type":"ice_servers","token":self.offered_token()});
        publish(&self.client, &self.in_topic, ask).await?;
        let reply = tokio::time::timeout(self.step, self.inbox.recv())
            .await
            .map_err(|_| ViewerError::Timeout("ICE servers from rtcam", self.step))?
            .ok_or(ViewerError::Disconnected)?;
        self.messages.lock().unwrap().push(reply.clone());
        if reply["type"] != "ice_servers" {
            return Err(ViewerError::Refused(reply));
        }
        for s in reply["ice_servers"].as_array().into_iter().flatten() {
            servers.push(RTCIceServer {
                urls: serde_json::from_value(s["urls"].clone())?,
                username: s["username"].as_str().unwrap_or_default().into(),
                credential: s["credential"].as_str().unwrap_or_default().into(),
            });
        }
        Ok(servers)
    }

    /// The token an offer carries (none when it goes only as the MQTT password).
    fn offered_token(&self) -> Option<String> {
        self.opts
            .token
            .clone()
            .filter(|_| !self.opts.token_at_connect_only)
    }

    /// Offers, waits for the answer, and starts the tasks that keep the viewer going.
    async fn negotiate(mut self, peer: Peer) -> Result<Viewer, ViewerError> {
        let Peer {
            pc,
            candidates,
            tracks,
            gathered,
            state,
        } = peer;
        peer::add_recvonly(&*pc, RtpCodecKind::Video).await?;
        if self.opts.audio {
            peer::add_recvonly(&*pc, RtpCodecKind::Audio).await?;
        }
        let control = if self.opts.control_channel {
            Some(pc.create_data_channel("control", None).await?)
        } else {
            None
        };
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer).await?;
        let media = self.media(tracks)?;
        self.offer(&pc, candidates).await?;
        self.answer(&*pc).await?;
        Ok(self.finish(pc, media, control, (gathered, state)))
    }

    /// The decoders the options ask for, and the tasks that feed them.
    fn media(&mut self, tracks: peer::Tracks) -> Result<Media, ViewerError> {
        let started = Instant::now();
        let video_track = pli::VideoTrack::default();
        let mut decoders = Vec::new();
        let (mut video, mut audio) = (None, None);
        if !self.opts.no_decode {
            let (pli_tx, pli_rx) = mpsc::unbounded_channel();
            let settings = VideoSettings {
                vp8: self.opts.vp8_only,
                keyframe_requests: self.opts.recover.then_some(pli_tx),
                stamps: self.opts.stamps,
            };
            let decoder = decode::video(self.shared.clone(), started, settings)?;
            video = Some(decoder.appsrc.clone());
            decoders.push(decoder);
            if self.opts.recover {
                let pacer = pli::spawn(pli_rx, video_track.clone(), self.shared.clone());
                self.spawned.0.push(pacer);
            }
            if self.opts.audio {
                let decoder = decode::audio(self.shared.clone())?;
                audio = Some(decoder.appsrc.clone());
                decoders.push(decoder);
            }
        }
        let audio_wanted = audio.is_some();
        let sinks = tracks::Sinks {
            shared: self.shared.clone(),
            video,
            audio,
            decoding: !self.opts.no_decode,
            video_track: video_track.clone(),
        };
        self.spawned
            .0
            .push(tracks::spawn(tracks, sinks, audio_wanted));
        Ok(Media {
            decoders,
            video_track,
        })
    }

    /// Publishes the offer: with every candidate in it (`no_trickle`), or at once with the
    /// candidates trickled after it. The stages' clock starts as it goes out.
    async fn offer(
        &mut self,
        pc: &Arc<dyn PeerConnection>,
        mut candidates: peer::Candidates,
    ) -> Result<(), ViewerError> {
        let token = self.offered_token();
        if self.opts.no_trickle {
            // Gathering on loopback is quick; wait for it so the offer carries every candidate.
            let mut gathered = Vec::new();
            while let Ok(Some(c)) =
                tokio::time::timeout(Duration::from_millis(500), candidates.recv()).await
            {
                gathered.push(c);
            }
            if gathered.is_empty() {
                return Err(ViewerError::NoCandidates);
            }
            let sdp = mqtt::add_candidates(&local_sdp(&**pc).await?, &gathered);
            self.shared.start_clock();
            let offer = json!({"type":"offer","sdp":sdp,"token":token});
            return publish(&self.client, &self.in_topic, offer).await;
        }
        let sdp = local_sdp(&**pc).await?;
        self.shared.start_clock();
        let offer = json!({"type":"offer","sdp":sdp,"token":token});
        publish(&self.client, &self.in_topic, offer).await?;
        let (client, topic) = (self.client.clone(), self.in_topic.clone());
        self.spawned.0.push(tokio::spawn(async move {
            while let Some(c) = candidates.recv().await {
                let msg = json!({"type":"candidate","candidate":c.candidate,"sdpMid":"0","sdpMLineIndex":0});
                if publish(&client, &topic, msg).await.is_err() {
                    break;
                }
            }
        }));
        Ok(())
    }

    /// Waits for rtcam's answer and applies it; candidates before it are held until then.
    async fn answer(&mut self, pc: &dyn PeerConnection) -> Result<(), ViewerError> {
        let mut held = Vec::new();
        let deadline = tokio::time::Instant::now() + self.step;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.inbox.recv())
                .await
                .map_err(|_| ViewerError::Timeout("answer from rtcam", self.step))?
                .ok_or(ViewerError::Disconnected)?;
            self.messages.lock().unwrap().push(msg.clone());
            match msg["type"].as_str() {
                Some("answer") => {
                    self.shared.mark(|s| &mut s.answer);
                    let sdp = msg["sdp"].as_str().unwrap_or_default().to_string();
                    if self.opts.playout_delay {
                        let id = peer::extmap_id(&sdp, peer::PLAYOUT_DELAY_URI);
                        self.shared.set_playout_delay_id(id);
                    }
                    pc.set_remote_description(RTCSessionDescription::answer(sdp)?)
                        .await?;
                    for c in held.drain(..) {
                        let _ = pc.add_ice_candidate(c).await;
                    }
                    return Ok(());
                }
                Some("candidate") if is_candidate(&msg) => held.push(candidate_init(&msg)),
                Some("candidate") => {}
                _ => return Err(ViewerError::Refused(msg)),
            }
        }
    }

    /// The viewer, with tasks for rtcam's later candidates and the control channel.
    fn finish(
        mut self,
        pc: Arc<dyn PeerConnection>,
        media: Media,
        control: Option<Arc<dyn DataChannel>>,
        (gathered, state): (
            Arc<Mutex<Gathered>>,
            watch::Receiver<RTCPeerConnectionState>,
        ),
    ) -> Viewer {
        let channel_messages = Arc::new(Mutex::new(Vec::new()));
        let (open, channel_open) = watch::channel(false);
        if let Some(dc) = control.clone() {
            let task = channel::spawn(dc, channel_messages.clone(), open);
            self.spawned.0.push(task);
        }
        let (pc2, messages) = (pc.clone(), self.messages.clone());
        let mut inbox = self.inbox;
        self.spawned.0.push(tokio::spawn(async move {
            while let Some(msg) = inbox.recv().await {
                messages.lock().unwrap().push(msg.clone());
                if is_candidate(&msg) {
                    let _ = pc2.add_ice_candidate(candidate_init(&msg)).await;
                }
            }
        }));
        Viewer {
            sid: std::mem::take(&mut self.sid),
            pc,
            client: self.client.clone(),
            in_topic: std::mem::take(&mut self.in_topic),
            shared: self.shared.clone(),
            messages: self.messages.clone(),
            _decoders: media.decoders,
            tasks: std::mem::take(&mut self.spawned.0),
            control,
            video_track: media.video_track,
            channel_messages,
            channel_open,
            gathered,
            state,
        }
    }
}

/// The local description's SDP (set before the offer goes out).
async fn local_sdp(pc: &dyn PeerConnection) -> Result<String, ViewerError> {
    pc.local_description()
        .await
        .map(|d| d.sdp)
        .ok_or(ViewerError::NoCandidates)
}
