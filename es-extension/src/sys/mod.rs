//! Kernel backends, one module per OS behind the contract in `crate::backend` (mio's layout).
//!
//! - `linux`: fanotify permission events (real on our machines, tested as root).
//! - `macos`: Endpoint Security (type-checked and linted here; runs on macOS only).
//! - `es_convert`: the platform-neutral conversions the macOS backend relies on (deadline budget,
//!   code-signing flags, statfs fields), unit-tested on Linux.

pub mod es_convert;
#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(target_os = "macos")]
pub mod macos;
