// Viewer page: finds the camera on the MQTT broker, negotiates a receive-only
// WebRTC session with it (signalling protocol v1, see protocol.js) and keeps
// retrying until video plays. `mqtt` is the global from vendor/mqtt.min.js.
// The control bar and stats overlay (panel.js) ride on each session's
// `control` data channel.

import {
  PROTOCOL_VERSION,
  backoffDelay,
  byeMessage,
  candidateMessage,
  encodePublishQos0,
  errorHint,
  isEndOfCandidates,
  newSid,
  offerMessage,
  tokenFrom,
  tokenQuery,
  parseOutMessage,
  parseStatus,
  peerConfiguration,
  iceServersStale,
  normalizeIceServers,
  resolveSettings,
  sessionTopics,
  statusTopic,
} from './protocol.js';
import { CONTROL_LABEL } from './control.js';
import { createPanel } from './panel.js';
import { talkBlocker, viewingFeatures } from './viewing.js';

const STATUS_WAIT_MS = 3000;
const ANSWER_TIMEOUT_MS = 15000;
// Matches the camera's own limit for a session that never connects.
const CONNECT_TIMEOUT_MS = 30000;
// Chrome reports `disconnected` on short network hiccups and often recovers by
// itself; only a lasting one is treated as a failure.
const DISCONNECTED_GRACE_MS = 8000;
const LOG_LIMIT = 200;

const el = {
  title: document.getElementById('title'),
  status: document.getElementById('status'),
  hint: document.getElementById('hint'),
  facts: document.getElementById('facts'),
  log: document.getElementById('log'),
  video: document.getElementById('video'),
  unmute: document.getElementById('unmute'),
  talk: document.getElementById('talk'),
  talkNote: document.getElementById('talk-note'),
  stage: document.querySelector('.stage'),
  fullscreen: document.getElementById('fullscreen'),
  pip: document.getElementById('pip'),
};

// Read by tests (tests/browser/view.mjs); kept current at every change.
const rtcam = {
  pc: null,
  state: 'connecting',
  sid: null,
  lastError: null,
  statusText: '',
  deviceId: null,
  brokerUrl: null,
  protocol: PROTOCOL_VERSION,
};
window.rtcam = rtcam;

// This page's session id, fixed for its lifetime and also its MQTT client id: a broker with
// rtcam's ACL (packaging/mosquitto/) lets a client use only the session named by its client id.
// Successive sessions from this page reuse it; a new offer on it replaces the old session.
const pageSid = newSid();

let settings = null;
let panel = null;
let client = null;
let brokerUp = false;
let everConnected = false;
let deviceOnline = null; // null until the retained status arrives
let cameraLost = null; // null until a status names the camera's state
let statusTimer = null;
let session = null;
let retryTimer = null;
let failures = 0;
let unloading = false;

function log(text) {
  const now = new Date();
  const stamp = now.toTimeString().slice(0, 8) + '.' + String(now.getMilliseconds()).padStart(3, '0');
  const li = document.createElement('li');
  li.textContent = `${stamp} ${text}`;
  el.log.append(li);
  while (el.log.childElementCount > LOG_LIMIT) el.log.firstElementChild.remove();
  el.log.scrollTop = el.log.scrollHeight;
  console.log(`[rtcam] ${text}`);
}

function setState(state, text, hint = '') {
  rtcam.state = state;
  rtcam.statusText = text;
  document.body.dataset.state = state;
  el.status.textContent = text;
  el.hint.textContent = hint;
  el.hint.hidden = !hint;
  if (text !== el.status.dataset.logged) {
    el.status.dataset.logged = text;
    log(text);
  }
}

function setFact(name, value) {
  let dd = el.facts.querySelector(`dd[data-fact="${name}"]`);
  if (!dd) {
    const dt = document.createElement('dt');
    dt.textContent = name;
    dd = document.createElement('dd');
    dd.dataset.fact = name;
    el.facts.append(dt, dd);
  }
  dd.textContent = value ?? '—';
}

// `message` is what went wrong (kept verbatim in lastError for tests); `next`
// says what the page does about it and is only shown.
function fail(code, message, hint = '', next = '') {
  rtcam.lastError = { code, message };
  const sentence = /[.!?…]$/.test(message) ? message : `${message}.`;
  setState('error', next ? `${sentence} ${next}` : sentence, hint);
}

// ---------------------------------------------------------------- settings

async function fetchConfig() {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 5000);
  try {
    const res = await fetch(`config.json${tokenQuery(tokenFrom(location.search))}`, {
      cache: 'no-store',
      signal: abort.signal,
    });
    if (res.status === 401) {
      log('this camera needs a viewing link with a token (?token=…)');
      return null;
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    return await res.json();
  } catch (err) {
    log(`config.json not available (${err.message}); relying on the address parameters`);
    return null;
  } finally {
    clearTimeout(timer);
  }
}

// ------------------------------------------------------------------ broker

function connectBroker() {
  const url = settings.brokerUrl;
  setState('connecting', `Connecting to broker ${url}…`);
  client = mqtt.connect(url, {
    protocolVersion: 4,
    clientId: pageSid,
    clean: true,
    keepalive: 30,
    connectTimeout: 8000,
    reconnectPeriod: 2000,
    // Subscriptions are renewed by hand on each connect so that a half-done
    // negotiation is dropped rather than silently resumed.
    resubscribe: false,
  });

  client.on('connect', onBrokerConnect);
  client.on('close', onBrokerClose);
  client.on('error', (err) => {
    log(`broker error: ${err.message}`);
    // A refused CONNACK (bad credentials, banned client id) will not fix itself
    // by retrying, so it gets its own message instead of "unreachable".
    if (typeof err.code === 'number') {
      fail('broker_refused', `The broker at ${url} refused the connection: ${err.message}`);
    }
  });
  client.on('message', onMessage);
}

function onBrokerConnect() {
  brokerUp = true;
  everConnected = true;
  log(`connected to broker ${settings.brokerUrl}`);
  if (rtcam.lastError?.code?.startsWith('broker_')) rtcam.lastError = null;

  const topic = statusTopic(settings.prefix, settings.deviceId);
  client.subscribe(topic, { qos: 1 }, (err) => {
    if (err) log(`subscribing to ${topic} failed: ${err.message}`);
  });
  clearTimeout(statusTimer);
  statusTimer = setTimeout(onStatusTimeout, STATUS_WAIT_MS);

  if (session && isLive(session)) {
    // Video flows peer to peer and survived the broker outage; only the
    // device's bye needs a listener again.
    client.subscribe(session.topics.out, { qos: 1 });
    setState('live', 'Live');
    return;
  }
  setState('waiting', `Waiting for camera ${settings.deviceId}…`);
}

function onBrokerClose() {
  const wasUp = brokerUp;
  brokerUp = false;
  deviceOnline = null;
  clearTimeout(statusTimer);
  if (unloading) return;

  if (session && isLive(session)) {
    if (wasUp) setState('live', 'Live (lost connection to the broker, reconnecting…)');
    return;
  }
  if (session) endSession(session, { sendBye: false });

  if (everConnected) {
    setState('connecting', 'Lost connection to the broker, reconnecting…', `Broker: ${settings.brokerUrl}`);
  } else if (rtcam.lastError?.code !== 'broker_refused') {
    fail(
      'broker_unreachable',
      `Cannot reach the broker at ${settings.brokerUrl}.`,
      'Check that the camera (or the broker) is running and reachable from this device.',
      'Retrying…',
    );
  }
}

function onMessage(topic, payload) {
  if (topic === statusTopic(settings.prefix, settings.deviceId)) {
    onStatus(payload);
  } else if (session && topic === session.topics.out) {
    const s = session;
    onSessionMessage(s, payload).catch((err) => {
      log(`handling a camera message failed: ${err.message}`);
      failSession(s, 'internal', `The page could not handle the camera's reply: ${err.message}`);
    });
  }
}

// ------------------------------------------------------------------ device

function onStatus(payload) {
  clearTimeout(statusTimer);
  const status = parseStatus(payload);
  const online = status.state === 'online';
  const changed = deviceOnline !== online;
  const restarted = online && deviceOnline === false;
  deviceOnline = online;
  setFact('Camera status', status.state);
  panel?.cameraStatus(status);
  if (typeof status.version === 'string') setFact('Camera version', status.version);
  // "lost": unplugged or failing. The session stays up and video resumes on its own when the
  // camera is back, so the page only says so.
  if (typeof status.camera === 'string') {
    const lost = status.camera === 'lost';
    if (cameraLost !== null && lost !== cameraLost) {
      log(lost ? 'the camera was lost; video resumes when it is back' : 'the camera is back');
    }
    cameraLost = lost;
    setFact('Camera device', lost ? 'lost, waiting for it to come back' : 'ok');
  }
  if (changed) log(`camera ${settings.deviceId} is ${online ? 'online' : 'offline'}`);

  if (online) {
    // A camera that went offline and came back has forgotten every session,
    // so a video that still looks connected is about to die anyway.
    if (restarted && session) endSession(session, { sendBye: false });
    if (!session) maybeStart();
    return;
  }
  if (session && isLive(session)) {
    log('camera reports offline while video still plays; keeping the video');
    return;
  }
  if (session) endSession(session, { sendBye: false });
  showOffline(status.state === 'unknown' ? 'not found' : 'offline');
}

function onStatusTimeout() {
  if (deviceOnline === null && !session) showOffline('not found');
}

function showOffline(how) {
  const id = settings.deviceId;
  if (how === 'not found') {
    setState('offline', `Camera ${id} was not found on the broker; waiting for it to come online…`,
      'It may be switched off, or the camera id in the address may be wrong.');
  } else {
    setState('offline', `Camera ${id} is offline; waiting for it to come back…`);
  }
}

function maybeStart() {
  if (session || retryTimer || !brokerUp || unloading) return;
  if (deviceOnline === true) {
    startSession().catch((err) => {
      log(`session setup failed: ${err.message}`);
      if (session) failSession(session, 'internal', `Could not start the video session: ${err.message}`);
    });
  } else if (deviceOnline === false) {
    showOffline('offline');
  } else {
    setState('waiting', `Waiting for camera ${settings.deviceId}…`);
  }
}

// ----------------------------------------------------------------- session

function isLive(s) {
  return s.pc?.connectionState === 'connected';
}

function subscribe(topic) {
  return new Promise((resolve, reject) => {
    client.subscribe(topic, { qos: 1 }, (err, granted) => {
      if (err) reject(err);
      else if (granted?.some((g) => g.qos === 128)) reject(new Error(`broker refused subscription to ${topic}`));
      else resolve();
    });
  });
}

function publish(s, msg) {
  client.publish(s.topics.in, JSON.stringify(msg), { qos: 1 }, (err) => {
    if (err) log(`sending ${msg.type} failed: ${err.message}`);
  });
}

function createPeerConnection() {
  const config = peerConfiguration(settings);
  rtcam.iceTransportPolicy = config.iceTransportPolicy;
  try {
    return new RTCPeerConnection(config);
  } catch (err) {
    // A malformed ice_servers entry must not keep the page from working on a
    // local network, where no STUN/TURN is needed.
    log(`ice_servers rejected (${err.message}); continuing without them`);
    return new RTCPeerConnection({ iceTransportPolicy: config.iceTransportPolicy });
  }
}

// TURN credentials the camera derives expire (its turn_ttl_secs); a page left
// open longer fetches fresh ones before its next session.
async function refreshIceServers() {
  if (!iceServersStale(settings, Date.now() / 1000)) return;
  const config = await fetchConfig();
  if (!config) return;
  settings.iceServers = normalizeIceServers(config.ice_servers);
  settings.iceServersExpireAt = Number.isInteger(config.ice_servers_expire_at) ? config.ice_servers_expire_at : null;
  log('fetched fresh TURN credentials');
}

async function startSession() {
  const sid = pageSid;
  const s = {
    sid,
    topics: sessionTopics(settings.prefix, settings.deviceId, sid),
    pc: null,
    mid: '0',
    offerSent: false,
    answered: false,
    localQueue: [],
    remoteQueue: [],
    timers: new Set(),
  };
  session = s;
  rtcam.sid = sid;
  setFact('Session', sid);
  setState('negotiating', `Negotiating with camera ${settings.deviceId}…`);

  // The device may answer immediately; listening first means the answer
  // cannot arrive before there is a subscription to deliver it.
  await subscribe(s.topics.out);
  if (session !== s) return;
  await refreshIceServers();
  if (session !== s) return;

  const pc = createPeerConnection();
  s.pc = pc;
  rtcam.pc = pc;
  const transceiver = pc.addTransceiver('video', { direction: 'recvonly' });
  // After the video, so the video keeps the first m-line (and its mid) the
  // candidates refer to. sendrecv only with talkback: the microphone is
  // attached later, by the talk button, without renegotiating.
  s.audio = settings.audio.enabled
    ? pc.addTransceiver('audio', { direction: settings.audio.talkback ? 'sendrecv' : 'recvonly' })
    : null;
  // Created before the offer so the offer carries the data channel's
  // m-line; the camera only accepts channels the viewer opens.
  panel.attach({ pc, dc: pc.createDataChannel(CONTROL_LABEL), sid });

  pc.ontrack = (e) => {
    // rtcam puts its video and sound in one stream; the one <video> plays both.
    const current = el.video.srcObject;
    if (e.streams[0]) {
      if (current !== e.streams[0]) el.video.srcObject = e.streams[0];
    } else if (current instanceof MediaStream) {
      current.addTrack(e.track);
    } else {
      el.video.srcObject = new MediaStream([e.track]);
    }
    el.video.play().catch(() => {});
  };
  pc.onicecandidate = (e) => {
    const msg = candidateMessage(e.candidate, transceiver.mid ?? s.mid);
    if (s.offerSent) publish(s, msg);
    else s.localQueue.push(msg);
  };
  pc.onconnectionstatechange = () => onConnectionState(s);

  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  if (session !== s) return;
  s.mid = transceiver.mid ?? '0';
  publish(s, offerMessage(pc.localDescription.sdp, settings.tokenInOffers ? settings.token : null));
  // A User Timing mark, so time to first frame can be read from outside the page
  // (rtcam-bench, a browser's performance panel).
  performance.mark('rtcam:offer-sent');
  s.offerSent = true;
  for (const msg of s.localQueue.splice(0)) publish(s, msg);
  log(`offer sent (session ${sid})`);

  addTimer(s, ANSWER_TIMEOUT_MS, () => {
    if (!s.answered) failSession(s, 'no_answer', 'The camera did not answer the video request.');
  });
  addTimer(s, CONNECT_TIMEOUT_MS, () => {
    if (!isLive(s) && s.pc.connectionState !== 'disconnected') {
      failSession(s, 'connect_timeout', 'The video connection could not be set up in time.',
        'The browser and the camera may not be able to reach each other directly on this network.');
    }
  });
}

function addTimer(s, ms, fn) {
  const t = setTimeout(() => {
    s.timers.delete(t);
    if (session === s) fn();
  }, ms);
  s.timers.add(t);
  return t;
}

async function onSessionMessage(s, payload) {
  const parsed = parseOutMessage(payload);
  if (!parsed.ok) {
    log(`ignored a message from the camera: ${parsed.reason}`);
    return;
  }
  const msg = parsed.msg;
  switch (msg.type) {
    case 'answer':
      if (s.answered || !s.pc) {
        log('ignored a second answer');
        return;
      }
      s.answered = true;
      try {
        await s.pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
      } catch (err) {
        failSession(s, 'bad_answer', `The camera's answer could not be used: ${err.message}`);
        return;
      }
      if (session !== s) return;
      log('answer applied');
      for (const c of s.remoteQueue.splice(0)) await addRemoteCandidate(s, c);
      if (!isLive(s)) setState('negotiating', 'Connecting video…');
      return;
    case 'candidate':
      // Candidates can outrun the answer; adding them before the remote
      // description exists would be rejected by the browser.
      if (!s.answered || !s.pc.remoteDescription) s.remoteQueue.push(msg);
      else await addRemoteCandidate(s, msg);
      return;
    case 'error':
      failSession(s, msg.code, msg.message || `The camera reported ${msg.code}.`, errorHint(msg.code), {
        sendBye: true,
      });
      return;
    case 'bye':
      failSession(s, 'bye', `The camera ended the session${msg.reason ? `: ${msg.reason}` : '.'}`, '', {
        sendBye: false,
      });
      return;
  }
}

async function addRemoteCandidate(s, msg) {
  const init = { candidate: msg.candidate, sdpMid: msg.sdpMid ?? s.mid, sdpMLineIndex: msg.sdpMLineIndex ?? 0 };
  try {
    await s.pc.addIceCandidate(init);
  } catch (err) {
    // An unusable candidate (or an end-of-candidates marker the browser does
    // not accept) only removes one path; the others may still connect.
    if (!isEndOfCandidates(msg)) log(`candidate rejected: ${err.message}`);
  }
}

function onConnectionState(s) {
  if (session !== s) return;
  const state = s.pc.connectionState;
  log(`video connection ${state}`);
  switch (state) {
    case 'connected':
      failures = 0;
      rtcam.lastError = null;
      clearTimeout(s.graceTimer);
      setState('live', brokerUp ? 'Live' : 'Live (lost connection to the broker, reconnecting…)');
      return;
    case 'disconnected':
      // The camera already said it is gone; waiting out the grace period
      // would only delay the honest message.
      if (deviceOnline === false) {
        endSession(s, { sendBye: false });
        showOffline('offline');
        return;
      }
      setState('negotiating', 'Video connection interrupted, trying to recover…');
      clearTimeout(s.graceTimer);
      s.graceTimer = addTimer(s, DISCONNECTED_GRACE_MS, () => {
        if (s.pc.connectionState !== 'connected') failSession(s, 'connection_lost', 'The video connection was lost.');
      });
      return;
    case 'failed':
      failSession(s, 'connection_failed', 'The video connection failed.',
        'The browser and the camera could not find a network path to each other.');
      return;
  }
}

function endSession(s, { sendBye }) {
  if (session !== s) return;
  session = null;
  for (const t of s.timers) clearTimeout(t);
  s.timers.clear();
  if (brokerUp && client) {
    if (sendBye && s.offerSent) publish(s, byeMessage());
    client.unsubscribe(s.topics.out);
  }
  panel.detach();
  if (s.pc) {
    s.pc.onconnectionstatechange = null;
    s.pc.onicecandidate = null;
    s.pc.ontrack = null;
    s.pc.close();
  }
  rtcam.pc = null;
  rtcam.sid = null;
  el.video.srcObject = null;
  stopTalking();
}

// ------------------------------------------------------------------- sound

// Autoplay rules start the video muted; one click turns the sound on.
el.unmute.addEventListener('click', () => {
  el.video.muted = !el.video.muted;
  el.unmute.setAttribute('aria-pressed', String(!el.video.muted));
  el.unmute.textContent = el.video.muted ? 'Unmute' : 'Mute';
  el.video.play().catch(() => {});
});

let microphone = null;

// Talk toggles the microphone on the session's audio sender. The camera plays
// one viewer at a time: while someone else talks, this one is not heard.
el.talk.addEventListener('click', async () => {
  if (microphone) {
    stopTalking();
    return;
  }
  const sender = session?.audio?.sender;
  if (!sender) return;
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    if (session?.audio?.sender !== sender) {
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    microphone = stream;
    await sender.replaceTrack(stream.getAudioTracks()[0]);
    el.talk.setAttribute('aria-pressed', 'true');
    el.talk.textContent = 'Stop talking';
    rtcam.talking = true;
    log('talking: the camera plays your microphone');
  } catch (err) {
    log(`microphone not available: ${err.message}`);
  }
});

function stopTalking() {
  if (!microphone) return;
  microphone.getTracks().forEach((t) => t.stop());
  microphone = null;
  session?.audio?.sender.replaceTrack(null).catch(() => {});
  el.talk.setAttribute('aria-pressed', 'false');
  el.talk.textContent = 'Talk';
  rtcam.talking = false;
}

// Shows why Talk cannot work here, and disables it, instead of letting the
// microphone request fail into the log.
function explainTalk(httpsPort) {
  const blocker = talkBlocker({
    secure: window.isSecureContext,
    hasMicrophoneApi: typeof navigator.mediaDevices?.getUserMedia === 'function',
    location,
    httpsPort,
  });
  el.talk.disabled = !!blocker;
  el.talkNote.hidden = !blocker;
  el.talkNote.replaceChildren();
  if (!blocker) return;
  el.talkNote.append(blocker.text);
  if (blocker.url) {
    const a = document.createElement('a');
    a.href = blocker.url;
    a.textContent = blocker.url;
    el.talkNote.append(' ', a);
  }
}

// ------------------------------------------------------------------ viewing

// Fullscreen takes the stage, not just the video, so the stats overlay and the
// paused notice come along.
function setUpViewing() {
  const can = viewingFeatures(document, el.video);
  el.fullscreen.hidden = !can.fullscreen;
  el.pip.hidden = !can.pip;
  const toggleFullscreen = () => {
    const request = document.fullscreenElement ? document.exitFullscreen() : el.stage.requestFullscreen();
    request.catch((err) => log(`fullscreen refused: ${err.message}`));
  };
  el.fullscreen.addEventListener('click', toggleFullscreen);
  // The stage covers the button while fullscreen; a double click on the picture
  // (or Esc, or a phone's back gesture) leaves, as in video players.
  if (can.fullscreen) el.stage.addEventListener('dblclick', toggleFullscreen);
  document.addEventListener('fullscreenchange', () => {
    const on = document.fullscreenElement === el.stage;
    el.fullscreen.setAttribute('aria-pressed', String(on));
    el.fullscreen.textContent = on ? 'Exit fullscreen' : 'Fullscreen';
  });
  el.pip.addEventListener('click', () => {
    const request = document.pictureInPictureElement
      ? document.exitPictureInPicture()
      : el.video.requestPictureInPicture();
    request.catch((err) => log(`picture-in-picture refused: ${err.message}`));
  });
  const pipState = (on) => {
    el.pip.setAttribute('aria-pressed', String(on));
    el.pip.textContent = on ? 'Exit picture-in-picture' : 'Picture-in-picture';
  };
  el.video.addEventListener('enterpictureinpicture', () => pipState(true));
  el.video.addEventListener('leavepictureinpicture', () => pipState(false));
  // Browsers refuse picture-in-picture until the video knows its size.
  el.video.addEventListener('loadedmetadata', () => {
    el.pip.disabled = false;
  });
  el.video.addEventListener('emptied', () => {
    el.pip.disabled = !document.pictureInPictureElement;
  });
}

setUpViewing();

function failSession(s, code, message, hint = '', { sendBye = true } = {}) {
  if (session !== s) return;
  endSession(s, { sendBye });
  const delay = backoffDelay(failures++);
  fail(code, message, hint, `Retrying in ${Math.round(delay / 1000)} s…`);
  retryTimer = setTimeout(() => {
    retryTimer = null;
    maybeStart();
  }, delay);
}

// -------------------------------------------------------------- page events

el.video.addEventListener('resize', () => {
  setFact('Video', `${el.video.videoWidth}×${el.video.videoHeight}`);
});

window.addEventListener('pagehide', () => {
  unloading = true;
  if (!session || !brokerUp) return;
  // Frees the camera's viewer slot now instead of after its ICE timeout.
  // The page is torn down before the client library's deferred write runs,
  // so the packet goes straight onto its WebSocket when that is reachable.
  const socket = client.stream?.socket;
  const payload = JSON.stringify(byeMessage());
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(encodePublishQos0(session.topics.in, payload));
  } else {
    client.publish(session.topics.in, payload, { qos: 0 });
  }
});

window.addEventListener('pageshow', (e) => {
  // Back/forward cache restores a page whose sockets and peer connection are gone.
  if (e.persisted) location.reload();
});

async function main() {
  if (typeof mqtt === 'undefined') {
    fail('missing_mqtt', 'The page is incomplete: vendor/mqtt.min.js did not load.');
    return;
  }
  const config = await fetchConfig();
  const resolved = resolveSettings(config, location.search, location);
  if (!resolved.ok) {
    fail('config', resolved.error);
    return;
  }
  settings = resolved.settings;
  panel = createPanel({ settings, rtcam, log, setFact });
  rtcam.deviceId = settings.deviceId;
  rtcam.brokerUrl = settings.brokerUrl;

  document.title = `${settings.deviceId} · rtcam`;
  el.title.textContent = settings.deviceId;
  setFact('Camera', settings.deviceId);
  setFact('Broker', settings.brokerUrl);
  setFact('Topic prefix', settings.prefix);
  if (settings.version) setFact('Server version', settings.version);
  if (settings.relayOnly) setFact('ICE', 'relay only (TURN)');
  setFact('Protocol', `v${PROTOCOL_VERSION}`);
  el.unmute.hidden = !settings.audio.enabled;
  el.talk.hidden = !settings.audio.talkback;
  if (settings.audio.talkback) explainTalk(Number.isInteger(config?.https_port) ? config.https_port : null);

  connectBroker();
}

main().catch((err) => {
  console.error(err);
  fail('internal', `The page failed to start: ${err.message}`);
});
