// dermedge phone page: rear camera -> quality gate -> contract crop + PIL-exact bilinear resize ->
// int8 .tflite in LiteRT.js (WebAssembly) -> N-of-M smoothing -> decision at the card's threshold.
// Nothing leaves the device: captures are downloads.
import { loadLiteRt, loadAndCompile, Tensor } from '@litertjs/core';
import { cropBox, preprocess } from './preprocess.js';
import { fixBatchDimension, readTflite } from './tflite.js';
import { assess, sceneChange, signature, Smoother } from './quality.js';
import { assessGuard, CANNOT_ASSESS, Guard, GUARD_MESSAGE } from './guard.js';
import { Head, headText } from './head.js';

const $ = (id) => document.getElementById(id);
const VERSION = document.querySelector('meta[name="dermedge-version"]').content;
const RUNTIME_VERSION = '__LITERT_VERSION__';
const FRAME_INTERVAL_MS = 100;

// Read-only view of the page state, for people debugging on a phone and for the e2e tests.
const state = {
  version: VERSION,
  ready: false,
  error: null,
  runtime: null,
  card: null,
  frames: 0,
  goodFrames: 0,
  unfamiliarFrames: 0,
  last: null,
  lastAdapted: null, // with a site head: {shipped, features} of the last frame
  smoothed: null,
  inferMs: [],
  offlineReady: false,
  captures: 0,
};
window.dermedge = state;

function fail(msg) {
  state.error = msg;
  const el = $('error');
  el.textContent = msg;
  el.hidden = false;
}

function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

class Classifier {
  static async create(modelBytes, card) {
    const info = readTflite(modelBytes);
    const input = info.inputs[0];
    const size1 = (t) => t.shape.slice(1).reduce((a, b) => a * b, 1);
    const output = info.outputs.find((t) => size1(t) <= 2);
    if (!input || !output) throw new Error('model has no input or probability output tensor');
    const guard = card.guard ? new Guard(card.guard) : null;
    const head = card.head ? new Head(card.head) : null; // a site's own last layer (calibrate --adapt)
    const dim = guard ? guard.dim : head ? head.dim : null;
    const features = dim ? info.outputs.find((t) => size1(t) === dim) : null;
    if (guard && !features) throw new Error(`the card has a guard of ${guard.dim} features but the model has no such output`);
    if (head && (!features || head.dim !== dim)) throw new Error(`the card has a site head over ${head.dim} features but the model has no such output`);
    if (input.dtype !== 'uint8' && input.dtype !== 'float32') {
      throw new Error(`model input type ${input.dtype} is not supported in the browser; convert with uint8 input`);
    }
    const size = card.input.size;
    const shape = input.shape;
    if (shape.length !== 4 || shape[1] !== size || shape[2] !== size || shape[3] !== 3) {
      throw new Error(`model input shape [${shape}] does not match the card's contract (${size}x${size}x3)`);
    }
    const model = await loadAndCompile(fixBatchDimension(modelBytes), { accelerator: 'wasm' });
    return new Classifier(model, input, output, size, guard, features, head);
  }

  constructor(model, input, output, size, guard, features, head = null) {
    this.model = model;
    this.input = input;
    this.output = output;
    this.size = size;
    this.guard = guard;
    this.features = features;
    this.head = head;
  }

  /** pixels: Uint8Array size*size*3 raw RGB 0..255 -> {prob: P(malignant), guardScore, unfamiliar} */
  async predict(pixels) {
    const { input, output, features } = this;
    let data;
    if (input.dtype === 'uint8') {
      if (input.scale && (input.scale !== 1 || input.zeroPoint !== 0)) {
        data = new Uint8Array(pixels.length);
        for (let i = 0; i < pixels.length; i++) {
          const q = roundHalfEven(pixels[i] / input.scale + input.zeroPoint);
          data[i] = q < 0 ? 0 : q > 255 ? 255 : q;
        }
      } else {
        data = pixels;
      }
    } else {
      data = Float32Array.from(pixels);
    }
    const tensor = new Tensor(data, [1, this.size, this.size, 3]);
    let outs;
    try {
      outs = await this.model.run(tensor);
    } finally {
      tensor.delete();
    }
    const dequantize = (v, t) => (t.dtype === 'uint8' || t.dtype === 'int8' ? (v - t.zeroPoint) * t.scale : v);
    let raw;
    let feats = null;
    try {
      for (const t of outs) { // told apart by size: LiteRT.js need not keep the file's order
        const data = await t.data();
        if (data.length <= 2) raw = data[0];
        else if (features && data.length === features.shape.slice(1).reduce((a, b) => a * b, 1)) feats = Array.from(data, (v) => dequantize(v, features));
      }
    } finally {
      for (const t of outs) t.delete();
    }
    const shipped = dequantize(raw, output);
    // the site head, when the card has one, on the same features the guard reads
    const prob = this.head && feats ? this.head.prob(feats, shipped) : shipped;
    const adapted = this.head && feats ? { shipped, features: feats } : null;
    if (!feats || !this.guard) return { prob, adapted, guardScore: null, unfamiliar: false };
    const guardScore = this.guard.score(feats);
    return { prob, adapted, guardScore, unfamiliar: guardScore > this.guard.cutoff };
  }
}

async function fetchOk(url, as) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return as === 'json' ? res.json() : new Uint8Array(await res.arrayBuffer());
}

// Offline use: a service worker (sw.js, stamped with this version) serves the page, runtime and
// model from its cache when the network is gone. The page always runs the version the server
// gave it (HTML is network-first, model and card carry ?v=VERSION), so a new model is used on the
// next online load at once; the worker for the new version installs in the background.
async function registerServiceWorker() {
  if (!('serviceWorker' in navigator)) {
    $('offline').textContent = '· offline use unavailable in this browser';
    return;
  }
  const reg = await navigator.serviceWorker.register('sw.js', { scope: './' });
  const t0 = performance.now();
  const note = (m) => console.info(`[sw ${(performance.now() - t0).toFixed(0)}ms] ${m}`);
  if (reg.active) reg.update().catch(() => note('update check failed (offline?)'));
  // keep every same-origin file this page loaded (the runtime variant this browser picked)
  const urls = [...new Set(performance.getEntriesByType('resource')
    .map((e) => e.name)
    .filter((u) => new URL(u).origin === location.origin && !u.endsWith('/sw.js')))];
  const keep = async () => {
    const ready = await navigator.serviceWorker.ready;
    const worker = navigator.serviceWorker.controller || ready.active;
    const reply = await new Promise((resolve) => {
      const ch = new MessageChannel();
      const timer = setTimeout(() => resolve({ ok: false, error: 'no answer' }), 60000);
      ch.port1.onmessage = (e) => {
        clearTimeout(timer);
        ch.port1.close();
        resolve(e.data || {});
      };
      worker.postMessage({ type: 'cache', urls: [location.href, ...urls] }, [ch.port2]);
    });
    note(`cache ${reply.ok ? 'complete' : `incomplete: ${reply.error}`} (worker ${reply.version})`);
    state.offlineReady = !!reply.ok;
    $('offline').textContent = reply.ok ? '· ready offline' : '· offline cache incomplete';
  };
  // a new worker (new model version) took over: make sure its cache holds this page's files too
  navigator.serviceWorker.addEventListener('controllerchange', () => keep().catch(() => {}));
  await keep();
}

async function startCamera(video) {
  if (!window.isSecureContext) throw new Error('The camera needs a secure page: open it over https (or on localhost).');
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) throw new Error('This browser has no camera access (getUserMedia).');
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: false,
    video: { facingMode: { ideal: 'environment' }, width: { ideal: 1280 }, height: { ideal: 720 } },
  });
  video.srcObject = stream;
  await video.play();
  if (!video.videoWidth) await new Promise((r) => video.addEventListener('loadedmetadata', r, { once: true }));
  return stream;
}

function render(q, result) {
  const guide = $('guide');
  guide.classList.toggle('ok', q.ok);
  const measures = `sharpness ${q.sharpness.toFixed(0)} · brightness ${q.brightness.toFixed(0)}`;
  $('quality').textContent = q.ok ? `quality ok · ${measures}` : `${q.reason} · ${measures}`;
  if (!result) return;
  const { smoothed, threshold } = result;
  $('prob').textContent = smoothed.prob.toFixed(3);
  const d = $('decision');
  const words = { refer: 'REFER', routine: 'routine', [CANNOT_ASSESS]: 'CANNOT ASSESS: refer' };
  d.className = `decision ${smoothed.decision === CANNOT_ASSESS ? 'refer' : smoothed.decision || 'pending'}`;
  d.textContent = smoothed.decision
    ? `${words[smoothed.decision]} (threshold ${threshold})`
    : 'waiting for a steady view';
  $('smooth').textContent = `${smoothed.agree} of last ${smoothed.count} frames agree (need ${result.n} of ${result.m})`;
}

function download(blob, name) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// The site calibration a clinic made with `dermedge calibrate` (or the training threshold).
function calibrationText(card) {
  const cal = card.calibration;
  const t = Number(card.threshold).toFixed(3);
  if (!cal) return `threshold ${t} (from training; not calibrated for this site)`;
  const n = (cal.data && cal.data.counts) || {};
  const adapted = headText(card);
  return (adapted ? `${adapted} · ` : '')
    + `threshold ${t}: calibrated for ${cal.site} on ${n.malignant} malignant + ${n.benign} benign cases`
    + ` (${String(cal.date || '').slice(0, 10)}; trained ${Number(cal.original_threshold).toFixed(3)})`;
}

async function main() {
  const video = $('video');
  const card = await fetchOk(`card.json?v=${VERSION}`, 'json');
  state.card = card;
  if (card.disclaimer) $('disclaimer').textContent = card.disclaimer;
  const contract = card.input;
  const threshold = Number(card.threshold);
  $('model').textContent = `${card.name || 'model'} · ${card.quantization || ''} · ${contract.size}px ${contract.crop}`;
  $('calibration').textContent = calibrationText(card);

  const [modelBytes] = await Promise.all([
    fetchOk(`model.tflite?v=${VERSION}`),
    loadLiteRt(new URL('litert/', location.href).href),
  ]);
  const clf = await Classifier.create(modelBytes, card);
  state.runtime = `LiteRT.js ${RUNTIME_VERSION} (wasm)`;
  $('runtime').textContent = state.runtime;
  registerServiceWorker().catch((e) => { $('offline').textContent = `· offline cache failed: ${e.message}`; });

  await startCamera(video);
  const smoothCfg = card.smoothing || {};
  const n = smoothCfg.n || 3;
  const m = smoothCfg.m || 5;
  const smoother = new Smoother(n, m);
  const canvas = document.createElement('canvas');
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  let prevSig = null;
  let lastImage = null;
  state.ready = true;

  $('capture').disabled = false;
  $('capture').addEventListener('click', () => {
    if (!lastImage) return;
    const { image, record } = lastImage;
    const c = document.createElement('canvas');
    c.width = image.width;
    c.height = image.height;
    c.getContext('2d').putImageData(image, 0, 0);
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    c.toBlob((png) => {
      download(png, `dermedge-${stamp}.png`);
      const json = { ...record, saved: new Date().toISOString(), frame_file: `dermedge-${stamp}.png` };
      setTimeout(() => download(new Blob([JSON.stringify(json, null, 2)], { type: 'application/json' }), `dermedge-${stamp}.json`), 300);
      state.captures++;
    }, 'image/png');
  });

  const step = async () => {
    const w = video.videoWidth;
    const h = video.videoHeight;
    if (!w || !h) return;
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    ctx.drawImage(video, 0, 0, w, h);
    const image = ctx.getImageData(0, 0, w, h);
    const t0 = performance.now();
    const rgba = image.data;
    const rgb = new Uint8Array(w * h * 3);
    for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
      rgb[j] = rgba[i];
      rgb[j + 1] = rgba[i + 1];
      rgb[j + 2] = rgba[i + 2];
    }
    const box = cropBox(rgb, w, h, contract.crop);
    const q = assess(rgb, w, h, box, card.quality);
    state.frames++;
    if (!q.ok) {
      state.last = { quality: q, prob: null };
      render(q, null);
      return;
    }
    const sig = signature(rgb, w, box);
    if (sceneChange(prevSig, sig)) smoother.reset(); // a new lesion: start agreeing afresh
    prevSig = sig;
    const { pixels } = preprocess(rgb, w, h, contract);
    const t1 = performance.now();
    const { prob, adapted, guardScore, unfamiliar } = await clf.predict(pixels);
    state.lastAdapted = adapted; // the shipped P(malignant) and the features the site head read
    const t2 = performance.now();
    const verdict = assessGuard(unfamiliar, pixels);
    if (verdict === 'not_lesion') { // no lesion photo: gated like a bad frame, start agreeing afresh
      smoother.reset();
      state.unfamiliarFrames++;
      state.smoothed = null;
      const gated = { ...q, ok: false, reason: GUARD_MESSAGE, guard_score: guardScore };
      state.last = { quality: gated, prob: null, guard_score: guardScore, unfamiliar: true };
      $('decision').className = 'decision pending';
      $('decision').textContent = 'waiting for a lesion in view';
      render(gated, null);
      return;
    }
    state.goodFrames++;
    state.inferMs.push(t2 - t1);
    if (state.inferMs.length > 200) state.inferMs.shift();
    const smoothed = smoother.push(prob, threshold, verdict === 'lesion'); // unsure: sends on
    state.smoothed = smoothed;
    const record = {
      schema: 'dermedge.phone-capture/1',
      model: card.name,
      version: VERSION,
      runtime: state.runtime,
      frame: { width: w, height: h },
      crop_box: box,
      contract,
      quality: q,
      prob,
      shipped_prob: adapted ? adapted.shipped : prob,
      adapted_to: card.head ? card.head.site || null : null,
      guard_score: guardScore,
      label: verdict === 'lesion' ? 'unknown' : prob >= threshold ? 'malignant' : 'benign',
      unfamiliar,
      threshold,
      smoothed_prob: smoothed.prob,
      decision: smoothed.decision,
      agree: `${smoothed.agree}/${smoothed.count} (need ${n} of ${m})`,
      infer_ms: t2 - t1,
      preprocess_ms: t1 - t0,
      disclaimer: card.disclaimer,
    };
    state.last = record;
    lastImage = { image, record };
    render(q, { smoothed, threshold, n, m });
    const med = [...state.inferMs].sort((a, b) => a - b)[state.inferMs.length >> 1];
    $('timing').textContent = `· inference ${med.toFixed(1)} ms/frame`;
  };

  // at most ~10 classifications a second, leaving the main thread idle in between
  const loop = async () => {
    const t = performance.now();
    try {
      await step();
    } catch (e) {
      fail(`frame failed: ${e.message}`);
    }
    setTimeout(loop, Math.max(10, FRAME_INTERVAL_MS - (performance.now() - t)));
  };
  loop();
}

main().catch((e) => {
  console.error(e);
  fail(e.name === 'NotAllowedError' ? 'Camera permission was denied: allow the camera and reload.' : String(e.message || e));
});
