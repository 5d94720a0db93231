// Builds the phone page into the Python package (dermedge/edge/web/), so `pip install` and
// `edge-classify --serve` need no Node at run time.
//   npm ci && npm run build          build into dermedge/edge/web/
//   node build.mjs --check           build into a temp dir and fail if the committed build differs
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { gzipSync } from 'node:zlib';

const here = import.meta.dirname;
const committed = resolve(here, '..', 'dermedge', 'edge', 'web');
const check = process.argv.includes('--check');
const out = check ? mkdtempSync(join(tmpdir(), 'dermedge-web-')) : committed;
const src = join(here, 'src');
const litertDir = join(here, 'node_modules', '@litertjs', 'core');
const litertVersion = JSON.parse(readFileSync(join(litertDir, 'package.json'), 'utf8')).version;
// The runtime picks a variant at load time: relaxed-SIMD (Chrome/Edge/Firefox) or compat
// (SIMD128 only, e.g. Safari). The threaded and JSPI variants are not shipped.
const WASM_VARIANTS = ['litert_wasm_internal', 'litert_wasm_compat_internal'];
const GZIP_OVER = 32 * 1024; // larger files are stored gzip-compressed; the server sends them as is

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, 'litert'), { recursive: true });

await build({
  entryPoints: [join(src, 'app.js')],
  bundle: true,
  format: 'esm',
  target: ['es2020', 'safari15'],
  minify: true,
  legalComments: 'eof',
  define: { __LITERT_VERSION__: JSON.stringify(litertVersion) },
  outfile: join(out, 'app.js'),
  logLevel: 'warning',
});
// the bundle keeps the literal placeholder string if define did not catch it (it is a string)
const appJs = readFileSync(join(out, 'app.js'), 'utf8').replaceAll('__LITERT_VERSION__', litertVersion);
writeFileSync(join(out, 'app.js'), appJs);

for (const f of ['index.html', 'app.css', 'sw.js', 'icon.svg', 'manifest.webmanifest']) {
  copyFileSync(join(src, f), join(out, f));
}
for (const v of WASM_VARIANTS) {
  for (const ext of ['.js', '.wasm']) {
    copyFileSync(join(litertDir, 'wasm', v + ext), join(out, 'litert', v + ext));
  }
}
copyFileSync(join(litertDir, 'package.json'), join(out, 'litert', 'package.json'));
writeFileSync(join(out, 'litert', 'LICENSE.txt'),
  `LiteRT.js (@litertjs/core ${litertVersion}) - Apache License 2.0 - https://github.com/google-ai-edge/LiteRT\n`);

// compress the big files in place (name.gz replaces name)
let total = 0;
const walk = (d) => readdirSync(d).flatMap((n) => (statSync(join(d, n)).isDirectory() ? walk(join(d, n)) : [join(d, n)]));
for (const f of walk(out)) {
  const data = readFileSync(f);
  if (data.length > GZIP_OVER) {
    const gz = gzipSync(data, { level: 9 });
    writeFileSync(f + '.gz', gz);
    rmSync(f);
    total += gz.length;
  } else {
    total += data.length;
  }
}
console.log(`built ${out} (${(total / 1e6).toFixed(2)} MB on disk, LiteRT.js ${litertVersion})`);
void dirname;

if (check) {
  const files = (d) => walk(d).map((f) => relative(d, f)).sort();
  const want = files(out);
  const have = statSync(committed, { throwIfNoEntry: false }) ? files(committed) : [];
  const diff = [...new Set([...want, ...have])].filter((f) => {
    if (!want.includes(f) || !have.includes(f)) return true;
    return !readFileSync(join(out, f)).equals(readFileSync(join(committed, f)));
  });
  rmSync(out, { recursive: true, force: true });
  if (diff.length) {
    console.error(`dermedge/edge/web is out of date with web/ (${diff.join(', ')}): run \`npm run build\` in web/ and commit`);
    process.exit(1);
  }
  console.log('dermedge/edge/web matches a fresh build');
}
