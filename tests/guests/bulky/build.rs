//! Generates 2 MB of incompressible bytes that the plugin embeds.

fn main() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..2 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(out.join("blob.bin"), data).expect("writing blob.bin");
    println!("cargo:rerun-if-changed=build.rs");
}
