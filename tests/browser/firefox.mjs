#!/usr/bin/env node
// Opens the rtcam viewer page in headless Firefox ESR, driven over WebDriver
// BiDi with puppeteer-core, and checks that live video is decoded in whichever
// codec Firefox negotiates (without network access to fetch its OpenH264
// plugin it offers no H.264, so the camera answers with its VP8 fallback).
// Prints one JSON line on stdout; exit code 0 = pass, 1 = fail or timeout,
// 2 = bad usage.
//
//   node tests/browser/firefox.mjs --url http://127.0.0.1:8080/ [--frames 30] \
//        [--timeout 30000] [--firefox /usr/bin/firefox-esr]
//
// Uses the system Firefox ESR (Debian's firefox-esr, or $FIREFOX); it never
// downloads a browser.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import puppeteer from 'puppeteer-core';
import { closeWithin, samplePage } from './lib.mjs';

const USAGE =
  'usage: node tests/browser/firefox.mjs --url URL [--frames N] [--timeout MS] [--firefox PATH]';
const POLL_MS = 250;

function parseCli() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        url: { type: 'string' },
        frames: { type: 'string', default: '30' },
        timeout: { type: 'string', default: '30000' },
        firefox: { type: 'string', default: process.env.FIREFOX || '/usr/bin/firefox-esr' },
      },
      strict: true,
    }));
  } catch (err) {
    usageError(err.message);
  }
  if (!values.url) usageError('--url is required');
  const int = (name) => {
    const n = Number(values[name]);
    if (!Number.isInteger(n) || n < 1) usageError(`--${name} must be an integer >= 1`);
    return n;
  };
  return { url: values.url, frames: int('frames'), timeout: int('timeout'), firefox: values.firefox };
}

function usageError(message) {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

// Preferences for a test browser on a machine without network access.
const PREFS = {
  // Host candidates as addresses, not mDNS names: the camera does not resolve
  // mDNS, and on a test machine there is no responder anyway.
  'media.peerconnection.ice.obfuscate_host_addresses': false,
  // The camera may be on this very host (the test), reached over loopback.
  'media.peerconnection.ice.loopback': true,
  'media.autoplay.default': 0,
  'media.autoplay.blocking_policy': 0,
  // No update, telemetry or plugin downloads: nothing is reachable, and the
  // attempts only slow start-up down.
  'app.update.enabled': false,
  'datareporting.policy.dataSubmissionEnabled': false,
  'toolkit.telemetry.enabled': false,
  'media.gmp-manager.updateEnabled': false,
  'network.captive-portal-service.enabled': false,
  'browser.shell.checkDefaultBrowser': false,
};

async function main() {
  const opts = parseCli();
  const profile = await mkdtemp(join(tmpdir(), 'rtcam-firefox-'));
  let browser = null;
  let exitCode = 1;
  let result = { ok: false };
  const consoleLines = [];
  const close = async () => {
    if (browser) {
      const b = browser;
      browser = null;
      // Leaving the page says bye to the camera (its pagehide handler).
      const pages = await b.pages().catch(() => []);
      for (const p of pages) await p.goto('about:blank', { timeout: 3000 }).catch(() => {});
      await b.close().catch(() => {});
    }
    await rm(profile, { recursive: true, force: true }).catch(() => {});
  };
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.once(sig, () => {
      close().finally(() => process.exit(130));
    });
  }

  try {
    const started = Date.now();
    const deadline = started + opts.timeout;
    browser = await puppeteer.launch({
      browser: 'firefox',
      protocol: 'webDriverBiDi',
      executablePath: opts.firefox,
      headless: true,
      userDataDir: profile,
      extraPrefsFirefox: PREFS,
      timeout: opts.timeout,
    });
    const launchedMs = Date.now() - started;
    const page = (await browser.pages())[0] ?? (await browser.newPage());
    page.on('console', (msg) => consoleLines.push(`[${msg.type()}] ${msg.text()}`));
    page.on('pageerror', (err) => consoleLines.push(`[pageerror] ${err.message}`));
    await page.goto(opts.url, { waitUntil: 'domcontentloaded', timeout: opts.timeout });

    let sample = null;
    let passed = false;
    let firstFrameAt = null;
    while (Date.now() < deadline) {
      sample = await page.evaluate(samplePage).catch((err) => ({ evaluateError: err.message }));
      if (sample.framesDecoded > 0 && firstFrameAt === null) firstFrameAt = Date.now();
      passed = sample.framesDecoded >= opts.frames && sample.frameWidth > 0;
      if (passed) break;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
    result = {
      ok: passed,
      browser: await browser.version(),
      framesDecoded: sample?.framesDecoded ?? 0,
      frameWidth: sample?.frameWidth ?? 0,
      frameHeight: sample?.frameHeight ?? 0,
      mimeType: sample?.mimeType ?? null,
      launchMs: launchedMs,
      timeToFirstFrameMs: firstFrameAt === null ? null : firstFrameAt - started,
      elapsedMs: Date.now() - started,
      state: sample?.state ?? null,
    };
    if (!passed) {
      result.reason = 'timeout';
      result.statusText = sample?.statusText ?? null;
      result.lastError = sample?.lastError ?? null;
      if (sample?.evaluateError) result.evaluateError = sample.evaluateError;
      result.console = consoleLines;
    }
    exitCode = passed ? 0 : 1;
  } catch (err) {
    result = { ok: false, reason: 'error', error: err.message, console: consoleLines };
    exitCode = 1;
  } finally {
    await closeWithin(close, 15000, exitCode);
  }
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(exitCode);
}

main();
