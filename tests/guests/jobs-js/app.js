// Test-only JavaScript plugin for jobs and outbound HTTP (world `worker`). The plan is the
// job its provision enqueues: `once` records its run in `ran/{resource}`; `flaky` asks to
// be retried until its third attempt; `fetch` GETs the `probe_url` setting and records the
// status in `fetched/{resource}`, or the error's kind in `refused/{resource}`.

import { config, fail, http, jobHandler, jobs, kv, log, reply, retry, handler } from '../../../guest-sdk/js/addon-sdk.js';

export const provision = handler((req) => {
  const id = jobs.enqueue(req.plan, req.resourceId);
  return reply().set('JOBS_ENQUEUED', id);
});

export const changePlan = handler(() => reply());
export const deprovision = handler(() => {});

export const runJob = jobHandler((job) => {
  const resource = job.text;
  switch (job.kind) {
    case 'once':
      break;
    case 'flaky':
      if (job.attempt < 3) throw retry(`not yet (attempt ${job.attempt})`);
      break;
    case 'fetch':
      try {
        kv.setString(`fetched/${resource}`, String(http.send({ url: config('probe_url') }).status));
      } catch (e) {
        kv.setString(`refused/${resource}`, e.kind);
      }
      return;
    default:
      throw fail(`unknown job kind ${job.kind}`);
  }
  kv.setString(`ran/${resource}`, String(job.attempt));
  log.info(`job ${job.kind} ran for ${resource}`);
});
