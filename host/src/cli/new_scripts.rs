//! `addon-host new NAME --lang js|python`: a plugin project in JavaScript (componentize-js)
//! or Python (componentize-py). The project carries the SDK layer and the WIT it builds
//! against, so it needs nothing from this repository; its config builds it for
//! `serve --watch`. Its build script (`build.mjs`, `build.py`, in `templates/`) checks the
//! syntax and picks the world from what the plugin defines. `--template jobs|web` starts from
//! a plugin that runs jobs or serves pages (`templates/`).

use super::new::{Build, Template, config};

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
const JS_WEB: &str = include_str!("../../../guest-sdk/js/addon-web.js");
const PY_WEB: &str = include_str!("../../../guest-sdk/python/addon_web.py");
/// The generators' releases whose output this host links (see tests/src/languages.rs).
const COMPONENTIZE_JS: &str = "0.23.0";
const COMPONENTIZE_PY: &str = "0.25.1";

type Files = Vec<(&'static str, String)>;

/// The project's files and the next command to run.
pub(super) fn files(lang: Script, template: Template, name: &str, prefix: &str) -> anyhow::Result<(Files, String)> {
    let readme =
        |text: &str| text.replace("{NAME}", name).replace("{JS}", COMPONENTIZE_JS).replace("{PY}", COMPONENTIZE_PY);
    let web = template == Template::Web;
    Ok(match lang {
        Script::Js => {
            let build = Build {
                plugin: "plugin.wasm".into(),
                command: "npm run build",
                watch: if web {
                    r#"["app.js", "addon-sdk.js", "addon-web.js"]"#
                } else {
                    r#"["app.js", "addon-sdk.js"]"#
                },
                template,
            };
            let (app, test) = match template {
                Template::Provider => {
                    (include_str!("templates/provider.js"), include_str!("templates/provider.test.js"))
                }
                Template::Jobs => (include_str!("templates/jobs.js"), include_str!("templates/jobs.test.js")),
                Template::Web => (include_str!("templates/web.js"), include_str!("templates/web.test.js")),
            };
            let mut files = vec![
                ("package.json", PACKAGE_JSON.replace("{NAME}", name).replace("{JS}", COMPONENTIZE_JS)),
                ("build.mjs", include_str!("templates/build.mjs").to_owned()),
                ("app.js", app.to_owned()),
                ("app.test.js", test.replace("{NAME}", name).replace("{PREFIX}", prefix)),
                ("addon-sdk.js", JS_SDK.to_owned()),
                ("addon-testing.js", include_str!("../../../guest-sdk/js/addon-testing.js").to_owned()),
                ("addon-testing-hooks.js", include_str!("../../../guest-sdk/js/addon-testing-hooks.js").to_owned()),
                ("wit/provider.wit", WIT.to_owned()),
                ("addon-host.toml", config(name, prefix, &build)?),
                ("README.md", readme(JS_README)),
                (".gitignore", "/node_modules\n/plugin.wasm\n/data\n".to_owned()),
            ];
            if web {
                files.push(("addon-web.js", JS_WEB.to_owned()));
            }
            files.extend(WIT_DEPS.iter().map(|(path, text)| (*path, (*text).to_owned())));
            (files, "npm install && addon-host serve --watch".into())
        }
        Script::Python => {
            let build = Build {
                plugin: "plugin.wasm".into(),
                command: "python3 build.py",
                watch: if web {
                    r#"["app.py", "addon_sdk.py", "addon_web.py"]"#
                } else {
                    r#"["app.py", "addon_sdk.py"]"#
                },
                template,
            };
            let (app, test) = match template {
                Template::Provider => {
                    (include_str!("templates/provider.py"), include_str!("templates/provider_test.py"))
                }
                Template::Jobs => (include_str!("templates/jobs.py"), include_str!("templates/jobs_test.py")),
                Template::Web => (include_str!("templates/web.py"), include_str!("templates/web_test.py")),
            };
            let mut files = vec![
                ("build.py", include_str!("templates/build.py").to_owned()),
                ("app.py", app.to_owned()),
                ("test_app.py", test.replace("{NAME}", name).replace("{PREFIX}", prefix)),
                ("addon_sdk.py", PY_SDK.to_owned()),
                ("addon_testing.py", include_str!("../../../guest-sdk/python/addon_testing.py").to_owned()),
                ("wit/provider.wit", WIT.to_owned()),
                ("addon-host.toml", config(name, prefix, &build)?),
                ("README.md", readme(PY_README)),
                (".gitignore", "/.venv\n/plugin.wasm\n/data\n__pycache__/\n".to_owned()),
            ];
            if web {
                files.push(("addon_web.py", PY_WEB.to_owned()));
            }
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
    "build": "node build.mjs",
    "test": "node --import ./addon-testing-hooks.js --test"
  },
  "devDependencies": {
    "@bytecodealliance/componentize-js": "{JS}"
  }
}
"#;

const JS_README: &str = r#"# {NAME}

An add-on provider for addon-host, in JavaScript: `app.js` answers Bitrise's and Xervo's
provisioning calls from a sandboxed WebAssembly component built with componentize-js {JS}.

```sh
npm install                    # componentize-js, once
npm test                       # app.test.js under Node, against an in-memory host (addon-testing.js)
addon-host serve --watch       # builds plugin.wasm, serves it on 127.0.0.1:8080, rebuilds on save
addon-host test plugin.wasm   # the conformance kit, with ./addon-host.toml
```

- `app.js` exports `provision`, `changePlan` and `deprovision` (and `runJob` for jobs,
  `incomingHandler` for pages); `addon-sdk.js` is the SDK layer (replies, errors, key-value
  store, logging, config, jobs, `fetch`), `addon-web.js` the pages'. Requests use camelCase
  fields. Handlers may be `async`.
- `build.mjs` (`npm run build`) checks the syntax, then builds for the world that matches
  what `app.js` exports: `web` with `incomingHandler`, `worker` with `runJob`, else `plugin`.
- `wit/` is the contract the component is built against; do not edit it.
- `addon-host.toml` holds the dev credentials generated for this project.
"#;

const PY_README: &str = r#"# {NAME}

An add-on provider for addon-host, in Python: `app.py` answers Bitrise's and Xervo's
provisioning calls from a sandboxed WebAssembly component built with componentize-py {PY}.

```sh
python3 -m venv .venv && . .venv/bin/activate && pip install componentize-py=={PY}
python3 -m unittest            # test_app.py under CPython, against an in-memory host (addon_testing.py)
addon-host serve --watch       # builds plugin.wasm, serves it on 127.0.0.1:8080, rebuilds on save
addon-host test plugin.wasm   # the conformance kit, with ./addon-host.toml
```

- `app.py` defines `class WitWorld(Provider)` with `provision`, `change_plan` and
  `deprovision` (and `run_job` for jobs; `class IncomingHandler(WebHandler)` for pages);
  `addon_sdk.py` is the SDK layer (replies, errors, key-value store, logging, config, jobs,
  `send`), `addon_web.py` the pages'.
- `build.py` compiles the sources, then builds for the world that matches what `app.py`
  defines: `web` with `class IncomingHandler`, `worker` with `run_job`, else `plugin`.
- `wit/` is the contract the component is built against; do not edit it.
- `addon-host.toml` holds the dev credentials generated for this project.
"#;
