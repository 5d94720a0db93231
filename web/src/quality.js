// Frame quality gate, a port of dermedge/edge/quality.py (the Python runner's gate) so the phone
// accepts and rejects the same frames: measures are taken on the contract's crop resized to
// ANALYSIS x ANALYSIS with OpenCV's INTER_AREA, luma as cv2's RGB2GRAY, the field of view is
// luma > DARK, sharpness is the variance of the 3x3 Laplacian inside the field eroded by 9x9.
// Thresholds default to the runner's Gate and can be overridden by the card's "quality" entry.

export const ANALYSIS = 256;
export const DARK = 25;
export const CLIPPED = 250;
export const SIGNATURE = 24;

export const DEFAULT_GATE = {
  min_sharpness: 5.0,
  max_dark: 0.6,
  min_brightness: 60.0,
  max_bright: 0.25,
  max_glare: 0.1,
  min_contrast: 3.0,
};

// OpenCV INTER_AREA (downscale) coefficients for one axis: per output index, [src, weight] pairs.
function areaTable(ssize, dsize) {
  const scale = ssize / dsize;
  const tab = [];
  for (let dx = 0; dx < dsize; dx++) {
    const fsx1 = dx * scale;
    const fsx2 = fsx1 + scale;
    const cell = Math.min(scale, ssize - fsx1);
    let sx1 = Math.ceil(fsx1);
    let sx2 = Math.floor(fsx2);
    sx2 = Math.min(sx2, ssize - 1);
    sx1 = Math.min(sx1, sx2);
    const row = [];
    if (sx1 - fsx1 > 1e-3) row.push([sx1 - 1, (sx1 - fsx1) / cell]);
    for (let sx = sx1; sx < sx2; sx++) row.push([sx, 1 / cell]);
    if (fsx2 - sx2 > 1e-3) row.push([sx2, Math.min(Math.min(fsx2 - sx2, 1), cell) / cell]);
    tab.push(row);
  }
  return tab;
}

// Bilinear (half-pixel centres) for the rare upscale case, like INTER_AREA does when enlarging.
function linearTable(ssize, dsize) {
  const scale = ssize / dsize;
  const tab = [];
  for (let dx = 0; dx < dsize; dx++) {
    let f = (dx + 0.5) * scale - 0.5;
    if (f < 0) f = 0;
    const s0 = Math.min(Math.floor(f), ssize - 1);
    const s1 = Math.min(s0 + 1, ssize - 1);
    const w1 = f - s0;
    tab.push(w1 > 0 && s1 !== s0 ? [[s0, 1 - w1], [s1, w1]] : [[s0, 1]]);
  }
  return tab;
}

// Flatten a [[src, weight], ...] table per output index into typed arrays for the hot loops.
function flatten(tab) {
  const start = new Int32Array(tab.length + 1);
  for (let i = 0; i < tab.length; i++) start[i + 1] = start[i] + tab[i].length;
  const src = new Int32Array(start[tab.length]);
  const wt = new Float64Array(start[tab.length]);
  tab.forEach((row, i) => row.forEach(([sIdx, wv], k) => {
    src[start[i] + k] = sIdx;
    wt[start[i] + k] = wv;
  }));
  return { start, src, wt };
}

const tableCache = new Map();
function axisTable(ssize, dsize) {
  const key = `${ssize}:${dsize}`;
  let t = tableCache.get(key);
  if (!t) {
    t = flatten(ssize >= dsize ? areaTable(ssize, dsize) : linearTable(ssize, dsize));
    if (tableCache.size > 16) tableCache.clear();
    tableCache.set(key, t);
  }
  return t;
}

/** Resize the crop `box` of an RGB frame to n x n (RGB uint8), like cv2.resize(..., INTER_AREA). */
export function resizeArea(rgb, w, box, n) {
  const [l, t, r, b] = box;
  const cw = r - l;
  const ch = b - t;
  const X = axisTable(cw, n);
  const Y = axisTable(ch, n);
  const tmp = new Float64Array(ch * n * 3); // horizontal pass
  for (let y = 0; y < ch; y++) {
    const row = ((y + t) * w + l) * 3;
    for (let x = 0; x < n; x++) {
      let s0 = 0, s1 = 0, s2 = 0;
      for (let k = X.start[x], e = X.start[x + 1]; k < e; k++) {
        const p = row + X.src[k] * 3;
        const wt = X.wt[k];
        s0 += rgb[p] * wt;
        s1 += rgb[p + 1] * wt;
        s2 += rgb[p + 2] * wt;
      }
      const o = (y * n + x) * 3;
      tmp[o] = s0;
      tmp[o + 1] = s1;
      tmp[o + 2] = s2;
    }
  }
  const out = new Uint8Array(n * n * 3);
  const acc = new Float64Array(n * 3);
  for (let y = 0; y < n; y++) {
    acc.fill(0);
    for (let k = Y.start[y], e = Y.start[y + 1]; k < e; k++) {
      const base = Y.src[k] * n * 3;
      const wt = Y.wt[k];
      for (let i = 0; i < n * 3; i++) acc[i] += tmp[base + i] * wt;
    }
    const o = y * n * 3;
    for (let i = 0; i < n * 3; i++) {
      const v = Math.round(acc[i]);
      out[o + i] = v < 0 ? 0 : v > 255 ? 255 : v;
    }
  }
  return out;
}

/** Measure the crop `box` of an RGB frame: {ok, reason, sharpness, dark, brightness, bright, glare, contrast}. */
export function assess(rgb, w, h, box, gate) {
  const g = { ...DEFAULT_GATE, ...(gate || {}) };
  const n = ANALYSIS;
  const N = n * n;
  const small = resizeArea(rgb, w, box, n);
  const luma = new Uint8Array(N);
  const field = new Uint8Array(N);
  let nField = 0;
  let sumField = 0;
  let sum = 0;
  let sum2 = 0;
  let bright = 0;
  let specular = 0;
  for (let i = 0, p = 0; i < N; i++, p += 3) {
    const R = small[p], G = small[p + 1], B = small[p + 2];
    const y = (R * 4899 + G * 9617 + B * 1868 + 8192) >> 14; // cv2 RGB2GRAY, 8-bit
    luma[i] = y;
    sum += y;
    sum2 += y * y;
    if (y >= CLIPPED) bright++;
    if (y > DARK) {
      field[i] = 1;
      nField++;
      sumField += y;
      const v = Math.max(R, G, B);
      const sat = v ? Math.round((255 * (v - Math.min(R, G, B))) / v) : 0; // HSV S, 8-bit
      if (y >= 235 && sat < 40) specular++;
    }
  }
  // inner = erode(field, 9x9) (outside the image counts as field, as cv2's default border)
  const rad = 4;
  const rowMin = new Uint8Array(N);
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      let m = 1;
      for (let k = Math.max(0, x - rad); k <= Math.min(n - 1, x + rad) && m; k++) m = field[y * n + k];
      rowMin[y * n + x] = m;
    }
  }
  // Laplacian (ksize 1: 4-neighbour, BORDER_REFLECT_101) over inner pixels
  const refl = (i) => (i < 0 ? -i : i >= n ? 2 * n - 2 - i : i);
  let li = 0;
  let ls = 0;
  let ls2 = 0;
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      let inner = 1;
      for (let k = Math.max(0, y - rad); k <= Math.min(n - 1, y + rad) && inner; k++) inner = rowMin[k * n + x];
      if (!inner) continue;
      const c = luma[y * n + x];
      const lap = luma[refl(y - 1) * n + x] + luma[refl(y + 1) * n + x] + luma[y * n + refl(x - 1)] + luma[y * n + refl(x + 1)] - 4 * c;
      li++;
      ls += lap;
      ls2 += lap * lap;
    }
  }
  const q = {
    sharpness: li > 64 ? ls2 / li - (ls / li) ** 2 : 0,
    dark: 1 - nField / N,
    brightness: nField ? sumField / nField : 0,
    bright: bright / N,
    glare: specular / Math.max(nField, 1),
    contrast: Math.sqrt(Math.max(0, sum2 / N - (sum / N) ** 2)),
  };
  let reason = null;
  if (q.contrast < g.min_contrast) reason = 'blank frame';
  else if (q.dark > g.max_dark || q.brightness < g.min_brightness) reason = 'too dark';
  else if (q.bright > g.max_bright) reason = 'too bright';
  else if (q.glare > g.max_glare) reason = 'glare';
  else if (q.sharpness < g.min_sharpness) reason = 'hold still';
  void h;
  return { ok: reason === null, reason, ...q };
}

/** A tiny blurred colour thumbnail of the crop, for telling one scene from another. */
export function signature(rgb, w, box) {
  const n = SIGNATURE;
  const small = resizeArea(rgb, w, box, n);
  const k = [0.25, 0.5, 0.25]; // cv2.GaussianBlur((3, 3), 0)
  const refl = (i) => (i < 0 ? -i : i >= n ? 2 * n - 2 - i : i);
  const tmp = new Float32Array(n * n * 3);
  const out = new Float32Array(n * n * 3);
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let d = -1; d <= 1; d++) s += k[d + 1] * small[(y * n + refl(x + d)) * 3 + c];
        tmp[(y * n + x) * 3 + c] = s;
      }
    }
  }
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let d = -1; d <= 1; d++) s += k[d + 1] * tmp[(refl(y + d) * n + x) * 3 + c];
        out[(y * n + x) * 3 + c] = Math.round(s);
      }
    }
  }
  return out;
}

/** True when two signatures differ by more than `limit` (mean absolute 0..255 difference). */
export function sceneChange(a, b, limit = 20) {
  if (!a || !b || a.length !== b.length) return true;
  let d = 0;
  for (let i = 0; i < a.length; i++) d += Math.abs(a[i] - b[i]);
  return d / a.length > limit;
}

/**
 * N-of-M smoothing: a decision is shown only when N of the last M good frames agree; the shown
 * probability is the mean over the agreeing frames. A frame the guard is unsure of votes to send
 * the patient on, never for routine (camera.Smoother). reset() on a scene change.
 */
export class Smoother {
  constructor(n = 3, m = 5) {
    this.n = n;
    this.m = m;
    this.window = [];
  }
  reset() {
    this.window = [];
  }
  push(prob, threshold, unsure = false) {
    this.window.push({ p: prob, u: unsure });
    if (this.window.length > this.m) this.window.shift();
    const routine = this.window.filter((f) => !f.u && f.p < threshold);
    const send = this.window.filter((f) => f.u || f.p >= threshold);
    let decision = null;
    let agree = routine.length >= send.length ? routine : send;
    if (routine.length >= this.n) {
      decision = 'routine';
      agree = routine;
    } else if (send.length >= this.n) {
      const unsureVotes = send.filter((f) => f.u).length;
      decision = 2 * unsureVotes >= send.length ? 'cannot assess' : 'refer';
      agree = send;
    }
    const mean = agree.reduce((a, f) => a + f.p, 0) / agree.length;
    return { decision, prob: mean, agree: agree.length, count: this.window.length };
  }
}
