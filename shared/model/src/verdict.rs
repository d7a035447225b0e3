//! Verdicts, the reasons behind them, and the fast path's outcome: decided now, or a typed
//! request for the data (hash, certificate, package trust, volume) that the helper must supply.

use serde::{Deserialize, Serialize};

use crate::digest::{CdHash, Sha256};
use crate::event::{AuditToken, FileRef, MountFlags, MountInfo};

/// The answer the kernel gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
}

/// Whether, and at what level, an answer may be remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cacheability {
    /// Depends on more than the file (the caller, the mode's would-deny record, a fallback):
    /// never cached.
    Never,
    /// Depends only on the subject file's identity: the in-process verdict cache may keep it.
    Identity,
    /// Depends only on the file, and the kernel may cache it too (ES `cache = true`, fanotify
    /// ignore mark). Only allows are ever kernel-cached.
    Kernel,
}

/// Which policy rule decided, for logs, `policy eval` and `status`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuleRef {
    /// A stable name: the rule's `name` in the policy, or a generated `kind:identifier`.
    pub name: String,
}

impl RuleRef {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

/// Why a fallback verdict was given instead of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackReason {
    /// The slow-path queue was full at hand-off.
    QueueFull,
    /// The helper is not connected.
    HelperUnavailable,
    /// The slow path did not answer before `deadline - headroom` (watchdog).
    Deadline,
    /// The helper answered with an error or something unusable.
    HelperError,
    /// The process is shutting down with the event still pending.
    Shutdown,
    /// The responder was dropped without an answer (a bug caught by the drop guard).
    Dropped,
}

impl FallbackReason {
    pub const ALL: [FallbackReason; 6] = [
        FallbackReason::QueueFull,
        FallbackReason::HelperUnavailable,
        FallbackReason::Deadline,
        FallbackReason::HelperError,
        FallbackReason::Shutdown,
        FallbackReason::Dropped,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            FallbackReason::QueueFull => "queue_full",
            FallbackReason::HelperUnavailable => "helper_unavailable",
            FallbackReason::Deadline => "deadline",
            FallbackReason::HelperError => "helper_error",
            FallbackReason::Shutdown => "shutdown",
            FallbackReason::Dropped => "dropped",
        }
    }
}

/// Why a verdict was reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// A policy rule matched.
    Rule { rule: RuleRef },
    /// No rule matched; the mode's default applied.
    Default,
    /// A platform binary with no matching rule.
    PlatformBinary,
    /// Bad-signature protection.
    InvalidSignature,
    /// The event came from Gatehouse itself, the helper, or a muted path.
    Muted,
    /// A cached verdict for the same identity.
    Cached,
    /// The policy's explicit fallback.
    Fallback { why: FallbackReason },
    /// A file the slow path itself depends on (Gatehouse's own binaries and the ELF interpreter
    /// they name), matched against the identity pinned when the extension started: allowed on
    /// the fast path so that restarting the helper never waits for the helper. Last, so the
    /// variant indices before it stay as they were.
    SlowPathDependency,
    /// No rule named the file and it is not a native binary (a script): allowed by scope, as
    /// Santa allows anything that is not a Mach-O; its interpreter's exec is decided.
    NotABinary,
}

/// A verdict with its reason and how it may be cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    pub cacheable: Cacheability,
    /// Monitor mode allowed something enforce mode would deny: record it in the events log.
    #[serde(default)]
    pub would_deny: bool,
    /// A watch item in audit-only mode turned a deny into a logged allow.
    #[serde(default)]
    pub audit_only: bool,
    /// A denied mount or remount that the helper then performs itself with these flags added to
    /// the volume's own (a `remount` rule, as Santa's device manager does): the volume comes up,
    /// but only read-only or noexec, say. `None` for every other decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remount: Option<MountFlags>,
}

impl Decision {
    pub fn allow(reason: Reason, cacheable: Cacheability) -> Self {
        Self {
            verdict: Verdict::Allow,
            reason,
            cacheable,
            would_deny: false,
            audit_only: false,
            remount: None,
        }
    }

    pub fn deny(reason: Reason, cacheable: Cacheability) -> Self {
        Self {
            verdict: Verdict::Deny,
            reason,
            cacheable,
            would_deny: false,
            audit_only: false,
            remount: None,
        }
    }

    /// A fallback is never cached (architecture invariant `fallback-not-cached`).
    pub fn fallback(verdict: Verdict, why: FallbackReason) -> Self {
        Self {
            verdict,
            reason: Reason::Fallback { why },
            cacheable: Cacheability::Never,
            would_deny: false,
            audit_only: false,
            remount: None,
        }
    }

    /// Whether the events log must record this decision: denies, fallbacks, monitor-mode
    /// would-denies and audit-only matches.
    pub fn is_notable(&self) -> bool {
        self.verdict == Verdict::Deny
            || self.would_deny
            || self.audit_only
            || matches!(self.reason, Reason::Fallback { .. })
    }
}

/// Which facts the helper must supply. A set, because one rule set can need several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Needs {
    /// SHA-256 of the subject file's contents.
    #[serde(default)]
    pub sha256: bool,
    /// Leaf certificate SHA-256 (macOS; the message has none).
    #[serde(default)]
    pub certificate: bool,
    /// Is the file owned by an installed package with a matching digest (Linux).
    #[serde(default)]
    pub package: bool,
    /// Bus, removability, encryption and UUID of a volume being mounted.
    #[serde(default)]
    pub volume: bool,
    /// What kind of executable the subject file is (binary or script), from its first bytes.
    #[serde(default)]
    pub file_kind: bool,
}

impl Needs {
    pub fn is_empty(&self) -> bool {
        !(self.sha256 || self.certificate || self.package || self.volume || self.file_kind)
    }

    /// Needs in `self` that `facts` does not answer yet.
    pub fn missing_from(&self, facts: &Facts) -> Needs {
        Needs {
            sha256: self.sha256 && facts.sha256.is_none(),
            certificate: self.certificate && facts.certificate.is_none(),
            package: self.package && facts.package.is_none(),
            volume: self.volume && facts.volume.is_none(),
            file_kind: self.file_kind && facts.file_kind.is_none(),
        }
    }
}

/// The fast path could not decide: ask the helper for `needs` about `file` (or `mount`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnalysisRequest {
    pub needs: Needs,
    #[serde(default)]
    pub file: Option<FileRef>,
    #[serde(default)]
    pub mount: Option<MountInfo>,
    /// What ties a certificate the helper reads to the code the kernel checked (invariant
    /// `identity-from-kernel`): the exec target's enforced CDHash, or the acting process's
    /// audit token. A certificate request without one is refused by the helper.
    #[serde(default)]
    pub binding: Option<SigningBinding>,
}

/// The kernel's identity for the code a certificate request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SigningBinding {
    /// An exec target: the CDHash the kernel enforces for the image (`CS_VALID` and `CS_HARD`
    /// or `CS_KILL`); the helper trusts the file's signature only when its `kSecCodeInfoUnique`
    /// is this.
    CdHash(CdHash),
    /// A running process: the helper asks the Security framework for the code behind this
    /// token (`SecCodeCopyGuestWithAttributes`), so the kernel names the code.
    AuditToken(AuditToken),
}

/// The fast path's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Decided(Decision),
    Analyze(AnalysisRequest),
}

/// The leaf certificate of a valid signature (macOS helper, Security framework).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateInfo {
    pub leaf_sha256: Sha256,
    #[serde(default)]
    pub team_id: Option<String>,
    /// The signature satisfied the designated requirement when checked.
    pub valid: bool,
}

/// Debian (or other) package ownership of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageTrust {
    /// The owning package, if any.
    #[serde(default)]
    pub package: Option<String>,
    /// Owned by a package and the contents match the package's recorded digest.
    pub trusted: bool,
}

/// The bus a volume is attached through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeBus {
    Usb,
    Thunderbolt,
    Sd,
    Sata,
    Nvme,
    Virtual,
    Network,
    Other,
}

/// Volume metadata the message lacks (DiskArbitration on macOS, sysfs/udev on Linux).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub removable: bool,
    pub bus: VolumeBus,
    #[serde(default)]
    pub encrypted: bool,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub fs_type: Option<String>,
}

/// Facts the helper supplied (or a cache remembered) about an event's subject. The policy
/// re-runs with these to turn an `Analyze` into a decision.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Facts {
    #[serde(default)]
    pub sha256: Option<Sha256>,
    #[serde(default)]
    pub certificate: Option<CertificateInfo>,
    #[serde(default)]
    pub package: Option<PackageTrust>,
    #[serde(default)]
    pub volume: Option<VolumeInfo>,
    #[serde(default)]
    pub file_kind: Option<FileKind>,
}

impl Facts {
    pub const NONE: Facts = Facts {
        sha256: None,
        certificate: None,
        package: None,
        volume: None,
        file_kind: None,
    };
}

/// What kind of executable a file is, by its first bytes. Santa decides only Mach-O files and
/// lets everything else through by scope ("Not a Mach-O"); on Linux the kernel asks about a
/// script itself before its interpreter, so the same split needs ELF too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A Mach-O image, thin or universal.
    MachO,
    /// An ELF image.
    Elf,
    /// `#!`: run by the interpreter it names, which is itself an exec that is decided.
    Script,
    /// Anything else the kernel was asked to run (binfmt_misc formats, say).
    Other,
}

impl FileKind {
    /// Bytes [`FileKind::of`] reads.
    pub const PREFIX: usize = 4;

    /// A native binary, which identifier and default rules are for.
    pub fn is_binary(self) -> bool {
        matches!(self, FileKind::MachO | FileKind::Elf)
    }

    /// The kind of a file whose first bytes are `prefix` (fewer than four: what there is).
    /// Mach-O magics in either byte order, 32 and 64 bit, and the universal (fat) magics, as
    /// Santa's `SNTFileInfo` `machHeaders` accepts them.
    pub fn of(prefix: &[u8]) -> FileKind {
        const MACHO: [[u8; 4]; 8] = [
            [0xfe, 0xed, 0xfa, 0xce],
            [0xce, 0xfa, 0xed, 0xfe],
            [0xfe, 0xed, 0xfa, 0xcf],
            [0xcf, 0xfa, 0xed, 0xfe],
            [0xca, 0xfe, 0xba, 0xbe],
            [0xbe, 0xba, 0xfe, 0xca],
            [0xca, 0xfe, 0xba, 0xbf],
            [0xbf, 0xba, 0xfe, 0xca],
        ];
        match prefix {
            [b'#', b'!', ..] => FileKind::Script,
            [0x7f, b'E', b'L', b'F', ..] => FileKind::Elf,
            [a, b, c, d, ..] if MACHO.contains(&[*a, *b, *c, *d]) => FileKind::MachO,
            _ => FileKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Santa's `SNTFileInfo` (`isMachO`: a thin or universal Mach-O header in either byte
    /// order; `isScript`: `#!`), plus ELF for Linux.
    #[test]
    fn file_kind_table() {
        let cases: [(&[u8], FileKind); 12] = [
            (b"#!/bin/sh\n", FileKind::Script),
            (b"#!", FileKind::Script),
            (b"\x7fELF\x02\x01", FileKind::Elf),
            (&[0xcf, 0xfa, 0xed, 0xfe, 7, 0, 0, 1], FileKind::MachO),
            (&[0xfe, 0xed, 0xfa, 0xce], FileKind::MachO),
            (&[0xce, 0xfa, 0xed, 0xfe], FileKind::MachO),
            (&[0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 2], FileKind::MachO),
            (&[0xbf, 0xba, 0xfe, 0xca], FileKind::MachO),
            (b"\x7fEL", FileKind::Other),
            (b"# !not", FileKind::Other),
            (b"MZ\x90\x00", FileKind::Other),
            (b"", FileKind::Other),
        ];
        for (bytes, want) in cases {
            assert_eq!(FileKind::of(bytes), want, "{bytes:?}");
        }
        assert!(FileKind::MachO.is_binary() && FileKind::Elf.is_binary());
        assert!(!FileKind::Script.is_binary() && !FileKind::Other.is_binary());
    }

    #[test]
    fn notable_table() {
        let rule = Reason::Rule {
            rule: RuleRef::new("r"),
        };
        let mut would = Decision::allow(rule.clone(), Cacheability::Never);
        would.would_deny = true;
        let cases = [
            (Decision::allow(rule.clone(), Cacheability::Kernel), false),
            (Decision::deny(rule.clone(), Cacheability::Identity), true),
            (
                Decision::fallback(Verdict::Allow, FallbackReason::Deadline),
                true,
            ),
            (would, true),
        ];
        for (d, want) in cases {
            assert_eq!(d.is_notable(), want, "{d:?}");
        }
    }

    #[test]
    fn fallback_is_never_cached() {
        for why in FallbackReason::ALL {
            for v in [Verdict::Allow, Verdict::Deny] {
                assert_eq!(Decision::fallback(v, why).cacheable, Cacheability::Never);
            }
        }
    }

    #[test]
    fn needs_missing_from_table() {
        let all = Needs {
            sha256: true,
            certificate: true,
            package: true,
            volume: true,
            file_kind: true,
        };
        let facts = Facts {
            sha256: Some(Sha256([0; 32])),
            file_kind: Some(FileKind::Script),
            ..Facts::NONE
        };
        let missing = all.missing_from(&facts);
        assert!(!missing.sha256 && missing.certificate && missing.package && missing.volume);
        assert!(!missing.file_kind);
        assert!(Needs::default().missing_from(&facts).is_empty());
    }
}
