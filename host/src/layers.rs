//! The host's layers, lowest first, and the test that holds the code to them: a module may use
//! only modules of lower layers (and its own). Arrows point down — adapters → service →
//! runtime → storage → config — so a change below never needs to know what sits above it, and
//! an upward `use crate::…` (a cycle in the making) fails CI. Where a lower layer needs
//! something from above, it owns a trait that the upper layer implements
//! (`service::ConfigRules`, `jobs::Runner`).
//!
//! A new top-level module must be given a layer here before the test passes.

/// The layers, lowest first. Modules within one layer may not use each other.
const LAYERS: &[&[&str]] = &[
    &["clock", "blocking", "logs"],
    &["config"],
    &["storage"],
    &["versions"],
    &["runtime"],
    &["metrics"],
    &["jobs"],
    &["error"],
    &["service"],
    &["http"],
    &["pages"],
    &["web"],
    &["bitrise", "xervo"],
    &["admin"],
    // `serve` is `app::serve`, re-exported at the crate root.
    &["app", "serve"],
    &["conformance"],
    &["watch"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level modules that `source` (a file of module `from`) names with `crate::`,
/// outside comments: `use crate::a::b`, `use crate::{a, b::c}` and inline `crate::a::f()`.
fn uses(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .map(|line| line.split(" // ").next().unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            continue; // `$crate::`, `my_crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            // A group: the first name of each top-level item.
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(first_name(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.push(first_name(&item));
        } else {
            found.push(first_name(rest));
        }
    }
    found.retain(|name| !name.is_empty() && name != "self");
    found
}

fn first_name(text: &str) -> String {
    text.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// Every arrow against the layer order in `files` (path relative to `src/`, contents).
fn violations(files: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, source) in files {
        let from = path.split('/').next().unwrap_or(path).trim_end_matches(".rs");
        if matches!(from, "lib" | "main" | "layers") {
            continue;
        }
        let Some(from_layer) = layer_of(from) else {
            found.push(format!("{path}: module `{from}` has no layer in layers.rs"));
            continue;
        };
        for to in uses(source) {
            if to == from {
                continue;
            }
            match layer_of(&to) {
                Some(to_layer) if to_layer < from_layer => {}
                Some(_) => found.push(format!("{path}: `{from}` uses `crate::{to}`, which is not below it")),
                None => found.push(format!("{path}: `{from}` uses `crate::{to}`, which has no layer in layers.rs")),
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn read(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).expect("src/ is readable").flatten().collect();
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            let path = entry.path();
            if path.is_dir() {
                read(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(root).expect("below src/").to_string_lossy().into_owned();
                out.push((relative, std::fs::read_to_string(&path).expect("a source file is readable")));
            }
        }
    }

    #[test]
    fn every_module_uses_only_lower_layers() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        read(&root, &root, &mut files);
        assert!(files.len() > 50, "the walk found the sources: {}", files.len());
        let problems = violations(&files);
        assert!(problems.is_empty(), "arrows against the layers:\n{}", problems.join("\n"));
    }

    #[test]
    fn every_top_level_module_has_a_layer() {
        let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).expect("lib.rs");
        let modules: Vec<&str> = lib
            .lines()
            .filter_map(|l| l.trim().strip_suffix(';')?.split("mod ").nth(1))
            .filter(|m| *m != "layers")
            .collect();
        assert!(modules.len() > 15, "{modules:?}");
        for module in modules {
            assert!(layer_of(module).is_some(), "module `{module}` has no layer in layers.rs");
        }
    }

    #[test]
    fn an_upward_use_or_a_cycle_is_caught() {
        let file = |path: &str, source: &str| (path.to_owned(), source.to_owned());
        let clean = [
            file("storage/mod.rs", "use crate::config::StorageConfig;\nuse crate::{clock, blocking::run};"),
            file("service/mod.rs", "use crate::{storage::{Storage, Space}, runtime};\nlet x = crate::jobs::stage();"),
            file("bitrise/mod.rs", "// see crate::app\nuse crate::web; // crate::app\n"),
        ];
        assert_eq!(violations(&clean), Vec::<String>::new());
        let upward = [file("storage/kv.rs", "use crate::{config, service::Addon};")];
        assert_eq!(violations(&upward), ["storage/kv.rs: `storage` uses `crate::service`, which is not below it"]);
        let inline = [file("runtime/mod.rs", "fn f() { crate::http::check() }")];
        assert_eq!(violations(&inline).len(), 1);
        let sideways = [file("xervo/sso.rs", "use crate::bitrise::login;")];
        assert_eq!(violations(&sideways).len(), 1, "modules of one layer may not use each other");
        let unknown = [file("newthing.rs", "use crate::config;")];
        assert_eq!(violations(&unknown), ["newthing.rs: module `newthing` has no layer in layers.rs"]);
    }
}
