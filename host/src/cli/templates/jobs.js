// An add-on provider with work after the reply: each provisioned app gets a URL and a secret,
// and a job tells the add-on's own API about the app. The host runs the job after the
// platform has its answer (Bitrise allows 10 s for a provision) and retries it with backoff;
// `fetch` reaches only the origins in `allowed_outbound` (`addon-host test` answers them from
// a stub and lists them). `build.mjs` builds for the `worker` world, because `runJob` is
// exported.

import { addonId, config, fail, handler, internal, jobHandler, jobs, kv, log, randomHex, reply, retry } from './addon-sdk.js';

const prefix = () => addonId().toUpperCase().replaceAll('-', '_');

export const provision = handler((req) => {
  const base = config('host_url');
  if (base === undefined) throw internal('config `host_url` is not set');
  const key = `secret/${req.resourceId}`;
  let secret = kv.getString(key);
  if (secret === undefined) {
    secret = randomHex(24);
    kv.setString(key, secret);
    // Kept only if this provision succeeds, like its writes.
    jobs.enqueue('announce', req.resourceId);
  }
  return reply()
    .set(`${prefix()}_URL`, `${base.replace(/\/+$/, '')}/apps/${req.resourceId}`)
    .set(`${prefix()}_SECRET`, secret);
});

export const changePlan = handler((req) => reply().message(`Now on ${req.plan}.`));

export const deprovision = handler((req) => {
  kv.delete(`secret/${req.resourceId}`);
});

export const runJob = jobHandler(async (job) => {
  if (job.kind !== 'announce') throw fail(`unknown job kind ${job.kind}`);
  const api = config('api_base');
  if (api === undefined) {
    log.warn('config `api_base` is not set: the app is not announced');
    return;
  }
  const answer = await fetch(`${api.replace(/\/+$/, '')}/apps`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ app: job.text }),
  });
  // Busy or down: the host tries again later (a thrown error is retried too).
  if (answer.status === 429 || answer.status >= 500) throw retry(`the API answered ${answer.status}`);
  if (!answer.ok) throw fail(`the API refused the app: ${answer.status} ${await answer.text()}`);
  kv.setString(`announced/${job.text}`, String(nowSeconds()));
  log.info(`announced ${job.text} (attempt ${job.attempt})`);
});

const nowSeconds = () => Math.floor(Date.now() / 1000);
