//! Logging to the host's log, where each line is tagged with the add-on and the call (and
//! kept among the add-on's recent lines that a failed call's error points to).
//!
//! ```no_run
//! use addon_sdk::log;
//! log::info!("provisioned {} on {}", "app-1", "free");
//! log::write(log::Level::Warn, "quota nearly used");
//! ```
//!
//! The macros live under `log::`, so a glob import of this crate never clashes with the
//! `log` or `tracing` crates' own `info!`.

pub use crate::bindings::addon::provider::log::Level;
use crate::host::imp;

/// Write a line at `level`.
pub fn write(level: Level, message: &str) {
    imp::log(level, message);
}

#[doc(hidden)]
#[macro_export]
macro_rules! __addon_sdk_log {
    ($level:ident, $($arg:tt)*) => {
        $crate::log::write($crate::log::Level::$level, &::std::format!($($arg)*))
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __addon_sdk_debug {
    ($($arg:tt)*) => { $crate::__addon_sdk_log!(Debug, $($arg)*) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __addon_sdk_info {
    ($($arg:tt)*) => { $crate::__addon_sdk_log!(Info, $($arg)*) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __addon_sdk_warn {
    ($($arg:tt)*) => { $crate::__addon_sdk_log!(Warn, $($arg)*) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __addon_sdk_error {
    ($($arg:tt)*) => { $crate::__addon_sdk_log!(Error, $($arg)*) };
}

/// `log::debug!("...", args)`: a line at debug level.
pub use crate::__addon_sdk_debug as debug;
/// `log::error!("...", args)`: a line at error level.
pub use crate::__addon_sdk_error as error;
/// `log::info!("...", args)`: a line at info level.
pub use crate::__addon_sdk_info as info;
/// `log::warn!("...", args)`: a line at warn level.
pub use crate::__addon_sdk_warn as warn;
