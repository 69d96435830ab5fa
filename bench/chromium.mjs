// Glass-to-glass latency in headless Chromium: opens rtcam's own viewer page, and for every
// frame the browser presents (requestVideoFrameCallback) copies the top strip to a canvas, reads
// the capture-time barcode that RTCAM_BENCH_STAMP=1 puts there (src/media/stamp.rs) and
// subtracts it from Date.now(). Prints one JSON line: {"latencies_ms":[...],"unreadable":n}.
// Then, when SESSIONS > 0, time to first frame: the page is loaded SESSIONS times, and each
// time the span from the page's `rtcam:offer-sent` mark to the first presented frame is taken
// ({"ttff_ms":[...]} on the same line).
//
//   node bench/chromium.mjs URL SECONDS [SESSIONS] [GAP_MS]
//
// Uses the Chromium launch of the browser tests (tests/browser, `npm ci` there first).

import { openBrowser, closeWithin } from '../tests/browser/lib.mjs';

const [url, secondsArg, sessionsArg, gapArg] = process.argv.slice(2);
const seconds = Number(secondsArg || 20);
const sessions = Number(sessionsArg || 0);
const gapMs = Number(gapArg || 700);

// Runs in the page: milliseconds from the offer leaving the page to the first frame presented.
function firstFrame() {
  return new Promise((resolve, reject) => {
    const video = document.getElementById('video');
    const timer = setTimeout(() => reject(new Error('no frame in 10 s')), 10000);
    video.requestVideoFrameCallback((now) => {
      clearTimeout(timer);
      const mark = performance.getEntriesByName('rtcam:offer-sent')[0];
      if (!mark) reject(new Error('the page set no rtcam:offer-sent mark'));
      else resolve(now - mark.startTime);
    });
  });
}

// Runs in the page. Must match src/media/stamp.rs: 48 blocks of 24x32 px, 40 bits of ms and an
// 8-bit checksum (XOR of the five bytes, starting at 0x5a), most significant bit first.
function collect(seconds) {
  const BITS = 48, BW = 24, BH = 32, MS_BITS = 40;
  const video = document.getElementById('video');
  const canvas = document.createElement('canvas');
  canvas.width = BITS * BW;
  canvas.height = BH;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const out = { latencies_ms: [], unreadable: 0 };
  return new Promise((resolve) => {
    const end = performance.now() + seconds * 1000;
    const onFrame = () => {
      // The clock first: the age is measured when the frame is presented.
      const now = Date.now();
      ctx.drawImage(video, 0, 0, BITS * BW, BH, 0, 0, BITS * BW, BH);
      const px = ctx.getImageData(0, 0, BITS * BW, BH).data;
      let word = 0n;
      for (let bit = 0; bit < BITS; bit++) {
        let sum = 0, n = 0;
        for (let y = BH / 4; y < (BH * 3) / 4; y++) {
          for (let x = bit * BW + BW / 4; x < bit * BW + (BW * 3) / 4; x++) {
            const i = (y * BITS * BW + x) * 4;
            sum += 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2];
            n++;
          }
        }
        word = (word << 1n) | (sum / n > 128 ? 1n : 0n);
      }
      const mask = (1n << BigInt(MS_BITS)) - 1n;
      const ms = word & mask;
      let check = 0x5an;
      for (let i = 0n; i < 5n; i++) check ^= (ms >> (8n * i)) & 0xffn;
      if (word >> BigInt(MS_BITS) === check) {
        const d = (BigInt(now) - ms) & mask;
        out.latencies_ms.push(Number(d > mask / 2n ? d - mask - 1n : d));
      } else {
        out.unreadable++;
      }
      if (performance.now() < end) video.requestVideoFrameCallback(onFrame);
      else resolve(out);
    };
    video.requestVideoFrameCallback(onFrame);
  });
}

const browser = await openBrowser({ viewport: { width: 1400, height: 1000 } });
let code = 1;
try {
  await browser.page.goto(url, { waitUntil: 'domcontentloaded', timeout: 15000 });
  // Wait for playing video before measuring: set-up time is the other benchmark's business.
  await browser.page.waitForFunction(
    () => { const v = document.getElementById('video'); return v && v.readyState >= 2 && v.videoWidth > 0; },
    null, { timeout: 20000 },
  );
  await browser.page.waitForTimeout(1000);
  const result = await browser.page.evaluate(collect, seconds);
  result.ttff_ms = [];
  for (let i = 0; i < sessions; i++) {
    // The gap lets rtcam's keyframe limiter (keyframe_min_interval_ms) forget the last viewer,
    // as for a viewer arriving alone; loading the page again ends the previous session.
    await browser.page.waitForTimeout(gapMs);
    await browser.page.goto(url, { waitUntil: 'domcontentloaded', timeout: 15000 });
    result.ttff_ms.push(await browser.page.evaluate(firstFrame));
  }
  console.log(JSON.stringify(result));
  code = 0;
} catch (err) {
  console.error(`chromium: ${err.message}`);
  for (const l of browser.consoleLines.slice(-20)) console.error(l);
}
await closeWithin(browser.close, 5000, code);
process.exit(code);
