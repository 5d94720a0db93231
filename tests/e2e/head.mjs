// Browser driver for the site head on the phone page (headless Chromium, fake camera).
//   node tests/e2e/head.mjs URL VIDEO.y4m OUTDIR [FRAMES]
// Waits for FRAMES classified frames, then prints `RESULT {...}`: the last frame's record, the
// shipped probability and the features the page's head read (state.lastAdapted), and the texts.
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const require = createRequire(resolve(import.meta.dirname, '../../web/package.json'));
const { chromium } = require('playwright-core');
const [url, video, outDir, framesArg] = process.argv.slice(2);
const frames = Number(framesArg || 5);
const userDataDir = mkdtempSync(join(tmpdir(), 'dermedge-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
    `--use-file-for-fake-video-capture=${video}`,
  ],
  viewport: { width: 412, height: 915 },
  permissions: ['camera'],
});
let code = 0;
try {
  const page = context.pages()[0] || (await context.newPage());
  await page.goto(url, { waitUntil: 'load' });
  await page.waitForFunction((k) => {
    const s = window.dermedge;
    return s && (s.error || (s.goodFrames >= k && s.last && s.last.prob !== null && s.lastAdapted
      && s.last.shipped_prob === s.lastAdapted.shipped));
  }, frames, { timeout: 120000, polling: 100 });
  const s = await page.evaluate(() => JSON.parse(JSON.stringify(window.dermedge)));
  if (s.error) throw new Error(`page error: ${s.error}`);
  await page.screenshot({ path: join(outDir, 'phone-adapted.png'), fullPage: true });
  console.log('RESULT ' + JSON.stringify({
    last: s.last, adapted: s.lastAdapted, good_frames: s.goodFrames,
    calibration_text: await page.textContent('#calibration'),
  }));
} catch (e) {
  console.error(e.stack || String(e));
  code = 1;
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(code);
