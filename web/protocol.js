// Signalling protocol v1 helpers shared by the viewer page and its node tests.
// Nothing here touches the DOM, the network or WebRTC, so it runs unchanged
// under `node --test web/`.

export const PROTOCOL_VERSION = 1;
export const DEFAULT_PREFIX = 'rtcam';

export const SID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
const SID_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

export const ERROR_CODES = Object.freeze([
  'bad_json',
  'bad_message',
  'bad_sdp',
  'no_video_codec',
  'too_many_sessions',
  'unknown_session',
  'payload_too_large',
  'internal',
]);

const HINTS = {
  bad_json: 'The camera could not read a message from this page. Reloading the page usually helps.',
  bad_message: 'The camera did not understand a message from this page; the page and the camera may be different versions.',
  bad_sdp: 'The camera could not use the video offer from this browser.',
  no_video_codec: 'This browser offers no video format the camera can send (it needs H.264 or VP8).',
  too_many_sessions: 'The camera is serving its maximum number of viewers; try again later.',
  unknown_session: 'The camera no longer knows this viewing session (it may have restarted); starting a new one.',
  payload_too_large: 'A message from this page was too large for the camera.',
  internal: 'The camera hit an internal problem; it may recover on its own.',
};

/** Plain-words advice for a protocol error code; unknown codes still get a sentence. */
export function errorHint(code) {
  return HINTS[code] ?? 'The camera reported an unexpected problem.';
}

function defaultRandomBytes(n) {
  const bytes = new Uint8Array(n);
  globalThis.crypto.getRandomValues(bytes);
  return bytes;
}

/** A fresh session id: `length` characters of [A-Za-z0-9]. */
export function newSid(length = 16, randomBytes = defaultRandomBytes) {
  if (!Number.isInteger(length) || length < 1 || length > 64) {
    throw new RangeError('sid length must be 1..64');
  }
  let sid = '';
  // Bytes >= 248 are skipped so each of the 62 symbols is equally likely;
  // a plain modulo would favour the first eight.
  while (sid.length < length) {
    for (const b of randomBytes(length * 2)) {
      if (b < 248) sid += SID_ALPHABET[b % 62];
      if (sid.length === length) break;
    }
  }
  return sid;
}

export function isValidSid(sid) {
  return typeof sid === 'string' && SID_PATTERN.test(sid);
}

// A single topic level: the MQTT wildcards or a separator inside a device id
// would make the page listen to (or talk to) other devices' topics.
export function isValidDeviceId(id) {
  return typeof id === 'string' && id.length > 0 && id.length <= 128 && !/[/+#\u0000]/.test(id);
}

// The prefix may span several levels ("site/cams") but never wildcards or empty levels.
export function isValidPrefix(prefix) {
  return (
    typeof prefix === 'string' &&
    prefix.length > 0 &&
    !/[+#\u0000]/.test(prefix) &&
    prefix.split('/').every((level) => level.length > 0)
  );
}

export function deviceRoot(prefix, deviceId) {
  return `${prefix}/${deviceId}`;
}

export function statusTopic(prefix, deviceId) {
  return `${deviceRoot(prefix, deviceId)}/status`;
}

export function sessionTopics(prefix, deviceId, sid) {
  const base = `${deviceRoot(prefix, deviceId)}/session/${sid}`;
  return { in: `${base}/in`, out: `${base}/out` };
}

/** Same-origin broker endpoint, used when config.json has no broker_url. A viewer
 * token (cameras with [auth] secret) goes along: /mqtt refuses connections without one. */
export function defaultBrokerUrl(location, token = null) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/mqtt${tokenQuery(token)}`;
}

/** `?token=…` for the camera's own HTTP endpoints, or nothing when there is no token. */
export function tokenQuery(token) {
  return token ? `?token=${encodeURIComponent(token)}` : '';
}

/** Whether the page's address asks for relay-only ICE (`?relay=1` or `?relay=true`). */
export function relayOnlyFrom(search) {
  const v = new URLSearchParams(search ?? '').get('relay');
  return v === '1' || v === 'true';
}

/** The RTCPeerConnection configuration for these settings. */
export function peerConfiguration(settings) {
  return {
    iceServers: settings.iceServers ?? [],
    iceTransportPolicy: settings.relayOnly ? 'relay' : 'all',
  };
}

/** Whether ICE servers from config.json should be fetched again before a new session:
 * their derived TURN credentials expire within `marginSecs` of `nowSecs`. */
export function iceServersStale(settings, nowSecs, marginSecs = 60) {
  return settings.iceServersExpireAt !== null && settings.iceServersExpireAt !== undefined
    && nowSecs >= settings.iceServersExpireAt - marginSecs;
}

/** The viewer token from the page's address (`?token=`), if any. */
export function tokenFrom(search) {
  return new URLSearchParams(search ?? '').get('token') || null;
}

/**
 * Merge the daemon's config.json (null when it could not be fetched) with the
 * page's query string. Query parameters win so one page can view any device on
 * any broker. Returns { ok, settings } or { ok: false, error }.
 */
export function resolveSettings(config, search, location) {
  const params = new URLSearchParams(search ?? '');
  const cfg = config && typeof config === 'object' ? config : null;
  const deviceId = params.get('device') || cfg?.device_id || '';
  const prefix = params.get('prefix') || cfg?.prefix || DEFAULT_PREFIX;
  const brokerParam = params.get('broker');

  if (!cfg && !(params.get('device') && brokerParam)) {
    return {
      ok: false,
      error:
        'Could not load the camera settings (config.json). Open this page from the camera, ' +
        'or add ?device=<camera id>&broker=wss://<broker host>/<path> to the address.',
    };
  }
  if (!isValidDeviceId(deviceId)) {
    return { ok: false, error: `"${deviceId}" is not a usable camera id.` };
  }
  if (!isValidPrefix(prefix)) {
    return { ok: false, error: `"${prefix}" is not a usable topic prefix.` };
  }
  const token = params.get('token') || null;
  const brokerUrl = brokerParam || cfg?.broker_url || defaultBrokerUrl(location, token);
  if (!/^wss?:\/\//i.test(brokerUrl)) {
    return { ok: false, error: `The broker address ${brokerUrl} must start with ws:// or wss://.` };
  }
  // The HTTP side of the page (/snapshot.jpg, config.json's viewer_commands)
  // describes the camera that served it; with a query string pointing
  // elsewhere it says nothing about the camera being watched.
  const watchingServer =
    !!cfg &&
    deviceId === cfg.device_id &&
    prefix === (cfg.prefix || DEFAULT_PREFIX) &&
    (!brokerParam || brokerParam === (cfg.broker_url || defaultBrokerUrl(location, token)));
  return {
    ok: true,
    settings: {
      deviceId,
      prefix,
      brokerUrl,
      token,
      // Through the camera's own /mqtt to its embedded broker (config.json's mqtt_gate), the
      // token on the WebSocket's address proves who this page is once, at connect; offers
      // then carry none, so no token travels through the broker. Any other broker only sees
      // the token inside the offer.
      tokenInOffers: !!token && !(cfg?.mqtt_gate === true && brokerUrl === defaultBrokerUrl(location, token)),
      watchingServer,
      viewerCommands: watchingServer ? viewerCommandsOf(cfg) : 'unknown',
      iceServers: normalizeIceServers(cfg?.ice_servers),
      // Unix seconds at which the camera's derived TURN credentials expire (null: never).
      iceServersExpireAt: Number.isInteger(cfg?.ice_servers_expire_at) ? cfg.ice_servers_expire_at : null,
      // `?relay=1`: only TURN relay candidates, as behind a network that allows nothing else
      // (and to test the TURN server).
      relayOnly: relayOnlyFrom(search),
      version: typeof cfg?.version === 'string' ? cfg.version : null,
      video: cfg?.video ?? null,
      audio: watchingServer ? audioOf(cfg) : { enabled: false, talkback: false },
    },
  };
}

// Whether the page asks for the camera's sound, and offers a talk button. An
// audio section the camera did not enable would only be refused, and another
// camera (chosen by query string) may have none: off unless config.json says so.
export function audioOf(cfg) {
  const enabled = cfg?.audio?.enabled === true;
  return { enabled, talkback: enabled && cfg.audio.talkback === true };
}

// Older daemons have no viewer_commands in config.json; "unknown" leaves the
// controls enabled and lets the camera's reply say what is allowed.
function viewerCommandsOf(cfg) {
  return cfg.viewer_commands === 'all' || cfg.viewer_commands === 'read-only' ? cfg.viewer_commands : 'unknown';
}

// The daemon sends empty username/credential for STUN entries; browsers reject
// empty credentials on TURN entries, so empty fields are dropped rather than passed.
export function normalizeIceServers(list) {
  if (!Array.isArray(list)) return [];
  const out = [];
  for (const entry of list) {
    if (!entry || typeof entry !== 'object') continue;
    const urls = (Array.isArray(entry.urls) ? entry.urls : [entry.urls]).filter(
      (u) => typeof u === 'string' && u.length > 0,
    );
    if (urls.length === 0) continue;
    const server = { urls };
    if (entry.username) server.username = entry.username;
    if (entry.credential) server.credential = entry.credential;
    out.push(server);
  }
  return out;
}

/**
 * Parse the retained status payload. An empty payload (retained message
 * cleared) or garbage counts as "unknown" so the page keeps waiting.
 */
export function parseStatus(payload) {
  const text = typeof payload === 'string' ? payload : new TextDecoder().decode(payload);
  if (text.length === 0) return { state: 'unknown' };
  try {
    const v = JSON.parse(text);
    if (v && typeof v === 'object' && typeof v.state === 'string') return v;
  } catch {
    // fall through
  }
  return { state: 'unknown' };
}

function isCandidateShape(m) {
  return (
    typeof m.candidate === 'string' &&
    (m.sdpMid === undefined || m.sdpMid === null || typeof m.sdpMid === 'string') &&
    (m.sdpMLineIndex === undefined ||
      m.sdpMLineIndex === null ||
      (Number.isInteger(m.sdpMLineIndex) && m.sdpMLineIndex >= 0))
  );
}

/**
 * Validate a device → viewer message (from `…/out`). Returns
 * { ok: true, msg } or { ok: false, reason } and never throws.
 */
export function parseOutMessage(payload) {
  let msg;
  try {
    const text = typeof payload === 'string' ? payload : new TextDecoder().decode(payload);
    msg = JSON.parse(text);
  } catch {
    return { ok: false, reason: 'not JSON' };
  }
  if (!msg || typeof msg !== 'object' || Array.isArray(msg)) {
    return { ok: false, reason: 'not a JSON object' };
  }
  switch (msg.type) {
    case 'answer':
      return typeof msg.sdp === 'string' && msg.sdp.length > 0
        ? { ok: true, msg }
        : { ok: false, reason: 'answer without sdp' };
    case 'candidate':
      return isCandidateShape(msg) ? { ok: true, msg } : { ok: false, reason: 'malformed candidate' };
    case 'error':
      return typeof msg.code === 'string'
        ? { ok: true, msg: { ...msg, message: typeof msg.message === 'string' ? msg.message : '' } }
        : { ok: false, reason: 'error without code' };
    case 'bye':
      return { ok: true, msg: { ...msg, reason: typeof msg.reason === 'string' ? msg.reason : '' } };
    default:
      return { ok: false, reason: `unknown type ${JSON.stringify(msg.type)}` };
  }
}

/** True for the end-of-candidates marker, which carries an empty candidate string. */
export function isEndOfCandidates(msg) {
  return msg.type === 'candidate' && msg.candidate === '';
}

export function offerMessage(sdp, token = null) {
  return token ? { type: 'offer', sdp, token } : { type: 'offer', sdp };
}

/**
 * Build the `candidate` message for an RTCPeerConnection icecandidate event.
 * `candidate` null means gathering finished; that is sent as an empty string
 * with the fallback mid, because the receiver still needs to know which m-line ended.
 */
export function candidateMessage(candidate, fallbackMid = '0') {
  if (!candidate || !candidate.candidate) {
    return { type: 'candidate', candidate: '', sdpMid: fallbackMid, sdpMLineIndex: 0 };
  }
  return {
    type: 'candidate',
    candidate: candidate.candidate,
    sdpMid: candidate.sdpMid ?? fallbackMid,
    sdpMLineIndex: candidate.sdpMLineIndex ?? 0,
  };
}

export function byeMessage() {
  return { type: 'bye' };
}

/** Retry delay after the n-th consecutive failure (0-based): 2 s doubling up to 10 s. */
export function backoffDelay(attempt) {
  const n = Math.max(0, Math.floor(attempt));
  return Math.min(10000, 2000 * 2 ** Math.min(n, 3));
}

/**
 * Bytes of an MQTT 3.1.1 PUBLISH packet at QoS 0 (not retained).
 * Used only on page exit: the client library writes asynchronously and the
 * socket is gone before it gets to it, so the goodbye is sent by hand.
 */
export function encodePublishQos0(topic, payload) {
  const enc = new TextEncoder();
  const topicBytes = enc.encode(topic);
  const body = typeof payload === 'string' ? enc.encode(payload) : payload;
  if (topicBytes.length > 0xffff) throw new RangeError('topic too long');
  let remaining = 2 + topicBytes.length + body.length;
  if (remaining > 268435455) throw new RangeError('payload too large');
  const lengthBytes = [];
  do {
    let digit = remaining % 128;
    remaining = Math.floor(remaining / 128);
    if (remaining > 0) digit |= 0x80;
    lengthBytes.push(digit);
  } while (remaining > 0);
  const packet = new Uint8Array(1 + lengthBytes.length + 2 + topicBytes.length + body.length);
  let i = 0;
  packet[i++] = 0x30;
  for (const b of lengthBytes) packet[i++] = b;
  packet[i++] = topicBytes.length >> 8;
  packet[i++] = topicBytes.length & 0xff;
  packet.set(topicBytes, i);
  packet.set(body, i + topicBytes.length);
  return packet;
}
