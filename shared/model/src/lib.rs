//! Gatehouse's platform-neutral, owned event model: what the kernel told us, converted once at
//! the edge (from an `es_message_t` or a fanotify record) into plain data.
//!
//! Nothing here does I/O, and nothing here knows which OS produced an event. The policy engine
//! decides on these types, the wire protocol carries them, and the CLI reads and prints them as
//! JSON (`gatehouse policy eval --event EVENT.json`).
//!
//! Identity fields come from the kernel's message only (architecture invariant
//! `identity-from-kernel`): a backend fills [`CodeSigning`] from `es_process_t` and
//! [`FileIdentity`] from `fstat` on the event's own fd, never by re-opening a path.
#![forbid(unsafe_code)]

mod digest;
mod event;
mod mute;
mod verdict;

pub use digest::{CdHash, DigestError, Sha256};
pub use event::{
    AccessFlags, AuditToken, CodeSigning, Event, EventBody, EventKind, FileIdentity, FileRef,
    MountDisposition, MountFlags, MountInfo, Process, SigningStatus, TargetPaths, cs_flags,
};
pub use mute::{MuteScope, MuteSpec};
pub use verdict::{
    AnalysisRequest, Cacheability, CertificateInfo, Decision, Facts, FallbackReason, FileKind,
    Needs, Outcome, PackageTrust, Reason, RuleRef, SigningBinding, Verdict, VolumeBus, VolumeInfo,
};
