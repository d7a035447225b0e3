//! Linux parts of the helper: the Unix socket listener, peer authentication, and the Linux
//! analyzers (dpkg or rpm package trust, sysfs volume metadata; code signing is unsupported).
#![forbid(unsafe_code)]

pub mod auth;
pub mod built_index;
pub mod dpkg;
pub mod rpmdb;
pub mod server;
pub mod volume;

use std::path::Path;

use crate::analyzer::{Analyzers, PackageTrust, Unsupported};
use crate::hash::FdHasher;

/// The Linux analyzer set: fd hashing and package trust capped at `max_file_size` bytes, sysfs
/// volumes, and no code signing (Linux has none; docs/DESIGN.md 3a).
pub fn analyzers(max_file_size: u64) -> Analyzers {
    Analyzers {
        hasher: Box::new(FdHasher {
            max_size: max_file_size,
        }),
        packages: package_trust(Path::new("/"), max_file_size),
        volumes: Box::new(volume::SysfsVolumes::default()),
        signing: Box::new(Unsupported("code signing (Linux has no code signatures)")),
    }
}

/// The package database of the system under `root` (`/` on a host; a scratch root in tests):
/// dpkg when `var/lib/dpkg/status` exists, else rpm's SQLite database, else `Unsupported` saying
/// what was found. Only `stat`s: no database is read here, so start-up never waits on one
/// (invariants 5 and 6); the index is built by the warm-up thread after start
/// (`PackageTrust::warm`) or by the first request, whichever comes first.
pub fn package_trust(root: &Path, max_file_size: u64) -> Box<dyn PackageTrust> {
    let usr_merged =
        std::fs::symlink_metadata(root.join("bin")).is_ok_and(|m| m.file_type().is_symlink());
    if root.join("var/lib/dpkg/status").exists() {
        // dpkg paths are looked up as the kernel names them, so a scratch root serves only the
        // rpm tests; on a host the root is `/`.
        return Box::new(dpkg::DpkgTrust::new(
            &root.join("var/lib/dpkg"),
            usr_merged,
            max_file_size,
        ));
    }
    if let Some(db) = rpmdb::SQLITE_PATHS
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
    {
        tracing::info!(db = %db.display(), "package trust from the rpm database");
        return Box::new(rpmdb::RpmTrust::new(&db, root, usr_merged, max_file_size));
    }
    if let Some((_, why)) = rpmdb::UNREAD_PATHS
        .iter()
        .find(|(p, _)| root.join(p).is_file())
    {
        return Box::new(Unsupported(why));
    }
    Box::new(Unsupported(
        "package trust (no dpkg database at /var/lib/dpkg/status and no rpm database at \
         /var/lib/rpm/rpmdb.sqlite or /usr/lib/sysimage/rpm/rpmdb.sqlite)",
    ))
}
