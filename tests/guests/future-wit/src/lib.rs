//! A plugin for `addon:provider@0.2.0`, which this host does not implement.

wit_bindgen::generate!({ world: "plugin", path: "wit" });

struct Future;

impl Guest for Future {
    fn provision(app: String) -> Vec<(String, String)> {
        let seen = addon::provider::kv::get(&app).is_some();
        vec![("FUTURE_SEEN".into(), seen.to_string())]
    }
}

export!(Future);
