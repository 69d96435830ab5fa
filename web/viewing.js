// What the viewing buttons under the video need to decide: which of them this
// browser can offer, and whether Talk can work on this page. Nothing here
// touches the DOM; the page passes in what the browser exposes, and the node
// tests pass in what other browsers would.

/** Which of fullscreen and picture-in-picture this browser offers for `video`.
 * `doc` and `video` need only the properties the standard APIs define; Safari
 * on iPhone has neither for a video element (its own controls go fullscreen). */
export function viewingFeatures(doc, video) {
  return {
    fullscreen:
      doc?.fullscreenEnabled === true && typeof video?.parentElement?.requestFullscreen === 'function',
    pip:
      doc?.pictureInPictureEnabled === true &&
      typeof video?.requestPictureInPicture === 'function' &&
      video?.disablePictureInPicture !== true,
  };
}

/** Why Talk cannot work on this page, as a sentence saying what to do, or null
 * when it can. Browsers give the microphone only to a secure context: HTTPS,
 * or http://localhost on the machine itself. `httpsPort` is the camera's
 * HTTPS door from config.json (null: it has none). */
export function talkBlocker({ secure, hasMicrophoneApi, location, httpsPort }) {
  if (secure) {
    return hasMicrophoneApi ? null : { text: 'This browser cannot share a microphone, so Talk is off.', url: null };
  }
  if (!Number.isInteger(httpsPort)) {
    return {
      text:
        'Talk needs this page over HTTPS, and the camera serves none: set [http] https_listen ' +
        'in its config, then open its https:// address.',
      url: null,
    };
  }
  const url = httpsAddress(location, httpsPort);
  return {
    text:
      'Talk needs this page over HTTPS (browsers give the microphone only to secure pages). ' +
      "Open the camera's https:// address and accept its certificate:",
    url,
  };
}

/** This page's address on the camera's HTTPS door: same host, path and query.
 * Browsers give an IPv6 `hostname` in brackets already; a bare one gets them. */
export function httpsAddress(location, port) {
  const h = location.hostname;
  const host = h.includes(':') && !h.startsWith('[') ? `[${h}]` : h;
  return `https://${host}:${port}${location.pathname ?? '/'}${location.search ?? ''}`;
}
