// End-to-end driver for the phone page in headless Chromium with a fake camera.
//   node tests/e2e/phone.mjs URL VIDEO.y4m OUTDIR [--swap] [--offline]
// Loads the page, waits for classified frames and the offline cache, saves a screenshot and a
// capture (frame PNG + result JSON, as the page's download button saves them), and prints
// `RESULT {...}` lines. The driving test answers `PAUSE <what>` lines with a line on stdin:
//   --swap     PAUSE swap: the test puts a new model in place; reload online, expect the new version
//   --offline  PAUSE stop: the test stops the server; reload, and the page must still classify
//   --frames=N classify N frames before the first result (default 12)
//   --gate     the video is not a lesion: wait for N frames the model's guard gates, report, stop
//   --unsure   the video is unlike the training images but skin-coloured: wait for the page's
//              decision (it must send the patient on: "cannot assess"), report, stop
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

// playwright-core is a devDependency of web/ (npm ci there)
const require = createRequire(resolve(import.meta.dirname, '../../web/package.json'));
const { chromium } = require('playwright-core');
const [url, video, outDir, ...flags] = process.argv.slice(2);
const offline = flags.includes('--offline');
const swap = flags.includes('--swap');
const gate = flags.includes('--gate'); // expect the guard to gate every frame: report and stop
const unsure = flags.includes('--unsure'); // expect a decision that sends the patient on
const frames = Number((flags.find((f) => f.startsWith('--frames=')) || '--frames=12').split('=')[1]);
const exe = process.env.CHROMIUM || '/usr/bin/chromium';
const userDataDir = mkdtempSync(join(tmpdir(), 'dermedge-chromium-'));
const started = Date.now();
const log = (...a) => console.error('[phone.mjs]', `${((Date.now() - started) / 1000).toFixed(1)}s`, ...a);

const args = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
  `--use-file-for-fake-video-capture=${video}`,
];

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: exe,
  headless: true,
  args,
  viewport: { width: 412, height: 915 },
  deviceScaleFactor: 1,
  acceptDownloads: true,
  permissions: ['camera'],
  ignoreHTTPSErrors: true,
});
const timeout = (ms) => ({ timeout: ms, polling: 100 });

async function waitFrames(page, n, { needOffline = false, notVersion = null, needDecision = false } = {}) {
  const deadline = Date.now() + 120000;
  for (;;) {
    try {
      await page.waitForFunction(
        ([k, off, notV, dec]) => {
          const s = window.dermedge;
          if (s && s.error) return true;
          return s && s.ready && s.goodFrames >= k && s.last && s.last.prob !== null &&
            (!off || s.offlineReady) && (!notV || s.version !== notV) && (!dec || (s.smoothed && s.smoothed.decision));
        },
        [n, needOffline, notVersion, needDecision],
        timeout(Math.max(1000, deadline - Date.now())),
      );
      const s = await page.evaluate(() => JSON.parse(JSON.stringify(window.dermedge)));
      log(`frames ok: version ${s.version}, ${s.goodFrames} good frames`);
      if (s.error) throw new Error(`page error: ${s.error}`);
      return s;
    } catch (e) {
      // the page reloads itself when a new service worker takes over: wait again
      if (Date.now() < deadline && /context was destroyed|navigat/i.test(String(e.message))) {
        log('page navigated while waiting; waiting again');
        await page.waitForLoadState('load').catch(() => {});
        continue;
      }
      throw e;
    }
  }
}

async function pause(what) {
  log(`pause ${what}`);
  console.log(`PAUSE ${what}`);
  const rl = createInterface({ input: process.stdin });
  await new Promise((r) => rl.once('line', r));
  rl.close();
}

function summary(s) {
  const ms = [...s.inferMs].sort((a, b) => a - b);
  return {
    version: s.version,
    runtime: s.runtime,
    prob: s.last.prob,
    smoothed_prob: s.smoothed.prob,
    decision: s.smoothed.decision,
    quality: s.last.quality,
    frame: s.last.frame,
    crop_box: s.last.crop_box,
    frames: s.frames,
    good_frames: s.goodFrames,
    infer_ms_median: ms[ms.length >> 1],
    infer_ms_mean: ms.reduce((a, b) => a + b, 0) / ms.length,
    infer_ms_min: ms[0],
    infer_ms_n: ms.length,
    preprocess_ms: s.last.preprocess_ms,
    offline_ready: s.offlineReady,
  };
}

let exitCode = 0;
try {
  const page = context.pages()[0] || (await context.newPage());
  const consoleLines = [];
  page.on('console', (m) => { consoleLines.push(`${m.type()}: ${m.text()}`); if (m.text().startsWith('[sw ')) log(m.text()); });
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  const resp = await page.goto(url, { waitUntil: 'load' });
  const headers = resp.headers();
  if (gate) {
    await page.waitForFunction((k) => window.dermedge && (window.dermedge.error || window.dermedge.unfamiliarFrames >= k),
      frames, timeout(120000));
    const s = await page.evaluate(() => JSON.parse(JSON.stringify(window.dermedge)));
    if (s.error) throw new Error(`page error: ${s.error}`);
    await page.screenshot({ path: join(outDir, 'phone-guard.png'), fullPage: true });
    console.log('RESULT ' + JSON.stringify({
      phase: 'gate', frames: s.frames, unfamiliar_frames: s.unfamiliarFrames, good_frames: s.goodFrames,
      last: s.last, smoothed: s.smoothed, quality_text: await page.textContent('#quality'),
      decision_text: await page.textContent('#decision'), prob_text: await page.textContent('#prob'),
    }));
  }
  if (unsure) {
    const s = await waitFrames(page, frames, { needDecision: true });
    await page.screenshot({ path: join(outDir, 'phone-unsure.png'), fullPage: true });
    console.log('RESULT ' + JSON.stringify({
      phase: 'unsure', decision: s.smoothed.decision, last: s.last,
      decision_text: await page.textContent('#decision'),
    }));
  }
  if (!gate && !unsure) { // the lesion run: online, model swap, offline
  const s1 = await waitFrames(page, frames, { needOffline: true, needDecision: true });
  await page.screenshot({ path: join(outDir, 'phone.png'), fullPage: true });

  // the capture button: frame PNG + result JSON as downloads
  const downloads = [];
  page.on('download', (d) => downloads.push(d));
  await page.click('#capture');
  const t0 = Date.now();
  while (downloads.length < 2 && Date.now() - t0 < 15000) await page.waitForTimeout(100);
  const saved = {};
  for (const d of downloads) {
    const kind = d.suggestedFilename().endsWith('.png') ? 'png' : 'json';
    const dest = join(outDir, `capture.${kind}`);
    await d.saveAs(dest);
    saved[kind] = dest;
  }
  console.log('RESULT ' + JSON.stringify({
    phase: 'online', ...summary(s1), card_name: s1.card.name, calibration_text: await page.textContent('#calibration'), headers, downloads: saved,
    disclaimer_visible: await page.isVisible('#disclaimer'),
    disclaimer_text: await page.textContent('#disclaimer'),
    console: consoleLines.slice(-30),
  }));

  let version = s1.version;
  if (swap) {
    await pause('swap');
    await page.reload({ waitUntil: 'load' });
    const s2 = await waitFrames(page, 5, { needOffline: true, notVersion: version });
    await page.screenshot({ path: join(outDir, 'phone-new-model.png'), fullPage: true });
    console.log('RESULT ' + JSON.stringify({ phase: 'swapped', ...summary(s2), card_name: s2.card.name, calibration_text: await page.textContent('#calibration') }));
    version = s2.version;
  }
  if (offline) {
    await pause('stop');
    await page.reload({ waitUntil: 'load' });
    const s3 = await waitFrames(page, 5);
    await page.screenshot({ path: join(outDir, 'phone-offline.png'), fullPage: true });
    console.log('RESULT ' + JSON.stringify({ phase: 'offline', ...summary(s3), card_name: s3.card.name, console: consoleLines.slice(-30) }));
  }
  }
} catch (e) {
  log(e.stack || String(e));
  try {
    const p = context.pages()[0];
    if (p) {
      await p.screenshot({ path: join(outDir, 'phone-failure.png') });
      writeFileSync(join(outDir, 'phone-failure.json'), JSON.stringify(await p.evaluate(() => window.dermedge || null), null, 1));
    }
  } catch { /* ignore */ }
  exitCode = 1;
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(exitCode);
