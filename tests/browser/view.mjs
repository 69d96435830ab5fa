#!/usr/bin/env node
// Opens the rtcam viewer page in headless Chromium and checks that live video
// is decoded at the expected size (or, with --expect-error, that the page
// reports a given signalling error). Prints one JSON line on stdout; exit code
// 0 = pass, 1 = fail or timeout, 2 = bad usage.
//
//   node tests/browser/view.mjs --url http://127.0.0.1:8080/ --width 640 --height 480 \
//        [--frames 30] [--timeout 20000] [--screenshot out.png] [--expect-error CODE]
//        [--offer-codecs vp8] [--expect-codec video/VP8]
//
// --offer-codecs keeps only the named video codecs (and their retransmission
// formats) in the page's offer, through setCodecPreferences on its transceiver:
// "vp8" makes Chromium offer what Firefox without OpenH264 offers, so the
// camera's VP8 fallback is what gets exercised. The report names the codec the
// browser decodes (mimeType from getStats).
//
// Uses the system Chromium (Debian's /usr/bin/chromium, or $CHROMIUM); it never
// downloads a browser.

import { parseArgs } from 'node:util';
import { DEFAULT_CHROMIUM, closeWithin, openBrowser, samplePage } from './lib.mjs';

const USAGE =
  'usage: node tests/browser/view.mjs --url URL [--width W --height H] [--frames N] ' +
  '[--timeout MS] [--screenshot FILE] [--expect-error CODE] [--offer-codecs LIST] ' +
  '[--expect-codec MIME] [--chromium PATH] [--chromium-arg ARG]...';

const POLL_MS = 250;

function parseCli() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        url: { type: 'string' },
        width: { type: 'string' },
        height: { type: 'string' },
        frames: { type: 'string', default: '30' },
        timeout: { type: 'string', default: '20000' },
        screenshot: { type: 'string' },
        'expect-error': { type: 'string' },
        'offer-codecs': { type: 'string' },
        'expect-codec': { type: 'string' },
        chromium: { type: 'string', default: DEFAULT_CHROMIUM },
        'chromium-arg': { type: 'string', multiple: true, default: [] },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (err) {
    usageError(err.message);
  }
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (!values.url) usageError('--url is required');
  const int = (name, min) => {
    if (values[name] === undefined) return null;
    const n = Number(values[name]);
    if (!Number.isInteger(n) || n < min) usageError(`--${name} must be an integer >= ${min}`);
    return n;
  };
  return {
    url: values.url,
    width: int('width', 1),
    height: int('height', 1),
    frames: int('frames', 1),
    timeout: int('timeout', 1),
    screenshot: values.screenshot ?? null,
    expectError: values['expect-error'] ?? null,
    offerCodecs: values['offer-codecs'] ? values['offer-codecs'].toLowerCase().split(',') : null,
    expectCodec: values['expect-codec'] ?? null,
    executablePath: values.chromium,
    extraArgs: values['chromium-arg'],
  };
}

function usageError(message) {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

// Runs in the page before its scripts: every video transceiver the page adds
// offers only `names` (plus rtx, which carries their retransmissions).
function restrictOfferCodecs(names) {
  const add = RTCPeerConnection.prototype.addTransceiver;
  RTCPeerConnection.prototype.addTransceiver = function (kind, init) {
    const transceiver = add.call(this, kind, init);
    if (kind === 'video') {
      const keep = (RTCRtpReceiver.getCapabilities('video')?.codecs ?? []).filter((c) => {
        const name = c.mimeType.split('/')[1].toLowerCase();
        return names.includes(name) || name === 'rtx';
      });
      transceiver.setCodecPreferences(keep);
    }
    return transceiver;
  };
}

async function main() {
  const opts = parseCli();
  let browser = null;
  let page = null;
  let exitCode = 1;
  let result = { ok: false };
  let consoleLines = [];
  let pageErrors = [];

  try {
    browser = await openBrowser({ executablePath: opts.executablePath, extraArgs: opts.extraArgs });
    ({ page, consoleLines, pageErrors } = browser);

    const started = Date.now();
    const deadline = started + opts.timeout;
    if (opts.offerCodecs) await page.addInitScript(restrictOfferCodecs, opts.offerCodecs);
    await page.goto(opts.url, { waitUntil: 'domcontentloaded', timeout: opts.timeout });
    // The page and its scripts are in (the rest of the first frame's wait is MQTT, ICE, DTLS, video).
    const pageLoadMs = Date.now() - started;

    let firstFrameAt = null;
    let sample = null;
    let passed = false;
    while (Date.now() < deadline) {
      sample = await page.evaluate(samplePage).catch((err) => ({ evaluateError: err.message }));
      if (sample.framesDecoded > 0 && firstFrameAt === null) firstFrameAt = Date.now();

      if (opts.expectError) {
        passed = sample.lastError?.code === opts.expectError;
      } else {
        passed =
          sample.framesDecoded >= opts.frames &&
          sample.frameWidth > 0 &&
          (opts.width === null || sample.frameWidth === opts.width) &&
          (opts.height === null || sample.frameHeight === opts.height) &&
          (opts.expectCodec === null || sample.mimeType === opts.expectCodec);
      }
      if (passed) break;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }

    result = {
      ok: passed,
      ...(opts.expectError ? { expectedError: opts.expectError } : {}),
      framesDecoded: sample?.framesDecoded ?? 0,
      frameWidth: sample?.frameWidth ?? 0,
      frameHeight: sample?.frameHeight ?? 0,
      mimeType: sample?.mimeType ?? null,
      pageLoadMs,
      timeToFirstFrameMs: firstFrameAt === null ? null : firstFrameAt - started,
      elapsedMs: Date.now() - started,
      state: sample?.state ?? null,
      localCandidateType: sample?.localCandidateType ?? null,
      remoteCandidateType: sample?.remoteCandidateType ?? null,
      iceTransportPolicy: sample?.iceTransportPolicy ?? null,
      packetsLost: sample?.packetsLost ?? 0,
      nackCount: sample?.nackCount ?? 0,
      pliCount: sample?.pliCount ?? 0,
    };
    if (!passed || opts.expectError) {
      result.statusText = sample?.statusText ?? null;
      result.lastError = sample?.lastError ?? null;
    }
    if (!passed) {
      result.reason = 'timeout';
      if (sample?.evaluateError) result.evaluateError = sample.evaluateError;
      result.console = consoleLines;
    }
    if (pageErrors.length) result.pageErrors = pageErrors;
    exitCode = passed ? 0 : 1;

    if (opts.screenshot) {
      await page.screenshot({ path: opts.screenshot }).catch((err) => {
        console.error(`screenshot failed: ${err.message}`);
      });
    }
  } catch (err) {
    result = { ok: false, reason: 'error', error: err.message, console: consoleLines };
    if (pageErrors.length) result.pageErrors = pageErrors;
    exitCode = 1;
  } finally {
    if (browser) await closeWithin(browser.close, 15000, exitCode);
  }

  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(exitCode);
}

main();
