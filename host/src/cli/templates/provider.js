// An add-on provider: each provisioned app gets a URL and a secret, made once and kept in
// the add-on's key-value store; a deprovision forgets the secret.

import { addonId, config, handler, internal, kv, log, randomHex, reply } from './addon-sdk.js';

const prefix = () => addonId().toUpperCase().replaceAll('-', '_');

export const provision = handler((req) => {
  const base = config('host_url');
  if (base === undefined) throw internal('config `host_url` is not set');
  const key = `secret/${req.resourceId}`;
  let secret = kv.getString(key);
  if (secret === undefined) {
    secret = randomHex(24);
    kv.setString(key, secret);
  }
  log.info(`provisioned ${req.resourceId} on ${req.plan}`);
  return reply()
    .set(`${prefix()}_URL`, `${base.replace(/\/+$/, '')}/apps/${req.resourceId}`)
    .set(`${prefix()}_SECRET`, secret);
});

export const changePlan = handler((req) => reply().message(`Now on ${req.plan}.`));

export const deprovision = handler((req) => {
  kv.delete(`secret/${req.resourceId}`);
});
