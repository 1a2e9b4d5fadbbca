// `node --import ./addon-testing-hooks.js --test`: serves the plugin's host imports
// (`addon:provider/*`, and `wasi:http/types` for the web layer) from `addon-testing.js`, so the
// plugin and the SDK run unchanged under Node. Registered from the main thread; the hooks
// themselves run in Node's loader thread.

import { register } from 'node:module';
import { isMainThread } from 'node:worker_threads';

if (isMainThread) register(import.meta.url);

const TESTING = new URL('./addon-testing.js', import.meta.url).href;
const NAMES = {
  kv: ['get', 'set', 'delete', 'listKeys', 'compareAndSwap'],
  log: ['log'],
  config: ['addonId', 'get', 'secret'],
  env: ['nowMs', 'randomBytes'],
  jobs: ['enqueue'],
  http: ['send'],
  types: [],
  'wasi-http-types': ['Fields', 'OutgoingResponse', 'OutgoingBody', 'ResponseOutparam'],
};

export async function resolve(specifier, context, next) {
  const addon = /^addon:provider\/([a-z-]+)@/.exec(specifier);
  if (addon && addon[1] in NAMES) return { url: `addon-testing:${addon[1]}`, shortCircuit: true };
  if (/^wasi:http\/types@/.test(specifier)) return { url: 'addon-testing:wasi-http-types', shortCircuit: true };
  return next(specifier, context);
}

export async function load(url, context, next) {
  if (!url.startsWith('addon-testing:')) return next(url, context);
  const name = url.slice('addon-testing:'.length);
  const lines = [`import { modules } from ${JSON.stringify(TESTING)};`, `const m = modules[${JSON.stringify(name)}];`];
  NAMES[name].forEach((n, i) => lines.push(`const e${i} = m[${JSON.stringify(n)}];`, `export { e${i} as ${n} };`));
  return { format: 'module', source: lines.join('\n'), shortCircuit: true };
}
