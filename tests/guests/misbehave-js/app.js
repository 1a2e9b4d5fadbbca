// A test-only JavaScript plugin: the plan picks how it misbehaves, so the host's deadline
// and memory cap are checked against a real JS engine.

import { handler, jobs, reply } from '../../../guest-sdk/js/addon-sdk.js';

export const provision = handler((req) => {
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
