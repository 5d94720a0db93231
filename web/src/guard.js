// Port of dermedge/edge/guard.py: the unfamiliar-input guard. A guarded model's second output is
// its penultimate features; the card holds class means and a shared covariance (probabilistic
// PCA: top components, their variances, one residual variance). The score is the squared
// Mahalanobis distance to the nearest class mean per feature; above the card's cut-off a frame is
// "unlike the training images". A flag never hides a lesion: a flagged frame with skin colours
// (skinShare, the same integer test as guard.skin_share) is sent on ("cannot assess": refer);
// only a flagged frame without them is "no lesion in view" and gets no decision.

/** A card's base64 little-endian float32 array as Float64Array of n values (guard and head). */
export function floats(b64, n, what = 'guard') {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const a = new Float32Array(bytes.buffer);
  if (a.length !== n) throw new Error(`${what} array of ${a.length} values, expected ${n}`);
  return Float64Array.from(a);
}

export const GUARD_MESSAGE = 'no lesion in view (not a lesion photo)';
export const CANNOT_ASSESS = 'cannot assess';
export const MIN_SKIN_SHARE = 0.05;

/** Share of RGB pixels that are lit, saturated and warm-hued (dermedge.edge.guard.skin_share). */
export function skinShare(pixels) {
  let warm = 0;
  const n = pixels.length / 3;
  for (let i = 0; i < pixels.length; i += 3) {
    const r = pixels[i], g = pixels[i + 1], b = pixels[i + 2];
    const hi = Math.max(r, g, b), lo = Math.min(r, g, b);
    if (r >= g && r >= b && hi >= 31 && 10 * (hi - lo) >= hi) warm++;
  }
  return n ? warm / n : 0;
}

/** 'familiar', 'lesion' (unlike the training images, sent on) or 'not_lesion' (no decision). */
export function assessGuard(unfamiliar, pixels) {
  if (!unfamiliar) return 'familiar';
  return pixels && skinShare(pixels) < MIN_SKIN_SHARE ? 'not_lesion' : 'lesion';
}

export class Guard {
  constructor(spec) {
    if (!spec || spec.kind !== 'mahalanobis-ppca/1') throw new Error(`unknown guard kind ${spec && spec.kind}`);
    this.dim = spec.dim;
    this.k = spec.k;
    this.classes = spec.classes;
    this.means = floats(spec.means, spec.classes * spec.dim);
    this.components = floats(spec.components, spec.k * spec.dim);
    this.variances = floats(spec.variances, spec.k);
    this.residual = spec.residual_variance;
    this.cutoff = spec.cutoff;
  }

  /** features: array of dim numbers -> score (same as Guard.score in Python) */
  score(features) {
    const { dim, k } = this;
    let best = Infinity;
    const r = new Float64Array(dim);
    for (let c = 0; c < this.classes; c++) {
      let norm = 0;
      for (let i = 0; i < dim; i++) {
        r[i] = features[i] - this.means[c * dim + i];
        norm += r[i] * r[i];
      }
      let inside = 0;
      let projNorm = 0;
      for (let j = 0; j < k; j++) {
        let p = 0;
        const row = j * dim;
        for (let i = 0; i < dim; i++) p += r[i] * this.components[row + i];
        inside += (p * p) / this.variances[j];
        projNorm += p * p;
      }
      const d = inside + Math.max(norm - projNorm, 0) / this.residual;
      if (d < best) best = d;
    }
    return best / dim;
  }
}
