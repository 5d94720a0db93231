// Runs the page's site head (web/src/head.js) on features and shipped probabilities, for the
// pytest cross-check against dermedge.edge.adapt.Head.
// stdin: one JSON {head: card["head"], features: [[...], ...], shipped: [...]};
// stdout: one JSON {prob: [...], text: headText(card)}.
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';

const root = process.argv[2] || resolve(import.meta.dirname, '../../web/src');
const { Head, headText } = await import(pathToFileURL(resolve(root, 'head.js')).href);
const req = JSON.parse(readFileSync(0, 'utf8'));
const head = new Head(req.head);
const prob = req.features.map((f, i) => head.prob(f, req.shipped[i]));
process.stdout.write(JSON.stringify({ prob, text: headText({ head: req.head }) }) + '\n');
