//! The native baseline of the HTTP benchmark (`cargo bench --bench http`): the credentials
//! example as a plain axum server ([`addon_host_tests::native`]).
//!
//! Usage: `native-credentials DATA_DIR [--group-commit]` — prints `listening on http://ADDR`
//! when ready. `--group-commit` commits through addon-host's storage instead of a sled flush
//! per request ([`addon_host_tests::native::Commit`]).

// The host's allocator, so that the benchmark compares the two designs and not two allocators.
#[global_allocator]
static ALLOCATOR: addon_host::Allocator = addon_host::Allocator;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: native-credentials DATA_DIR"))?;
    let commit = match std::env::args().nth(2).as_deref() {
        Some("--group-commit") => addon_host_tests::native::Commit::Group,
        _ => addon_host_tests::native::Commit::SledFlush,
    };
    let router = addon_host_tests::native::router(std::path::Path::new(&dir), commit)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on http://{}", listener.local_addr()?);
        axum::serve(listener, router).await?;
        anyhow::Ok(())
    })
}
