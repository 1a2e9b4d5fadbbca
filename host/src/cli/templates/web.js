// An add-on provider with pages: each provisioned app gets a URL and a secret; its users
// reach the add-on's dashboard through the platform's SSO, and its builds call the add-on's
// build API with the token the host issues (`{PREFIX}_API_TOKEN`). The host authenticates
// every request and passes who is calling in `req.identity`; dashboard forms carry its CSRF
// field. `build.mjs` builds for the `web` world, because `incomingHandler` is exported.

import { addonId, config, handler, internal, kv, noJobs, randomHex, reply } from './addon-sdk.js';
import { escape, html, json, notFound, redirect, webHandler } from './addon-web.js';

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
  return reply()
    .set(`${prefix()}_URL`, `${base.replace(/\/+$/, '')}/apps/${req.resourceId}`)
    .set(`${prefix()}_SECRET`, secret);
});

export const changePlan = handler((req) => reply().message(`Now on ${req.plan}.`));

export const deprovision = handler((req) => {
  kv.delete(`secret/${req.resourceId}`);
  kv.delete(`note/${req.resourceId}`);
});

// The `web` world includes the `worker` one: a plugin that runs no jobs says so.
export const runJob = noJobs;

export const incomingHandler = webHandler(async (req) => {
  const who = req.identity;
  if (req.method === 'GET' && req.path === '/dashboard/') {
    const note = kv.getString(`note/${who.resourceId}`) ?? '';
    // Well-formed XHTML: Bitrise's kit parses the page its SSO login answers as XML.
    return html(
      `<!DOCTYPE html><html xmlns="http://www.w3.org/1999/xhtml"><head><title>${escape(addonId())}</title>${who.beam()}</head>` +
        `<body><h1>${escape(who.appTitle ?? who.resourceId)}</h1><p>Plan: <b>${escape(who.plan)}</b></p>` +
        `<form method="post" action="${escape(who.link('/dashboard/note'))}">${who.csrfField()}` +
        `<input name="note" value="${escape(note)}"/><button type="submit">Save</button></form></body></html>`,
    );
  }
  if (req.method === 'POST' && req.path === '/dashboard/note') {
    kv.setString(`note/${who.resourceId}`, req.form().note ?? '');
    return redirect(who.link('/dashboard/'));
  }
  if (req.method === 'GET' && req.path === '/api/status') {
    return json({ app: who.resourceId, plan: who.plan, note: kv.getString(`note/${who.resourceId}`) ?? null });
  }
  return notFound();
});
