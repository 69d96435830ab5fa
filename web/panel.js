// The control bar and the stats overlay. Owns their DOM and the use of one
// session's `control` data channel; app.js owns the session itself and hands
// the channel over with attach() / detach(). Protocol details live in control.js.

import {
  BITRATES_KBPS,
  READ_ONLY_TOOLTIP,
  RequestBook,
  bitrateArgs,
  formatBitrate,
  overlayRows,
  overlayStats,
  parseControlMessage,
  readStats,
  resolutionArgs,
  resolutionChoices,
  snapshotError,
  snapshotFileName,
} from './control.js';
import { tokenQuery } from './protocol.js';

// Long enough for a resolution change, which rebuilds the camera's pipeline.
const REQUEST_TIMEOUT_MS = 10000;
const STATS_INTERVAL_MS = 1000;
const MESSAGE_MS = 8000;
const REPLY_LOG_LIMIT = 20;
const STATS_PREF_KEY = 'rtcam.stats';

const NOT_CONNECTED = 'Available once the video is connected.';
const OTHER_CAMERA =
  "Snapshots come from the camera that served this page; open this camera's own page to take one.";

function emptyStats() {
  return {
    width: null,
    height: null,
    fps: null,
    bitrateKbps: null,
    rttMs: null,
    rttSource: null,
    ttffMs: null,
    cameraTtffMs: null,
    framesDecoded: 0,
    text: {},
  };
}

/**
 * `rtcam` is the page's test-visible state object; `log` and `setFact` are
 * app.js's journal and details list.
 */
export function createPanel({ settings, rtcam, log, setFact }) {
  const el = {
    body: document.body,
    video: document.getElementById('video'),
    overlay: document.getElementById('overlay'),
    paused: document.getElementById('paused'),
    snapshot: document.getElementById('snapshot'),
    stream: document.getElementById('stream'),
    bitrate: document.getElementById('bitrate'),
    resolution: document.getElementById('resolution'),
    statsToggle: document.getElementById('stats-toggle'),
    message: document.getElementById('control-msg'),
    readOnlyNote: document.getElementById('readonly-note'),
  };

  const readOnly = settings.viewerCommands === 'read-only';
  const control = {
    open: false,
    viewerCommands: settings.viewerCommands,
    streaming: null,
    replies: [],
    message: null,
  };
  rtcam.control = control;
  rtcam.stats = emptyStats();

  // One session's worth of state; replaced on every attach.
  let current = null;
  let messageTimer = null;
  let snapshotBusy = false;
  // A size this page asked for and until when to wait for it, so the picker
  // does not jump back to the old size while the camera rebuilds its pipeline.
  let wantedSize = null;

  // ------------------------------------------------------------ messages

  function showMessage(text, kind = 'info') {
    control.message = { text, kind };
    el.message.textContent = text;
    el.message.dataset.kind = kind;
    el.message.hidden = false;
    clearTimeout(messageTimer);
    // Errors stay until the next message: someone who looked away should
    // still learn why their change did not happen.
    if (kind !== 'error') messageTimer = setTimeout(() => (el.message.hidden = true), MESSAGE_MS);
  }

  // ------------------------------------------------------------ commands

  function send(command, args) {
    const s = current;
    if (!s || !control.open) return Promise.reject(new Error('The control connection to the camera is not open.'));
    const { id, text } = s.book.add(command, args, performance.now());
    return new Promise((resolve, reject) => {
      s.waiters.set(id, { resolve, reject });
      try {
        s.dc.send(text);
      } catch (err) {
        s.book.settle(id);
        s.waiters.delete(id);
        reject(err);
        return;
      }
      setTimeout(() => {
        for (const entry of s.book.expire(performance.now(), REQUEST_TIMEOUT_MS)) {
          s.waiters.get(entry.id)?.reject(new Error(`The camera did not answer the ${entry.command} request.`));
          s.waiters.delete(entry.id);
        }
      }, REQUEST_TIMEOUT_MS);
    });
  }

  function recordReply(command, reply) {
    control.replies.push({ command, ...reply });
    if (control.replies.length > REPLY_LOG_LIMIT) control.replies.shift();
  }

  // Sends a state-changing command from one of the controls, keeping that
  // control busy until the reply; `undo` puts the control back if it failed.
  async function change(node, command, args, describe, undo) {
    node.setAttribute('aria-busy', 'true');
    refreshControls();
    try {
      const reply = await send(command, args);
      if (reply.ok) {
        showMessage(describe(reply.result));
      } else {
        undo();
        showMessage(reply.error.message, 'error');
      }
    } catch (err) {
      undo();
      showMessage(err.message, 'error');
    } finally {
      node.removeAttribute('aria-busy');
      refreshControls();
    }
  }

  function onChannelMessage(s, data) {
    const msg = parseControlMessage(data);
    switch (msg.kind) {
      case 'reply': {
        const entry = s.book.settle(msg.id);
        if (!entry) {
          log(`ignored a control reply for an unknown request ${JSON.stringify(msg.id)}`);
          return;
        }
        recordReply(entry.command, msg);
        if (!msg.ok) log(`${entry.command} refused: ${msg.error.code}: ${msg.error.message}`);
        s.waiters.get(entry.id)?.resolve(msg);
        s.waiters.delete(entry.id);
        return;
      }
      case 'status':
        cameraStatus(msg.status);
        return;
      case 'telemetry':
        s.telemetry = msg.telemetry;
        onTelemetry(msg.telemetry);
        return;
      default:
        log(`ignored a control message: ${msg.reason}`);
    }
  }

  function onTelemetry(t) {
    if (typeof t.viewers === 'number') setFact('Viewers', String(t.viewers));
    if (typeof t.cpu_percent === 'number') setFact('Camera CPU', `${t.cpu_percent.toFixed(0)} %`);
    if (typeof t.temperature_c === 'number') setFact('Camera temperature', `${t.temperature_c.toFixed(0)} °C`);
    if (typeof t.bitrate_kbps === 'number') setFact('Encoder bitrate', formatBitrate(t.bitrate_kbps));
    if (typeof t.streaming === 'boolean') setStreaming(t.streaming);
  }

  // ------------------------------------------------------------- status

  function setStreaming(on) {
    if (control.streaming === on) return;
    control.streaming = on;
    el.body.dataset.paused = String(!on);
    el.paused.hidden = on;
    el.stream.textContent = on ? 'Pause' : 'Resume';
    el.stream.setAttribute('aria-pressed', String(!on));
    log(on ? 'the camera is streaming' : "the camera's owner paused the video");
    refreshControls();
  }

  /** A status from the data channel or the retained MQTT status; both say the same thing. */
  function cameraStatus(status) {
    if (typeof status?.streaming === 'boolean') setStreaming(status.streaming);
  }

  // ------------------------------------------------------------ controls

  function setDisabled(node, disabled, why) {
    node.disabled = disabled;
    // A disabled control gets no pointer events in some browsers, so the
    // reason also goes on its label (the wrapper) where hovering still works.
    const holder = node.closest('label') ?? node;
    if (disabled && why) {
      node.title = why;
      holder.title = why;
    } else {
      node.removeAttribute('title');
      if (holder !== node) holder.removeAttribute('title');
    }
  }

  function refreshControls() {
    const why = readOnly ? READ_ONLY_TOOLTIP : control.open ? '' : NOT_CONNECTED;
    for (const node of [el.stream, el.bitrate, el.resolution]) {
      const busy = node.getAttribute('aria-busy') === 'true';
      setDisabled(node, Boolean(why) || busy, why);
    }
    // Resuming needs a channel like pausing, but a paused camera sends no
    // video, so the button must not wait for frames.
    if (!settings.watchingServer) setDisabled(el.snapshot, true, OTHER_CAMERA);
    else setDisabled(el.snapshot, snapshotBusy || control.streaming === false,
      control.streaming === false ? 'There is no picture while the video is paused.' : '');
  }

  function fillResolutions(currentValue) {
    const choices = resolutionChoices(currentValue);
    const existing = [...el.resolution.options].map((o) => o.value);
    if (existing.join() !== choices.join()) {
      el.resolution.replaceChildren(
        ...choices.map((v) => new Option(v.replace('x', '×'), v)),
      );
    }
    if (currentValue) el.resolution.value = currentValue;
    el.resolution.dataset.value = el.resolution.value;
  }

  function initControls() {
    el.bitrate.replaceChildren(
      // The camera does not report its target bitrate, so the picker starts
      // on a neutral entry rather than pretending to know it.
      new Option('—', '', true, true),
      ...BITRATES_KBPS.map((k) => new Option(formatBitrate(k), String(k))),
    );
    el.bitrate.options[0].disabled = true;
    el.bitrate.dataset.value = '';
    const video = settings.video;
    fillResolutions(video?.width && video?.height ? `${video.width}x${video.height}` : null);
    el.readOnlyNote.hidden = !readOnly;
    el.readOnlyNote.textContent = READ_ONLY_TOOLTIP;

    el.stream.addEventListener('click', () => {
      const on = control.streaming === false;
      change(el.stream, 'stream', { on }, (r) => (r?.streaming === false ? 'Video paused for every viewer.' : 'Video resumed.'),
        () => {});
    });
    el.bitrate.addEventListener('change', () => {
      const args = bitrateArgs(el.bitrate.value);
      if (!args) return;
      const before = el.bitrate.dataset.value;
      change(el.bitrate, 'set', args, () => `Bitrate set to ${formatBitrate(args.bitrate_kbps)}.`, () => {
        el.bitrate.value = before;
      }).then(() => {
        if (el.bitrate.value === String(args.bitrate_kbps)) el.bitrate.dataset.value = el.bitrate.value;
      });
    });
    el.resolution.addEventListener('change', () => {
      const args = resolutionArgs(el.resolution.value);
      if (!args) return;
      const before = el.resolution.dataset.value;
      change(el.resolution, 'set', args, (r) => `Video size set to ${r?.width ?? args.width}×${r?.height ?? args.height}.`, () => {
        el.resolution.value = before;
      }).then(() => {
        el.resolution.dataset.value = el.resolution.value;
        if (el.resolution.value === `${args.width}x${args.height}`) {
          wantedSize = { value: el.resolution.value, until: performance.now() + REQUEST_TIMEOUT_MS };
        }
      });
    });
    el.snapshot.addEventListener('click', takeSnapshot);

    let shown = true;
    try {
      shown = localStorage.getItem(STATS_PREF_KEY) !== 'hidden';
    } catch {
      // Storage can be off (private mode, policies); the overlay then starts shown.
    }
    showOverlay(shown);
    el.statsToggle.addEventListener('click', () => {
      const next = el.overlay.hidden;
      showOverlay(next);
      try {
        localStorage.setItem(STATS_PREF_KEY, next ? 'shown' : 'hidden');
      } catch {
        // Remembering the choice is a convenience only.
      }
    });
    refreshControls();
  }

  function showOverlay(shown) {
    el.overlay.hidden = !shown;
    el.statsToggle.setAttribute('aria-pressed', String(shown));
    rtcam.stats.visible = shown;
  }

  // ------------------------------------------------------------ snapshot

  async function takeSnapshot() {
    if (snapshotBusy) return;
    snapshotBusy = true;
    refreshControls();
    try {
      let res;
      try {
        // Relative, like config.json, so the page also works behind a reverse proxy's sub-path.
        res = await fetch(`snapshot.jpg${tokenQuery(settings.token)}`, { cache: 'no-store' });
      } catch (err) {
        throw new Error(`Could not reach the camera for a snapshot (${err.message}).`);
      }
      if (!res.ok) throw new Error(snapshotError(res.status, await res.text().catch(() => '')));
      const blob = await res.blob();
      const name = snapshotFileName(settings.deviceId, new Date());
      const url = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = url;
      a.download = name;
      document.body.append(a);
      a.click();
      a.remove();
      // Revoking at once can cancel the download before the browser has read the blob.
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      showMessage(`Saved ${name}.`);
    } catch (err) {
      log(`snapshot: ${err.message}`);
      showMessage(err.message, 'error');
    } finally {
      snapshotBusy = false;
      refreshControls();
    }
  }

  // --------------------------------------------------------------- stats

  function render(stats) {
    const rows = overlayRows(stats);
    stats.text = Object.fromEntries(rows.map((r) => [r.key, r.value]));
    stats.visible = !el.overlay.hidden;
    rtcam.stats = stats;
    for (const row of rows) {
      let dd = el.overlay.querySelector(`dd[data-stat="${row.key}"]`);
      if (!dd) {
        const dt = document.createElement('dt');
        dt.textContent = row.label;
        dd = document.createElement('dd');
        dd.dataset.stat = row.key;
        el.overlay.append(dt, dd);
      }
      dd.textContent = row.value;
    }
    if (stats.rttSource) el.overlay.querySelector('dd[data-stat="rtt"]').title = `measured by the ${stats.rttSource}`;
  }

  async function pollStats(s) {
    if (current !== s || !s.pc) return;
    let sample;
    try {
      sample = readStats(await s.pc.getStats());
    } catch {
      return; // The connection closed between the check and the call.
    }
    if (current !== s) return;
    const stats = overlayStats({
      sample,
      prev: s.prevSample,
      telemetry: s.telemetry,
      pageTtffMs: s.firstFrameAt === null ? null : s.firstFrameAt - s.offerAt,
    });
    s.prevSample = sample;
    render(stats);
    // Follows size changes made by anyone (another viewer, MQTT), not only this page.
    const decoded = stats.width && stats.height ? `${stats.width}x${stats.height}` : null;
    if (wantedSize && (decoded === wantedSize.value || performance.now() > wantedSize.until)) wantedSize = null;
    if (decoded && !wantedSize && el.resolution.getAttribute('aria-busy') !== 'true') fillResolutions(decoded);
  }

  function watchFirstFrame(s) {
    const mark = () => {
      if (current !== s || s.firstFrameAt !== null) return;
      s.firstFrameAt = performance.now();
      log(`first frame after ${Math.round(s.firstFrameAt - s.offerAt)} ms`);
    };
    // requestVideoFrameCallback fires when a frame is actually presented;
    // 'loadeddata' is the older, slightly later stand-in.
    if (typeof el.video.requestVideoFrameCallback === 'function') el.video.requestVideoFrameCallback(mark);
    else el.video.addEventListener('loadeddata', mark, { once: true });
  }

  // ----------------------------------------------------------- lifecycle

  /** Called just before the offer is created, with the channel that goes into it. */
  function attach({ pc, dc, sid }) {
    detach();
    const s = {
      pc,
      dc,
      sid,
      offerAt: performance.now(),
      firstFrameAt: null,
      prevSample: null,
      telemetry: null,
      book: new RequestBook(),
      waiters: new Map(),
      timer: null,
    };
    current = s;
    render(emptyStats());
    dc.onopen = () => {
      if (current !== s) return;
      control.open = true;
      log('control channel open');
      refreshControls();
    };
    dc.onclose = () => {
      if (current !== s) return;
      control.open = false;
      failPending(s, 'The control connection to the camera closed.');
      refreshControls();
    };
    dc.onmessage = (e) => {
      if (current === s) onChannelMessage(s, e.data);
    };
    s.timer = setInterval(() => pollStats(s), STATS_INTERVAL_MS);
    watchFirstFrame(s);
  }

  function failPending(s, why) {
    for (const entry of s.book.drain()) {
      s.waiters.get(entry.id)?.reject(new Error(why));
    }
    s.waiters.clear();
  }

  /** The session ended; the bar waits for the next one. */
  function detach() {
    const s = current;
    if (!s) return;
    current = null;
    clearInterval(s.timer);
    s.dc.onopen = s.dc.onclose = s.dc.onmessage = null;
    failPending(s, 'The video session ended.');
    control.open = false;
    // No session, no figures: the empty overlay hides itself (style.css).
    el.overlay.replaceChildren();
    rtcam.stats = { ...emptyStats(), visible: !el.overlay.hidden };
    refreshControls();
  }

  initControls();
  return { attach, detach, cameraStatus };
}
