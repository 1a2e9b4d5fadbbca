//! The `addon-host` binary; see [`addon_host::cli`].

fn main() -> anyhow::Result<()> {
    addon_host::cli::main()
}
