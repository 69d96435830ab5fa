// Run with: node --test web/  (web/protocol.test.mjs imports this file too)
import test from 'node:test';
import assert from 'node:assert/strict';

import {
  RequestBook,
  bitrateArgs,
  formatBitrate,
  formatMs,
  overlayRows,
  overlayStats,
  parseControlMessage,
  readStats,
  resolutionArgs,
  resolutionChoices,
  sessionOf,
  snapshotError,
  snapshotFileName,
} from './control.js';

test('RequestBook builds requests with fresh ids and omits empty args', () => {
  const book = new RequestBook();
  const a = book.add('status', undefined, 0);
  const b = book.add('set', { bitrate_kbps: 500 }, 0);
  assert.notEqual(a.id, b.id);
  assert.deepEqual(JSON.parse(a.text), { id: a.id, command: 'status' });
  assert.deepEqual(JSON.parse(b.text), { id: b.id, command: 'set', args: { bitrate_kbps: 500 } });
  assert.deepEqual(JSON.parse(book.add('keyframe', {}, 0).text).args, undefined);
});

test('RequestBook settles each id once, expires old requests and drains on close', () => {
  const book = new RequestBook();
  const a = book.add('status', null, 1000);
  const b = book.add('snapshot', null, 5000);
  assert.equal(book.settle(a.id).command, 'status');
  assert.equal(book.settle(a.id), null, 'a repeated reply is ignored');
  assert.equal(book.settle('nope'), null);
  assert.deepEqual(book.expire(14999, 10000), []);
  assert.deepEqual(book.expire(15000, 10000).map((e) => e.id), [b.id]);
  assert.equal(book.settle(b.id), null, 'a late reply after expiry is ignored');
  book.add('sessions', null, 0);
  assert.equal(book.drain().length, 1);
  assert.equal(book.pending.size, 0);
});

test('parseControlMessage tells replies from pushes', () => {
  assert.deepEqual(parseControlMessage('{"id":"r1","ok":true,"result":{"streaming":false}}'), {
    kind: 'reply',
    id: 'r1',
    ok: true,
    result: { streaming: false },
  });
  const forbidden = parseControlMessage(
    JSON.stringify({ id: 'r2', ok: false, error: { code: 'forbidden', message: 'Viewers may only read.' } }),
  );
  assert.equal(forbidden.kind, 'reply');
  assert.deepEqual(forbidden.error, { code: 'forbidden', message: 'Viewers may only read.' });
  const status = parseControlMessage('{"type":"status","state":"online","streaming":false,"viewers":1}');
  assert.equal(status.kind, 'status');
  assert.equal(status.status.streaming, false);
  const tel = parseControlMessage(new TextEncoder().encode('{"type":"telemetry","fps_in":30,"sessions":[]}'));
  assert.equal(tel.kind, 'telemetry');
  assert.equal(tel.telemetry.fps_in, 30);
});

test('parseControlMessage never throws on garbage and fills in error details', () => {
  for (const bad of ['', 'nope', '[]', 'null', '{"type":"weird"}', '{"id":"x"}', '{"type":"status"}']) {
    assert.equal(parseControlMessage(bad).kind, 'invalid', bad);
  }
  const bare = parseControlMessage('{"id":null,"ok":false}');
  assert.equal(bare.error.code, 'unknown');
  assert.ok(bare.error.message.length > 0);
});

test('picker values become set arguments', () => {
  assert.deepEqual(resolutionArgs('320x240'), { width: 320, height: 240 });
  assert.equal(resolutionArgs('big'), null);
  assert.equal(resolutionArgs('1x1'), null);
  assert.deepEqual(bitrateArgs('2000'), { bitrate_kbps: 2000 });
  assert.equal(bitrateArgs('fast'), null);
  assert.equal(bitrateArgs('0'), null);
});

test('resolutionChoices adds the current size in order', () => {
  assert.deepEqual(resolutionChoices('160x120'), ['160x120', '320x240', '640x480', '1280x720', '1920x1080']);
  assert.deepEqual(resolutionChoices('1280x720').length, 4);
  assert.deepEqual(resolutionChoices('800x600')[2], '800x600');
  assert.deepEqual(resolutionChoices(null).length, 4);
});

function report(entries) {
  return { forEach: (fn) => entries.forEach(fn) };
}

test('readStats finds the inbound video and the selected pair', () => {
  const s = readStats(
    report([
      { type: 'inbound-rtp', kind: 'audio', bytesReceived: 1 },
      {
        type: 'inbound-rtp',
        kind: 'video',
        timestamp: 2000,
        bytesReceived: 50000,
        framesDecoded: 60,
        frameWidth: 320,
        frameHeight: 240,
        framesPerSecond: 30,
      },
      { type: 'candidate-pair', id: 'p1', currentRoundTripTime: 0.5 },
      { type: 'candidate-pair', id: 'p2', currentRoundTripTime: 0.004 },
      { type: 'transport', selectedCandidatePairId: 'p2' },
    ]),
  );
  assert.equal(s.frameWidth, 320);
  assert.equal(s.framesPerSecond, 30);
  assert.equal(s.rttSeconds, 0.004);
  const empty = readStats(report([]));
  assert.equal(empty.frameWidth, null);
  assert.equal(empty.rttSeconds, null);
});

test('overlayStats computes bitrate from byte deltas and prefers the camera RTT', () => {
  const prev = { timestamp: 1000, bytesReceived: 0, framesDecoded: 0, rttSeconds: 0.002 };
  const sample = {
    timestamp: 3000,
    bytesReceived: 250000,
    framesDecoded: 60,
    frameWidth: 320,
    frameHeight: 240,
    framesPerSecond: null,
    rttSeconds: 0.002,
  };
  const browserOnly = overlayStats({ sample, prev });
  assert.equal(browserOnly.bitrateKbps, 1000);
  assert.equal(browserOnly.fps, 30, 'falls back to decoded-frame deltas');
  assert.equal(browserOnly.rttMs, 2);
  assert.equal(browserOnly.rttSource, 'browser');
  assert.equal(browserOnly.ttffMs, null);

  const telemetry = {
    sessions: [
      { label: 'v1', rtt_ms: 99, time_to_first_frame_ms: 1 },
      { label: 'v2', you: true, rtt_ms: 7.5, time_to_first_frame_ms: 420 },
    ],
  };
  const both = overlayStats({ sample: { ...sample, framesPerSecond: 29 }, prev, telemetry, pageTtffMs: 610 });
  assert.equal(both.fps, 29);
  assert.equal(both.rttMs, 7.5);
  assert.equal(both.rttSource, 'camera');
  assert.equal(both.ttffMs, 610, "the page's own measurement is what the person waited");
  assert.equal(both.cameraTtffMs, 420);
  assert.equal(overlayStats({ sample, telemetry }).ttffMs, 420);
  assert.equal(sessionOf({ sessions: [{ label: 'v1', rtt_ms: 99 }] }), null, 'no entry marked as this viewer');
  assert.equal(sessionOf(null), null);
});

test('overlayStats without a previous sample leaves rates unknown', () => {
  const s = overlayStats({ sample: { timestamp: 1, bytesReceived: 10, framesDecoded: 0, frameWidth: 0 } });
  assert.equal(s.bitrateKbps, null);
  assert.equal(s.fps, null);
  assert.equal(s.width, null);
});

test('figures read at a glance', () => {
  assert.equal(formatBitrate(812.4), '812 kbit/s');
  assert.equal(formatBitrate(1530), '1.5 Mbit/s');
  assert.equal(formatBitrate(12000), '12 Mbit/s');
  assert.equal(formatBitrate(null), '—');
  assert.equal(formatMs(3.2), '3 ms');
  assert.equal(formatMs(1450), '1.4 s');
  assert.equal(formatMs(undefined), '—');
  const rows = overlayRows({ width: 320, height: 240, fps: 29.7, bitrateKbps: 800, rttMs: 3, ttffMs: 420 });
  assert.deepEqual(
    rows.map((r) => r.value),
    ['320×240 · 30 fps', '800 kbit/s', '3 ms', '420 ms'],
  );
  assert.equal(overlayRows({}).at(0).value, '— · — fps');
});

test('snapshot file names carry the device and local time, and nothing unsafe', () => {
  const when = new Date(2024, 0, 5, 7, 8, 9);
  assert.equal(snapshotFileName('frontdoor', when), 'frontdoor-20240105-070809.jpg');
  assert.equal(snapshotFileName('../a b:c', when), '_a_b_c-20240105-070809.jpg');
  assert.equal(snapshotFileName('', when), 'rtcam-20240105-070809.jpg');
});

test('snapshot errors are sentences', () => {
  assert.equal(snapshotError(503, 'snapshot failed: timed out'), 'Snapshot failed: timed out.');
  assert.equal(snapshotError(500, ''), 'The snapshot failed (HTTP 500).');
});
