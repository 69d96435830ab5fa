#!/usr/bin/env node
// Drives the viewer page's control bar and stats overlay in headless Chromium.
// Prints one JSON line on stdout (the steps done and what was seen); exit code
// 0 = pass, 1 = fail or timeout, 2 = bad usage.
//
//   node tests/browser/controls.mjs --url URL --width W --height H --scenario all \
//        [--to 320x240] [--bitrate 500] [--timeout 60000] [--screenshot out.png] [--phone]
//
// Scenarios:
//   all        the camera allows viewer changes: the overlay shows the configured
//              size and an RTT or first-frame time; the bitrate and size pickers
//              send `set` and the decoded size follows; the stream toggle pauses
//              and resumes; the snapshot button downloads a JPEG.
//   read-only  the default config: the changing controls are disabled with the
//              owner's tooltip, and a forced attempt shows the camera's refusal.
//   look       only waits for live video and takes the screenshot (for people).

import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { DEFAULT_CHROMIUM, closeWithin, openBrowser } from './lib.mjs';

const USAGE =
  'usage: node tests/browser/controls.mjs --url URL --width W --height H --scenario all|read-only|look ' +
  '[--to WxH] [--bitrate KBPS] [--timeout MS] [--screenshot FILE] [--phone] [--chromium PATH]';

const POLL_MS = 200;

function parseCli() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        url: { type: 'string' },
        width: { type: 'string' },
        height: { type: 'string' },
        scenario: { type: 'string', default: 'all' },
        to: { type: 'string', default: '320x240' },
        bitrate: { type: 'string', default: '500' },
        timeout: { type: 'string', default: '60000' },
        screenshot: { type: 'string' },
        phone: { type: 'boolean', default: false },
        chromium: { type: 'string', default: DEFAULT_CHROMIUM },
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
  const positive = (name) => {
    const n = Number(values[name]);
    if (!Number.isInteger(n) || n < 1) usageError(`--${name} must be a positive integer`);
    return n;
  };
  if (!values.url) usageError('--url is required');
  if (!['all', 'read-only', 'look'].includes(values.scenario)) usageError('--scenario must be all, read-only or look');
  const to = /^(\d+)x(\d+)$/.exec(values.to);
  if (!to) usageError('--to must look like 320x240');
  return {
    url: values.url,
    width: positive('width'),
    height: positive('height'),
    scenario: values.scenario,
    to: { value: values.to, width: Number(to[1]), height: Number(to[2]) },
    bitrate: positive('bitrate'),
    timeout: positive('timeout'),
    screenshot: values.screenshot ?? null,
    phone: values.phone,
    executablePath: values.chromium,
  };
}

function usageError(message) {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

// Runs in the page: the overlay's figures and control state as the page keeps
// them, plus the browser's own decoded size, read independently of the page.
async function samplePage() {
  const r = window.rtcam;
  const out = {
    state: r?.state ?? null,
    sid: r?.sid ?? null,
    stats: r?.stats ?? null,
    control: r?.control ?? null,
    framesDecoded: 0,
    frameWidth: 0,
    frameHeight: 0,
  };
  if (r?.pc) {
    try {
      (await r.pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && (s.kind ?? s.mediaType) === 'video') {
          out.framesDecoded = s.framesDecoded ?? 0;
          out.frameWidth = s.frameWidth ?? 0;
          out.frameHeight = s.frameHeight ?? 0;
        }
      });
    } catch {
      // Between sessions.
    }
  }
  return out;
}

class Scenario {
  constructor(page, opts) {
    this.page = page;
    this.opts = opts;
    this.deadline = Date.now() + opts.timeout;
    this.steps = [];
    this.last = null;
  }

  /** Polls the page until `check(sample)` is truthy; fails the run with `what` on timeout. */
  async until(what, check) {
    const started = Date.now();
    while (Date.now() < this.deadline) {
      this.last = await this.page.evaluate(samplePage).catch((err) => ({ evaluateError: err.message }));
      if (!this.last.evaluateError && check(this.last)) {
        this.steps.push({ step: what, ms: Date.now() - started });
        return this.last;
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
    throw new Error(`timed out waiting for: ${what}`);
  }

  /** The newest reply to `command` after `since` replies had been seen. */
  replyAfter(sample, since, command) {
    const replies = sample.control?.replies ?? [];
    return replies.slice(since).find((r) => r.command === command) ?? null;
  }

  repliesSoFar() {
    return this.last?.control?.replies?.length ?? 0;
  }

  async live() {
    const { width, height } = this.opts;
    return this.until(`live video at ${width}x${height} with the control channel open`, (s) =>
      s.control?.open && s.framesDecoded > 5 && s.frameWidth === width && s.frameHeight === height,
    );
  }

  async overlayShowsTheVideo() {
    const { width, height } = this.opts;
    const s = await this.until('overlay shows the size, fps, bitrate and an RTT or first-frame time', (s) =>
      s.stats?.width === width &&
      s.stats?.height === height &&
      typeof s.stats?.fps === 'number' &&
      typeof s.stats?.bitrateKbps === 'number' &&
      (typeof s.stats?.rttMs === 'number' || typeof s.stats?.ttffMs === 'number'),
    );
    const text = await this.page.locator('#overlay dd[data-stat="video"]').textContent();
    if (!text.includes(`${width}×${height}`)) throw new Error(`overlay reads ${JSON.stringify(text)}`);
    if (!(await this.page.locator('#overlay').isVisible())) throw new Error('the overlay is not visible');
    return s.stats;
  }

  async pickBitrate() {
    const since = this.repliesSoFar();
    await this.page.selectOption('#bitrate', String(this.opts.bitrate));
    const s = await this.until(`set bitrate_kbps=${this.opts.bitrate} answered ok`, (s) => {
      const r = this.replyAfter(s, since, 'set');
      return r?.ok && r.result?.bitrate_kbps === this.opts.bitrate;
    });
    return this.replyAfter(s, since, 'set');
  }

  async pickResolution() {
    const { to } = this.opts;
    const since = this.repliesSoFar();
    await this.page.selectOption('#resolution', to.value);
    await this.until(`set ${to.value} answered ok`, (s) => this.replyAfter(s, since, 'set')?.ok);
    const s = await this.until(`decoded frames and the overlay at ${to.value}`, (s) =>
      s.frameWidth === to.width && s.frameHeight === to.height && s.stats?.width === to.width,
    );
    return { frameWidth: s.frameWidth, frameHeight: s.frameHeight };
  }

  async pauseAndResume() {
    await this.page.click('#stream');
    await this.until('the page shows the video paused', (s) => s.control?.streaming === false);
    const paused = this.page.locator('#paused');
    if (!(await paused.isVisible())) throw new Error('the paused notice is not visible');
    const notice = await paused.textContent();
    if (!/Paused by the camera's owner/.test(notice)) throw new Error(`paused notice reads ${JSON.stringify(notice)}`);
    const framesWhilePaused = this.last.framesDecoded;

    await this.page.click('#stream');
    await this.until('streaming again, notice gone and new frames decoded', (s) =>
      s.control?.streaming === true && s.framesDecoded > framesWhilePaused + 5,
    );
    if (await paused.isVisible()) throw new Error('the paused notice is still visible');
    return { notice };
  }

  async snapshot() {
    const [download] = await Promise.all([
      this.page.waitForEvent('download', { timeout: Math.max(1000, this.deadline - Date.now()) }),
      this.page.click('#snapshot'),
    ]);
    const name = download.suggestedFilename();
    const bytes = await readFile(await download.path());
    if (bytes.length < 100 || bytes[0] !== 0xff || bytes[1] !== 0xd8) {
      throw new Error(`the download ${name} is not a JPEG (${bytes.length} bytes)`);
    }
    if (!/^[A-Za-z0-9._-]+-\d{8}-\d{6}\.jpg$/.test(name)) throw new Error(`unexpected file name ${name}`);
    this.steps.push({ step: 'snapshot downloaded as a JPEG' });
    return { name, bytes: bytes.length, magic: bytes.subarray(0, 2).toString('hex') };
  }

  async readOnly() {
    const controls = {};
    for (const id of ['stream', 'bitrate', 'resolution', 'snapshot']) {
      const node = this.page.locator(`#${id}`);
      controls[id] = { disabled: await node.isDisabled(), title: await node.getAttribute('title') };
    }
    for (const id of ['stream', 'bitrate', 'resolution']) {
      if (!controls[id].disabled) throw new Error(`#${id} is enabled on a read-only camera`);
      if (!controls[id].title?.includes('viewer_commands = "all"')) {
        throw new Error(`#${id} has no tooltip naming viewer_commands: ${controls[id].title}`);
      }
    }
    if (controls.snapshot.disabled) throw new Error('snapshot is disabled, though it changes nothing');
    if (!(await this.page.locator('#readonly-note').isVisible())) throw new Error('no read-only note is shown');
    this.steps.push({ step: 'changing controls disabled with the tooltip' });

    // A page that still tried (an old tab, a forced control) must show the camera's refusal.
    const since = this.repliesSoFar();
    await this.page.evaluate(() => {
      const select = document.getElementById('bitrate');
      select.disabled = false;
      select.value = select.options[1].value;
      select.dispatchEvent(new Event('change'));
    });
    const s = await this.until('the camera refuses with forbidden', (s) => {
      const r = this.replyAfter(s, since, 'set');
      return r && !r.ok && r.error.code === 'forbidden' && s.control?.message?.kind === 'error';
    });
    const shown = await this.page.locator('#control-msg').textContent();
    if (shown !== this.replyAfter(s, since, 'set').error.message) throw new Error(`message shown: ${shown}`);
    return { controls, forbiddenMessage: shown };
  }
}

async function main() {
  const opts = parseCli();
  let browser = null;
  let exitCode = 1;
  let result = { ok: false, scenario: opts.scenario };
  const viewport = opts.phone ? { width: 390, height: 844 } : { width: 1280, height: 900 };
  try {
    browser = await openBrowser({ executablePath: opts.executablePath, viewport, mobile: opts.phone });
    const { page } = browser;
    await page.goto(opts.url, { waitUntil: 'domcontentloaded', timeout: opts.timeout });
    const run = new Scenario(page, opts);
    try {
      await run.live();
      if (opts.scenario === 'all') {
        result.overlay = await run.overlayShowsTheVideo();
        if (opts.screenshot) await page.screenshot({ path: opts.screenshot });
        result.bitrate = await run.pickBitrate();
        result.resolution = await run.pickResolution();
        result.pause = await run.pauseAndResume();
        result.snapshot = await run.snapshot();
      } else if (opts.scenario === 'read-only') {
        result.overlay = await run.overlayShowsTheVideo();
        result.readOnly = await run.readOnly();
        if (opts.screenshot) await page.screenshot({ path: opts.screenshot });
      } else {
        result.overlay = await run.overlayShowsTheVideo();
        if (opts.screenshot) await page.screenshot({ path: opts.screenshot });
      }
      result.ok = true;
      exitCode = 0;
    } catch (err) {
      result.reason = err.message;
      result.last = run.last;
      result.console = browser.consoleLines;
      if (opts.screenshot) await page.screenshot({ path: opts.screenshot }).catch(() => {});
    }
    result.steps = run.steps;
    if (browser.pageErrors.length) {
      result.pageErrors = browser.pageErrors;
      result.ok = false;
      exitCode = 1;
    }
  } catch (err) {
    result = { ...result, ok: false, reason: 'error', error: err.message, console: browser?.consoleLines };
    exitCode = 1;
  } finally {
    if (browser) await closeWithin(browser.close, 15000, exitCode);
  }
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(exitCode);
}

main();
