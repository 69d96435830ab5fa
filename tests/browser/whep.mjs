#!/usr/bin/env node
// Plays rtcam's WHEP door in headless Chromium with a WHEP player nobody here
// wrote: @eyevinn/webrtc-player (its "whep" adapter), bundled for the browser
// with esbuild. The page is the test's own, served from another origin (a
// loopback port of this script's), so the player's requests are cross-origin
// as a dashboard's would be. Prints one JSON line on stdout; exit code 0 =
// frames decoded (and the player's DELETE ended the session), 1 = fail or
// timeout, 2 = bad usage.
//
//   node tests/browser/whep.mjs --whep http://127.0.0.1:8080/whep --token JWT \
//        [--frames 30] [--timeout 30000]

import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';
import { DEFAULT_CHROMIUM, closeWithin, openBrowser } from './lib.mjs';

const USAGE =
  'usage: node tests/browser/whep.mjs --whep URL [--token JWT] [--frames N] [--timeout MS]';

function parseCli() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        whep: { type: 'string' },
        token: { type: 'string' },
        frames: { type: 'string', default: '30' },
        timeout: { type: 'string', default: '30000' },
        chromium: { type: 'string', default: DEFAULT_CHROMIUM },
      },
      strict: true,
    }));
  } catch (err) {
    console.error(`${err.message}\n${USAGE}`);
    process.exit(2);
  }
  if (!values.whep) {
    console.error(`--whep is required\n${USAGE}`);
    process.exit(2);
  }
  return {
    whep: values.whep,
    token: values.token ?? null,
    frames: Number(values.frames),
    timeout: Number(values.timeout),
    executablePath: values.chromium,
  };
}

// The player as a browser script: the package ships CommonJS for bundlers.
async function bundlePlayer() {
  const require = createRequire(import.meta.url);
  const out = await build({
    entryPoints: [require.resolve('@eyevinn/webrtc-player')],
    bundle: true,
    format: 'iife',
    globalName: 'WebRTCPlayerLib',
    platform: 'browser',
    write: false,
    logLevel: 'silent',
  });
  return out.outputFiles[0].text;
}

function pageHtml(opts) {
  // The player gets no STUN server: everything is on loopback, and its
  // default (a public STUN server) is not reachable from a test.
  return `<!doctype html><html><body>
<video id="v" autoplay muted playsinline></video>
<script src="/player.js"></script>
<script>
  window.whep = { error: null, events: [] };
  const player = new WebRTCPlayerLib.WebRTCPlayer({
    video: document.getElementById('v'), type: 'whep', iceServers: [], debug: true,
  });
  for (const e of ['no-media', 'peer-connection-failed', 'initial-connection-failed', 'connect-error']) {
    player.on(e, () => window.whep.events.push(e));
  }
  window.player = player;
  player.load(new URL(${JSON.stringify(opts.whep)}), ${JSON.stringify(opts.token ? `Bearer ${opts.token}` : undefined)})
    .catch((e) => { window.whep.error = String(e); });
</script></body></html>`;
}

async function sample(page) {
  return page.evaluate(async () => {
    const out = { framesDecoded: 0, frameWidth: 0, frameHeight: 0, codec: null, events: window.whep.events, error: window.whep.error };
    const pc = window.player?.peer;
    if (!pc || typeof pc.getStats !== 'function') return out;
    out.connectionState = pc.connectionState;
    const stats = await pc.getStats();
    const codecs = {};
    stats.forEach((s) => { if (s.type === 'codec') codecs[s.id] = s.mimeType; });
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp' && (s.kind ?? s.mediaType) === 'video') {
        out.framesDecoded = s.framesDecoded ?? 0;
        out.frameWidth = s.frameWidth ?? 0;
        out.frameHeight = s.frameHeight ?? 0;
        out.codec = codecs[s.codecId] ?? null;
      }
    });
    out.resource = window.player?.adapter?.resource ?? null;
    return out;
  });
}

async function main() {
  const opts = parseCli();
  const player = await bundlePlayer();
  const html = pageHtml(opts);
  const server = createServer((req, res) => {
    if (req.url === '/player.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      res.end(player);
    } else {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(html);
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${server.address().port}`;
  const { page, consoleLines, close } = await openBrowser({ executablePath: opts.executablePath });
  let report = { ok: false };
  try {
    await page.goto(`${origin}/`);
    const deadline = Date.now() + opts.timeout;
    let last = null;
    while (Date.now() < deadline) {
      last = await sample(page);
      if (last.framesDecoded >= opts.frames) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    report = { ...last, origin, ok: (last?.framesDecoded ?? 0) >= opts.frames };
    if (report.ok) {
      // The player ends its session with DELETE on the resource it was given.
      await page.evaluate(() => window.player.unload());
      report.unloaded = true;
    }
  } catch (err) {
    report = { ok: false, error: String(err) };
  }
  if (!report.ok) console.error(consoleLines.slice(-40).join('\n'));
  console.log(JSON.stringify(report));
  await closeWithin(close, 5000, 1);
  server.close();
  process.exit(report.ok ? 0 : 1);
}

main().catch((err) => {
  console.error(err);
  console.log(JSON.stringify({ ok: false, error: String(err) }));
  process.exit(1);
});
