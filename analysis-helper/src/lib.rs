//! The analysis helper: listener, bounded worker pool, and analyzers behind small traits.
//!
//! - [`analyzer`]: the contract every platform's analyzers implement.
//! - [`service`]: transport-neutral request handling (deadlines, cache, panics, counters).
//! - [`pool`]: the fixed worker pool with a bounded queue.
//! - `server` (Linux): the Unix socket listener with peer authentication.
//! - [`client`]: a small blocking client, used by `--probe`, the CLI and the tests.
//! - [`disk_names`]: pure DiskArbitration-to-model mappings (macOS), tested everywhere.
//!
//! The helper never re-enters an agent: on Linux it reads files only through descriptors the
//! extension passed, plus procfs, sysfs and the dpkg database (none of which the extension
//! marks), and the extension mutes the helper by pid (docs/DESIGN.md 4) so even those reads are
//! answered on the delivery thread without analysis.
// Only the macOS module (Security framework, DiskArbitration) needs FFI; every other module
// forbids unsafe code itself.
#![deny(unsafe_code)]

pub mod analyzer;
pub mod cache;
pub mod client;
pub mod disk_names;
pub mod file_signing;
pub mod hash;
#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(target_os = "macos")]
pub mod macos;
pub mod pool;
pub mod remount;
pub mod service;
pub mod stats;
