#!/usr/bin/env node
// Opens the rtcam viewer page in headless Chromium against a camera with audio
// and checks the sound both ways. Prints one JSON line on stdout; exit code
// 0 = pass, 1 = fail or timeout, 2 = bad usage.
//
//   node tests/browser/audio.mjs --url URL [--timeout MS] [--talk-ms MS] [--spki HASH]
//
// Receiving: once video plays, the page's inbound-rtp audio report must show
// samples arriving (totalSamplesReceived growing by at least a second's worth
// over two seconds) with little concealment (concealedSamples, the samples
// the jitter buffer had to invent for lost or late packets, under 20%).
// With --talk-ms: clicks the page's Talk button (Chromium's fake microphone,
// a beep, with its permission granted by flag), keeps talking that long and
// reports the outbound audio; the Rust side checks the board played it.
// With --spki: Chromium trusts the HTTPS certificate whose public key has this
// SHA-256 (base64), as rtcam prints it, so an https:// URL on another machine's
// address is a secure context without a CA. The report says whether it was.

import { parseArgs } from 'node:util';
import { DEFAULT_CHROMIUM, closeWithin, openBrowser } from './lib.mjs';

const USAGE = 'usage: node tests/browser/audio.mjs --url URL [--timeout MS] [--talk-ms MS] [--spki HASH]';
const POLL_MS = 250;

function parseCli() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        url: { type: 'string' },
        timeout: { type: 'string', default: '30000' },
        'talk-ms': { type: 'string' },
        spki: { type: 'string' },
        chromium: { type: 'string', default: DEFAULT_CHROMIUM },
      },
      strict: true,
    }));
  } catch (err) {
    console.error(`${err.message}\n${USAGE}`);
    process.exit(2);
  }
  const timeout = Number(values.timeout);
  const talkMs = values['talk-ms'] === undefined ? null : Number(values['talk-ms']);
  if (!values.url || !Number.isInteger(timeout) || (talkMs !== null && !Number.isInteger(talkMs))) {
    console.error(USAGE);
    process.exit(2);
  }
  return { url: values.url, timeout, talkMs, spki: values.spki ?? null, executablePath: values.chromium };
}

// Runs inside the page: the current session's audio and video figures.
async function samplePage() {
  const r = window.rtcam;
  const out = {
    framesDecoded: 0,
    audio: null,
    outbound: null,
    talking: !!r?.talking,
    unmuteShown: !document.getElementById('unmute').hidden,
    talkShown: !document.getElementById('talk').hidden,
    origin: location.origin,
    secureContext: window.isSecureContext,
  };
  if (!r?.pc) return out;
  try {
    const reports = await r.pc.getStats();
    reports.forEach((s) => {
      const kind = s.kind ?? s.mediaType;
      if (s.type === 'inbound-rtp' && kind === 'video') out.framesDecoded = s.framesDecoded ?? 0;
      if (s.type === 'inbound-rtp' && kind === 'audio') {
        out.audio = {
          packetsReceived: s.packetsReceived ?? 0,
          totalSamplesReceived: s.totalSamplesReceived ?? 0,
          concealedSamples: s.concealedSamples ?? 0,
        };
      }
      if (s.type === 'outbound-rtp' && kind === 'audio') {
        out.outbound = { packetsSent: s.packetsSent ?? 0, bytesSent: s.bytesSent ?? 0 };
      }
    });
  } catch {
    // The page may be swapping peer connections between retries.
  }
  return out;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const opts = parseCli();
  let browser = null;
  let result = { ok: false };
  let exitCode = 1;
  try {
    browser = await openBrowser({
      executablePath: opts.executablePath,
      extraArgs: [
        '--use-fake-device-for-media-stream',
        '--use-fake-ui-for-media-stream',
        ...(opts.spki ? [`--ignore-certificate-errors-spki-list=${opts.spki}`] : []),
      ],
    });
    const { page, consoleLines } = browser;
    const deadline = Date.now() + opts.timeout;
    await page.goto(opts.url, { waitUntil: 'domcontentloaded', timeout: opts.timeout });

    // Wait for the picture and the first sound.
    let first = null;
    while (Date.now() < deadline) {
      const s = await page.evaluate(samplePage).catch(() => null);
      if (s && s.framesDecoded > 0 && s.audio?.totalSamplesReceived > 0) {
        first = s;
        break;
      }
      await sleep(POLL_MS);
    }
    if (!first) throw new Error(`no audio and video within ${opts.timeout} ms`);
    const firstAt = Date.now();
    await sleep(2000);
    const second = await page.evaluate(samplePage);
    const seconds = (Date.now() - firstAt) / 1000;
    const grown = second.audio.totalSamplesReceived - first.audio.totalSamplesReceived;
    const concealed = second.audio.concealedSamples - first.audio.concealedSamples;
    const concealedRatio = grown > 0 ? concealed / grown : 1;
    result = {
      ok: false,
      unmuteShown: second.unmuteShown,
      talkShown: second.talkShown,
      origin: second.origin,
      secureContext: second.secureContext,
      framesDecoded: second.framesDecoded,
      audio: second.audio,
      samplesPerSecond: Math.round(grown / seconds),
      concealedRatio: Math.round(concealedRatio * 1000) / 1000,
    };
    // 48 kHz: at least half the real rate arriving, and under 20% invented.
    const receiving = grown >= 24000 * seconds && concealedRatio < 0.2;
    let talking = true;
    if (opts.talkMs !== null) {
      await page.click('#talk');
      let s = null;
      while (Date.now() < deadline) {
        s = await page.evaluate(samplePage);
        if (s.talking && s.outbound?.packetsSent > 0) break;
        await sleep(POLL_MS);
      }
      await sleep(opts.talkMs);
      s = await page.evaluate(samplePage);
      result.outbound = s.outbound;
      talking = s.talking && s.outbound?.packetsSent > 0;
      // Still in the call when the Rust side reads the board's counter.
      process.stdout.write(JSON.stringify({ talked: true, outbound: s.outbound }) + '\n');
    }
    result.ok = receiving && talking && result.unmuteShown;
    if (!result.ok) result.console = consoleLines;
    exitCode = result.ok ? 0 : 1;
  } catch (err) {
    result = { ok: false, reason: 'error', error: err.message, console: browser?.consoleLines };
  } finally {
    if (browser) await closeWithin(browser.close, 15000, exitCode);
  }
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(exitCode);
}

main();
