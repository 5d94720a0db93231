// Port of dermedge/edge/adapt.py's Head: a site's own last layer (`dermedge calibrate --adapt`).
// The card's `head` holds weights over the standardised feature output (the same output the
// guard reads), the standardisation (mean, scale), a bias and the weight of the shipped model's
// own logit; P(malignant) = sigmoid(sum((f - mean) / scale * w) + offset * logit(p) + bias).
// The model's own output is untouched: without a head the page uses it as shipped.

import { floats } from './guard.js';

const EPS = 1e-4; // the shipped probability is clipped to [EPS, 1 - EPS] before its logit

export class Head {
  constructor(spec) {
    if (!spec || spec.kind !== 'logistic-standardised/1') throw new Error(`unknown head kind ${spec && spec.kind}`);
    this.dim = spec.dim;
    this.weights = floats(spec.weights, spec.dim, 'head');
    this.mean = floats(spec.mean, spec.dim, 'head');
    this.scale = floats(spec.scale, spec.dim, 'head');
    this.bias = Number(spec.bias);
    this.offset = Number(spec.offset);
    this.site = spec.site || '';
  }

  /** features: dim numbers, shipped: the model's own P(malignant) -> the head's P(malignant) */
  prob(features, shipped) {
    let z = this.bias;
    for (let i = 0; i < this.dim; i++) z += ((features[i] - this.mean[i]) / this.scale[i]) * this.weights[i];
    if (this.offset) {
      const p = Math.min(Math.max(shipped, EPS), 1 - EPS);
      z += this.offset * (Math.log(p) - Math.log1p(-p));
    }
    return 0.5 * (1 + Math.tanh(0.5 * z));
  }
}

// "adapted to site X (...)" for the page's model line, or '' for a model with its own last layer.
export function headText(card) {
  const h = card.head;
  if (!h) return '';
  const r = h.record || {};
  const n = r.counts || {};
  return `adapted to site ${h.site || r.site} (last layer re-fitted on ${n.malignant} malignant + ${n.benign} benign cases, ${String(r.date || '').slice(0, 10)})`;
}
