// Control data channel helpers: building requests, matching replies, reading
// status and telemetry pushes, and turning WebRTC stats into the overlay's
// figures. Pure like protocol.js (no DOM, no network, no clock of its own:
// times are arguments), so web/control.test.mjs runs it under node.

/** The label the camera answers; any other data channel is ignored by it. */
export const CONTROL_LABEL = 'control';

/** Choices offered by the pickers. The camera validates again; these only keep the menus short. */
export const BITRATES_KBPS = Object.freeze([500, 1000, 2000, 4000]);
export const RESOLUTIONS = Object.freeze(['320x240', '640x480', '1280x720', '1920x1080']);

export const READ_ONLY_TOOLTIP =
  'View only: the camera\'s owner allows changes with viewer_commands = "all".';

/**
 * Outstanding requests on one channel. Ids are per channel, so a reply can be
 * matched to its request even when replies arrive out of order (the camera
 * runs a slow snapshot and a quick status side by side).
 */
export class RequestBook {
  constructor() {
    this.next = 1;
    this.pending = new Map();
  }

  /** Registers a request; returns its id and the text to send. */
  add(command, args, now) {
    const id = `r${this.next++}`;
    this.pending.set(id, { id, command, args: args ?? null, sentAt: now });
    const request = { id, command };
    if (args && Object.keys(args).length > 0) request.args = args;
    return { id, text: JSON.stringify(request) };
  }

  /** The request a reply answers, removed from the book; null for an unknown or repeated id. */
  settle(id) {
    const entry = this.pending.get(id);
    if (!entry) return null;
    this.pending.delete(id);
    return entry;
  }

  /** Requests older than `timeoutMs`, removed from the book so a late reply is ignored. */
  expire(now, timeoutMs) {
    const out = [];
    for (const [id, entry] of this.pending) {
      if (now - entry.sentAt >= timeoutMs) {
        out.push(entry);
        this.pending.delete(id);
      }
    }
    return out;
  }

  /** Everything still waiting, removed: the channel closed and no reply will come. */
  drain() {
    const out = [...this.pending.values()];
    this.pending.clear();
    return out;
  }
}

/**
 * Classifies a message from the control channel. Replies carry no `type`;
 * pushes carry `type` "status" or "telemetry". Never throws: the result is
 * { kind: 'reply' | 'status' | 'telemetry', ... } or { kind: 'invalid', reason }.
 */
export function parseControlMessage(data) {
  let msg;
  try {
    const text = typeof data === 'string' ? data : new TextDecoder().decode(data);
    msg = JSON.parse(text);
  } catch {
    return { kind: 'invalid', reason: 'not JSON' };
  }
  if (!msg || typeof msg !== 'object' || Array.isArray(msg)) {
    return { kind: 'invalid', reason: 'not a JSON object' };
  }
  if (msg.type === 'status') {
    return typeof msg.state === 'string'
      ? { kind: 'status', status: msg }
      : { kind: 'invalid', reason: 'status without state' };
  }
  if (msg.type === 'telemetry') return { kind: 'telemetry', telemetry: msg };
  if (msg.type !== undefined) return { kind: 'invalid', reason: `unknown type ${JSON.stringify(msg.type)}` };
  if (typeof msg.ok !== 'boolean') return { kind: 'invalid', reason: 'reply without ok' };
  if (msg.ok) return { kind: 'reply', id: msg.id ?? null, ok: true, result: msg.result ?? null };
  const error = msg.error && typeof msg.error === 'object' ? msg.error : {};
  return {
    kind: 'reply',
    id: msg.id ?? null,
    ok: false,
    error: {
      code: typeof error.code === 'string' ? error.code : 'unknown',
      message: typeof error.message === 'string' && error.message ? error.message : 'The camera refused the request.',
    },
  };
}

/** `set` arguments for a picker value: "1280x720" or a bitrate in kbit/s. Null when unusable. */
export function resolutionArgs(value) {
  const m = /^(\d{2,5})x(\d{2,5})$/.exec(String(value));
  if (!m) return null;
  return { width: Number(m[1]), height: Number(m[2]) };
}

export function bitrateArgs(value) {
  const n = Number(value);
  return Number.isInteger(n) && n > 0 ? { bitrate_kbps: n } : null;
}

/** Picker choices with the current value added where the fixed list lacks it, in size order. */
export function resolutionChoices(current) {
  const list = [...RESOLUTIONS];
  if (current && resolutionArgs(current) && !list.includes(current)) list.push(current);
  const pixels = (v) => {
    const r = resolutionArgs(v);
    return r.width * r.height;
  };
  return list.sort((a, b) => pixels(a) - pixels(b));
}

/**
 * This viewer's entry in a telemetry push, or null. Sessions are listed by
 * label, never by sid; the camera marks the channel's own one with `you`.
 */
export function sessionOf(telemetry) {
  if (!telemetry || !Array.isArray(telemetry.sessions)) return null;
  return telemetry.sessions.find((s) => s && s.you === true) ?? null;
}

/**
 * Picks what the overlay needs from an RTCStatsReport (anything with
 * forEach): the inbound video stream and the selected candidate pair.
 */
export function readStats(report) {
  let inbound = null;
  const pairs = new Map();
  let selectedPairId = null;
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && (s.kind ?? s.mediaType) === 'video') inbound = s;
    else if (s.type === 'candidate-pair') pairs.set(s.id, s);
    else if (s.type === 'transport' && s.selectedCandidatePairId) selectedPairId = s.selectedCandidatePairId;
  });
  let pair = selectedPairId ? pairs.get(selectedPairId) : null;
  // Older Chromium marks the pair instead of naming it on the transport.
  if (!pair) pair = [...pairs.values()].find((p) => p.selected || (p.nominated && p.state === 'succeeded')) ?? null;
  return {
    timestamp: inbound?.timestamp ?? null,
    bytesReceived: inbound?.bytesReceived ?? null,
    framesDecoded: inbound?.framesDecoded ?? 0,
    frameWidth: inbound?.frameWidth ?? null,
    frameHeight: inbound?.frameHeight ?? null,
    framesPerSecond: inbound?.framesPerSecond ?? null,
    rttSeconds: typeof pair?.currentRoundTripTime === 'number' ? pair.currentRoundTripTime : null,
  };
}

/**
 * The overlay's figures from two consecutive stats samples (prev may be
 * null), the latest telemetry push (which marks this viewer's session) and
 * the page's own time-to-first-frame. Unknown figures are null, never guessed.
 */
export function overlayStats({ sample, prev = null, telemetry = null, pageTtffMs = null }) {
  const out = {
    width: sample?.frameWidth || null,
    height: sample?.frameHeight || null,
    fps: null,
    bitrateKbps: null,
    rttMs: null,
    rttSource: null,
    ttffMs: pageTtffMs ?? null,
    cameraTtffMs: null,
    framesDecoded: sample?.framesDecoded ?? 0,
  };
  const dt = sample && prev ? (sample.timestamp - prev.timestamp) / 1000 : 0;
  if (typeof sample?.framesPerSecond === 'number') {
    out.fps = sample.framesPerSecond;
  } else if (dt > 0) {
    // Chromium leaves framesPerSecond out while it has too few frames to average.
    out.fps = Math.max(0, (sample.framesDecoded - prev.framesDecoded) / dt);
  }
  if (dt > 0 && sample.bytesReceived !== null && prev.bytesReceived !== null) {
    out.bitrateKbps = Math.max(0, ((sample.bytesReceived - prev.bytesReceived) * 8) / 1000 / dt);
  }
  const mine = sessionOf(telemetry);
  // The camera measures RTT from RTCP on the media itself; the browser's
  // candidate-pair figure only covers connectivity checks, so it is the fallback.
  if (typeof mine?.rtt_ms === 'number') {
    out.rttMs = mine.rtt_ms;
    out.rttSource = 'camera';
  } else if (typeof sample?.rttSeconds === 'number') {
    out.rttMs = sample.rttSeconds * 1000;
    out.rttSource = 'browser';
  }
  if (typeof mine?.time_to_first_frame_ms === 'number') out.cameraTtffMs = mine.time_to_first_frame_ms;
  if (out.ttffMs === null && out.cameraTtffMs !== null) out.ttffMs = out.cameraTtffMs;
  return out;
}

export function formatBitrate(kbps) {
  if (typeof kbps !== 'number' || !Number.isFinite(kbps)) return '—';
  if (kbps >= 1000) return `${(kbps / 1000).toFixed(kbps >= 10000 ? 0 : 1)} Mbit/s`;
  return `${Math.round(kbps)} kbit/s`;
}

export function formatMs(ms) {
  if (typeof ms !== 'number' || !Number.isFinite(ms)) return '—';
  if (ms >= 1000) return `${(ms / 1000).toFixed(ms >= 10000 ? 0 : 1)} s`;
  return `${Math.round(ms)} ms`;
}

/** Label/value rows for the overlay, in reading order. */
export function overlayRows(stats) {
  const size = stats.width && stats.height ? `${stats.width}×${stats.height}` : '—';
  const fps = typeof stats.fps === 'number' ? `${Math.round(stats.fps)} fps` : '— fps';
  return [
    { key: 'video', label: 'Video', value: `${size} · ${fps}` },
    { key: 'bitrate', label: 'Bitrate', value: formatBitrate(stats.bitrateKbps) },
    { key: 'rtt', label: 'RTT', value: formatMs(stats.rttMs) },
    { key: 'ttff', label: 'First frame', value: formatMs(stats.ttffMs) },
  ];
}

/** `<device>-<YYYYMMDD-HHMMSS>.jpg` in local time, safe as a file name on every OS. */
export function snapshotFileName(deviceId, date) {
  const safe = String(deviceId || 'rtcam').replace(/[^A-Za-z0-9._-]+/g, '_').replace(/^[.]+/, '') || 'rtcam';
  const p = (n) => String(n).padStart(2, '0');
  const stamp =
    `${date.getFullYear()}${p(date.getMonth() + 1)}${p(date.getDate())}-` +
    `${p(date.getHours())}${p(date.getMinutes())}${p(date.getSeconds())}`;
  return `${safe}-${stamp}.jpg`;
}

/**
 * A readable sentence for a failed snapshot download. The camera's body is
 * already a sentence fragment ("snapshot failed: timed out"), so it is shown
 * as it is rather than wrapped in another "failed".
 */
export function snapshotError(status, body) {
  const text = String(body ?? '').trim().slice(0, 300).replace(/[.\s]+$/, '');
  if (!text) return `The snapshot failed (HTTP ${status}).`;
  return `${text.charAt(0).toUpperCase()}${text.slice(1)}.`;
}
