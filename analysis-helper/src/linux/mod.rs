//! Linux parts of the helper: the Unix socket listener, peer authentication, and the Linux
//! analyzers (dpkg package trust, sysfs volume metadata; code signing is unsupported).
#![forbid(unsafe_code)]

pub mod auth;
pub mod dpkg;
pub mod server;
pub mod volume;

use crate::analyzer::{Analyzers, Unsupported};
use crate::hash::FdHasher;

/// The Linux analyzer set: fd hashing and dpkg trust capped at `max_file_size` bytes, sysfs
/// volumes, and no code signing (Linux has none; docs/DESIGN.md 3a).
pub fn analyzers(max_file_size: u64) -> Analyzers {
    Analyzers {
        hasher: Box::new(FdHasher {
            max_size: max_file_size,
        }),
        packages: Box::new(dpkg::DpkgTrust::system(max_file_size)),
        volumes: Box::new(volume::SysfsVolumes::default()),
        signing: Box::new(Unsupported("code signing (Linux has no code signatures)")),
    }
}
