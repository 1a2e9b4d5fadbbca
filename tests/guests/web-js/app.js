// Test-only JavaScript plugin that serves HTTP (world `web`): its provision keeps a secret
// per app; its build API answers `/api/whoami` with the caller's identity and counts calls
// in the add-on's KV; its dashboard shows the plan with a CSRF-protected form. `/api/later`
// answers after an await with a status of its own; `/api/boom` throws after one.

import { handler, kv, noJobs, randomHex, reply } from '../../../guest-sdk/js/addon-sdk.js';
import { escape, html, json, notFound, webHandler } from '../../../guest-sdk/js/addon-web.js';

export const provision = handler((req) => {
  const key = `secret/${req.resourceId}`;
  const secret = kv.getString(key) ?? randomHex(16);
  kv.setString(key, secret);
  return reply().set('WEBJS_SECRET', secret);
});
export const changePlan = handler(() => reply());
export const deprovision = handler(() => {});
export const runJob = noJobs;

// `async`, as JavaScript partners write handlers.
export const incomingHandler = webHandler(async (req) => {
  const who = req.identity;
  if (req.method === 'GET' && req.path === '/api/later') {
    await Promise.resolve();
    return json({ later: true }, 202);
  }
  if (req.method === 'GET' && req.path === '/api/boom') {
    await Promise.resolve();
    throw new Error('boom on purpose');
  }
  if (req.method === 'GET' && req.path === '/api/whoami') {
    const calls = Number(kv.getString(`calls/${who.resourceId}`) ?? '0') + 1;
    kv.setString(`calls/${who.resourceId}`, String(calls));
    return json({ resourceId: who.resourceId, plan: who.plan, surface: who.surface, appTitle: who.appTitle, calls, lang: 'js' });
  }
  if (req.method === 'GET' && req.path === '/dashboard/') {
    return html(`<!DOCTYPE html><html><head>${who.beam()}</head><body><h1 id="plan">${escape(who.plan)}</h1><form method="post" action="${who.link('/dashboard/note')}">${who.csrfField()}</form></body></html>`);
  }
  if (req.method === 'POST' && req.path === '/dashboard/note') {
    kv.setString(`note/${who.resourceId}`, req.form().note ?? '');
    return html('<p>saved</p>');
  }
  return notFound();
});
