//! The analyzer contract: one small trait per kind of analysis the helper performs, each
//! returning a model type or a typed [`AnalysisError`] that maps onto the wire's
//! [`HelperErrorKind`].
//!
//! The server ([`crate::service`]) owns deadlines, caching, panics and counting; an analyzer only
//! computes. Every implementation must be `Send + Sync` (one instance is shared by all workers)
//! and must honour [`Input::deadline`] when its work can be long (check before starting and
//! between chunks), answering [`AnalysisError::DeadlineExceeded`].
//!
//! Implementations: Linux in `crate::linux` (fd hashing, dpkg, sysfs/udev, code signing
//! unsupported); macOS in `crate::macos` (DiskArbitration, Security framework).
//!
//! Platform rule (invariant 4, and docs/DESIGN.md 6): on Linux an analyzer reads file contents only
//! through the descriptor the extension passed ([`Input::fd`]), with positioned reads (`pread`)
//! so the opener's shared file offset is never moved, plus procfs, sysfs and the dpkg database.
//! It never re-opens [`Input::file`]'s path: the path is for display and package lookup only.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use model::{CertificateInfo, FileRef, MountInfo, Sha256, VolumeInfo};
use protocol::HelperErrorKind;

/// What an analyzer is asked about a file.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The file as the event named it. Its `identity` (when present) is the kernel's.
    pub file: &'a FileRef,
    /// The descriptor the extension passed (SCM_RIGHTS on Linux; an XPC fd on macOS). `None`
    /// when the request carried none; analyzers that need contents then answer `BadRequest`.
    pub fd: Option<BorrowedFd<'a>>,
    /// When the caller stops waiting. Work past it is abandoned.
    pub deadline: Instant,
}

impl Input<'_> {
    /// `Err(DeadlineExceeded)` once the deadline has passed; call between chunks of work.
    pub fn check_deadline(&self) -> Result<(), AnalysisError> {
        if Instant::now() >= self.deadline {
            Err(AnalysisError::DeadlineExceeded)
        } else {
            Ok(())
        }
    }

    /// The passed descriptor, or a `BadRequest` naming what needed it.
    pub fn require_fd(&self, what: &str) -> Result<BorrowedFd<'_>, AnalysisError> {
        self.fd.ok_or_else(|| {
            AnalysisError::BadRequest(format!(
                "{what} of {} needs the file's descriptor attached (fd_attached = true)",
                self.file.path
            ))
        })
    }
}

/// Why an analysis could not produce its fact.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("the request's budget ran out before the analysis finished; the work was dropped")]
    DeadlineExceeded,
    #[error("{0} is not available on this platform")]
    Unsupported(&'static str),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{path} is {size} bytes, over the {max}-byte analysis limit (raise --max-file-size)")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("{what} failed: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl AnalysisError {
    /// Wrap an I/O error with what was being done (and on which file).
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// The wire kind this error is reported as.
    pub fn kind(&self) -> HelperErrorKind {
        match self {
            AnalysisError::DeadlineExceeded => HelperErrorKind::DeadlineExceeded,
            AnalysisError::Unsupported(_) => HelperErrorKind::Unsupported,
            AnalysisError::BadRequest(_) => HelperErrorKind::BadRequest,
            AnalysisError::TooLarge { .. } | AnalysisError::Io { .. } => HelperErrorKind::Io,
            AnalysisError::Internal(_) => HelperErrorKind::Internal,
        }
    }
}

/// SHA-256 of a file's contents (Linux: streamed through the passed fd with `pread` from offset
/// 0, under a size cap).
pub trait FileHasher: Send + Sync {
    fn sha256(&self, input: &Input<'_>) -> Result<Sha256, AnalysisError>;
}

/// Package ownership and integrity of a file (Linux: dpkg `*.md5sums`, MD5 over the passed fd).
/// A file is trusted when a package owns its path and its contents match the package's record.
pub trait PackageTrust: Send + Sync {
    fn package_trust(&self, input: &Input<'_>) -> Result<model::PackageTrust, AnalysisError>;

    /// Changes whenever the package database changed, so cached answers from an older
    /// database are not reused. Implementations without a database keep the default.
    fn generation(&self) -> u64 {
        0
    }
}

/// Volume metadata the mount message lacks: bus, removability, encryption, UUID, filesystem type
/// (Linux: mountinfo, sysfs, `/dev/disk/by-uuid`; macOS: DiskArbitration).
pub trait VolumeInspector: Send + Sync {
    fn volume(&self, mount: &MountInfo, deadline: Instant) -> Result<VolumeInfo, AnalysisError>;
}

/// The leaf certificate of a binary's code signature (macOS: Security framework). Linux has no
/// code signatures and answers [`AnalysisError::Unsupported`].
pub trait CodeSigning: Send + Sync {
    fn certificate(&self, input: &Input<'_>) -> Result<CertificateInfo, AnalysisError>;
}

/// The analyzers one helper runs with; the server holds one shared set.
pub struct Analyzers {
    pub hasher: Box<dyn FileHasher>,
    pub packages: Box<dyn PackageTrust>,
    pub volumes: Box<dyn VolumeInspector>,
    pub signing: Box<dyn CodeSigning>,
}

impl std::fmt::Debug for Analyzers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analyzers").finish_non_exhaustive()
    }
}

/// An analysis this platform does not have: always [`AnalysisError::Unsupported`]. Used for
/// code signing on Linux, package trust on macOS, and as a placeholder in tests.
#[derive(Debug, Clone, Copy)]
pub struct Unsupported(pub &'static str);

impl FileHasher for Unsupported {
    fn sha256(&self, _: &Input<'_>) -> Result<Sha256, AnalysisError> {
        Err(AnalysisError::Unsupported(self.0))
    }
}

impl PackageTrust for Unsupported {
    fn package_trust(&self, _: &Input<'_>) -> Result<model::PackageTrust, AnalysisError> {
        Err(AnalysisError::Unsupported(self.0))
    }
}

impl VolumeInspector for Unsupported {
    fn volume(&self, _: &MountInfo, _: Instant) -> Result<VolumeInfo, AnalysisError> {
        Err(AnalysisError::Unsupported(self.0))
    }
}

impl CodeSigning for Unsupported {
    fn certificate(&self, _: &Input<'_>) -> Result<CertificateInfo, AnalysisError> {
        Err(AnalysisError::Unsupported(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kind_table() {
        let cases = [
            (
                AnalysisError::DeadlineExceeded,
                HelperErrorKind::DeadlineExceeded,
            ),
            (
                AnalysisError::Unsupported("code signing"),
                HelperErrorKind::Unsupported,
            ),
            (
                AnalysisError::BadRequest("x".into()),
                HelperErrorKind::BadRequest,
            ),
            (
                AnalysisError::TooLarge {
                    path: "/a".into(),
                    size: 2,
                    max: 1,
                },
                HelperErrorKind::Io,
            ),
            (
                AnalysisError::io("read", io::Error::other("x")),
                HelperErrorKind::Io,
            ),
            (
                AnalysisError::Internal("x".into()),
                HelperErrorKind::Internal,
            ),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err}");
        }
    }

    #[test]
    fn deadline_and_fd_checks() {
        let file = FileRef::new("/x");
        let past = Input {
            file: &file,
            fd: None,
            deadline: Instant::now(),
        };
        assert!(matches!(
            past.check_deadline(),
            Err(AnalysisError::DeadlineExceeded)
        ));
        assert!(matches!(
            past.require_fd("hashing"),
            Err(AnalysisError::BadRequest(m)) if m.contains("/x")
        ));
        let future = Input {
            deadline: Instant::now() + std::time::Duration::from_secs(60),
            ..past
        };
        assert!(future.check_deadline().is_ok());
    }
}
