// `npm run build`: plugin.wasm from app.js. It checks the syntax first (componentize-js does
// not say where an error is), then builds for the world that matches what app.js exports:
// `web` with `incomingHandler`, `worker` with `runJob`, else `plugin`. A plugin built for the
// wrong world would load, and its jobs or pages would fail only when used.

import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';

const source = readFileSync('app.js', 'utf8');
const exports = (name) =>
  new RegExp(`export\\s+(?:const|let|var|class|(?:async\\s+)?function\\*?)\\s+${name}\\b`).test(source) ||
  new RegExp(`export\\s*\\{[^}]*\\b${name}\\b[^}]*\\}`).test(source);
const world = exports('incomingHandler') ? 'web' : exports('runJob') ? 'worker' : 'plugin';

const stop = (message) => {
  console.error(`build: ${message}`);
  process.exit(1);
};
if (world === 'web' && !exports('runJob')) {
  stop('a plugin with pages (incomingHandler) also exports runJob: `export const runJob = noJobs;` when it runs no jobs');
}
if (world !== 'web' && /from\s+['"]\.\/addon-web\.js['"]/.test(source)) {
  stop('app.js imports addon-web.js but exports no incomingHandler: `export const incomingHandler = webHandler(...)`');
}

const run = (command, args) => {
  try {
    execFileSync(command, args, { stdio: 'inherit' });
  } catch {
    process.exit(1);
  }
};
for (const file of ['app.js', 'addon-sdk.js', 'addon-web.js']) {
  if (existsSync(file)) run(process.execPath, ['--check', file]);
}
console.log(`build: app.js exports ${world === 'web' ? 'incomingHandler' : world === 'worker' ? 'runJob' : 'neither runJob nor incomingHandler'}: building for the \`${world}\` world`);
// componentize-js's own fetch() and fetch-event are left out: `fetch` is the SDK's, through
// the host's allow-list, and pages are served by the exported handler.
run('componentize-js', ['app.js', '--wit', 'wit', '--world-name', world, '-o', 'plugin.wasm', '-d', 'http', '-d', 'fetch-event']);
