// The preprocessing contract in JavaScript: crop ("squash" | "center" | "fov") then a bit-exact
// port of Pillow's 8-bit BILINEAR resample (Resample.c: triangle filter whose support grows with
// the downscale factor, fixed-point coefficients, horizontal pass then vertical pass).
// Mirrors dermedge/data/contract.py so the page feeds the model the same numbers as Python.

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

/**
 * Port of contract.find_fov_box: bounding square of a dermatoscope's bright circular field of
 * view (rows/columns with more than 2% of pixels brighter than `dark`), or null if no vignette.
 */
export function findFovBox(rgb, w, h, dark = 30) {
  const colCount = new Int32Array(w);
  const rowCount = new Int32Array(h);
  for (let y = 0, j = 0; y < h; y++) {
    for (let x = 0; x < w; x++, j += 3) {
      if ((rgb[j] + rgb[j + 1] + rgb[j + 2]) / 3 > dark) {
        colCount[x]++;
        rowCount[y]++;
      }
    }
  }
  let x0 = -1, x1 = -1, y0 = -1, y1 = -1;
  for (let x = 0; x < w; x++) {
    if (colCount[x] / h > 0.02) {
      if (x0 < 0) x0 = x;
      x1 = x + 1;
    }
  }
  for (let y = 0; y < h; y++) {
    if (rowCount[y] / w > 0.02) {
      if (y0 < 0) y0 = y;
      y1 = y + 1;
    }
  }
  if (x0 < 0 || y0 < 0) return null;
  if (x1 - x0 > 0.97 * w && y1 - y0 > 0.97 * h) return null;
  let side = Math.max(x1 - x0, y1 - y0);
  const cx = Math.floor((x0 + x1) / 2);
  const cy = Math.floor((y0 + y1) / 2);
  side = Math.min(side, w, h);
  const clip = (v, lo, hi) => Math.min(Math.max(v, lo), hi);
  const left = clip(cx - Math.floor(side / 2), 0, w - side);
  const top = clip(cy - Math.floor(side / 2), 0, h - side);
  if (side < 0.25 * Math.min(w, h)) return null;
  return [left, top, left + side, top + side];
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
 * contract.preprocess on an RGB frame: returns {pixels: Uint8Array(size*size*3), box}.
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
  const pixels = cw === size && ch === size ? img : resizeBilinear(img, cw, ch, size, size);
  return { pixels, box };
}
