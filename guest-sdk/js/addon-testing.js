// A host double for testing a JavaScript plugin natively, with `node --test`: the same
// semantics as the Rust SDK's `addon_sdk::testing`. An in-memory key-value store whose writes
// are seen by the call at once and kept only if it succeeds; config, secrets, a settable
// clock; jobs enqueued (kept with the call's writes); outbound requests answered by routes
// the test sets (none reaches the network); the lines logged; and the web layer's requests,
// with the identity the host would pass. Load the plugin's imports from here by running
// `node --import ./addon-testing-hooks.js --test` (the template's `npm test`).
//
//   import { TestHost, provisionRequest } from './addon-testing.js';
//   import * as app from './app.js';
//   const host = new TestHost({ config: { host_url: 'https://example.com' } });
//   const reply = await host.call(() => app.provision(provisionRequest('app-1', 'free')));

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** What componentize-js throws for an import's `err`: its `payload` is the WIT error. */
class ComponentError extends Error {
  constructor(payload) {
    super(`${payload.tag}: ${payload.val}`);
    this.payload = payload;
  }
}

let current;
const host = () => {
  if (current === undefined) throw new Error('a host import was called outside TestHost.call');
  return current;
};

export class TestHost {
  constructor({ addonId = 'myaddon', config = {}, secrets = {}, nowMs = Date.now() } = {}) {
    this.addonId = addonId;
    this.settings = { ...config };
    this.secrets = { ...secrets };
    this.nowMs = nowMs;
    this.store = new Map();
    this.jobs = [];
    this.logs = [];
    this.requests = [];
    this.routes = [];
    this.pending = undefined;
  }

  /**
   * Run one plugin call (`() => app.provision(req)`, sync or async) as the host does: its
   * writes and jobs are kept if it returns, dropped if it throws; what it threw is rethrown.
   */
  async call(fn) {
    if (current !== undefined) throw new Error('TestHost.call: one call at a time');
    current = this;
    this.pending = { writes: new Map(), jobs: [] };
    try {
      const out = await fn();
      for (const [key, value] of this.pending.writes) {
        if (value === undefined) this.store.delete(key);
        else this.store.set(key, value);
      }
      this.jobs.push(...this.pending.jobs);
      return out && typeof out.build === 'function' ? out.build() : out;
    } finally {
      current = undefined;
      this.pending = undefined;
    }
  }

  /** Answer outbound requests whose URL starts with `prefix`: `answer(req)` returns `{ status, headers, body }`. */
  onHttp(prefix, answer) {
    this.routes.push([prefix, answer]);
    return this;
  }

  kv(key) {
    return this.store.get(key);
  }
  kvString(key) {
    const value = this.store.get(key);
    return value === undefined ? undefined : decoder.decode(value);
  }
  kvKeys() {
    return [...this.store.keys()].sort();
  }

  /** The jobs kept so far: `{ id, kind, payload, text, delayMs }`. */
  get enqueued() {
    return this.jobs;
  }

  /** A kept job as `runJob` receives it, on its `attempt`. */
  job(enqueued, attempt = 1) {
    return { id: enqueued.id, kind: enqueued.kind, payload: enqueued.payload, resourceId: undefined, attempt };
  }

  /**
   * A request to the plugin's `incomingHandler` (the web layer), as the host forwards it:
   * `identity` becomes the `x-addon-*` headers. Resolves to `{ status, headers, text, json() }`.
   */
  async web(handler, { method = 'GET', path = '/dashboard/', headers = {}, body = '', identity = {} } = {}) {
    const passed = { ...headers };
    const id = { surface: 'dashboard', platform: 'bitrise', plan: 'free', resourceId: 'app-1', appId: 'app-1', basePath: '', csrfToken: 'csrf-test', ...identity };
    const names = { surface: 'surface', platform: 'platform', plan: 'plan', resourceId: 'resource-id', appId: 'app-id', appTitle: 'app-title', basePath: 'base-path', csrfToken: 'csrf-token', unverifiedEmail: 'unverified-email', nonce: 'csp-nonce' };
    for (const [key, name] of Object.entries(names)) if (id[key] !== undefined) passed[`x-addon-${name}`] = String(id[key]);
    const request = incomingRequest(method, path, passed, typeof body === 'string' ? encoder.encode(body) : body);
    const out = {};
    await this.call(() => handler.handle(request, out));
    const text = decoder.decode(out.body ?? new Uint8Array());
    return { status: out.status, headers: out.headers, text, json: () => JSON.parse(text) };
  }
}

/** A provision request as a platform would send it; `more` overrides fields. */
export const provisionRequest = (resourceId, plan, more = {}) => ({
  resourceId,
  platform: 'bitrise',
  appId: resourceId,
  plan,
  appTitle: undefined,
  apiToken: undefined,
  email: undefined,
  region: undefined,
  callbackUrl: undefined,
  options: [],
  ...more,
});
export const changePlanRequest = (resourceId, previousPlan, plan) => ({ resourceId, platform: 'bitrise', appId: resourceId, previousPlan, plan });
export const deprovisionRequest = (resourceId, plan) => ({ resourceId, platform: 'bitrise', appId: resourceId, plan });

const read = (key) => {
  const { pending, store } = host();
  return pending.writes.has(key) ? pending.writes.get(key) : store.get(key);
};
const checkKey = (key) => {
  if (typeof key !== 'string' || key.length === 0 || key.length > 512) throw new ComponentError({ tag: 'invalid-key', val: `invalid key ${JSON.stringify(key)}` });
};
const same = (a, b) => (a === undefined || b === undefined ? a === b : a.length === b.length && a.every((x, i) => x === b[i]));

/** The host's imports, by interface: what `addon-testing-hooks.js` serves for `addon:provider/*`. */
export const modules = {
  kv: {
    get: (key) => (checkKey(key), read(key)),
    set: (key, value) => void (checkKey(key), host().pending.writes.set(key, Uint8Array.from(value))),
    delete: (key) => {
      checkKey(key);
      const had = read(key) !== undefined;
      host().pending.writes.set(key, undefined);
      return had;
    },
    listKeys: (prefix) => {
      const keys = new Set([...host().store.keys(), ...host().pending.writes.keys()]);
      return [...keys].filter((k) => k.startsWith(prefix) && read(k) !== undefined).sort();
    },
    compareAndSwap: (key, expected, value) => {
      checkKey(key);
      if (!same(read(key), expected)) return false;
      host().pending.writes.set(key, value === undefined ? undefined : Uint8Array.from(value));
      return true;
    },
  },
  log: { log: (level, message) => void host().logs.push([level, message]) },
  config: {
    addonId: () => host().addonId,
    get: (key) => host().settings[key],
    secret: (name) => host().secrets[name],
  },
  env: {
    nowMs: () => BigInt(host().nowMs),
    randomBytes: (n) => globalThis.crypto.getRandomValues(new Uint8Array(n)),
  },
  jobs: {
    enqueue: (kind, payload, delayMs) => {
      const id = `job-${host().jobs.length + host().pending.jobs.length + 1}`;
      const bytes = Uint8Array.from(payload);
      host().pending.jobs.push({ id, kind, payload: bytes, text: decoder.decode(bytes), delayMs: Number(delayMs) });
      return id;
    },
  },
  http: {
    send: (req) => {
      const h = host();
      h.requests.push({ ...req, text: decoder.decode(req.body) });
      const route = h.routes.find(([prefix]) => req.url.startsWith(prefix));
      if (route === undefined) throw new ComponentError({ tag: 'denied', val: `${req.url}: no TestHost.onHttp route answers it` });
      const answer = typeof route[1] === 'function' ? route[1](req) : route[1];
      const body = answer.body === undefined ? new Uint8Array() : typeof answer.body === 'string' ? encoder.encode(answer.body) : answer.body;
      return { status: answer.status ?? 200, headers: Object.entries(answer.headers ?? {}), body };
    },
  },
  types: {},
};

/** `wasi:http/types` as the web layer uses it. */
const METHODS = ['get', 'head', 'post', 'put', 'delete', 'connect', 'options', 'trace', 'patch'];
function incomingRequest(method, path, headers, body) {
  const lower = method.toLowerCase();
  return {
    method: () => (METHODS.includes(lower) ? { tag: lower } : { tag: 'other', val: method }),
    pathWithQuery: () => path,
    headers: () => ({ entries: () => Object.entries(headers).map(([k, v]) => [k, encoder.encode(v)]) }),
    consume: () => ({
      stream: () => {
        let done = false;
        return {
          blockingRead: () => {
            if (done) throw new ComponentError({ tag: 'closed', val: undefined });
            done = true;
            return body;
          },
        };
      },
    }),
  };
}
class Fields {
  static fromList(list) {
    const fields = new Fields();
    fields.list = list.map(([k, v]) => [k, decoder.decode(v)]);
    return fields;
  }
}
class OutgoingResponse {
  constructor(fields) {
    this.fields = fields;
    this.status = 200;
    this.chunks = [];
  }
  setStatusCode(status) {
    this.status = status;
  }
  body() {
    const response = this;
    return { response, write: () => ({ blockingWriteAndFlush: (chunk) => void response.chunks.push(Uint8Array.from(chunk)) }) };
  }
}
modules['wasi-http-types'] = {
  Fields,
  OutgoingResponse,
  OutgoingBody: {
    finish: (sink) => {
      const { response } = sink;
      const out = response.out;
      const size = response.chunks.reduce((n, c) => n + c.length, 0);
      out.body = new Uint8Array(size);
      let at = 0;
      for (const chunk of response.chunks) (out.body.set(chunk, at), (at += chunk.length));
    },
  },
  ResponseOutparam: {
    set: (out, result) => {
      const response = result.val;
      response.out = out;
      out.status = response.status;
      out.headers = Object.fromEntries(response.fields.list);
    },
  },
};
