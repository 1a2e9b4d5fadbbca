//! The `addon-host` command line, built here so end-to-end tests can spawn the real binary.

#[global_allocator]
static ALLOCATOR: addon_host::Allocator = addon_host::Allocator;

fn main() -> anyhow::Result<()> {
    addon_host::cli::main()
}
