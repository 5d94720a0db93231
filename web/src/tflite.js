// Minimal read-only TFLite flatbuffer reader: the input/output tensors' type, shape and
// quantization (scale, zero point), and named metadata buffers (the embedded model card).
// LiteRT.js does not expose quantization parameters, so the page reads them from the file itself.

const TYPES = { 0: 'float32', 1: 'float16', 2: 'int32', 3: 'uint8', 4: 'int64', 7: 'int16', 9: 'int8' };

class Table {
  constructor(view, pos) {
    this.v = view;
    this.pos = pos;
    this.vt = pos - view.getInt32(pos, true);
    this.vtSize = view.getUint16(this.vt, true);
  }
  off(i) {
    const o = 4 + 2 * i;
    return o < this.vtSize ? this.v.getUint16(this.vt + o, true) : 0;
  }
  ref(i) {
    const o = this.off(i);
    if (!o) return 0;
    const p = this.pos + o;
    return p + this.v.getUint32(p, true);
  }
  table(i) {
    const p = this.ref(i);
    return p ? new Table(this.v, p) : null;
  }
  tables(i) {
    const p = this.ref(i);
    if (!p) return [];
    const n = this.v.getUint32(p, true);
    const out = [];
    for (let k = 0; k < n; k++) {
      const e = p + 4 + 4 * k;
      out.push(new Table(this.v, e + this.v.getUint32(e, true)));
    }
    return out;
  }
  scalar(i, kind, dflt = 0) {
    const o = this.off(i);
    if (!o) return dflt;
    const p = this.pos + o;
    switch (kind) {
      case 'i8': return this.v.getInt8(p);
      case 'u32': return this.v.getUint32(p, true);
      case 'i32': return this.v.getInt32(p, true);
      case 'u64': return Number(this.v.getBigUint64(p, true));
      default: throw new Error(kind);
    }
  }
  vector(i, kind) {
    const p = this.ref(i);
    if (!p) return [];
    const n = this.v.getUint32(p, true);
    const out = new Array(n);
    for (let k = 0; k < n; k++) {
      const e = p + 4;
      if (kind === 'i32') out[k] = this.v.getInt32(e + 4 * k, true);
      else if (kind === 'f32') out[k] = this.v.getFloat32(e + 4 * k, true);
      else if (kind === 'i64') out[k] = Number(this.v.getBigInt64(e + 8 * k, true));
      else throw new Error(kind);
    }
    return out;
  }
  bytes(i) {
    const p = this.ref(i);
    if (!p) return null;
    const n = this.v.getUint32(p, true);
    return new Uint8Array(this.v.buffer, this.v.byteOffset + p + 4, n);
  }
  string(i) {
    const b = this.bytes(i);
    return b ? new TextDecoder().decode(b) : null;
  }
}

function tensorInfo(t) {
  const q = t.table(4);
  const scale = q ? q.vector(2, 'f32') : [];
  const zero = q ? q.vector(3, 'i64') : [];
  return {
    name: t.string(3),
    shape: t.vector(0, 'i32'),
    dtype: TYPES[t.scalar(1, 'i8')] || `type${t.scalar(1, 'i8')}`,
    scale: scale.length ? scale[0] : 0,
    zeroPoint: zero.length ? zero[0] : 0,
  };
}

/** Parse a .tflite (Uint8Array): {inputs, outputs, metadata: {name: Uint8Array}}. */
export function readTflite(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < 8 || new TextDecoder().decode(bytes.subarray(4, 8)) !== 'TFL3') {
    throw new Error('not a TFLite flatbuffer (no TFL3 identifier)');
  }
  const model = new Table(view, view.getUint32(0, true));
  const sg = model.tables(2)[0];
  if (!sg) throw new Error('model has no subgraph');
  const tensors = sg.tables(0);
  const inputs = sg.vector(1, 'i32').map((i) => tensorInfo(tensors[i]));
  const outputs = sg.vector(2, 'i32').map((i) => tensorInfo(tensors[i]));
  const buffers = model.tables(4);
  const metadata = {};
  for (const m of model.tables(6)) {
    const buf = buffers[m.scalar(1, 'u32')];
    if (!buf) continue;
    let data = buf.bytes(0);
    const offset = buf.scalar(1, 'u64');
    const size = buf.scalar(2, 'u64');
    if ((!data || !data.length) && offset > 1) data = bytes.subarray(offset, offset + size);
    metadata[m.string(0)] = data;
  }
  return { inputs, outputs, metadata };
}

/** The embedded dermedge model card, or null. */
export function readCard(bytes) {
  const md = readTflite(bytes).metadata.dermedge_card;
  if (!md) return null;
  try {
    return JSON.parse(new TextDecoder().decode(md));
  } catch {
    return null;
  }
}

/**
 * A copy of the model whose dynamic batch dimension (shape_signature[0] == -1, as Keras exports
 * write it) is fixed to 1: LiteRT.js runs tensors at their signature shape and has no resize.
 * Other dynamic dimensions are an error.
 */
export function fixBatchDimension(bytes) {
  const copy = new Uint8Array(bytes);
  const view = new DataView(copy.buffer, copy.byteOffset, copy.byteLength);
  const model = new Table(view, view.getUint32(0, true));
  for (const sg of model.tables(2)) {
    for (const t of sg.tables(0)) {
      const p = t.ref(7);
      if (!p) continue;
      const n = view.getUint32(p, true);
      for (let k = 0; k < n; k++) {
        const e = p + 4 + 4 * k;
        if (view.getInt32(e, true) !== -1) continue;
        if (k !== 0) throw new Error(`tensor ${t.string(3)} has a dynamic dimension ${k}; only the batch may be dynamic`);
        view.setInt32(e, 1, true);
      }
    }
  }
  return copy;
}
