// The provider's logic, natively: `npm test` runs it under Node against addon-testing.js, an
// in-memory host with the real one's rules (a call's writes kept only if it succeeds).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { TestHost, deprovisionRequest, provisionRequest } from './addon-testing.js';
import * as app from './app.js';

const newHost = () => new TestHost({ addonId: '{NAME}', config: { host_url: 'https://{NAME}.example.com/' } });

test('each app gets a URL and a secret, the same on a repeat, forgotten at deprovision', async () => {
  const host = newHost();
  const first = await host.call(() => app.provision(provisionRequest('app-1', 'free')));
  const vars = Object.fromEntries(first.config.map((v) => [v.key, v.value]));
  assert.equal(vars['{PREFIX}_URL'], 'https://{NAME}.example.com/apps/app-1');
  assert.match(vars['{PREFIX}_SECRET'], /^[0-9a-f]{48}$/);
  const again = await host.call(() => app.provision(provisionRequest('app-1', 'pro')));
  assert.deepEqual(again, first);
  await host.call(() => app.deprovision(deprovisionRequest('app-1', 'pro')));
  assert.equal(host.kvString('secret/app-1'), undefined);
});

test('without host_url, the provision fails and keeps nothing', async () => {
  const host = new TestHost({ addonId: '{NAME}' });
  await assert.rejects(host.call(() => app.provision(provisionRequest('app-1', 'free'))), { tag: 'internal' });
  assert.deepEqual(host.kvKeys(), []);
});
