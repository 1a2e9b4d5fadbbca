// The provider and its job, natively: `npm test` runs them under Node against addon-testing.js,
// an in-memory host with the real one's rules. The job's call to the API is answered by a
// route the test sets; nothing reaches the network.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { TestHost, provisionRequest } from './addon-testing.js';
import * as app from './app.js';

const newHost = () =>
  new TestHost({ addonId: '{NAME}', config: { host_url: 'https://{NAME}.example.com', api_base: 'https://api.example.com' } });

test('a provision enqueues one announcement, which the job sends', async () => {
  const host = newHost();
  await host.call(() => app.provision(provisionRequest('app-1', 'free')));
  await host.call(() => app.provision(provisionRequest('app-1', 'free')));
  assert.equal(host.enqueued.length, 1, 'a repeated provision enqueued again');
  host.onHttp('https://api.example.com/apps', () => ({ status: 201, body: '{}' }));
  await host.call(() => app.runJob(host.job(host.enqueued[0])));
  assert.deepEqual(JSON.parse(host.requests[0].text), { app: 'app-1' });
  assert.notEqual(host.kvString('announced/app-1'), undefined);
});

test('a busy API is retried, a refusal is not', async () => {
  const host = newHost();
  await host.call(() => app.provision(provisionRequest('app-1', 'free')));
  const job = host.job(host.enqueued[0]);
  host.onHttp('https://api.example.com/', () => ({ status: 503 }));
  await assert.rejects(host.call(() => app.runJob(job)), { tag: 'retry' });
  const refusing = newHost().onHttp('https://api.example.com/', () => ({ status: 400, body: 'no' }));
  await refusing.call(() => app.provision(provisionRequest('app-2', 'free')));
  await assert.rejects(refusing.call(() => app.runJob(refusing.job(refusing.enqueued[0]))), { tag: 'fail' });
});
