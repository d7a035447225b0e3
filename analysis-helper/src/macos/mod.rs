//! macOS parts of the helper: the XPC mach-service listener (`server`) and the macOS analyzers:
//! volume metadata from DiskArbitration (`volume`), leaf certificates and team ids from the
//! Security framework (`signing`), and SHA-256 by path with an identity check (`hash`).
//!
//! On macOS the extension cannot pass a descriptor (ES gives none), so the helper opens the
//! path; it is muted by the extension (audit token and executable path), so its own opens never
//! reach the slow path, and it checks that what it opened is the file the kernel described
//! (`crate::hash::open_checked`).

pub mod server;
pub mod signing;
pub mod volume;

use crate::analyzer::{Analyzers, Unsupported};

/// The macOS analyzer set. `certificate_requirement` is an optional code-signing requirement a
/// binary must satisfy for its certificate to count as `valid` (default: the signature itself
/// validates, `SecStaticCodeCheckValidity` with no requirement).
pub fn analyzers(max_file_size: u64, certificate_requirement: Option<String>) -> Analyzers {
    Analyzers {
        hasher: Box::new(crate::hash::PathHasher {
            max_size: max_file_size,
        }),
        packages: Box::new(Unsupported(
            "package trust (macOS uses code signatures instead)",
        )),
        volumes: Box::new(volume::DiskArbitrationVolumes),
        // Certificates count only when tied to the kernel's identity (`BoundSigning`).
        signing: Box::new(crate::analyzer::BoundSigning(signing::SecurityFramework {
            requirement: certificate_requirement,
        })),
    }
}
