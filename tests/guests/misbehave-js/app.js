// A test-only JavaScript plugin: the plan picks how it misbehaves, so the host's deadline
// and memory cap are checked against a real JS engine.

import { config, handler, internal, invalid, jobs, reply } from '../../../guest-sdk/js/addon-sdk.js';

// `async`, as JavaScript partners write handlers: each plan below runs through it.
export const provision = handler(async (req) => {
  if (req.plan === 'fetch') {
    // The standard fetch, to the allowed stand-in named by the `fetch_url` setting.
    const answer = await fetch(config('fetch_url'), { headers: { accept: 'application/json' } });
    const body = await answer.json();
    return reply().set('MISBEHAVE_FETCHED', `${answer.status} ${answer.headers.get('X-Stand-In')} ${body.hello}`);
  }
  if (req.plan === 'fetch-elsewhere') {
    await fetch('https://example.com/');
  }
  if (req.plan === 'refuse') {
    // A refusal is an Error (AddonError) that still reaches the platform as a 422.
    const refusal = invalid('not for this app');
    if (!(refusal instanceof Error) || !refusal.stack) throw internal('a refusal is not an Error with a stack');
    await Promise.resolve();
    throw refusal;
  }
  if (req.plan === 'async-refusal') {
    await Promise.resolve();
    throw new Error('refused after an await');
  }
  if (req.plan === 'loop') {
    for (;;) {}
  }
  if (req.plan === 'memory') {
    // 16 MiB at a time: past any cap within a few steps.
    const hoard = [];
    for (;;) hoard.push(new Uint8Array(16 << 20).fill(7));
  }
  if (req.plan === 'enqueue') {
    // Built for the `plugin` world, without a job handler: the host refuses the job, saying why.
    jobs.enqueue('never-runs', '{}');
  }
  return reply().set('MISBEHAVE_PLAN', req.plan);
});

export const changePlan = handler((req) => reply().set('MISBEHAVE_PLAN', req.plan));

export const deprovision = handler(() => {});
