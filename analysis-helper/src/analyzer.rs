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

use model::{CdHash, CertificateInfo, FileRef, MountInfo, Sha256, VolumeInfo};
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

    /// What kind of executable the file is ([`model::FileKind::of`] its first bytes), read
    /// the same way as the hash. Hashers that cannot read files say so.
    fn file_kind(&self, input: &Input<'_>) -> Result<model::FileKind, AnalysisError> {
        let _ = input;
        Err(AnalysisError::Unsupported("reading files"))
    }
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

    /// Start building the database's index now, on the implementation's builder thread (the
    /// helper calls it once, right after it started listening), so the first analysis after a
    /// (re)start does not pay for it inside its deadline. Returns at once. Implementations
    /// without an index keep the default.
    fn warm(&self) {}
}

/// Volume metadata the mount message lacks: bus, removability, encryption, UUID, filesystem type
/// (Linux: mountinfo, sysfs, `/dev/disk/by-uuid`; macOS: DiskArbitration).
pub trait VolumeInspector: Send + Sync {
    fn volume(&self, mount: &MountInfo, deadline: Instant) -> Result<VolumeInfo, AnalysisError>;

    /// Start mounting `mount`'s volume again with `arguments` (`mount -o` words, from
    /// [`crate::remount::mount_arguments`]) and return without waiting for it to finish: the
    /// mount raises a mount event the extension may need this helper to decide (invariant
    /// `slow-path-never-gates-itself`). macOS: DiskArbitration. Elsewhere unsupported, since
    /// only Endpoint Security reports mounts.
    fn start_remount(
        &self,
        mount: &MountInfo,
        arguments: &[&'static str],
        deadline: Instant,
    ) -> Result<(), AnalysisError> {
        let _ = (mount, arguments, deadline);
        Err(AnalysisError::Unsupported("remounting volumes"))
    }

    /// Start unmounting `mount`'s volume (`force`: even if busy) and, once that succeeds,
    /// mounting it again with `then_mount` (`mount -o` words) when given. Returns without
    /// waiting, for the same reason as [`VolumeInspector::start_remount`].
    fn start_unmount(
        &self,
        mount: &MountInfo,
        force: bool,
        then_mount: Option<&[&'static str]>,
        deadline: Instant,
    ) -> Result<(), AnalysisError> {
        let _ = (mount, force, then_mount, deadline);
        Err(AnalysisError::Unsupported("unmounting volumes"))
    }
}

/// The leaf certificate of a binary's code signature (macOS: Security framework). Linux has no
/// code signatures and answers [`AnalysisError::Unsupported`].
pub trait CodeSigning: Send + Sync {
    fn certificate(&self, input: &Input<'_>) -> Result<CertificateInfo, AnalysisError>;

    /// The certificate of the code `binding` names (invariant `identity-from-kernel`): what
    /// the Security framework reads is trusted only once it is tied to the kernel's identity.
    /// Implementations without signatures ignore the binding.
    fn certificate_bound(
        &self,
        input: &Input<'_>,
        binding: &Binding,
    ) -> Result<CertificateInfo, AnalysisError> {
        let _ = binding;
        self.certificate(input)
    }
}

/// What ties the code the Security framework reads to the event the kernel sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// A running process, found by the kernel's audit token (`SecCodeCopyGuestWithAttributes`
    /// with `kSecGuestAttributeAudit`): the kernel itself names the code.
    AuditToken([u32; 8]),
    /// An exec target, read from its path: only trusted when the signature's
    /// `kSecCodeInfoUnique` equals the CDHash in the kernel's message.
    CdHash(CdHash),
    /// Nothing: the request carried neither (today's wire format). Never trusted.
    Unbound,
}

/// Whether a signature validated (`SecCodeCheckValidity` / `SecStaticCodeCheckValidity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Valid,
    /// `errSecCSUnsigned`: no signature at all.
    Unsigned,
    /// Any other failure (OSStatus), including an unmet requirement.
    Invalid(i32),
}

/// What the Security framework reported about one code object, before any trust decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureReport {
    /// `kSecCodeInfoUnique`: the CDHash of the code that was checked.
    pub unique: Option<CdHash>,
    pub validity: Validity,
    /// SHA-256 of the leaf certificate's DER (`kSecCodeInfoCertificates[0]`); `None` when
    /// ad hoc signed.
    pub leaf_sha256: Option<Sha256>,
    pub team_id: Option<String>,
}

/// The Security-framework calls behind certificate facts, behind a trait so a simulator can
/// supply them off macOS. Both must use flags that never touch the network and never validate
/// nested code or resources (`kSecCSNoNetworkAccess | kSecCSDoNotValidateResources`): the
/// helper must not wait on ocspd or trustd's network fetches for an exec decision.
pub trait SecuritySource: Send + Sync {
    /// The running code behind the kernel's audit token.
    fn running(
        &self,
        audit_token: &[u32; 8],
        deadline: Instant,
    ) -> Result<SignatureReport, AnalysisError>;
    /// The code on disk at `path`.
    fn on_disk(&self, path: &str, deadline: Instant) -> Result<SignatureReport, AnalysisError>;
}

/// The certificate facts `report` supports for the code `binding` names, or why none.
/// `path` is for messages only. Pure: the whole trust decision, table-tested on every OS.
pub fn certificate_facts(
    path: &str,
    binding: &Binding,
    report: &SignatureReport,
) -> Result<CertificateInfo, AnalysisError> {
    match binding {
        Binding::Unbound => {
            return Err(AnalysisError::BadRequest(format!(
                "no kernel identity (CDHash or audit token) for {path}: its certificate, read \
                 by path, is not trusted"
            )));
        }
        Binding::CdHash(want) if report.unique.as_ref() != Some(want) => {
            return Err(AnalysisError::BadRequest(format!(
                "{path} on disk (CDHash {}) is not the image the kernel checked (CDHash {want}): \
                 its certificate is not trusted",
                report
                    .unique
                    .map_or_else(|| "none".to_owned(), |h| h.to_string())
            )));
        }
        Binding::CdHash(_) | Binding::AuditToken(_) => {}
    }
    if report.validity == Validity::Unsigned {
        return Err(AnalysisError::BadRequest(format!(
            "{path} is not signed: it has no certificate"
        )));
    }
    let Some(leaf_sha256) = report.leaf_sha256 else {
        return Err(AnalysisError::BadRequest(format!(
            "{path} is ad-hoc signed: it has no certificate"
        )));
    };
    Ok(CertificateInfo {
        leaf_sha256,
        team_id: report.team_id.clone(),
        valid: report.validity == Validity::Valid,
    })
}

/// [`CodeSigning`] from any [`SecuritySource`]: asks the source for the bound code and lets
/// [`certificate_facts`] decide. The macOS helper runs it over the Security framework.
#[derive(Debug, Clone)]
pub struct BoundSigning<S>(pub S);

impl<S: SecuritySource> CodeSigning for BoundSigning<S> {
    fn certificate(&self, input: &Input<'_>) -> Result<CertificateInfo, AnalysisError> {
        self.certificate_bound(input, &Binding::Unbound)
    }

    fn certificate_bound(
        &self,
        input: &Input<'_>,
        binding: &Binding,
    ) -> Result<CertificateInfo, AnalysisError> {
        input.check_deadline()?;
        let path = input.file.path.as_str();
        let report = match binding {
            // Nothing to bind to: refuse before asking the framework anything.
            Binding::Unbound => return certificate_facts(path, binding, &empty_report()),
            Binding::AuditToken(token) => self.0.running(token, input.deadline)?,
            Binding::CdHash(_) => self.0.on_disk(path, input.deadline)?,
        };
        certificate_facts(path, binding, &report)
    }
}

fn empty_report() -> SignatureReport {
    SignatureReport {
        unique: None,
        validity: Validity::Unsigned,
        leaf_sha256: None,
        team_id: None,
    }
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
mod signing_tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    fn report(unique: Option<u8>, validity: Validity, leaf: Option<u8>) -> SignatureReport {
        SignatureReport {
            unique: unique.map(|b| CdHash([b; 20])),
            validity,
            leaf_sha256: leaf.map(|b| Sha256([b; 32])),
            team_id: Some("ABCDE12345".into()),
        }
    }

    #[test]
    fn certificate_facts_table() {
        let cd = Binding::CdHash(CdHash([1; 20]));
        let token = Binding::AuditToken([7; 8]);
        // (case, binding, report, Ok(valid) or Err(text in the message))
        let cases: Vec<(&str, Binding, SignatureReport, Result<bool, &str>)> = vec![
            (
                "cdhash matches, valid",
                cd,
                report(Some(1), Validity::Valid, Some(9)),
                Ok(true),
            ),
            (
                "cdhash matches, requirement unmet",
                cd,
                report(Some(1), Validity::Invalid(-67050), Some(9)),
                Ok(false),
            ),
            (
                "file replaced since the exec",
                cd,
                report(Some(2), Validity::Valid, Some(9)),
                Err("is not the image the kernel checked"),
            ),
            (
                "no CDHash reported",
                cd,
                report(None, Validity::Valid, Some(9)),
                Err("CDHash none"),
            ),
            (
                "unbound",
                Binding::Unbound,
                report(Some(1), Validity::Valid, Some(9)),
                Err("no kernel identity"),
            ),
            (
                "audit token, valid",
                token,
                report(None, Validity::Valid, Some(9)),
                Ok(true),
            ),
            (
                "audit token, invalid",
                token,
                report(None, Validity::Invalid(-67061), Some(9)),
                Ok(false),
            ),
            (
                "unsigned",
                cd,
                report(Some(1), Validity::Unsigned, None),
                Err("is not signed"),
            ),
            (
                "ad hoc",
                cd,
                report(Some(1), Validity::Valid, None),
                Err("ad-hoc"),
            ),
        ];
        for (name, binding, r, want) in cases {
            match (certificate_facts("/Applications/A", &binding, &r), want) {
                (Ok(info), Ok(valid)) => {
                    assert_eq!(info.valid, valid, "{name}");
                    assert_eq!(info.leaf_sha256, Sha256([9; 32]), "{name}");
                    assert_eq!(info.team_id.as_deref(), Some("ABCDE12345"), "{name}");
                }
                (Err(e), Err(text)) => {
                    assert_eq!(e.kind(), HelperErrorKind::BadRequest, "{name}");
                    assert!(e.to_string().contains(text), "{name}: {e}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// A scripted Security framework that counts its calls.
    #[derive(Debug, Default)]
    struct Scripted {
        running: AtomicU32,
        on_disk: AtomicU32,
    }

    impl SecuritySource for Scripted {
        fn running(&self, _: &[u32; 8], _: Instant) -> Result<SignatureReport, AnalysisError> {
            self.running.fetch_add(1, Ordering::Relaxed);
            Ok(report(None, Validity::Valid, Some(9)))
        }
        fn on_disk(&self, _: &str, _: Instant) -> Result<SignatureReport, AnalysisError> {
            self.on_disk.fetch_add(1, Ordering::Relaxed);
            Ok(report(Some(1), Validity::Valid, Some(9)))
        }
    }

    #[test]
    fn bound_signing_asks_the_source_the_binding_names() {
        let s = BoundSigning(Scripted::default());
        let file = FileRef::new("/Applications/A");
        let input = Input {
            file: &file,
            fd: None,
            deadline: Instant::now() + Duration::from_secs(10),
        };
        assert!(s.certificate(&input).is_err(), "unbound is never trusted");
        assert_eq!(s.0.on_disk.load(Ordering::Relaxed), 0);
        let ok = s.certificate_bound(&input, &Binding::CdHash(CdHash([1; 20])));
        assert!(ok.unwrap().valid);
        assert_eq!(s.0.on_disk.load(Ordering::Relaxed), 1);
        let bad = s.certificate_bound(&input, &Binding::CdHash(CdHash([3; 20])));
        assert!(bad.is_err());
        assert!(
            s.certificate_bound(&input, &Binding::AuditToken([1; 8]))
                .unwrap()
                .valid
        );
        assert_eq!(s.0.running.load(Ordering::Relaxed), 1);
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
