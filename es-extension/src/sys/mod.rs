//! Kernel backends, one module per OS behind the contract in `crate::backend` (mio's layout).
//!
//! - `linux`: fanotify permission events (real on our machines, tested as root).
//! - `macos`: Endpoint Security. Its logic is compiled and tested on every OS (against the
//!   simulator, `macos::sim`); only `macos::ffi` is macOS-only.

#[cfg(target_os = "linux")]
pub mod linux;
pub mod macos;
