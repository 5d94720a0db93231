// The preprocessing contract in JavaScript: crop ("squash" | "center" | "fov") then a bit-exact
// port of Pillow's 8-bit BILINEAR resample (Resample.c: triangle filter whose support grows with
// the downscale factor, fixed-point coefficients, horizontal pass then vertical pass), then the
// optional margin (edge pixels repeated around the result, resized back) and Shades of Gray colour
// constancy on the size x size result. Mirrors dermedge/data/contract.py so the page feeds the model the same numbers as Python.

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS;
const HALF = 2 ** (PRECISION_BITS - 1);

function bilinearFilter(x) {
  if (x < 0) x = -x;
  return x < 1 ? 1 - x : 0;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis.
function coeffs(inSize, in0, in1, outSize) {
  const scale = (in1 - in0) / outSize;
  const filterscale = scale < 1 ? 1 : scale;
  const support = 1.0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const kk = new Int32Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  const pre = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = bilinearFilter((x + xmin - center + 0.5) * ss);
      pre[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0 ? pre[x] / ww : pre[x];
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * ONE) : Math.trunc(0.5 + v * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, kk, bounds };
}

function clip8(ss) {
  const v = Math.floor(ss / ONE);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/**
 * Resize an RGB image (Uint8Array, 3 bytes per pixel, w x h) to outW x outH like
 * PIL `Image.resize((outW, outH), Image.BILINEAR)`. Returns a Uint8Array (outW*outH*3).
 */
export function resizeBilinear(rgb, w, h, outW, outH) {
  if (w === outW && h === outH) return rgb.slice();
  const needH = outW !== w;
  const needV = outH !== h;
  const H = coeffs(w, 0, w, outW);
  const V = coeffs(h, 0, h, outH);
  let src = rgb;
  let srcH = h;
  let srcW = w;
  const vb = V.bounds.slice();
  if (needH) {
    const yFirst = V.bounds[0];
    const yLast = V.bounds[outH * 2 - 2] + V.bounds[outH * 2 - 1];
    for (let i = 0; i < outH; i++) vb[i * 2] -= yFirst;
    const rows = yLast - yFirst;
    const tmp = new Uint8Array(outW * rows * 3);
    for (let yy = 0; yy < rows; yy++) {
      const rowIn = (yy + yFirst) * w * 3;
      const rowOut = yy * outW * 3;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = H.bounds[xx * 2];
        const xmax = H.bounds[xx * 2 + 1];
        const k = xx * H.ksize;
        let s0 = HALF, s1 = HALF, s2 = HALF;
        for (let x = 0; x < xmax; x++) {
          const p = rowIn + (x + xmin) * 3;
          const c = H.kk[k + x];
          s0 += rgb[p] * c;
          s1 += rgb[p + 1] * c;
          s2 += rgb[p + 2] * c;
        }
        const o = rowOut + xx * 3;
        tmp[o] = clip8(s0);
        tmp[o + 1] = clip8(s1);
        tmp[o + 2] = clip8(s2);
      }
    }
    src = tmp;
    srcH = rows;
    srcW = outW;
  }
  if (!needV) return src === rgb ? rgb.slice() : src;
  const out = new Uint8Array(srcW * outH * 3);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = vb[yy * 2];
    const ymax = vb[yy * 2 + 1];
    const k = yy * V.ksize;
    for (let xx = 0; xx < srcW; xx++) {
      let s0 = HALF, s1 = HALF, s2 = HALF;
      for (let y = 0; y < ymax; y++) {
        const p = ((y + ymin) * srcW + xx) * 3;
        const c = V.kk[k + y];
        s0 += src[p] * c;
        s1 += src[p + 1] * c;
        s2 += src[p + 2] * c;
      }
      const o = (yy * srcW + xx) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  void srcH;
  return out;
}

/** RGBA (canvas ImageData.data) -> packed RGB. */
export function rgbaToRgb(rgba, w, h) {
  const out = new Uint8Array(w * h * 3);
  for (let i = 0, j = 0; i < w * h * 4; i += 4, j += 3) {
    out[j] = rgba[i];
    out[j + 1] = rgba[i + 1];
    out[j + 2] = rgba[i + 2];
  }
  return out;
}

export function cropRgb(rgb, w, box) {
  const [l, t, r, b] = box;
  const cw = r - l;
  const ch = b - t;
  const out = new Uint8Array(cw * ch * 3);
  for (let y = 0; y < ch; y++) {
    const s = ((y + t) * w + l) * 3;
    out.set(rgb.subarray(s, s + cw * 3), y * cw * 3);
  }
  return out;
}

export function centerBox(w, h) {
  const side = Math.min(w, h);
  const left = Math.floor((w - side) / 2);
  const top = Math.floor((h - side) / 2);
  return [left, top, left + side, top + side];
}

// contract._extent: first and one-past-last index whose bright count is over 2% of `length`.
function extent(counts, length) {
  let lo = -1;
  let hi = -1;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] / length > 0.02) {
      if (lo < 0) lo = i;
      hi = i + 1;
    }
  }
  return lo < 0 ? null : [lo, hi];
}

// contract._axis_centre: the field's centre on one axis from its bright extent [lo, hi).
function axisCentre(lo, hi, n, r) {
  if (lo > 0 && hi < n) return (lo + hi) / 2;
  if (lo > 0) return lo + r;
  if (hi < n) return hi - r;
  return n / 2;
}

// contract._chord_depth: distance, in semi-axes, from the centre to a chord `chord` long.
function chordDepth(chord, r) {
  const q = 1 - (chord / (2 * r)) * (chord / (2 * r));
  return q > 0 ? Math.sqrt(q) : 0;
}

// contract._axis_fit: centre and semi-axis on a cut axis from the chords along its edges.
function axisFit(lo, hi, n, chordLo, chordHi, rOther) {
  const sLo = lo > 0 ? 1 : chordDepth(chordLo, rOther);
  const sHi = hi < n ? 1 : chordDepth(chordHi, rOther);
  if (sLo + sHi === 0) return null;
  const r = (hi - lo) / (sLo + sHi);
  return [lo + r * sLo, r];
}

// contract._ellipse: the field's ellipse [cx, cy, rx, ry] from its extents and counts.
function ellipse([x0, x1], [y0, y1], cols, rows, bright) {
  const w = cols.length;
  const h = rows.length;
  const xIn = x0 > 0 && x1 < w;
  const yIn = y0 > 0 && y1 < h;
  if (xIn && yIn) return [(x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2];
  if (xIn) {
    const fit = axisFit(y0, y1, h, rows[0], rows[h - 1], (x1 - x0) / 2);
    if (fit) return [(x0 + x1) / 2, fit[0], (x1 - x0) / 2, fit[1]];
  }
  if (yIn) {
    const fit = axisFit(x0, x1, w, cols[0], cols[w - 1], (y1 - y0) / 2);
    if (fit) return [fit[0], (y0 + y1) / 2, fit[1], (y1 - y0) / 2];
  }
  const r = Math.sqrt(bright / Math.PI);
  return [axisCentre(x0, x1, w, r), axisCentre(y0, y1, h, r), r, r];
}

// contract._dark_corners: how many of the four corner patches are over 60% dark.
function darkCorners(mask, w, h) {
  const k = Math.max(2, Math.floor(Math.min(h, w) / 16));
  let n = 0;
  for (const [x0, y0] of [[0, 0], [w - k, 0], [0, h - k], [w - k, h - k]]) {
    let dark = 0;
    for (let y = y0; y < y0 + k; y++) {
      for (let x = x0; x < x0 + k; x++) if (!mask[y * w + x]) dark++;
    }
    if (dark / (k * k) > 0.6) n++;
  }
  return n;
}

/** contract.inscribed_square: largest square in the frame with its corners inside the ellipse. */
export function inscribedSquare(cx, cy, rx, ry, w, h) {
  let side = Math.min(w, h, Math.trunc((2 * rx * ry) / Math.sqrt(rx * rx + ry * ry)) + 1);
  while (side > 0) {
    const left = Math.min(Math.max(Math.floor(cx - side / 2 + 0.5), 0), w - side);
    const top = Math.min(Math.max(Math.floor(cy - side / 2 + 0.5), 0), h - side);
    const dx = Math.max(cx - left, left + side - cx) / rx;
    const dy = Math.max(cy - top, top + side - cy) / ry;
    if (dx * dx + dy * dy <= 1) return [left, top, left + side, top + side];
    side--;
  }
  return null;
}

/**
 * Port of contract.find_fov_box: the largest square inside a dermatoscope's bright circular
 * (or squashed, elliptical) field of view, or null if there is no vignette.
 */
export function findFovBox(rgb, w, h, dark = 30) {
  const colCount = new Int32Array(w);
  const rowCount = new Int32Array(h);
  const mask = new Uint8Array(w * h);
  let bright = 0;
  for (let y = 0, j = 0, i = 0; y < h; y++) {
    for (let x = 0; x < w; x++, j += 3, i++) {
      if ((rgb[j] + rgb[j + 1] + rgb[j + 2]) / 3 > dark) {
        colCount[x]++;
        rowCount[y]++;
        mask[i] = 1;
        bright++;
      }
    }
  }
  const xs = extent(colCount, h);
  const ys = extent(rowCount, w);
  if (!xs || !ys) return null;
  const [x0, x1] = xs;
  const [y0, y1] = ys;
  if (x1 - x0 > 0.97 * w && y1 - y0 > 0.97 * h && darkCorners(mask, w, h) < 3) return null;
  const [cx, cy, rx, ry] = ellipse(xs, ys, colCount, rowCount, bright);
  const box = inscribedSquare(cx, cy, rx, ry, w, h);
  if (!box || box[2] - box[0] < 0.25 * Math.min(w, h)) return null;
  return box;
}

/**
 * Port of contract.shades_of_gray (Shades of Gray colour constancy, Minkowski norm p) on a packed
 * RGB image of n pixels: same histogram sums in the same order, same per-channel tables.
 */
export function shadesOfGray(rgb, n, p = 6) {
  const powers = new Float64Array(256);
  for (let v = 0; v < 256; v++) powers[v] = Math.pow(v / 255, p);
  const e = [];
  for (let c = 0; c < 3; c++) {
    const counts = new Int32Array(256);
    for (let i = c; i < n * 3; i += 3) counts[rgb[i]]++;
    let total = 0;
    for (let v = 0; v < 256; v++) total += counts[v] * powers[v];
    e.push(Math.pow(total / n, 1 / p));
  }
  const norm = Math.sqrt(e[0] * e[0] + e[1] * e[1] + e[2] * e[2]);
  if (norm === 0) return rgb.slice();
  const luts = e.map((ec) => {
    const gain = ec > 0 ? 1 / ((ec / norm) * Math.sqrt(3)) : 1;
    const lut = new Uint8Array(256);
    for (let v = 0; v < 256; v++) lut[v] = Math.min(255, Math.floor(v * gain + 0.5));
    return lut;
  });
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n * 3; i += 3) {
    out[i] = luts[0][rgb[i]];
    out[i + 1] = luts[1][rgb[i + 1]];
    out[i + 2] = luts[2][rgb[i + 2]];
  }
  return out;
}

/**
 * contract.add_margin: frame a size x size RGB input with floor(margin * size + 0.5) pixels on
 * every side, repeating its edge pixels, and resize it back to size x size (Pillow's bilinear).
 */
export function addMargin(pixels, size, margin) {
  const pad = Math.floor(margin * size + 0.5);
  if (!(pad > 0)) return pixels;
  const side = size + 2 * pad;
  const framed = new Uint8Array(side * side * 3);
  for (let y = 0; y < side; y++) {
    const sy = Math.min(Math.max(y - pad, 0), size - 1);
    for (let x = 0; x < side; x++) {
      const sx = Math.min(Math.max(x - pad, 0), size - 1);
      const i = (y * side + x) * 3;
      const j = (sy * size + sx) * 3;
      framed[i] = pixels[j];
      framed[i + 1] = pixels[j + 1];
      framed[i + 2] = pixels[j + 2];
    }
  }
  return resizeBilinear(framed, side, side, size, size);
}

/** contract.crop_box */
export function cropBox(rgb, w, h, crop) {
  if (crop === 'squash') return [0, 0, w, h];
  if (crop === 'fov') {
    const box = findFovBox(rgb, w, h);
    if (box) return box;
  }
  return centerBox(w, h);
}

/**
 * contract.preprocess on an RGB frame: crop, bilinear resize, the card's optional margin
 * (contract.margin), then its optional colour constancy (contract.color_constancy). Returns {pixels: Uint8Array(size*size*3), box}.
 */
export function preprocess(rgb, w, h, contract) {
  const size = contract.size | 0;
  const crop = contract.crop || 'squash';
  const box = cropBox(rgb, w, h, crop);
  let img = rgb;
  let cw = w;
  let ch = h;
  if (!(box[0] === 0 && box[1] === 0 && box[2] === w && box[3] === h)) {
    img = cropRgb(rgb, w, box);
    cw = box[2] - box[0];
    ch = box[3] - box[1];
  }
  let pixels = cw === size && ch === size ? img : resizeBilinear(img, cw, ch, size, size);
  if (contract.margin) pixels = addMargin(pixels, size, contract.margin);
  if ((contract.color_constancy || 'none') === 'shades_of_gray') {
    pixels = shadesOfGray(pixels, size * size, contract.color_constancy_p ?? 6);
  }
  return { pixels, box };
}
