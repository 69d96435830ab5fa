import { test } from 'node:test';
import assert from 'node:assert/strict';
import { httpsAddress, talkBlocker, viewingFeatures } from './viewing.js';

const fn = () => {};

test('buttons appear only for the APIs the browser has', () => {
  const video = { parentElement: { requestFullscreen: fn }, requestPictureInPicture: fn };
  const doc = { fullscreenEnabled: true, pictureInPictureEnabled: true };
  assert.deepEqual(viewingFeatures(doc, video), { fullscreen: true, pip: true });
  // Firefox: fullscreen, no picture-in-picture API for pages.
  assert.deepEqual(viewingFeatures({ fullscreenEnabled: true }, { parentElement: { requestFullscreen: fn } }), {
    fullscreen: true,
    pip: false,
  });
  // An iframe without allow="fullscreen", or a video that forbids picture-in-picture.
  assert.equal(viewingFeatures({ ...doc, fullscreenEnabled: false }, video).fullscreen, false);
  assert.equal(viewingFeatures(doc, { ...video, disablePictureInPicture: true }).pip, false);
  assert.deepEqual(viewingFeatures(undefined, undefined), { fullscreen: false, pip: false });
});

test('Talk on a secure page is not blocked', () => {
  assert.equal(talkBlocker({ secure: true, hasMicrophoneApi: true, location: null, httpsPort: 8443 }), null);
  assert.match(talkBlocker({ secure: true, hasMicrophoneApi: false }).text, /cannot share a microphone/);
});

test('Talk over plain HTTP points at the HTTPS address, same page', () => {
  const location = { hostname: 'cam.local', pathname: '/', search: '?token=abc' };
  const b = talkBlocker({ secure: false, hasMicrophoneApi: false, location, httpsPort: 8443 });
  assert.match(b.text, /HTTPS/);
  assert.match(b.text, /accept its certificate/);
  assert.equal(b.url, 'https://cam.local:8443/?token=abc');
});

test('Talk over plain HTTP with no HTTPS door names the key', () => {
  const b = talkBlocker({ secure: false, hasMicrophoneApi: true, location: { hostname: 'x' }, httpsPort: null });
  assert.match(b.text, /https_listen/);
  assert.equal(b.url, null);
});

test('an IPv6 host keeps its brackets', () => {
  assert.equal(httpsAddress({ hostname: '[fd00::5]', pathname: '/', search: '' }, 8443), 'https://[fd00::5]:8443/');
  assert.equal(httpsAddress({ hostname: 'fd00::5', pathname: '/', search: '' }, 8443), 'https://[fd00::5]:8443/');
});
