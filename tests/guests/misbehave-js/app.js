// A test-only JavaScript plugin: the plan picks how it misbehaves, so the host's deadline
// and memory cap are checked against a real JS engine.

import { handler, reply } from '../../../guest-sdk/js/addon-sdk.js';

export const provision = handler((req) => {
  if (req.plan === 'loop') {
    for (;;) {}
  }
  if (req.plan === 'memory') {
    const hoard = [];
    for (;;) hoard.push(new Array(1 << 20).fill(req.resourceId));
  }
  return reply().set('MISBEHAVE_PLAN', req.plan);
});
