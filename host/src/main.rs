//! The `addon-host` binary; see [`addon_host::cli`].

#[global_allocator]
static ALLOCATOR: addon_host::Allocator = addon_host::Allocator;

fn main() -> anyhow::Result<()> {
    addon_host::cli::main()
}
