#!/usr/bin/env node
// Opens the rtcam viewer page in headless Chromium and checks that live video
// is decoded at the expected size (or, with --expect-error, that the page
// reports a given signalling error). Prints one JSON line on stdout; exit code
// 0 = pass, 1 = fail or timeout, 2 = bad usage.
//
//   node tests/browser/view.mjs --url http://127.0.0.1:8080/ --width 640 --height 480 \
//        [--frames 30] [--timeout 20000] [--screenshot out.png] [--expect-error CODE]
//
// Uses the system Chromium (Debian's /usr/bin/chromium, or $CHROMIUM); it never
// downloads a browser.

import { parseArgs } from 'node:util';
import { DEFAULT_CHROMIUM, closeWithin, openBrowser } from './lib.mjs';

const USAGE =
  'usage: node tests/browser/view.mjs --url URL [--width W --height H] [--frames N] ' +
  '[--timeout MS] [--screenshot FILE] [--expect-error CODE] [--chromium PATH] [--chromium-arg ARG]...';

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
    executablePath: values.chromium,
    extraArgs: values['chromium-arg'],
  };
}

function usageError(message) {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

// Runs inside the page. Reads window.rtcam (kept current by web/app.js) and the
// inbound video report of the current peer connection.
async function samplePage() {
  const r = window.rtcam;
  const sample = {
    state: r?.state ?? document.body?.dataset.state ?? null,
    statusText: r?.statusText ?? document.getElementById('status')?.textContent ?? null,
    lastError: r?.lastError ?? null,
    sid: r?.sid ?? null,
    framesDecoded: 0,
    frameWidth: 0,
    frameHeight: 0,
  };
  if (r?.pc) {
    try {
      sample.iceTransportPolicy = r.pc.getConfiguration().iceTransportPolicy ?? null;
      const reports = await r.pc.getStats();
      const pairs = {};
      const candidates = {};
      let selectedPairId = null;
      let nominatedPairId = null;
      reports.forEach((s) => {
        if (s.type === 'inbound-rtp' && (s.kind ?? s.mediaType) === 'video') {
          sample.framesDecoded = s.framesDecoded ?? 0;
          sample.frameWidth = s.frameWidth ?? 0;
          sample.frameHeight = s.frameHeight ?? 0;
          sample.codecId = s.codecId;
        } else if (s.type === 'transport' && s.selectedCandidatePairId) {
          selectedPairId = s.selectedCandidatePairId;
        } else if (s.type === 'candidate-pair') {
          pairs[s.id] = s;
          if (s.nominated && s.state === 'succeeded') nominatedPairId = s.id;
        } else if (s.type === 'local-candidate' || s.type === 'remote-candidate') {
          candidates[s.id] = s;
        }
      });
      // The path the video takes: which kinds of candidates ICE settled on.
      const pair = pairs[selectedPairId ?? nominatedPairId];
      if (pair) {
        sample.localCandidateType = candidates[pair.localCandidateId]?.candidateType ?? null;
        sample.remoteCandidateType = candidates[pair.remoteCandidateId]?.candidateType ?? null;
      }
    } catch {
      // The page may be swapping peer connections between retries.
    }
  }
  return sample;
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
    await page.goto(opts.url, { waitUntil: 'domcontentloaded', timeout: opts.timeout });

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
          (opts.height === null || sample.frameHeight === opts.height);
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
      timeToFirstFrameMs: firstFrameAt === null ? null : firstFrameAt - started,
      elapsedMs: Date.now() - started,
      state: sample?.state ?? null,
      localCandidateType: sample?.localCandidateType ?? null,
      remoteCandidateType: sample?.remoteCandidateType ?? null,
      iceTransportPolicy: sample?.iceTransportPolicy ?? null,
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
