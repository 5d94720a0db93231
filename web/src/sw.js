// Offline cache for the dermedge page. The server stamps VERSION (a hash of the model card and
// model) into this file, so a new model on the server changes sw.js: the browser installs the new
// worker on the next online load, which precaches the new model and drops the old cache.
const VERSION = '__DERMEDGE_VERSION__';
const CACHE = `dermedge-${VERSION}`;
const CORE = [
  './',
  './app.js',
  './app.css',
  './icon.svg',
  './manifest.webmanifest',
  `./card.json?v=${VERSION}`,
  `./model.tflite?v=${VERSION}`,
];

const RUNTIME_LIST = './__runtime-files'; // synthetic entry: the runtime files the page used

// The runtime files (the wasm variant this browser picked) that an older version's page reported.
async function previousRuntimeFiles() {
  for (const key of await caches.keys()) {
    if (!key.startsWith('dermedge-') || key === CACHE) continue;
    const res = await (await caches.open(key)).match(RUNTIME_LIST);
    if (res) return res.json();
  }
  return [];
}

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    const runtime = await previousRuntimeFiles().catch(() => []);
    const urls = [...CORE, ...runtime];
    await cache.addAll(urls.map((u) => new Request(u, { cache: 'no-cache' })));
    if (runtime.length) await cache.put(RUNTIME_LIST, new Response(JSON.stringify(runtime)));
    await self.skipWaiting();
  })());
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith('dermedge-') && k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

// The page lists the runtime files it loaded (the wasm variant this browser picked) to keep.
self.addEventListener('message', (event) => {
  const msg = event.data || {};
  if (msg.type !== 'cache' || !Array.isArray(msg.urls)) return;
  const urls = msg.urls.filter((u) => new URL(u, self.location).origin === self.location.origin);
  const reply = (m) => event.ports && event.ports[0] && event.ports[0].postMessage(m);
  event.waitUntil((async () => {
    try {
      const cache = await caches.open(CACHE);
      for (const u of urls) {
        const key = new URL(u, self.location);
        const isPage = key.pathname === new URL('./', self.location).pathname || key.pathname.endsWith('/index.html');
        if (isPage) {
          if (!(await cache.match('./'))) await cache.add('./');
        } else if (!(await cache.match(u))) {
          await cache.add(new Request(u, { cache: 'no-cache' }));
        }
      }
      const runtime = urls.map((u) => new URL(u, self.location).pathname).filter((p) => p.includes('/litert/'));
      if (runtime.length) await cache.put(RUNTIME_LIST, new Response(JSON.stringify(runtime.map((p) => `.${p}`))));
      reply({ ok: true, version: VERSION });
    } catch (e) {
      reply({ ok: false, version: VERSION, error: String(e) });
    }
  })());
});

function withTimeout(promise, ms) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('timeout')), ms);
    promise.then((v) => { clearTimeout(t); resolve(v); }, (e) => { clearTimeout(t); reject(e); });
  });
}

self.addEventListener('fetch', (event) => {
  const req = event.request;
  if (req.method !== 'GET') return;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin || url.pathname === '/sw.js') return;
  if (req.mode === 'navigate') {
    // network first, so an online load sees the server's current version; the cache when offline
    event.respondWith((async () => {
      const cache = await caches.open(CACHE);
      try {
        const res = await withTimeout(fetch(req), 4000);
        if (res.ok) await cache.put('./', res.clone());
        return res;
      } catch (e) {
        return (await cache.match('./')) || Response.error();
      }
    })());
    return;
  }
  // everything else is immutable per version (model and card carry ?v=VERSION): cache first
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    const hit = await cache.match(req);
    if (hit) return hit;
    const res = await fetch(req);
    if (res.ok && res.type === 'basic') await cache.put(req, res.clone());
    return res;
  })());
});
