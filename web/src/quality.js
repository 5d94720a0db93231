// Per-frame quality gate, run on the contract's crop region before inference.
//   sharpness: variance of the 4-neighbour Laplacian of the luma, computed after area-resampling
//              the crop to GATE_SIZE x GATE_SIZE so the number does not depend on camera resolution;
//   exposure:  fractions of clipped dark (luma <= DARK) and bright (luma >= BRIGHT) pixels and the
//              mean luma, measured inside the circle inscribed in the crop (a dermatoscope's dark
//              vignette corners are not under-exposure).
// Thresholds can be overridden by the model card's optional "quality" entry.

export const DEFAULT_GATE = {
  size: 128,
  min_sharpness: 15,
  dark_level: 16,
  bright_level: 250,
  max_dark_fraction: 0.25,
  max_bright_fraction: 0.05,
  min_mean: 40,
  max_mean: 235,
};

/** Area-average the crop box of an RGB frame to n x n luma (Float32Array). */
export function lumaThumb(rgb, w, box, n) {
  const [l, t, r, b] = box;
  const cw = r - l;
  const ch = b - t;
  const out = new Float32Array(n * n);
  const cnt = new Float32Array(n * n);
  // sample every pixel when small, else stride so at most ~4 samples per cell per axis
  const step = Math.max(1, Math.floor(Math.min(cw, ch) / (n * 4)));
  for (let y = 0; y < ch; y += step) {
    const ty = Math.min(n - 1, Math.floor((y * n) / ch));
    const row = (y + t) * w;
    for (let x = 0; x < cw; x += step) {
      const tx = Math.min(n - 1, Math.floor((x * n) / cw));
      const p = (row + x + l) * 3;
      out[ty * n + tx] += 0.299 * rgb[p] + 0.587 * rgb[p + 1] + 0.114 * rgb[p + 2];
      cnt[ty * n + tx] += 1;
    }
  }
  for (let i = 0; i < n * n; i++) out[i] = cnt[i] ? out[i] / cnt[i] : 0;
  return out;
}

/** Assess one frame: {ok, reason, sharpness, dark, bright, mean}. */
export function assess(rgb, w, h, box, gate = DEFAULT_GATE) {
  const g = { ...DEFAULT_GATE, ...(gate || {}) };
  const n = g.size;
  const thumb = lumaThumb(rgb, w, box, n);
  let s = 0;
  let s2 = 0;
  let m = 0;
  for (let y = 1; y < n - 1; y++) {
    for (let x = 1; x < n - 1; x++) {
      const i = y * n + x;
      const lap = 4 * thumb[i] - thumb[i - 1] - thumb[i + 1] - thumb[i - n] - thumb[i + n];
      s += lap;
      s2 += lap * lap;
      m++;
    }
  }
  const sharpness = s2 / m - (s / m) ** 2;
  // exposure inside the inscribed circle, on the thumbnail
  let dark = 0;
  let bright = 0;
  let sum = 0;
  let k = 0;
  const c = (n - 1) / 2;
  const r2 = (n / 2) ** 2;
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      if ((x - c) ** 2 + (y - c) ** 2 > r2) continue;
      const v = thumb[y * n + x];
      if (v <= g.dark_level) dark++;
      if (v >= g.bright_level) bright++;
      sum += v;
      k++;
    }
  }
  const res = {
    ok: true,
    reason: 'ok',
    sharpness: Math.round(sharpness * 10) / 10,
    dark: dark / k,
    bright: bright / k,
    mean: sum / k,
  };
  if (res.dark > g.max_dark_fraction || res.mean < g.min_mean) {
    res.ok = false;
    res.reason = 'too dark';
  } else if (res.bright > g.max_bright_fraction || res.mean > g.max_mean) {
    res.ok = false;
    res.reason = 'too bright / glare';
  } else if (sharpness < g.min_sharpness) {
    res.ok = false;
    res.reason = 'hold still / focus';
  }
  void h;
  return res;
}

/** Mean absolute difference between two luma thumbnails (0..255). */
export function frameChange(a, b) {
  if (!a || !b || a.length !== b.length) return 255;
  let d = 0;
  for (let i = 0; i < a.length; i++) d += Math.abs(a[i] - b[i]);
  return d / a.length;
}

/**
 * N-of-M smoothing: a decision is shown only when N of the last M good frames agree; the shown
 * probability is the mean over those M frames. reset() on a lesion change.
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
  push(prob, threshold) {
    this.window.push(prob);
    if (this.window.length > this.m) this.window.shift();
    const refer = this.window.filter((p) => p >= threshold).length;
    const routine = this.window.length - refer;
    const mean = this.window.reduce((a, b) => a + b, 0) / this.window.length;
    let decision = null;
    if (refer >= this.n) decision = 'refer';
    else if (routine >= this.n) decision = 'routine';
    return { decision, prob: mean, agree: Math.max(refer, routine), count: this.window.length };
  }
}
