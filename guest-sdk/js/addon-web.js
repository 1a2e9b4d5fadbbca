// addon-web for JavaScript plugins: serve the add-on's dashboard and build API from the
// plugin (the `web` world of `wit/`, whose export is the standard
// `wasi:http/incoming-handler`). The host authenticates every request and passes who is
// calling in `x-addon-*` headers; this module reads them into `req.identity`.
//
//   import { webHandler, html, json, notFound, escape } from './addon-web.js';
//   export const incomingHandler = webHandler((req) => {
//     if (req.method === 'GET' && req.path === '/dashboard/') return html(`<h1>${escape(req.identity.plan)}</h1>`);
//     return notFound();
//   });
//
// Build against the world `web` (`--world-name web`), which includes `worker`: export
// `runJob` too (`noJobs` from addon-sdk.js when the plugin runs none).

import { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam } from 'wasi:http/types@0.2.12';
import { log as logHost } from 'addon:provider/log@0.1.2';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Escape text for HTML (and XHTML) content and attribute values. */
export const escape = (text) =>
  String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

/**
 * A response: `{ status, headers, body }` (body a string or bytes; headers an object, a
 * `Headers` or `[name, value]` pairs).
 */
export const response = (status, body = '', headers = {}) => ({ status, headers, body });
export const html = (page, status = 200) => response(status, page, { 'content-type': 'text/html; charset=utf-8' });
export const json = (value, status = 200) => response(status, JSON.stringify(value), { 'content-type': 'application/json' });
export const text = (value, status = 200) => response(status, String(value), { 'content-type': 'text/plain; charset=utf-8' });
export const redirect = (location) => response(303, '', { location });
export const notFound = () => response(404, 'not found', { 'content-type': 'text/plain; charset=utf-8' });

const METHODS = { get: 'GET', head: 'HEAD', post: 'POST', put: 'PUT', delete: 'DELETE', connect: 'CONNECT', options: 'OPTIONS', trace: 'TRACE', patch: 'PATCH' };

const decode = (value) => {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
};

// A JavaScript string literal that is also safe inside inline script and XHTML.
const jsString = (s) => JSON.stringify(String(s)).replace(/[<>&']/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);

function beam(headers) {
  if (headers['x-addon-platform'] !== 'bitrise' || headers['x-addon-surface'] !== 'dashboard') return '';
  const slug = headers['x-addon-resource-id'] ?? '';
  const title = headers['x-addon-app-title'] === undefined ? slug : decode(headers['x-addon-app-title']);
  // The host's content security policy runs an inline script only with this answer's nonce.
  const nonce = headers['x-addon-csp-nonce'] === undefined ? '' : ` nonce="${escape(headers['x-addon-csp-nonce'])}"`;
  return (
    '<script src="https://unpkg.com/@bitrise/beam@latest/dist/beam.min.js"></script>' +
    `<script${nonce}>\n//<![CDATA[\ndocument.addEventListener("DOMContentLoaded", function () { ` +
    `if (window.Beam) { Beam.init({ app_slug: ${jsString(slug)}, app_name: ${jsString(title)} }); } });\n//]]>\n</script>`
  );
}

function identityOf(headers) {
  const get = (name) => headers[name];
  const csrf = get('x-addon-csrf-token');
  return {
    surface: get('x-addon-surface') === 'api' ? 'api' : 'dashboard',
    resourceId: get('x-addon-resource-id'),
    platform: get('x-addon-platform'),
    appId: get('x-addon-app-id'),
    plan: get('x-addon-plan'),
    appTitle: get('x-addon-app-title') === undefined ? undefined : decode(get('x-addon-app-title')),
    /** The email the SSO post named: no platform signs it; show it, never authorise by it. */
    unverifiedEmail: get('x-addon-unverified-email') === undefined ? undefined : decode(get('x-addon-unverified-email')),
    csrfToken: csrf,
    basePath: get('x-addon-base-path') ?? '',
    /** A hidden form field with the CSRF token: the host refuses dashboard posts without it. */
    csrfField: () => `<input type="hidden" name="_csrf" value="${escape(csrf ?? '')}"/>`,
    /** An absolute path on this host for one of the add-on's routes. */
    link: (path) => `${get('x-addon-base-path') ?? ''}${path}`,
    /** Bitrise's Beam navigation header for `<head>` (every page reached through Bitrise's SSO must show it); empty elsewhere. */
    beam: () => beam(headers),
  };
}

function readBody(request) {
  const incoming = request.consume();
  const stream = incoming.stream();
  const chunks = [];
  let size = 0;
  for (;;) {
    let chunk;
    try {
      chunk = stream.blockingRead(65536n);
    } catch (e) {
      if (e && e.payload && e.payload.tag === 'closed') break;
      throw e;
    }
    chunks.push(chunk);
    size += chunk.length;
  }
  const body = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    body.set(chunk, at);
    at += chunk.length;
  }
  return body;
}

function readRequest(request) {
  const method = request.method();
  const target = request.pathWithQuery() ?? '/';
  const [path, query = ''] = target.split(/\?(.*)/s);
  const headers = {};
  for (const [name, value] of request.headers().entries()) headers[name.toLowerCase()] = decoder.decode(value);
  const body = readBody(request);
  const form = () => Object.fromEntries(new URLSearchParams(decoder.decode(body)));
  return {
    method: METHODS[method.tag] ?? String(method.val).toUpperCase(),
    path,
    query: Object.fromEntries(new URLSearchParams(query)),
    headers,
    body,
    text: () => decoder.decode(body),
    json: () => JSON.parse(decoder.decode(body)),
    form,
    identity: identityOf(headers),
  };
}

/** `[name, value]` pairs from a `Headers`, an array of pairs or a plain object. */
function headerPairs(headers) {
  if (headers === undefined || headers === null) return [];
  if (Array.isArray(headers)) return headers.map(([k, v]) => [String(k), String(v)]);
  if (typeof headers.entries === 'function') return Array.from(headers.entries());
  return Object.entries(headers).map(([k, v]) => [k, String(v)]);
}

function writeResponse({ status = 200, headers = {}, body = '' }, responseOut) {
  const bytes = typeof body === 'string' ? encoder.encode(body) : body instanceof Uint8Array ? body : encoder.encode(String(body ?? ''));
  const fields = Fields.fromList(headerPairs(headers).map(([k, v]) => [k.toLowerCase(), encoder.encode(v)]));
  const outgoing = new OutgoingResponse(fields);
  outgoing.setStatusCode(status);
  const sink = outgoing.body();
  ResponseOutparam.set(responseOut, { tag: 'ok', val: outgoing });
  const stream = sink.write();
  for (let at = 0; at < bytes.length; at += 4096) stream.blockingWriteAndFlush(bytes.subarray(at, at + 4096));
  // The stream is a child of the body: it goes before the body is finished.
  if (typeof stream[Symbol.dispose] === 'function') stream[Symbol.dispose]();
  OutgoingBody.finish(sink, undefined);
}

/**
 * What a thrown error answers: the error and its stack go to the add-on's log (the host's
 * log and the deployers' recent lines), the client gets a generic 500 without them.
 */
function failed(e, req) {
  const where = req ? `${req.method} ${req.path}` : 'reading the request';
  const stack = e && e.stack ? `\n${e.stack}` : '';
  logHost('error', `web handler failed on ${where}: ${e && e.message ? e.message : e}${stack}`);
  return response(500, 'the add-on failed; its deployers can read why in its log', { 'content-type': 'text/plain; charset=utf-8' });
}

/**
 * The plugin's `incomingHandler` export from `fn(req)`, which returns a response, or a
 * promise of one (an `async` handler; componentize-js runs the event loop until it settles).
 * A thrown error (or a rejected promise) answers a generic 500 and logs the error with its
 * stack.
 */
export function webHandler(fn) {
  return {
    handle(request, responseOut) {
      let req;
      let answer;
      try {
        req = readRequest(request);
        answer = fn(req);
      } catch (e) {
        answer = failed(e, req);
      }
      if (answer !== null && typeof answer === 'object' && typeof answer.then === 'function') {
        return answer.then(
          (settled) => writeResponse(settled, responseOut),
          (e) => writeResponse(failed(e, req), responseOut),
        );
      }
      writeResponse(answer, responseOut);
    },
  };
}
