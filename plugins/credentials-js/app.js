// The `credentials` example in JavaScript, behaving exactly like the Rust one: each
// provisioned app gets `<ADDON>_HOST_URL` and `<ADDON>_AUTH_SECRET`; the secret is made once
// (compare-and-swap, so two racing calls keep one) and forgotten on deprovision.

import { addonId, config, handler, internal, kv, log, randomHex, reply } from '../../guest-sdk/js/addon-sdk.js';

const prefix = () => addonId().toUpperCase().replaceAll('-', '_');
const secretKey = (resourceId) => `secret/${resourceId}`;

function hostUrl(resourceId) {
  const base = config('host_url');
  if (base === undefined) throw internal('config `host_url` is not set');
  return `${base.replace(/\/+$/, '')}/apps/${resourceId}`;
}

export const provision = handler((req) => {
  const key = secretKey(req.resourceId);
  let secret = kv.getString(key);
  if (secret === undefined) {
    const fresh = randomHex(24);
    secret = kv.compareAndSwapString(key, undefined, fresh) ? fresh : kv.getString(key);
    if (secret === undefined) throw internal('secret vanished');
  }
  log.info(`issued credentials for ${req.resourceId} (${req.platform})`);
  return reply()
    .set(`${prefix()}_HOST_URL`, hostUrl(req.resourceId))
    .set(`${prefix()}_AUTH_SECRET`, secret)
    .message('Credentials issued. Use them from your builds.');
});

export const changePlan = handler((req) => {
  log.info(`${req.resourceId} moves from ${req.previousPlan} to ${req.plan}`);
  return reply().message(`Now on ${req.plan}.`);
});

export const deprovision = handler((req) => {
  const existed = kv.delete(secretKey(req.resourceId));
  log.info(`revoked credentials for ${req.resourceId} (existed: ${existed})`);
});
