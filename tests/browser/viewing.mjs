#!/usr/bin/env node
// Opens the rtcam viewer page in headless Chromium and uses the viewing
// buttons under the video. Prints one JSON line on stdout; exit code 0 = pass,
// 1 = fail or timeout, 2 = bad usage.
//
//   node tests/browser/viewing.mjs --url URL [--resolve NAME] [--timeout MS] [--screenshot PREFIX]
//
// Once video plays: Fullscreen must be shown and make the stage the fullscreen
// element when clicked; a double click on the picture gives it back.
// Picture-in-picture must be shown (Chromium has the API); entering it is
// tried and reported (Debian's Chromium enters it headless). Talk: on a page
// that is not a secure context (the URL's host is neither localhost nor an IP
// of this machine: --resolve maps NAME to 127.0.0.1 for Chromium), the button
// must be disabled and the note beside it must link to the camera's https://
// address. With --screenshot: PREFIX-desktop.png (1280x800) and
// PREFIX-phone.png (390x844) of the live page.

import { parseArgs } from 'node:util';
import { DEFAULT_CHROMIUM, closeWithin, openBrowser } from './lib.mjs';

const USAGE =
  'usage: node tests/browser/viewing.mjs --url URL [--resolve NAME] [--timeout MS] [--screenshot PREFIX]';
const POLL_MS = 250;

function parseCli() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        url: { type: 'string' },
        resolve: { type: 'string' },
        timeout: { type: 'string', default: '30000' },
        screenshot: { type: 'string' },
        chromium: { type: 'string', default: DEFAULT_CHROMIUM },
      },
      strict: true,
    }));
  } catch (err) {
    console.error(`${err.message}\n${USAGE}`);
    process.exit(2);
  }
  const timeout = Number(values.timeout);
  if (!values.url || !Number.isInteger(timeout)) {
    console.error(USAGE);
    process.exit(2);
  }
  return { ...values, timeout, executablePath: values.chromium };
}

// Runs inside the page: what the viewing buttons show and what they did.
function viewingState() {
  const $ = (id) => document.getElementById(id);
  const note = $('talk-note');
  return {
    live: window.rtcam?.state === 'live' && $('video').readyState >= 2,
    secureContext: window.isSecureContext,
    fullscreenShown: !$('fullscreen').hidden,
    fullscreenPressed: $('fullscreen').getAttribute('aria-pressed'),
    fullscreenElement: document.fullscreenElement?.className ?? null,
    pipShown: !$('pip').hidden,
    pipDisabled: $('pip').disabled,
    pipElement: document.pictureInPictureElement?.id ?? null,
    talkShown: !$('talk').hidden,
    talkDisabled: $('talk').disabled,
    talkNote: note.hidden ? null : note.textContent,
    talkLink: note.hidden ? null : (note.querySelector('a')?.href ?? null),
    log: [...document.querySelectorAll('#log li')].map((li) => li.textContent).slice(-5),
  };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(page, deadline, what, check) {
  while (Date.now() < deadline) {
    const s = await page.evaluate(viewingState).catch(() => null);
    if (s && check(s)) return s;
    await sleep(POLL_MS);
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function main() {
  const opts = parseCli();
  let browser = null;
  let result = { ok: false };
  let exitCode = 1;
  try {
    browser = await openBrowser({
      executablePath: opts.executablePath,
      viewport: { width: 1280, height: 800 },
      extraArgs: opts.resolve ? [`--host-resolver-rules=MAP ${opts.resolve} 127.0.0.1`] : [],
    });
    const { page, consoleLines } = browser;
    const deadline = Date.now() + opts.timeout;
    await page.goto(opts.url, { waitUntil: 'domcontentloaded', timeout: opts.timeout });
    const first = await waitFor(page, deadline, 'live video', (s) => s.live);
    result = { ok: false, first };
    if (opts.screenshot) {
      await page.screenshot({ path: `${opts.screenshot}-desktop.png` });
      await page.setViewportSize({ width: 390, height: 844 });
      await sleep(500);
      await page.screenshot({ path: `${opts.screenshot}-phone.png`, fullPage: true });
      await page.setViewportSize({ width: 1280, height: 800 });
    }

    await page.click('#fullscreen');
    const full = await waitFor(page, deadline, 'fullscreen', (s) => s.fullscreenElement !== null && s.fullscreenPressed === 'true');
    if (opts.screenshot) await page.screenshot({ path: `${opts.screenshot}-fullscreen.png` });
    // The stage covers the button now: a double click on the picture leaves.
    await page.dblclick('#video');
    const back = await waitFor(page, deadline, 'leaving fullscreen', (s) => s.fullscreenElement === null && s.fullscreenPressed === 'false');
    result.fullscreen = { entered: full.fullscreenElement, pressed: full.fullscreenPressed, left: back.fullscreenPressed === 'false' };

    // Picture-in-picture: entered when headless Chromium allows it, reported either way.
    let pip = { shown: first.pipShown, entered: false };
    if (first.pipShown) {
      await waitFor(page, deadline, 'picture-in-picture enabled', (s) => !s.pipDisabled);
      await page.click('#pip');
      const until = Math.min(deadline, Date.now() + 3000);
      let s = null;
      while (Date.now() < until) {
        s = await page.evaluate(viewingState);
        if (s.pipElement) break;
        await sleep(POLL_MS);
      }
      pip = { shown: true, entered: s?.pipElement === 'video', log: s?.log };
      if (pip.entered) await page.click('#pip');
    }
    result.pip = pip;
    result.talk = {
      shown: first.talkShown,
      disabled: first.talkDisabled,
      note: first.talkNote,
      link: first.talkLink,
      secureContext: first.secureContext,
    };
    result.ok =
      first.fullscreenShown && result.fullscreen.left && result.fullscreen.pressed === 'true' && pip.shown;
    if (!result.ok) result.console = consoleLines;
    exitCode = result.ok ? 0 : 1;
  } catch (err) {
    result = { ...result, ok: false, reason: 'error', error: err.message, console: browser?.consoleLines };
  } finally {
    if (browser) await closeWithin(browser.close, 15000, exitCode);
  }
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(exitCode);
}

main();
