//! `addon-host new NAME --lang js|python`: a plugin project in JavaScript (componentize-js)
//! or Python (componentize-py). The project carries the SDK layer and the WIT it builds
//! against, so it needs nothing from this repository; its config builds it for
//! `serve --watch`.

use super::new::{Build, config};

/// A scripting language a plugin can be written in.
pub(super) enum Script {
    Js,
    Python,
}

const WIT: &str = include_str!("../../../wit/provider.wit");
/// The WASI 0.2 packages the contract's `web` world names: generators resolve the whole
/// package, so they travel with it.
const WIT_DEPS: [(&str, &str); 7] = [
    ("wit/deps/cli.wit", include_str!("../../../wit/deps/cli.wit")),
    ("wit/deps/clocks.wit", include_str!("../../../wit/deps/clocks.wit")),
    ("wit/deps/filesystem.wit", include_str!("../../../wit/deps/filesystem.wit")),
    ("wit/deps/http.wit", include_str!("../../../wit/deps/http.wit")),
    ("wit/deps/io.wit", include_str!("../../../wit/deps/io.wit")),
    ("wit/deps/random.wit", include_str!("../../../wit/deps/random.wit")),
    ("wit/deps/sockets.wit", include_str!("../../../wit/deps/sockets.wit")),
];
const JS_SDK: &str = include_str!("../../../guest-sdk/js/addon-sdk.js");
const PY_SDK: &str = include_str!("../../../guest-sdk/python/addon_sdk.py");
/// The generators' releases whose output this host links (see tests/src/languages.rs).
const COMPONENTIZE_JS: &str = "0.23.0";
const COMPONENTIZE_PY: &str = "0.25.1";

type Files = Vec<(&'static str, String)>;

/// The project's files and the next command to run.
pub(super) fn files(lang: Script, name: &str, prefix: &str) -> anyhow::Result<(Files, String)> {
    let readme =
        |text: &str| text.replace("{NAME}", name).replace("{JS}", COMPONENTIZE_JS).replace("{PY}", COMPONENTIZE_PY);
    Ok(match lang {
        Script::Js => {
            let build = Build {
                plugin: "plugin.wasm".into(),
                command: "npm run build",
                watch: r#"["app.js", "addon-sdk.js"]"#,
            };
            let mut files = vec![
                ("package.json", PACKAGE_JSON.replace("{NAME}", name).replace("{JS}", COMPONENTIZE_JS)),
                ("app.js", APP_JS.to_owned()),
                ("addon-sdk.js", JS_SDK.to_owned()),
                ("wit/provider.wit", WIT.to_owned()),
                ("addon-host.toml", config(name, prefix, &build)?),
                ("README.md", readme(JS_README)),
                (".gitignore", "/node_modules\n/plugin.wasm\n/data\n".to_owned()),
            ];
            files.extend(WIT_DEPS.iter().map(|(path, text)| (*path, (*text).to_owned())));
            (files, "npm install && addon-host serve --watch".into())
        }
        Script::Python => {
            let build = Build {
                plugin: "plugin.wasm".into(),
                // Python's own compiler first: componentize-py's syntax errors carry no line.
                command: "python3 -m py_compile app.py addon_sdk.py && componentize-py -d wit -w plugin componentize app -o plugin.wasm",
                watch: r#"["app.py", "addon_sdk.py"]"#,
            };
            let mut files = vec![
                ("app.py", APP_PY.to_owned()),
                ("addon_sdk.py", PY_SDK.to_owned()),
                ("wit/provider.wit", WIT.to_owned()),
                ("addon-host.toml", config(name, prefix, &build)?),
                ("README.md", readme(PY_README)),
                (".gitignore", "/.venv\n/plugin.wasm\n/data\n__pycache__/\n".to_owned()),
            ];
            files.extend(WIT_DEPS.iter().map(|(path, text)| (*path, (*text).to_owned())));
            let next = format!(
                "python3 -m venv .venv && . .venv/bin/activate && pip install componentize-py=={COMPONENTIZE_PY} && addon-host serve --watch"
            );
            (files, next)
        }
    })
}

const PACKAGE_JSON: &str = r#"{
  "name": "{NAME}",
  "private": true,
  "type": "module",
  "scripts": {
    "build": "node --check app.js && node --check addon-sdk.js && componentize-js app.js --wit wit --world-name plugin -o plugin.wasm -d http -d fetch-event"
  },
  "devDependencies": {
    "@bytecodealliance/componentize-js": "{JS}"
  }
}
"#;

const APP_JS: &str = r#"// An add-on provider: each provisioned app gets a URL and a secret, made once and kept in
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
"#;

const APP_PY: &str = r#""""An add-on provider: each provisioned app gets a URL and a secret, made once and kept in
the add-on's key-value store; a deprovision forgets the secret."""

from addon_sdk import Provider, Reply, addon_id, change_plan_reply, config, internal, kv, log, provision_reply, random_hex


def prefix() -> str:
    return addon_id().upper().replace("-", "_")


class WitWorld(Provider):
    def provision(self, req):
        base = config("host_url")
        if base is None:
            raise internal("config `host_url` is not set")
        key = f"secret/{req.resource_id}"
        secret = kv.get_string(key)
        if secret is None:
            secret = random_hex(24)
            kv.set_string(key, secret)
        log.info(f"provisioned {req.resource_id} on {req.plan}")
        reply = Reply().set(f"{prefix()}_URL", f"{base.rstrip('/')}/apps/{req.resource_id}").set(f"{prefix()}_SECRET", secret)
        return provision_reply(reply)

    def change_plan(self, req):
        return change_plan_reply(Reply().message(f"Now on {req.plan}."))

    def deprovision(self, req):
        kv.delete(f"secret/{req.resource_id}")
"#;

const JS_README: &str = r#"# {NAME}

An add-on provider for addon-host, in JavaScript: `app.js` answers Bitrise's and Xervo's
provisioning calls from a sandboxed WebAssembly component built with componentize-js {JS}.

```sh
npm install                    # componentize-js, once
addon-host serve --watch       # builds plugin.wasm, serves it on 127.0.0.1:8080, rebuilds on save
addon-host test plugin.wasm   # the conformance kit, with ./addon-host.toml
```

- `app.js` exports `provision`, `changePlan` and `deprovision`; `addon-sdk.js` is the SDK
  layer (replies, errors, key-value store, logging, config). Requests use camelCase fields.
- `wit/` is the contract the component is built against; do not edit it.
- `addon-host.toml` holds the dev credentials generated for this project.
"#;

const PY_README: &str = r#"# {NAME}

An add-on provider for addon-host, in Python: `app.py` answers Bitrise's and Xervo's
provisioning calls from a sandboxed WebAssembly component built with componentize-py {PY}.

```sh
python3 -m venv .venv && . .venv/bin/activate && pip install componentize-py=={PY}
addon-host serve --watch       # builds plugin.wasm, serves it on 127.0.0.1:8080, rebuilds on save
addon-host test plugin.wasm   # the conformance kit, with ./addon-host.toml
```

- `app.py` defines `class WitWorld(Provider)` with `provision`, `change_plan` and
  `deprovision`; `addon_sdk.py` is the SDK layer (replies, errors, key-value store, logging,
  config).
- `wit/` is the contract the component is built against; do not edit it.
- `addon-host.toml` holds the dev credentials generated for this project.
"#;
