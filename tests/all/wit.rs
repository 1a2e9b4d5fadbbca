//! The contract is a WIT package other languages' generators can take as it is: `wit/` holds
//! one package, `addon:provider@0.1.2`, and in `wit/deps` the WASI 0.2 packages its `web`
//! world names (`wasi:http` and what it uses), which encodes to the binary
//! package `wkg wit build` publishes and decodes back to the same worlds; and the SDK's
//! published crate carries the same files (`guest-sdk/wit` is a link to `wit/`).

const WIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../wit");

#[test]
fn the_wit_folder_is_one_self_contained_package() {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(WIT).expect("wit/ parses as a package");
    assert_eq!(resolve.packages[package].name.to_string(), "addon:provider@0.1.2");
    let others: Vec<String> =
        resolve.packages.iter().filter(|(id, _)| *id != package).map(|(_, p)| p.name.to_string()).collect();
    assert!(others.iter().all(|n| n.starts_with("wasi:") && n.ends_with("@0.2.12")), "{others:?}");
    let worlds: Vec<&str> = resolve.packages[package].worlds.keys().map(String::as_str).collect();
    assert_eq!(worlds, ["plugin", "worker", "web"]);
    // `plugin` and `worker` import nothing of WASI's: only `web` needs `wit/deps`.
    let world = resolve.packages[package].worlds["worker"];
    let wasi = |key: &wit_parser::WorldKey| resolve.name_world_key(key).starts_with("wasi:");
    assert!(!resolve.worlds[world].imports.keys().any(wasi));
    let world = resolve.packages[package].worlds["web"];
    let exports: Vec<String> = resolve.worlds[world].exports.keys().map(|k| resolve.name_world_key(k)).collect();
    assert!(exports.contains(&"wasi:http/incoming-handler@0.2.12".to_owned()), "{exports:?}");

    // Encoded as a binary WIT package and back, as registries (`wkg`) carry it.
    let bytes = wit_component::encode(&resolve, package, false).expect("encodes as a WIT package");
    let decoded = wit_component::decode(&bytes).expect("decodes");
    let again = decoded.resolve();
    let name = again.packages.iter().map(|(_, p)| p.name.to_string()).find(|n| n.starts_with("addon:"));
    assert_eq!(name.as_deref(), Some("addon:provider@0.1.2"));

    let sdk = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk/wit/provider.wit")).unwrap();
    assert_eq!(sdk, std::fs::read_to_string(format!("{WIT}/provider.wit")).unwrap());
}
