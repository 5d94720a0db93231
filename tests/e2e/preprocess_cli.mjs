// Runs the page's JS preprocessing on raw RGB frames, for the pytest cross-check against PIL.
// stdin: JSON lines {w, h, rgb: base64, contract, gate?};
// stdout: JSON lines {box, pixels: base64, quality, signature}.
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';

const root = process.argv[2] || resolve(import.meta.dirname, '../../web/src');
const { preprocess } = await import(pathToFileURL(resolve(root, 'preprocess.js')).href);
const { assess, signature } = await import(pathToFileURL(resolve(root, 'quality.js')).href);
const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of rl) {
  if (!line.trim()) continue;
  const req = JSON.parse(line);
  const rgb = new Uint8Array(Buffer.from(req.rgb, 'base64'));
  const { pixels, box } = preprocess(rgb, req.w, req.h, req.contract);
  const quality = assess(rgb, req.w, req.h, box, req.gate);
  const sig = Array.from(signature(rgb, req.w, box));
  process.stdout.write(JSON.stringify({ box, pixels: Buffer.from(pixels).toString('base64'), quality, signature: sig }) + '\n');
}
