// The provider and its pages, natively: `npm test` runs them under Node against
// addon-testing.js, an in-memory host with the real one's rules, which also passes each page
// request the identity the host would.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { TestHost, provisionRequest } from './addon-testing.js';
import * as app from './app.js';

const newHost = () => new TestHost({ addonId: '{NAME}', config: { host_url: 'https://{NAME}.example.com' } });

test('the dashboard shows the plan and saves a note', async () => {
  const host = newHost();
  await host.call(() => app.provision(provisionRequest('app-1', 'pro')));
  const identity = { resourceId: 'app-1', plan: 'pro', appTitle: 'My <App>' };
  const page = await host.web(app.incomingHandler, { path: '/dashboard/', identity });
  assert.equal(page.status, 200);
  assert.match(page.text, /My &lt;App&gt;/);
  assert.match(page.text, /name="_csrf"/);
  const saved = await host.web(app.incomingHandler, { method: 'POST', path: '/dashboard/note', body: 'note=hello', identity });
  assert.equal(saved.status, 303);
  const status = await host.web(app.incomingHandler, { path: '/api/status', identity: { ...identity, surface: 'api' } });
  assert.deepEqual(status.json(), { app: 'app-1', plan: 'pro', note: 'hello' });
});
