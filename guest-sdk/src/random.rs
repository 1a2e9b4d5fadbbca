//! Cryptographically secure randomness from the host.

use crate::host::imp;

/// `len` random bytes.
pub fn bytes(len: u32) -> Vec<u8> {
    imp::random_bytes(len)
}

/// `len` random bytes as lowercase hex (twice as many characters).
pub fn hex(len: u32) -> String {
    bytes(len).iter().map(|b| format!("{b:02x}")).collect()
}
