// Shared by the browser test scripts: start the system Chromium headless with
// the flags WebRTC on loopback needs, collect the page's console, and tear
// everything down so the camera is told the viewer left.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const DEFAULT_CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/**
 * Opens a browser with one page. `viewport` is { width, height }; `mobile`
 * turns on touch and the mobile viewport meta handling, as on a phone.
 * Returns { page, consoleLines, pageErrors, close }.
 */
export async function openBrowser({ executablePath = DEFAULT_CHROMIUM, extraArgs = [], viewport, mobile = false }) {
  const userDataDir = await mkdtemp(join(tmpdir(), 'rtcam-chromium-'));
  const consoleLines = [];
  const pageErrors = [];
  let context = null;
  let page = null;

  const close = async () => {
    if (page) {
      // Leaving the page fires its pagehide handler, which says bye to the
      // camera; otherwise the viewer slot stays taken until ICE times out and
      // a test run right after this one could be refused.
      const p = page;
      page = null;
      await p.goto('about:blank', { timeout: 3000 }).catch(() => {});
    }
    if (context) {
      const c = context;
      context = null;
      await c.close().catch(() => {});
    }
    await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
  };
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.once(sig, () => {
      close().finally(() => process.exit(130));
    });
  }

  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      viewport: viewport ?? { width: 800, height: 900 },
      isMobile: mobile,
      hasTouch: mobile,
      acceptDownloads: true,
      args: [
        '--headless=new',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--autoplay-policy=no-user-gesture-required',
        // Lets ICE use 127.0.0.1 when the test runs with the camera on the same
        // host and no other interface is up.
        '--allow-loopback-in-peer-connection',
        ...extraArgs,
      ],
    });
  } catch (err) {
    await close();
    throw err;
  }
  page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (msg) => {
    const line = `[${msg.type()}] ${msg.text()}`;
    consoleLines.push(line);
    if (msg.type() === 'error') console.error(`page console: ${line}`);
  });
  page.on('pageerror', (err) => {
    pageErrors.push(err.message);
    consoleLines.push(`[pageerror] ${err.message}`);
    console.error(`page error: ${err.message}`);
  });
  return { page, consoleLines, pageErrors, close };
}

/**
 * Closes the browser but never hangs the test run on one that refuses to go.
 */
export async function closeWithin(close, ms, exitCode) {
  const guard = setTimeout(() => {
    console.error('browser did not close in time');
    process.exit(exitCode || 1);
  }, ms);
  await close();
  clearTimeout(guard);
}

// Runs inside the page. Reads window.rtcam (kept current by web/app.js) and the
// inbound video report of the current peer connection.
export async function samplePage() {
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
          // What the browser did about loss: the lossy-link test reads these.
          sample.packetsLost = s.packetsLost ?? 0;
          sample.nackCount = s.nackCount ?? 0;
          sample.pliCount = s.pliCount ?? 0;
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
      if (sample.codecId) sample.mimeType = reports.get(sample.codecId)?.mimeType ?? null;
      // A browser whose inbound report lacks the size: the video element knows it.
      if (!sample.frameWidth) {
        const video = document.querySelector('video');
        sample.frameWidth = video?.videoWidth ?? 0;
        sample.frameHeight = video?.videoHeight ?? 0;
      }
    } catch {
      // The page may be swapping peer connections between retries.
    }
  }
  return sample;
}
