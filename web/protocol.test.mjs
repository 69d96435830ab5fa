// Run with: node --test web/
import test from 'node:test';
import assert from 'node:assert/strict';

import {
  DEFAULT_PREFIX,
  ERROR_CODES,
  backoffDelay,
  byeMessage,
  candidateMessage,
  defaultBrokerUrl,
  encodePublishQos0,
  errorHint,
  iceServersStale,
  isEndOfCandidates,
  isValidDeviceId,
  isValidPrefix,
  isValidSid,
  newSid,
  normalizeIceServers,
  offerMessage,
  parseOutMessage,
  parseStatus,
  peerConfiguration,
  relayOnlyFrom,
  resolveSettings,
  audioOf,
  sessionTopics,
  statusTopic,
} from './protocol.js';

const httpLocation = { protocol: 'http:', host: '127.0.0.1:8080' };
const config = {
  device_id: 'cam1',
  prefix: 'rtcam',
  broker_url: null,
  ice_servers: [{ urls: ['stun:stun.example.test:3478'], username: '', credential: '' }],
  version: '0.1.0',
  video: { width: 640, height: 480, fps: 30 },
};

test('newSid yields valid, distinct ids of the requested length', () => {
  const seen = new Set();
  for (let i = 0; i < 200; i++) {
    const sid = newSid();
    assert.equal(sid.length, 16);
    assert.ok(isValidSid(sid), sid);
    seen.add(sid);
  }
  assert.equal(seen.size, 200);
  assert.equal(newSid(1).length, 1);
  assert.equal(newSid(64).length, 64);
  assert.throws(() => newSid(0), RangeError);
  assert.throws(() => newSid(65), RangeError);
});

test('newSid skips biased bytes instead of wrapping them', () => {
  // 248..255 would map onto the first symbols with a plain modulo.
  let calls = 0;
  const rng = (n) => {
    calls++;
    return Uint8Array.from({ length: n }, (_, i) => (calls === 1 ? 250 : i));
  };
  assert.equal(newSid(4, rng), 'ABCD');
  assert.equal(calls, 2);
});

test('isValidSid follows the 1-64 [A-Za-z0-9_-] rule', () => {
  assert.ok(isValidSid('a'));
  assert.ok(isValidSid('A-b_9'));
  assert.ok(isValidSid('x'.repeat(64)));
  assert.ok(!isValidSid(''));
  assert.ok(!isValidSid('x'.repeat(65)));
  assert.ok(!isValidSid('a/b'));
  assert.ok(!isValidSid('a+b'));
  assert.ok(!isValidSid('a#'));
  assert.ok(!isValidSid('a b'));
  assert.ok(!isValidSid(null));
});

test('topics are built from prefix, device id and sid', () => {
  assert.equal(statusTopic('rtcam', 'cam1'), 'rtcam/cam1/status');
  assert.deepEqual(sessionTopics('rtcam', 'cam1', 'abc'), {
    in: 'rtcam/cam1/session/abc/in',
    out: 'rtcam/cam1/session/abc/out',
  });
  assert.equal(statusTopic('site/cams', 'door'), 'site/cams/door/status');
});

test('device ids and prefixes must not contain wildcards or empty levels', () => {
  assert.ok(isValidDeviceId('cam1'));
  assert.ok(!isValidDeviceId(''));
  assert.ok(!isValidDeviceId('a/b'));
  assert.ok(!isValidDeviceId('+'));
  assert.ok(!isValidDeviceId('#'));
  assert.ok(isValidPrefix('rtcam'));
  assert.ok(isValidPrefix('site/cams'));
  assert.ok(!isValidPrefix(''));
  assert.ok(!isValidPrefix('/rtcam'));
  assert.ok(!isValidPrefix('rtcam/'));
  assert.ok(!isValidPrefix('a//b'));
  assert.ok(!isValidPrefix('a/+'));
});

test('defaultBrokerUrl uses the page origin and matches its security', () => {
  assert.equal(defaultBrokerUrl(httpLocation), 'ws://127.0.0.1:8080/mqtt');
  assert.equal(defaultBrokerUrl({ protocol: 'https:', host: 'cam.local' }), 'wss://cam.local/mqtt');
  assert.equal(defaultBrokerUrl(httpLocation, 'a b'), 'ws://127.0.0.1:8080/mqtt?token=a%20b');
});

test('resolveSettings uses config.json and the same-origin broker', () => {
  const r = resolveSettings(config, '', httpLocation);
  assert.ok(r.ok);
  assert.equal(r.settings.deviceId, 'cam1');
  assert.equal(r.settings.prefix, 'rtcam');
  assert.equal(r.settings.brokerUrl, 'ws://127.0.0.1:8080/mqtt');
  assert.deepEqual(r.settings.iceServers, [{ urls: ['stun:stun.example.test:3478'] }]);
  assert.equal(r.settings.version, '0.1.0');
});

test('?relay=1 asks for relay-only ICE; derived TURN credentials are refreshed near expiry', () => {
  assert.equal(relayOnlyFrom('?relay=1'), true);
  assert.equal(relayOnlyFrom('?relay=true&device=x'), true);
  assert.equal(relayOnlyFrom('?relay=0'), false);
  assert.equal(relayOnlyFrom(''), false);
  const turn = { urls: ['turn:t.test:3478'], username: '1600:cam1-viewer', credential: 'c' };
  const s = resolveSettings({ ...config, ice_servers: [turn], ice_servers_expire_at: 1600 }, '?relay=1', httpLocation).settings;
  assert.deepEqual(peerConfiguration(s), { iceServers: [turn], iceTransportPolicy: 'relay' });
  assert.equal(s.iceServersExpireAt, 1600);
  assert.equal(iceServersStale(s, 1000), false);
  assert.equal(iceServersStale(s, 1545), true);
  const plain = resolveSettings(config, '', httpLocation).settings;
  assert.equal(peerConfiguration(plain).iceTransportPolicy, 'all');
  assert.equal(iceServersStale(plain, 1e12), false);
});

test('resolveSettings prefers the configured broker_url', () => {
  const r = resolveSettings({ ...config, broker_url: 'wss://broker.test/mqtt' }, '', httpLocation);
  assert.equal(r.settings.brokerUrl, 'wss://broker.test/mqtt');
});

test('a token travels in offers only to a broker other than the camera\'s own /mqtt', () => {
  const own = resolveSettings({ ...config, mqtt_gate: true }, '?token=tok', httpLocation).settings;
  assert.equal(own.brokerUrl, 'ws://127.0.0.1:8080/mqtt?token=tok');
  assert.equal(own.tokenInOffers, false);
  // /mqtt forwarded to an external broker: only the offer carries the token to rtcam.
  assert.equal(resolveSettings(config, '?token=tok', httpLocation).settings.tokenInOffers, true);
  const other = resolveSettings({ ...config, broker_url: 'wss://broker.test/mqtt' }, '?token=tok', httpLocation).settings;
  assert.equal(other.tokenInOffers, true);
  assert.equal(resolveSettings(config, '', httpLocation).settings.tokenInOffers, false);
});

test('query parameters override config.json', () => {
  const r = resolveSettings(config, '?device=porch&broker=wss://b.test/ws&prefix=home', httpLocation);
  assert.ok(r.ok);
  assert.equal(r.settings.deviceId, 'porch');
  assert.equal(r.settings.brokerUrl, 'wss://b.test/ws');
  assert.equal(r.settings.prefix, 'home');
});

test('the page knows whether it watches the camera that served it', () => {
  const own = resolveSettings({ ...config, viewer_commands: 'all' }, '', httpLocation).settings;
  assert.equal(own.watchingServer, true);
  assert.equal(own.viewerCommands, 'all');
  const explicit = resolveSettings(config, '?device=cam1&broker=ws://127.0.0.1:8080/mqtt', httpLocation).settings;
  assert.equal(explicit.watchingServer, true);
  assert.equal(explicit.viewerCommands, 'unknown', 'an older daemon without viewer_commands');
  assert.equal(
    resolveSettings({ ...config, viewer_commands: 'read-only' }, '', httpLocation).settings.viewerCommands,
    'read-only',
  );
  for (const query of ['?device=porch', '?broker=wss://b.test/ws', '?prefix=home']) {
    const other = resolveSettings({ ...config, viewer_commands: 'all' }, query, httpLocation).settings;
    assert.equal(other.watchingServer, false, query);
    assert.equal(other.viewerCommands, 'unknown', query);
  }
  assert.equal(resolveSettings(null, '?device=porch&broker=wss://b.test/ws', httpLocation).settings.watchingServer, false);
});

test('without config.json both device and broker are required', () => {
  const r = resolveSettings(null, '?device=porch&broker=wss://b.test/ws', httpLocation);
  assert.ok(r.ok);
  assert.equal(r.settings.prefix, DEFAULT_PREFIX);
  assert.deepEqual(r.settings.iceServers, []);
  assert.equal(resolveSettings(null, '?device=porch', httpLocation).ok, false);
  assert.equal(resolveSettings(null, '', httpLocation).ok, false);
});

test('resolveSettings rejects unusable ids and broker schemes', () => {
  assert.equal(resolveSettings(config, '?device=a/b', httpLocation).ok, false);
  assert.equal(resolveSettings(config, '?device=%23', httpLocation).ok, false);
  assert.equal(resolveSettings(config, '?prefix=a/%2B', httpLocation).ok, false);
  assert.equal(resolveSettings(config, '?broker=http://x/mqtt', httpLocation).ok, false);
  assert.equal(resolveSettings({ ...config, device_id: '' }, '', httpLocation).ok, false);
});

test('normalizeIceServers drops empty credentials and junk entries', () => {
  assert.deepEqual(
    normalizeIceServers([
      { urls: 'stun:a.test', username: '', credential: '' },
      { urls: ['turn:b.test'], username: 'u', credential: 'p' },
      { urls: [] },
      null,
      'stun:c.test',
    ]),
    [{ urls: ['stun:a.test'] }, { urls: ['turn:b.test'], username: 'u', credential: 'p' }],
  );
  assert.deepEqual(normalizeIceServers(undefined), []);
});

test('parseStatus reads online/offline and tolerates junk', () => {
  assert.equal(parseStatus('{"state":"online","version":"0.1.0"}').state, 'online');
  assert.equal(parseStatus(new TextEncoder().encode('{"state":"offline"}')).state, 'offline');
  assert.equal(parseStatus('').state, 'unknown');
  assert.equal(parseStatus(new Uint8Array()).state, 'unknown');
  assert.equal(parseStatus('nope').state, 'unknown');
  assert.equal(parseStatus('{"state":1}').state, 'unknown');
});

test('parseOutMessage accepts the four device message types', () => {
  assert.deepEqual(parseOutMessage('{"type":"answer","sdp":"v=0"}'), {
    ok: true,
    msg: { type: 'answer', sdp: 'v=0' },
  });
  const cand = parseOutMessage(
    JSON.stringify({ type: 'candidate', candidate: 'candidate:1 1 udp 1 1.2.3.4 5 typ host', sdpMid: '0', sdpMLineIndex: 0 }),
  );
  assert.ok(cand.ok);
  const err = parseOutMessage('{"type":"error","code":"too_many_sessions","message":"full"}');
  assert.deepEqual(err.msg, { type: 'error', code: 'too_many_sessions', message: 'full' });
  assert.equal(parseOutMessage('{"type":"error","code":"internal"}').msg.message, '');
  assert.equal(parseOutMessage('{"type":"bye","reason":"shutdown"}').msg.reason, 'shutdown');
  assert.equal(parseOutMessage('{"type":"bye"}').msg.reason, '');
  assert.ok(parseOutMessage(new TextEncoder().encode('{"type":"bye"}')).ok);
});

test('parseOutMessage rejects malformed messages without throwing', () => {
  for (const bad of [
    '',
    'not json',
    '[]',
    'null',
    '42',
    '{}',
    '{"type":"offer","sdp":"v=0"}',
    '{"type":"answer"}',
    '{"type":"answer","sdp":""}',
    '{"type":"candidate"}',
    '{"type":"candidate","candidate":"x","sdpMLineIndex":-1}',
    '{"type":"candidate","candidate":"x","sdpMid":0}',
    '{"type":"error","message":"no code"}',
  ]) {
    const r = parseOutMessage(bad);
    assert.equal(r.ok, false, bad);
    assert.equal(typeof r.reason, 'string');
  }
});

test('end of candidates is an empty candidate string', () => {
  const end = parseOutMessage('{"type":"candidate","candidate":"","sdpMid":"0","sdpMLineIndex":0}');
  assert.ok(end.ok);
  assert.ok(isEndOfCandidates(end.msg));
  assert.ok(!isEndOfCandidates({ type: 'candidate', candidate: 'candidate:1' }));
});

test('candidateMessage mirrors the browser candidate and marks the end', () => {
  assert.deepEqual(candidateMessage({ candidate: 'candidate:abc', sdpMid: '0', sdpMLineIndex: 0 }), {
    type: 'candidate',
    candidate: 'candidate:abc',
    sdpMid: '0',
    sdpMLineIndex: 0,
  });
  assert.deepEqual(candidateMessage({ candidate: 'candidate:abc', sdpMid: 'v', sdpMLineIndex: 2 }, '0'), {
    type: 'candidate',
    candidate: 'candidate:abc',
    sdpMid: 'v',
    sdpMLineIndex: 2,
  });
  assert.deepEqual(candidateMessage(null, '0'), { type: 'candidate', candidate: '', sdpMid: '0', sdpMLineIndex: 0 });
  assert.equal(candidateMessage({ candidate: '', sdpMid: '0', sdpMLineIndex: 0 }).candidate, '');
});

test('offer and bye messages have the v1 shape', () => {
  assert.deepEqual(offerMessage('v=0\r\n'), { type: 'offer', sdp: 'v=0\r\n' });
  assert.deepEqual(offerMessage('v=0', 'tok'), { type: 'offer', sdp: 'v=0', token: 'tok' });
  assert.deepEqual(byeMessage(), { type: 'bye' });
});

test('every protocol error code has its own plain-words hint', () => {
  const hints = new Set();
  for (const code of ERROR_CODES) {
    const hint = errorHint(code);
    assert.ok(hint.length > 10, code);
    hints.add(hint);
  }
  assert.equal(hints.size, ERROR_CODES.length);
  assert.match(errorHint('too_many_sessions'), /maximum number of viewers; try again later/);
  assert.ok(errorHint('something_new').length > 0);
});

test('backoff starts at 2 s and grows to 10 s', () => {
  assert.deepEqual([0, 1, 2, 3, 4, 10, 100].map(backoffDelay), [2000, 4000, 8000, 10000, 10000, 10000, 10000]);
});

test('encodePublishQos0 builds an MQTT 3.1.1 QoS 0 PUBLISH', () => {
  assert.deepEqual(
    [...encodePublishQos0('a/b', '{"type":"bye"}')],
    [0x30, 2 + 3 + 14, 0, 3, ...Buffer.from('a/b'), ...Buffer.from('{"type":"bye"}')],
  );
  // Remaining length >= 128 takes a second length byte (little-endian base 128).
  const payload = 'x'.repeat(200);
  const packet = encodePublishQos0('t', payload);
  const remaining = 2 + 1 + 200;
  assert.deepEqual([...packet.slice(0, 6)], [0x30, (remaining % 128) | 0x80, Math.floor(remaining / 128), 0, 1, 0x74]);
  assert.equal(packet.length, 1 + 2 + remaining);
  // Multi-byte UTF-8 topics count bytes, not characters.
  assert.deepEqual([...encodePublishQos0('é', '').slice(0, 4)], [0x30, 4, 0, 2]);
});

// The control channel's helpers have their own file; importing it here means
// the one command the Makefile runs (node --test web/protocol.test.mjs) covers both.
import './control.test.mjs';

test('audio is asked for only when the serving camera has it', () => {
  assert.deepEqual(resolveSettings(config, '', httpLocation).settings.audio, { enabled: false, talkback: false });
  const withAudio = { ...config, audio: { enabled: true, talkback: true } };
  assert.deepEqual(resolveSettings(withAudio, '', httpLocation).settings.audio, { enabled: true, talkback: true });
  // Another camera, named in the query, may have no microphone.
  const other = resolveSettings(withAudio, '?device=porch&broker=wss://b.test/ws', httpLocation).settings;
  assert.deepEqual(other.audio, { enabled: false, talkback: false });
  assert.deepEqual(audioOf({ audio: { enabled: false, talkback: true } }), { enabled: false, talkback: false });
  assert.deepEqual(audioOf({ audio: 'yes' }), { enabled: false, talkback: false });
});
