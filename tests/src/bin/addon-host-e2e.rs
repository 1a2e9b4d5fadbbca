//! The `addon-host` command line, built here so end-to-end tests can spawn the real binary.

fn main() -> anyhow::Result<()> {
    addon_host::cli::main()
}
