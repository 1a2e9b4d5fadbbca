// Preloaded into Node-based kits (Xervo's dia) by the tests: names under `localhost` are this
// machine (RFC 6761), as browsers and curl resolve them, so an add-on's development origin
// `http://{addon}.localhost:PORT` is reachable. Node asks the system resolver, which on a
// plain Debian knows only `localhost` itself.
const dns = require('dns');
const lookup = dns.lookup;
dns.lookup = function (host, options, callback) {
  if (typeof options === 'function') {
    callback = options;
    options = {};
  }
  if (typeof host === 'string' && host.toLowerCase().endsWith('.localhost')) {
    const all = options && options.all;
    return process.nextTick(() =>
      all ? callback(null, [{ address: '127.0.0.1', family: 4 }]) : callback(null, '127.0.0.1', 4),
    );
  }
  return lookup.call(this, host, options, callback);
};
