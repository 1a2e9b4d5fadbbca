// addon-sdk for JavaScript plugins: the host's imports (`addon:provider@0.1.2`) with the
// same shape as the Rust SDK — replies with variables and a message, errors that map to the
// same statuses, a key-value store with string and JSON helpers, logging, config, secrets,
// time and randomness. Build with componentize-js against `wit/` (world `plugin`), leaving
// out the `http` and `fetch-event` features, which the host does not offer.
//
// A plugin exports `provision(req)`, and optionally `changePlan(req)` and `deprovision(req)`.
// A plugin that enqueues jobs (`jobs.enqueue`) also exports `runJob(job)` (wrap it with
// `jobHandler`) and is built against the world `worker` instead. A plugin that serves HTTP
// (its dashboard and build API, `addon-web.js`) is built against the world `web`.
// Request fields are camelCase (`req.resourceId`, `req.appTitle`, `req.plan`, `req.platform`
// is "bitrise" or "xervo"); absent options are `undefined`.

import * as kvHost from 'addon:provider/kv@0.1.2';
import { log as logHost } from 'addon:provider/log@0.1.2';
import * as configHost from 'addon:provider/config@0.1.2';
import * as envHost from 'addon:provider/env@0.1.2';
import * as jobsHost from 'addon:provider/jobs@0.1.2';
import * as httpHost from 'addon:provider/http@0.1.2';

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const bytes = (value) => (value === undefined ? undefined : encoder.encode(value));

/** A provision or plan-change reply: `reply().set("MY_URL", url).message("Ready.")`. */
export function reply() {
  const config = [];
  let message;
  return {
    set(key, value) {
      config.push({ key, value: String(value) });
      return this;
    },
    message(text) {
      message = text;
      return this;
    },
    /** The WIT record (the SDK calls this for you when a builder is returned). */
    build() {
      return { config, message };
    },
  };
}

/** The request is wrong (unknown option, refused plan change): 422 to the platform. */
export const invalid = (message) => new AddonError('invalid-request', message, message);
/** Not now (an upstream is down): 503 with Retry-After, optionally a docs link. */
export const unavailable = (message, docsUrl) => new AddonError('unavailable', { message, docsUrl }, message);
/** The plugin failed: 500, and the platform retries. */
export const internal = (message) => new AddonError('internal', message, message);

/**
 * What a handler throws to refuse or fail: an `Error` (with a stack, `instanceof` works)
 * whose `tag` and `val` are the WIT error (`invalid-request`, `unavailable`, `internal`;
 * from `runJob`, `retry` and `fail`), also as `payload`, which is what the component
 * returns as the call's `err`. Make them with `invalid`, `unavailable`, `internal`, `retry`
 * and `fail`.
 */
export class AddonError extends Error {
  constructor(tag, val, message) {
    super(`${tag}: ${message}`);
    this.name = 'AddonError';
    this.tag = tag;
    this.val = val;
    this.payload = { tag, val };
  }
}

/** The add-on's key-value store: a call's writes are kept only if it succeeds. */
export const kv = {
  get: (key) => kvHost.get(key),
  set: (key, value) => kvHost.set(key, value),
  getString: (key) => {
    const value = kvHost.get(key);
    return value === undefined ? undefined : decoder.decode(value);
  },
  setString: (key, value) => kvHost.set(key, encoder.encode(value)),
  getJson: (key) => {
    const text = kv.getString(key);
    return text === undefined ? undefined : JSON.parse(text);
  },
  setJson: (key, value) => kv.setString(key, JSON.stringify(value)),
  delete: (key) => kvHost.delete(key),
  listKeys: (prefix = '') => kvHost.listKeys(prefix),
  /** Set `key` to `value` only if it holds `expected` (`undefined`: absent); true if it did. */
  compareAndSwapString: (key, expected, value) => kvHost.compareAndSwap(key, bytes(expected), bytes(value)),
};

export const log = {
  trace: (message) => logHost('trace', String(message)),
  debug: (message) => logHost('debug', String(message)),
  info: (message) => logHost('info', String(message)),
  warn: (message) => logHost('warn', String(message)),
  error: (message) => logHost('error', String(message)),
};

export const addonId = () => configHost.addonId();
/** A plain setting from `[addon.config]`. */
export const config = (key) => configHost.get(key);
/** A secret from `[addon.secrets]`. */
export const secret = (name) => configHost.secret(name);
/** Wall-clock milliseconds since the Unix epoch. */
export const nowMs = () => Number(envHost.nowMs());
/** `n` random bytes as 2n lowercase hex digits, from the host's CSPRNG. */
export const randomHex = (n) => Array.from(envHost.randomBytes(n), (b) => b.toString(16).padStart(2, '0')).join('');

/**
 * Wrap a handler: a returned `reply()` builder becomes the WIT record, and a KV error thrown
 * by the host becomes an internal error naming it.
 */
export function handler(fn) {
  const finish = (out) => (out && typeof out.build === 'function' ? out.build() : out);
  return (req) => {
    try {
      const out = fn(req);
      // An `async` handler: componentize-js runs the event loop until the promise settles.
      return isThenable(out) ? out.then(finish, (e) => Promise.reject(refusal(e))) : finish(out);
    } catch (e) {
      throw refusal(e);
    }
  };
}

const isThenable = (value) => value !== null && typeof value === 'object' && typeof value.then === 'function';

/** What a handler threw, as the WIT error: a refusal as it is, anything else internal. */
function refusal(e) {
  if (e && typeof e === 'object' && 'tag' in e && 'val' in e) return e;
  if (e && e.payload && 'tag' in e.payload) return internal(`key-value store: ${e.payload.tag}: ${e.payload.val}`);
  return internal(String(e && e.message ? e.message : e));
}

const payloadOf = (value) => (typeof value === 'string' ? encoder.encode(value) : value ?? new Uint8Array());

/** Work after the reply: kept only if this call succeeds, run later by `runJob`. */
export const jobs = {
  /** Enqueue a job of `kind`; `payload` is a string or bytes; returns the job's id. */
  enqueue(kind, payload, delayMs = 0) {
    try {
      return jobsHost.enqueue(kind, payloadOf(payload), BigInt(delayMs));
    } catch (e) {
      throw internal(`enqueueing a job: ${e && e.payload !== undefined ? e.payload : e}`);
    }
  },
};

/** From `runJob`: try again after the host's backoff, or no sooner than `afterMs`. */
export const retry = (message, afterMs) =>
  new AddonError('retry', { message, afterMs: afterMs === undefined ? undefined : BigInt(afterMs) }, message);
/** From `runJob`: give up; the job goes to the dead-letter list. */
export const fail = (message) => new AddonError('fail', message, message);

/** `runJob` for a plugin that enqueues no jobs (the `web` world includes `worker`). */
export const noJobs = (job) => {
  throw fail(`this plugin runs no jobs (got one of kind ${job.kind})`);
};

/**
 * Wrap `runJob`: the job gets `text` (its payload as a string); a thrown `retry(...)` or
 * `fail(...)` is the outcome, and anything else thrown is retried.
 */
export function jobHandler(fn) {
  const outcome = (e) =>
    e && typeof e === 'object' && (e.tag === 'retry' || e.tag === 'fail') ? e : retry(String(e && e.message ? e.message : e));
  return (job) => {
    try {
      const out = fn({ ...job, text: decoder.decode(job.payload) });
      if (isThenable(out)) return out.then(() => undefined, (e) => Promise.reject(outcome(e)));
    } catch (e) {
      throw outcome(e);
    }
  };
}

/**
 * Outbound HTTP through the host, to the origins the add-on allows (`allowed_outbound`).
 * Returns `{ status, headers, body, text(), json() }`; throws an `Error` whose `kind` is
 * `denied`, `invalid`, `timeout`, `too-large` or `failed`.
 */
export const http = {
  send({ method = 'GET', url, headers = {}, body, timeoutMs }) {
    const request = {
      method,
      url,
      headers: Object.entries(headers).map(([k, v]) => [k, String(v)]),
      body: payloadOf(body),
      timeoutMs,
    };
    let response;
    try {
      response = httpHost.send(request);
    } catch (e) {
      const error = new Error(e && e.payload ? `${e.payload.tag}: ${e.payload.val}` : String(e));
      error.kind = e && e.payload ? e.payload.tag : 'failed';
      throw error;
    }
    return {
      status: response.status,
      headers: response.headers,
      body: response.body,
      text: () => decoder.decode(response.body),
      json: () => JSON.parse(decoder.decode(response.body)),
    };
  },
};

/**
 * The standard `fetch`, served by the host's `http` import, so it has the same allow-list
 * (`allowed_outbound`), deadline and limits; also installed as `globalThis.fetch`. A refused
 * request rejects with a `TypeError` that says why (`fetch https://…: denied: … is not an
 * allowed origin (allowed_outbound)`) and carries `kind` as `http.send`'s errors do. The
 * response has `status`, `ok`, `headers` (`get`, `has`, iteration), `text()`, `json()`,
 * `arrayBuffer()` and `bytes()`. Redirects within the allowed origins are followed by the
 * host.
 */
export async function fetch(input, init = {}) {
  const request = typeof input === 'object' && input !== null && !(input instanceof URL) ? input : {};
  const url = String(request.url ?? input);
  const method = String(init.method ?? request.method ?? 'GET').toUpperCase();
  const headers = {};
  for (const [name, value] of headerPairs(init.headers ?? request.headers)) headers[name.toLowerCase()] = value;
  let body = init.body ?? undefined;
  if (body instanceof ArrayBuffer) body = new Uint8Array(body);
  else if (body !== undefined && !(body instanceof Uint8Array)) body = String(body);
  let response;
  try {
    response = http.send({ method, url, headers, body });
  } catch (e) {
    const error = new TypeError(`fetch ${url}: ${e.message}`);
    error.kind = e.kind;
    throw error;
  }
  return new FetchResponse(url, response);
}

/** `[name, value]` pairs from a `Headers`, an array of pairs or a plain object. */
function headerPairs(init) {
  if (init === undefined || init === null) return [];
  if (typeof init.entries === 'function' && !Array.isArray(init)) return Array.from(init.entries());
  if (Array.isArray(init)) return init.map(([k, v]) => [String(k), String(v)]);
  return Object.entries(init).map(([k, v]) => [k, String(v)]);
}

/** Response headers: case-insensitive `get` (values of one name joined by `, `), `has`, iteration. */
class FetchHeaders {
  constructor(pairs) {
    this.map = new Map();
    for (const [name, value] of pairs) {
      const key = name.toLowerCase();
      this.map.set(key, this.map.has(key) ? `${this.map.get(key)}, ${value}` : value);
    }
  }
  get(name) {
    return this.map.get(String(name).toLowerCase()) ?? null;
  }
  has(name) {
    return this.map.has(String(name).toLowerCase());
  }
  entries() {
    return this.map.entries();
  }
  keys() {
    return this.map.keys();
  }
  values() {
    return this.map.values();
  }
  forEach(fn) {
    this.map.forEach((value, name) => fn(value, name, this));
  }
  [Symbol.iterator]() {
    return this.map.entries();
  }
}

class FetchResponse {
  constructor(url, response) {
    this.url = url;
    this.status = response.status;
    this.ok = response.status >= 200 && response.status < 300;
    this.statusText = '';
    this.headers = new FetchHeaders(response.headers);
    this.body = response.body;
  }
  async bytes() {
    return this.body;
  }
  async arrayBuffer() {
    return this.body.buffer.slice(this.body.byteOffset, this.body.byteOffset + this.body.byteLength);
  }
  async text() {
    return decoder.decode(this.body);
  }
  async json() {
    return JSON.parse(decoder.decode(this.body));
  }
}

globalThis.fetch = fetch;

