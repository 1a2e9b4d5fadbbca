// The JavaScript SDK's in-memory host (guest-sdk/js/addon-testing.js) keeps the real host's
// rules: run by tests/all/languages.rs with `node --import addon-testing-hooks.js --test`.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { TestHost } from './addon-testing.js';
import { handler, jobHandler, jobs, kv, reply, retry } from './addon-sdk.js';

const failing = handler(() => {
  kv.setString('written', 'yes');
  jobs.enqueue('kind', 'payload');
  throw new Error('after writing');
});
const succeeding = handler(async () => {
  kv.setString('written', 'yes');
  assert.equal(kv.getString('written'), 'yes', 'a call sees its own write');
  jobs.enqueue('kind', 'payload');
  return reply().set('DOUBLE_OK', '1');
});

test("a call's writes and jobs are kept only if it succeeds", async () => {
  const host = new TestHost();
  await assert.rejects(host.call(failing), { tag: 'internal', val: 'after writing' });
  assert.deepEqual([host.kvKeys(), host.enqueued.length], [[], 0]);
  const out = await host.call(succeeding);
  assert.deepEqual(out.config, [{ key: 'DOUBLE_OK', value: '1' }]);
  assert.deepEqual([host.kvString('written'), host.enqueued.length], ['yes', 1]);
});

test('compare-and-swap, deletes and listings see pending writes', async () => {
  const host = new TestHost();
  await host.call(() => {
    assert.equal(kv.compareAndSwapString('k', undefined, 'a'), true);
    assert.equal(kv.compareAndSwapString('k', undefined, 'b'), false);
    assert.equal(kv.compareAndSwapString('k', 'a', 'c'), true);
    kv.setString('k2', 'x');
    assert.deepEqual(kv.listKeys('k'), ['k', 'k2']);
    assert.equal(kv.delete('k2'), true);
    assert.deepEqual(kv.listKeys(''), ['k']);
  });
  assert.deepEqual([host.kvKeys(), host.kvString('k')], [['k'], 'c']);
});

test('outbound requests reach only the routes the test sets', async () => {
  const host = new TestHost().onHttp('https://api.example.com/', { status: 201, body: '{"ok":true}' });
  await host.call(async () => {
    const answer = await fetch('https://api.example.com/x', { method: 'POST', body: 'hi' });
    assert.deepEqual([answer.status, await answer.json()], [201, { ok: true }]);
    await assert.rejects(fetch('https://elsewhere.example.com/'), (e) => e instanceof TypeError && e.kind === 'denied');
  });
  // Every request the plugin made, answered or refused.
  const made = host.requests.map((r) => [r.method, r.url, r.text]);
  assert.deepEqual(made, [['POST', 'https://api.example.com/x', 'hi'], ['GET', 'https://elsewhere.example.com/', '']]);
});

test('a job thrown retry is the outcome', async () => {
  const run = jobHandler(async () => {
    throw retry('later', 5);
  });
  await assert.rejects(new TestHost().call(() => run({ id: 'j', kind: 'k', payload: new Uint8Array(), attempt: 1 })), { tag: 'retry' });
});
