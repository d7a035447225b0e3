//! Platform-neutral conversions the macOS Endpoint Security backend relies on: the deadline
//! budget with Santa's headroom rule, mach absolute time, code-signing flags, `statfs` mount
//! fields, AUTH_OPEN access flags, the answer encoding and the ES result codes.
//!
//! Everything here is pure arithmetic on plain numbers, compiled and unit-tested on every OS. Constants are copied from
//! the macOS SDK headers named next to each one; the tables in the tests pin them.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use model::{
    AccessFlags, CdHash, CodeSigning, EventKind, FileIdentity, MountDisposition, MountFlags,
    MountInfo, MuteScope, MuteSpec, SigningStatus, Verdict, cs_flags,
};

use crate::backend::Answer;

// ---------------------------------------------------------------------------------------------
// Deadline budget
// ---------------------------------------------------------------------------------------------

/// How much of an event's remaining time is kept back as headroom: 20 % of the time left,
/// clamped to `[min, max]` (Santa's rule, docs/DESIGN.md 6). The slow path may use the rest; when it
/// runs out the watchdog answers the policy's fallback, so the headroom is what is left for that
/// answer to reach the kernel even on a loaded machine.
///
/// The rule itself lives in one place, the core's watchdog
/// (`crate::core::watchdog::{headroom, slow_path_budget}`); this type and the functions below
/// name the Endpoint Security figures and give the backend an `Instant`-based entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadroomClamp {
    /// Least headroom (Santa: 1 s).
    pub min: Duration,
    /// Most headroom (Santa: 5 s).
    pub max: Duration,
}

impl HeadroomClamp {
    /// Santa's figures for Endpoint Security: at least 1 s, at most 5 s.
    pub const DEFAULT: HeadroomClamp = HeadroomClamp {
        min: Duration::from_secs(1),
        max: Duration::from_secs(5),
    };
}

impl Default for HeadroomClamp {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The headroom kept back from `time_left`: 20 % of it, clamped to `[min, max]`. A clamp with
/// `min > max` keeps `min` (more headroom is the safe side), never a panic.
pub fn headroom(time_left: Duration, clamp: &HeadroomClamp) -> Duration {
    crate::core::watchdog::headroom(time_left, clamp.min, clamp.max)
}

/// The time the slow path may use for an event: the time left before `deadline`, minus the
/// [`headroom`]. Zero when the deadline has passed or the time left is all headroom; the caller
/// then answers at once (the fast path's verdict if it has one, else the policy's fallback).
///
/// The core's watchdog arms its timer at `now + budget(now, deadline, clamp)`, and the macOS
/// backend uses the same value as the XPC request timeout and the `budget_us` of the helper
/// request, so a reply can never be awaited past the watchdog.
///
/// With [`HeadroomClamp::DEFAULT`]: 45 s left gives 40 s, 15 s gives 12 s, 3.5 s gives 2.5 s.
pub fn budget(now: Instant, deadline: Instant, clamp: &HeadroomClamp) -> Duration {
    budget_for_time_left(deadline.saturating_duration_since(now), clamp)
}

/// [`budget`] for a time left already measured (for example from mach ticks).
pub fn budget_for_time_left(time_left: Duration, clamp: &HeadroomClamp) -> Duration {
    crate::core::watchdog::slow_path_budget(time_left, clamp.min, clamp.max)
}

// ---------------------------------------------------------------------------------------------
// Mach absolute time
// ---------------------------------------------------------------------------------------------

/// `mach_timebase_info`: nanoseconds = ticks * numer / denom (1/1 on Intel, 125/3 on Apple
/// silicon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timebase {
    numer: u32,
    denom: u32,
}

impl Timebase {
    /// `None` when either part is zero (the kernel call failed): a zero denominator would divide
    /// by zero and a zero numerator would make every deadline "now".
    pub fn new(numer: u32, denom: u32) -> Option<Self> {
        (numer != 0 && denom != 0).then_some(Self { numer, denom })
    }

    pub fn numer(&self) -> u32 {
        self.numer
    }

    pub fn denom(&self) -> u32 {
        self.denom
    }

    /// Ticks to nanoseconds, saturating at `u64::MAX` (about 584 years). The product is taken in
    /// u128, so unlike the naive `ticks * numer / denom` it cannot overflow.
    pub fn ticks_to_nanos(&self, ticks: u64) -> u64 {
        let n = u128::from(ticks) * u128::from(self.numer) / u128::from(self.denom);
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// Nanoseconds to ticks (rounded down), saturating at `u64::MAX`.
    pub fn nanos_to_ticks(&self, nanos: u64) -> u64 {
        let t = u128::from(nanos) * u128::from(self.denom) / u128::from(self.numer);
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    /// The time from `now_ticks` until `deadline_ticks`; zero if the deadline has passed.
    pub fn time_left(&self, now_ticks: u64, deadline_ticks: u64) -> Duration {
        Duration::from_nanos(self.ticks_to_nanos(deadline_ticks.saturating_sub(now_ticks)))
    }
}

/// An ES message's deadline as an [`Instant`]: `now` plus the time left in mach ticks. Both
/// clocks are read by the caller as close together as it can; the error is that gap.
pub fn deadline_instant(
    now: Instant,
    now_ticks: u64,
    deadline_ticks: u64,
    timebase: &Timebase,
) -> Instant {
    let left = timebase.time_left(now_ticks, deadline_ticks);
    // An absurd deadline (centuries away) cannot overflow Instant; cap it instead.
    now.checked_add(left)
        .unwrap_or_else(|| now + Duration::from_secs(24 * 3600))
}

// ---------------------------------------------------------------------------------------------
// Code signing
// ---------------------------------------------------------------------------------------------

/// Code-signing bits beyond the ones `model::cs_flags` names (`<kern/cs_blobs.h>`).
pub mod more_cs_flags {
    /// Linker-signed: an ad-hoc signature the linker wrote.
    pub const CS_LINKER_SIGNED: u32 = 0x0002_0000;
    /// The process has a code signature at all.
    pub const CS_SIGNED: u32 = 0x2000_0000;
    /// Signed with a development certificate ("dev code"): may not load into production code.
    pub const CS_DEV_CODE: u32 = 0x4000_0000;
}

/// What `es_process_t` says about a process image's signature, as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawSigning<'a> {
    pub codesigning_flags: u32,
    pub is_platform_binary: bool,
    /// `team_id`; ES gives an empty string when there is none.
    pub team_id: &'a str,
    /// `signing_id`; ES gives an empty string when there is none.
    pub signing_id: &'a str,
    /// `cdhash`; all zeros when there is none.
    pub cdhash: [u8; 20],
}

/// Classify a signature from the kernel's flags, in this order:
/// 1. no `CS_SIGNED` and no `CS_VALID`: unsigned (no signature to be bad);
/// 2. signed but not `CS_VALID`: invalid (bad-signature protection applies);
/// 3. `CS_ADHOC` or `CS_LINKER_SIGNED`: ad hoc, even for a platform binary (no certificate);
/// 4. a platform binary: production (Apple-signed);
/// 5. `CS_DEV_CODE`: development;
/// 6. a team id: production (Developer ID or App Store);
/// 7. otherwise (a certificate without a team id, e.g. self-signed): development, so that
///    CDHash, SHA-256 and certificate rules still apply but signing-id and team-id rules do not.
///
/// The certificate itself is not in the message; the helper refines it when a rule needs it.
pub fn signing_status(raw: &RawSigning<'_>) -> SigningStatus {
    use cs_flags::{CS_ADHOC, CS_VALID};
    use more_cs_flags::{CS_DEV_CODE, CS_LINKER_SIGNED, CS_SIGNED};
    let f = raw.codesigning_flags;
    if f & (CS_SIGNED | CS_VALID) == 0 {
        SigningStatus::Unsigned
    } else if f & CS_VALID == 0 {
        SigningStatus::Invalid
    } else if f & (CS_ADHOC | CS_LINKER_SIGNED) != 0 {
        SigningStatus::AdHoc
    } else if raw.is_platform_binary || f & cs_flags::CS_PLATFORM_BINARY != 0 {
        SigningStatus::Production
    } else if f & CS_DEV_CODE != 0 {
        SigningStatus::Development
    } else if !raw.team_id.is_empty() {
        SigningStatus::Production
    } else {
        SigningStatus::Development
    }
}

/// The model's [`CodeSigning`] for a process image: status, ids (empty strings become `None`),
/// the CDHash (all zeros becomes `None`) and the raw flags, kept so the policy can ask whether
/// the kernel enforces the CDHash.
pub fn code_signing(raw: &RawSigning<'_>) -> CodeSigning {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    CodeSigning {
        status: signing_status(raw),
        team_id: non_empty(raw.team_id),
        signing_id: non_empty(raw.signing_id),
        cdhash: (raw.cdhash != [0u8; 20]).then_some(CdHash(raw.cdhash)),
        flags: raw.codesigning_flags,
        is_platform_binary: raw.is_platform_binary,
    }
}

// ---------------------------------------------------------------------------------------------
// Files and paths
// ---------------------------------------------------------------------------------------------

/// The `stat` fields of an `es_file_t` that identify a file's contents, as plain numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawStat {
    pub dev: i64,
    pub ino: u64,
    pub size: i64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
    pub ctime_sec: i64,
    pub ctime_nsec: i64,
}

/// The model's [`FileIdentity`] from the kernel's own `stat` in the message (never a re-`stat`
/// of the path). Negative sizes and devices (never seen) are kept as their bit patterns.
pub fn file_identity(st: &RawStat) -> FileIdentity {
    let ns = |sec: i64, nsec: i64| sec.saturating_mul(1_000_000_000).saturating_add(nsec);
    FileIdentity {
        dev: st.dev as u64,
        ino: st.ino,
        size: st.size.max(0) as u64,
        mtime_ns: ns(st.mtime_sec, st.mtime_nsec),
        ctime_ns: ns(st.ctime_sec, st.ctime_nsec),
    }
}

/// `directory` + `/` + `name`, for destinations ES reports as (directory, file name).
pub fn join_path(directory: &str, name: &str) -> String {
    if directory.ends_with('/') {
        format!("{directory}{name}")
    } else {
        format!("{directory}/{name}")
    }
}

/// `kern.osproductversion` ("14.5", "13.6.1") as (major, minor, patch); `None` if unparseable,
/// in which case the backend refuses to start rather than guess which ES features exist.
pub fn parse_os_version(text: &str) -> Option<(u64, u64, u64)> {
    let mut parts = text.trim().trim_end_matches('\0').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

// ---------------------------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------------------------

/// `f_flags` bits of `struct statfs` (`<sys/mount.h>`, macOS values).
pub mod mnt {
    pub const MNT_RDONLY: u32 = 0x0000_0001;
    pub const MNT_NOEXEC: u32 = 0x0000_0004;
    pub const MNT_NOSUID: u32 = 0x0000_0008;
    pub const MNT_NODEV: u32 = 0x0000_0010;
}

/// `f_flags` to the model's mount flags (only the four the policy reads).
pub fn mount_flags(f_flags: u32) -> MountFlags {
    MountFlags {
        read_only: f_flags & mnt::MNT_RDONLY != 0,
        noexec: f_flags & mnt::MNT_NOEXEC != 0,
        nosuid: f_flags & mnt::MNT_NOSUID != 0,
        nodev: f_flags & mnt::MNT_NODEV != 0,
    }
}

/// The model's mount flags back to `MNT_*` bits, for the helper's remount with added flags.
pub fn mnt_bits(flags: &MountFlags) -> u32 {
    let mut bits = 0;
    for (on, bit) in [
        (flags.read_only, mnt::MNT_RDONLY),
        (flags.noexec, mnt::MNT_NOEXEC),
        (flags.nosuid, mnt::MNT_NOSUID),
        (flags.nodev, mnt::MNT_NODEV),
    ] {
        if on {
            bits |= bit;
        }
    }
    bits
}

/// `es_mount_disposition_t` (message version 8, macOS 15) to the model. `None` (an older
/// message, which has no such field) and numbers we do not know are `Unknown`, so the policy
/// treats the volume as "could be external" and asks the helper.
pub fn mount_disposition(raw: Option<u32>) -> MountDisposition {
    match raw {
        Some(0) => MountDisposition::External,
        Some(1) => MountDisposition::Internal,
        Some(2) => MountDisposition::Network,
        Some(3) => MountDisposition::Virtual,
        Some(4) => MountDisposition::Nullfs,
        _ => MountDisposition::Unknown,
    }
}

/// The first message version whose mount events carry a disposition.
pub const MOUNT_DISPOSITION_MIN_VERSION: u32 = 8;

/// A fixed-size, NUL-terminated C string field (`f_mntfromname` and friends) as a `String`:
/// cut at the first NUL (or the end, if the kernel filled it), non-UTF-8 converted lossily.
pub fn c_field(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The `statfs` fields a mount decision reads, as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawStatfs<'a> {
    pub mntfromname: &'a [u8],
    pub mntonname: &'a [u8],
    pub fstypename: &'a [u8],
    pub f_flags: u32,
}

/// An AUTH_MOUNT / AUTH_REMOUNT `statfs` (plus the disposition when the message version has
/// one) as the model's [`MountInfo`].
pub fn mount_info(
    raw: &RawStatfs<'_>,
    message_version: u32,
    disposition: Option<u32>,
) -> MountInfo {
    let disposition = disposition.filter(|_| message_version >= MOUNT_DISPOSITION_MIN_VERSION);
    MountInfo {
        source: c_field(raw.mntfromname),
        mount_point: c_field(raw.mntonname),
        fs_type: c_field(raw.fstypename),
        flags: mount_flags(raw.f_flags),
        disposition: mount_disposition(disposition),
        os_flags: raw.f_flags,
    }
}

// ---------------------------------------------------------------------------------------------
// AUTH_OPEN flags
// ---------------------------------------------------------------------------------------------

/// Kernel file flags as AUTH_OPEN's `fflag` reports them (`<sys/fcntl.h>`, macOS values).
pub mod fflag {
    pub const FREAD: i32 = 0x0000_0001;
    pub const FWRITE: i32 = 0x0000_0002;
    /// `O_APPEND` (`FAPPEND`).
    pub const O_APPEND: i32 = 0x0000_0008;
    /// `O_TRUNC`.
    pub const O_TRUNC: i32 = 0x0000_0400;
}

/// AUTH_OPEN `fflag` to the model's access flags.
pub fn access_flags(fflag: i32) -> AccessFlags {
    AccessFlags {
        read: fflag & fflag::FREAD != 0,
        write: fflag & fflag::FWRITE != 0,
        append: fflag & fflag::O_APPEND != 0,
        truncate: fflag & fflag::O_TRUNC != 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

/// `es_auth_result_t`.
pub const ES_AUTH_RESULT_ALLOW: u32 = 0;
/// `es_auth_result_t`.
pub const ES_AUTH_RESULT_DENY: u32 = 1;

/// Flags for an allowed AUTH_OPEN: every bit. Allowing only the requested ones would let a
/// cached answer deny a later open of the same file that asks for other flags (docs/DESIGN.md 6).
pub const OPEN_ALLOW_ALL_FLAGS: u32 = 0xffff_ffff;

/// Which `es_respond_*` call answers an event, with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EsResponse {
    /// `es_respond_auth_result(client, msg, result, cache)`.
    Auth { result: u32, cache: bool },
    /// `es_respond_flags_result(client, msg, authorized_flags, cache)` (AUTH_OPEN only).
    Flags { authorized_flags: u32, cache: bool },
}

/// How to answer an event of `kind`. The kernel cache is asked for only on an allow marked
/// cacheable: the backend contract never kernel-caches a deny, so a `cache` on a deny (a bug
/// upstream) is dropped here rather than pinned in the kernel.
pub fn es_response(kind: EventKind, answer: Answer) -> EsResponse {
    let allow = answer.verdict == Verdict::Allow;
    let cache = answer.cache && allow;
    match kind {
        EventKind::Open => EsResponse::Flags {
            authorized_flags: if allow { OPEN_ALLOW_ALL_FLAGS } else { 0 },
            cache,
        },
        _ => EsResponse::Auth {
            result: if allow {
                ES_AUTH_RESULT_ALLOW
            } else {
                ES_AUTH_RESULT_DENY
            },
            cache,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Muting
// ---------------------------------------------------------------------------------------------

/// `es_mute_path_type_t` (the target kinds need macOS 13).
pub mod mute_path_type {
    pub const PREFIX: u32 = 0;
    pub const LITERAL: u32 = 1;
    pub const TARGET_PREFIX: u32 = 2;
    pub const TARGET_LITERAL: u32 = 3;
}

/// The `es_mute_path_type_t` for a mute spec.
pub fn mute_path_type(spec: &MuteSpec) -> u32 {
    match (spec.scope, spec.prefix) {
        (MuteScope::Process, true) => mute_path_type::PREFIX,
        (MuteScope::Process, false) => mute_path_type::LITERAL,
        (MuteScope::Target, true) => mute_path_type::TARGET_PREFIX,
        (MuteScope::Target, false) => mute_path_type::TARGET_LITERAL,
    }
}

/// The firmlinked roots ES reports resolved: `/tmp`, `/var` and `/etc` are symlinks into
/// `/private`, and ES names files by their real path.
const PRIVATE_ROOTS: [&str; 3] = ["/tmp", "/var", "/etc"];

/// The path forms ES may report for a path a policy names: the path itself and, under one of
/// the [`PRIVATE_ROOTS`], its `/private` form (and for a `/private/...` path, the short form),
/// so a watched `/etc/sudoers` also selects `/private/etc/sudoers`.
pub fn es_path_forms(path: &str) -> Vec<String> {
    let under = |p: &str, root: &str| {
        p.strip_prefix(root)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    let mut forms = vec![path.to_owned()];
    if let Some(short) = path.strip_prefix("/private") {
        if PRIVATE_ROOTS.iter().any(|r| under(short, r)) {
            forms.push(short.to_owned());
        }
    } else if PRIVATE_ROOTS.iter().any(|r| under(path, r)) {
        forms.push(format!("/private{path}"));
    }
    forms
}

// ---------------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------------

/// The AUTH kinds to subscribe to for `policy`: exec always, the rest only where a rule can act
/// on them (subscribing to every AUTH_OPEN on the machine for nothing costs every open a trip
/// through us).
pub fn subscription_kinds(policy: &policy::Policy) -> Vec<EventKind> {
    EventKind::ALL
        .into_iter()
        .filter(|k| policy.watches_kind(*k))
        .collect()
}

/// The NOTIFY events the recorder client takes under `policy`: close, rename and exit while
/// it can record transitive allows (`Policy::records_transitive`), else none, so a machine
/// without compiler rules pays for no NOTIFY_CLOSE of every process.
pub fn notify_kinds(policy: &policy::Policy) -> Vec<super::api::NotifyKind> {
    if policy.records_transitive() {
        super::api::NotifyKind::ALL.to_vec()
    } else {
        Vec::new()
    }
}

/// What to subscribe to and unsubscribe from to go from `current` to `wanted`.
pub fn subscription_changes<K: PartialEq + Copy>(current: &[K], wanted: &[K]) -> (Vec<K>, Vec<K>) {
    let add = wanted
        .iter()
        .filter(|k| !current.contains(k))
        .copied()
        .collect();
    let remove = current
        .iter()
        .filter(|k| !wanted.contains(k))
        .copied()
        .collect();
    (add, remove)
}

// ---------------------------------------------------------------------------------------------
// ES result codes
// ---------------------------------------------------------------------------------------------

/// `es_new_client` failures, each saying what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NewClientError {
    #[error("es_new_client: invalid argument (a bug in gatehouse-extension; report it)")]
    InvalidArgument,
    #[error(
        "es_new_client: internal Endpoint Security error; check `log show --predicate 'subsystem == \"com.apple.endpointsecurity\"'` and retry"
    )]
    Internal,
    #[error(
        "es_new_client: not entitled; the binary must be signed with the com.apple.developer.endpoint-security.client entitlement and a provisioning profile that grants it"
    )]
    NotEntitled,
    #[error(
        "es_new_client: not permitted; grant Full Disk Access to the Gatehouse extension in System Settings > Privacy & Security"
    )]
    NotPermitted,
    #[error(
        "es_new_client: not privileged; the extension must run as root (as a system extension or launchd daemon)"
    )]
    NotPrivileged,
    #[error(
        "es_new_client: too many Endpoint Security clients are connected; remove another security agent or retry later"
    )]
    TooManyClients,
    #[error("es_new_client: unknown result code {0}")]
    Unknown(u32),
}

/// `es_new_client_result_t` to a result.
pub fn new_client_result(code: u32) -> Result<(), NewClientError> {
    match code {
        0 => Ok(()),
        1 => Err(NewClientError::InvalidArgument),
        2 => Err(NewClientError::Internal),
        3 => Err(NewClientError::NotEntitled),
        4 => Err(NewClientError::NotPermitted),
        5 => Err(NewClientError::NotPrivileged),
        6 => Err(NewClientError::TooManyClients),
        other => Err(NewClientError::Unknown(other)),
    }
}

/// `es_respond_*` failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RespondError {
    #[error("invalid argument (a bug in gatehouse-extension; report it)")]
    InvalidArgument,
    #[error("internal Endpoint Security error")]
    Internal,
    #[error("message not found (already answered, or its deadline passed)")]
    NotFound,
    #[error("duplicate response (the event was already answered)")]
    DuplicateResponse,
    #[error("wrong response type for this event (flags vs auth result)")]
    EventType,
    #[error("unknown result code {0}")]
    Unknown(u32),
}

/// `es_respond_result_t` to a result.
pub fn respond_result(code: u32) -> Result<(), RespondError> {
    match code {
        0 => Ok(()),
        1 => Err(RespondError::InvalidArgument),
        2 => Err(RespondError::Internal),
        3 => Err(RespondError::NotFound),
        4 => Err(RespondError::DuplicateResponse),
        5 => Err(RespondError::EventType),
        other => Err(RespondError::Unknown(other)),
    }
}

/// What `es_clear_cache` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClearCacheOutcome {
    Cleared,
    /// Shared by all clients and rate-limited: the caller retries later.
    Throttled,
    Internal,
    Unknown(u32),
}

/// `es_clear_cache_result_t` to an outcome.
pub fn clear_cache_outcome(code: u32) -> ClearCacheOutcome {
    match code {
        0 => ClearCacheOutcome::Cleared,
        1 => ClearCacheOutcome::Internal,
        2 => ClearCacheOutcome::Throttled,
        other => ClearCacheOutcome::Unknown(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn es_path_forms_table() {
        let cases: [(&str, &[&str]); 7] = [
            ("/etc/sudoers", &["/etc/sudoers", "/private/etc/sudoers"]),
            (
                "/private/etc/sudoers",
                &["/private/etc/sudoers", "/etc/sudoers"],
            ),
            ("/tmp", &["/tmp", "/private/tmp"]),
            ("/var/db/", &["/var/db/", "/private/var/db/"]),
            ("/etcetera", &["/etcetera"]),
            ("/Users/a/.ssh/", &["/Users/a/.ssh/"]),
            ("/private/Users", &["/private/Users"]),
        ];
        for (path, want) in cases {
            assert_eq!(es_path_forms(path), want.to_vec(), "{path}");
        }
    }

    #[test]
    fn budget_table_default_clamp() {
        // (time left, expected budget): 20 % headroom clamped to 1..5 s.
        let cases = [
            (ms(45_000), ms(40_000)), // 9 s share, clamped to 5 s
            (ms(15_000), ms(12_000)), // 3 s share
            (ms(3_500), ms(2_500)),   // 0.7 s share, raised to 1 s
            (ms(60_000), ms(55_000)), // ES's usual 60 s exec deadline
            (ms(25_000), ms(20_000)), // exactly at the max boundary
            (ms(5_000), ms(4_000)),   // exactly at the min boundary
            (ms(10_000), ms(8_000)),
            (ms(1_000), ms(0)), // all headroom: answer now
            (ms(300), ms(0)),   // shorter than the minimum headroom
            (ms(0), ms(0)),
        ];
        for (left, want) in cases {
            assert_eq!(
                budget_for_time_left(left, &HeadroomClamp::DEFAULT),
                want,
                "time left {left:?}"
            );
        }
    }

    #[test]
    fn budget_from_instants() {
        let now = Instant::now();
        let clamp = HeadroomClamp::default();
        let cases = [
            (now + ms(45_000), ms(40_000)),
            (now + ms(15_000), ms(12_000)),
            (now + ms(3_500), ms(2_500)),
            (now, ms(0)),
        ];
        for (deadline, want) in cases {
            assert_eq!(budget(now, deadline, &clamp), want);
        }
        // A deadline already past is no budget, not a panic.
        let later = now + ms(10);
        assert_eq!(budget(later, now, &clamp), Duration::ZERO);
    }

    #[test]
    fn headroom_table_other_clamps() {
        let tight = HeadroomClamp {
            min: ms(100),
            max: ms(500),
        };
        let inverted = HeadroomClamp {
            min: ms(900),
            max: ms(200),
        };
        let none = HeadroomClamp {
            min: Duration::ZERO,
            max: Duration::ZERO,
        };
        let cases = [
            (tight, ms(2_000), ms(400)),
            (tight, ms(300), ms(100)),
            (tight, ms(60_000), ms(500)),
            (inverted, ms(10_000), ms(900)), // the larger bound wins
            (none, ms(7_000), ms(0)),
            (HeadroomClamp::DEFAULT, Duration::MAX, ms(5_000)),
        ];
        for (clamp, left, want) in cases {
            assert_eq!(headroom(left, &clamp), want, "{clamp:?} {left:?}");
        }
        assert_eq!(
            budget_for_time_left(Duration::MAX, &HeadroomClamp::DEFAULT),
            Duration::MAX - ms(5_000)
        );
    }

    #[test]
    fn timebase_table() {
        assert_eq!(Timebase::new(0, 1), None);
        assert_eq!(Timebase::new(1, 0), None);
        let intel = Timebase::new(1, 1).unwrap();
        let apple = Timebase::new(125, 3).unwrap();
        // (timebase, ticks, nanos)
        let cases = [
            (intel, 0, 0),
            (intel, 1_000_000_000, 1_000_000_000),
            (apple, 24_000_000, 1_000_000_000), // 24 MHz counter: one second
            (apple, 3, 125),
            (apple, 1, 41),              // rounded down
            (apple, u64::MAX, u64::MAX), // saturates instead of overflowing
        ];
        for (tb, ticks, nanos) in cases {
            assert_eq!(tb.ticks_to_nanos(ticks), nanos, "{tb:?} {ticks}");
        }
        // (timebase, nanos, ticks)
        let back = [
            (intel, 42, 42),
            (apple, 1_000_000_000, 24_000_000),
            (apple, 125, 3),
            (apple, 124, 2),
            (Timebase::new(1, 1000).unwrap(), u64::MAX, u64::MAX),
        ];
        for (tb, nanos, ticks) in back {
            assert_eq!(tb.nanos_to_ticks(nanos), ticks, "{tb:?} {nanos}");
        }
    }

    #[test]
    fn time_left_and_deadline_instant() {
        let apple = Timebase::new(125, 3).unwrap();
        // (now ticks, deadline ticks, time left)
        let cases = [
            (1_000, 1_000 + 24_000_000 * 60, Duration::from_secs(60)),
            (5_000, 5_000, Duration::ZERO),
            (9_000, 1_000, Duration::ZERO), // already past
        ];
        for (now_t, dl_t, want) in cases {
            assert_eq!(apple.time_left(now_t, dl_t), want);
            let now = Instant::now();
            assert_eq!(deadline_instant(now, now_t, dl_t, &apple) - now, want);
        }
        let now = Instant::now();
        let far = deadline_instant(now, 0, u64::MAX, &apple);
        assert!(far > now);
    }

    #[test]
    fn signing_status_table() {
        use cs_flags::*;
        use more_cs_flags::*;
        let signed_valid = CS_SIGNED | CS_VALID;
        // (flags, platform, team id, expected)
        let cases = [
            (0, false, "", SigningStatus::Unsigned),
            (CS_HARD | CS_KILL, false, "", SigningStatus::Unsigned),
            (CS_SIGNED, false, "ABCDE12345", SigningStatus::Invalid),
            (CS_SIGNED | CS_ADHOC, false, "", SigningStatus::Invalid),
            (signed_valid | CS_ADHOC, false, "", SigningStatus::AdHoc),
            (
                signed_valid | CS_LINKER_SIGNED,
                false,
                "",
                SigningStatus::AdHoc,
            ),
            (signed_valid | CS_ADHOC, true, "", SigningStatus::AdHoc),
            (signed_valid, true, "", SigningStatus::Production),
            (
                signed_valid | CS_PLATFORM_BINARY,
                false,
                "",
                SigningStatus::Production,
            ),
            (
                signed_valid | CS_DEV_CODE,
                false,
                "ABCDE12345",
                SigningStatus::Development,
            ),
            (
                signed_valid | CS_HARD | CS_KILL,
                false,
                "ABCDE12345",
                SigningStatus::Production,
            ),
            (signed_valid, false, "", SigningStatus::Development),
            // Valid without CS_SIGNED (older kernels): still classified by the rest.
            (CS_VALID, false, "ABCDE12345", SigningStatus::Production),
        ];
        for (flags, platform, team, want) in cases {
            let raw = RawSigning {
                codesigning_flags: flags,
                is_platform_binary: platform,
                team_id: team,
                signing_id: "com.example.tool",
                cdhash: [1; 20],
            };
            assert_eq!(
                signing_status(&raw),
                want,
                "flags {flags:#x} platform {platform} team {team:?}"
            );
        }
    }

    #[test]
    fn code_signing_fields() {
        use cs_flags::*;
        let flags = more_cs_flags::CS_SIGNED | CS_VALID | CS_HARD | CS_KILL;
        // (team, signing id, cdhash, want team, want signing id, want cdhash, enforced)
        let cases = [
            (
                "EQHXZ8M8AV",
                "com.google.Chrome",
                [7u8; 20],
                Some("EQHXZ8M8AV"),
                Some("com.google.Chrome"),
                true,
                flags,
            ),
            ("", "", [0u8; 20], None, None, false, 0),
            (
                "",
                "com.apple.ls",
                [9u8; 20],
                None,
                Some("com.apple.ls"),
                true,
                CS_VALID,
            ),
        ];
        for (team, sid, cdhash, want_team, want_sid, has_cdhash, flags) in cases {
            let cs = code_signing(&RawSigning {
                codesigning_flags: flags,
                is_platform_binary: false,
                team_id: team,
                signing_id: sid,
                cdhash,
            });
            assert_eq!(cs.team_id.as_deref(), want_team);
            assert_eq!(cs.signing_id.as_deref(), want_sid);
            assert_eq!(cs.cdhash.is_some(), has_cdhash);
            assert_eq!(cs.flags, flags);
        }
        // The CDHash is trusted only when the kernel enforces it (CS_VALID and CS_HARD|CS_KILL).
        let enforced = code_signing(&RawSigning {
            codesigning_flags: flags,
            is_platform_binary: false,
            team_id: "T",
            signing_id: "s",
            cdhash: [3; 20],
        });
        assert_eq!(enforced.trusted_cdhash(), Some(CdHash([3; 20])));
        let lax = code_signing(&RawSigning {
            codesigning_flags: CS_VALID,
            is_platform_binary: false,
            team_id: "T",
            signing_id: "s",
            cdhash: [3; 20],
        });
        assert_eq!(lax.trusted_cdhash(), None);
    }

    #[test]
    fn mount_flags_table() {
        use mnt::*;
        let cases = [
            (0, MountFlags::default()),
            (
                MNT_RDONLY,
                MountFlags {
                    read_only: true,
                    ..MountFlags::default()
                },
            ),
            (
                MNT_NOEXEC | MNT_NOSUID,
                MountFlags {
                    noexec: true,
                    nosuid: true,
                    ..MountFlags::default()
                },
            ),
            (
                MNT_RDONLY | MNT_NOEXEC | MNT_NOSUID | MNT_NODEV | 0x0040_0000,
                MountFlags {
                    read_only: true,
                    noexec: true,
                    nosuid: true,
                    nodev: true,
                },
            ),
            // MNT_SYNCHRONOUS (0x2) and MNT_LOCAL (0x1000) are not flags the policy reads.
            (0x2 | 0x1000, MountFlags::default()),
        ];
        for (bits, want) in cases {
            assert_eq!(mount_flags(bits), want, "{bits:#x}");
            assert_eq!(mount_flags(mnt_bits(&want)), want, "round trip {want:?}");
        }
        assert_eq!(
            mnt_bits(&mount_flags(MNT_RDONLY | MNT_NODEV | 0x1000)),
            MNT_RDONLY | MNT_NODEV
        );
    }

    #[test]
    fn disposition_table() {
        let cases = [
            (Some(0), MountDisposition::External),
            (Some(1), MountDisposition::Internal),
            (Some(2), MountDisposition::Network),
            (Some(3), MountDisposition::Virtual),
            (Some(4), MountDisposition::Nullfs),
            (Some(5), MountDisposition::Unknown),
            (Some(99), MountDisposition::Unknown),
            (None, MountDisposition::Unknown),
        ];
        for (raw, want) in cases {
            assert_eq!(mount_disposition(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn mount_info_from_statfs() {
        let mut from = [0u8; 90];
        from[..12].copy_from_slice(b"/dev/disk4s1");
        let on = b"/Volumes/USB\0garbage";
        let full = b"msdos"; // no NUL: the kernel filled the field
        let raw = RawStatfs {
            mntfromname: &from,
            mntonname: on,
            fstypename: full,
            f_flags: mnt::MNT_NOSUID,
        };
        // (message version, disposition field, expected disposition)
        let cases = [
            (8, Some(0), MountDisposition::External),
            (9, Some(2), MountDisposition::Network),
            (7, Some(0), MountDisposition::Unknown), // field not valid before version 8
            (8, None, MountDisposition::Unknown),
        ];
        for (version, disp, want) in cases {
            let info = mount_info(&raw, version, disp);
            assert_eq!(info.source, "/dev/disk4s1");
            assert_eq!(info.mount_point, "/Volumes/USB");
            assert_eq!(info.fs_type, "msdos");
            assert!(info.flags.nosuid && !info.flags.read_only);
            assert_eq!(info.disposition, want, "version {version} {disp:?}");
        }
        assert_eq!(c_field(b"\xff/bad\0"), "\u{fffd}/bad");
        assert_eq!(c_field(b""), "");
    }

    #[test]
    fn access_flags_table() {
        use fflag::*;
        let a = |read, write, append, truncate| AccessFlags {
            read,
            write,
            append,
            truncate,
        };
        let cases = [
            (FREAD, a(true, false, false, false)),
            (FWRITE, a(false, true, false, false)),
            (FREAD | FWRITE, a(true, true, false, false)),
            (FWRITE | O_APPEND, a(false, true, true, false)),
            (FWRITE | O_TRUNC, a(false, true, false, true)),
            (FREAD | 0x0100_0000, a(true, false, false, false)), // O_CLOEXEC-ish noise ignored
            (0, a(false, false, false, false)),
        ];
        for (bits, want) in cases {
            assert_eq!(access_flags(bits), want, "{bits:#x}");
        }
        assert!(!access_flags(FREAD).modifies());
        assert!(access_flags(FREAD | O_TRUNC).modifies());
    }

    #[test]
    fn es_response_table() {
        let ans = |verdict, cache| Answer { verdict, cache };
        let cases = [
            (
                EventKind::Open,
                ans(Verdict::Allow, true),
                EsResponse::Flags {
                    authorized_flags: 0xffff_ffff,
                    cache: true,
                },
            ),
            (
                EventKind::Open,
                ans(Verdict::Allow, false),
                EsResponse::Flags {
                    authorized_flags: 0xffff_ffff,
                    cache: false,
                },
            ),
            (
                EventKind::Open,
                ans(Verdict::Deny, true),
                EsResponse::Flags {
                    authorized_flags: 0,
                    cache: false,
                },
            ),
            (
                EventKind::Exec,
                ans(Verdict::Allow, true),
                EsResponse::Auth {
                    result: ES_AUTH_RESULT_ALLOW,
                    cache: true,
                },
            ),
            (
                EventKind::Exec,
                ans(Verdict::Deny, false),
                EsResponse::Auth {
                    result: ES_AUTH_RESULT_DENY,
                    cache: false,
                },
            ),
            (
                EventKind::Mount,
                ans(Verdict::Deny, true),
                EsResponse::Auth {
                    result: ES_AUTH_RESULT_DENY,
                    cache: false,
                },
            ),
        ];
        for (kind, answer, want) in cases {
            assert_eq!(es_response(kind, answer), want, "{kind:?} {answer:?}");
        }
        // Every kind but open is an auth result.
        for kind in EventKind::ALL {
            let r = es_response(kind, ans(Verdict::Allow, false));
            assert_eq!(
                matches!(r, EsResponse::Flags { .. }),
                kind == EventKind::Open
            );
        }
    }

    #[test]
    fn mute_path_type_table() {
        let spec = |scope, prefix| MuteSpec {
            scope,
            path: "/x".into(),
            prefix,
        };
        let cases = [
            (spec(MuteScope::Process, true), 0),
            (spec(MuteScope::Process, false), 1),
            (spec(MuteScope::Target, true), 2),
            (spec(MuteScope::Target, false), 3),
        ];
        for (s, want) in cases {
            assert_eq!(mute_path_type(&s), want, "{s:?}");
        }
    }

    #[test]
    fn result_code_tables() {
        let new_client = [
            (0, None),
            (1, Some(NewClientError::InvalidArgument)),
            (2, Some(NewClientError::Internal)),
            (3, Some(NewClientError::NotEntitled)),
            (4, Some(NewClientError::NotPermitted)),
            (5, Some(NewClientError::NotPrivileged)),
            (6, Some(NewClientError::TooManyClients)),
            (77, Some(NewClientError::Unknown(77))),
        ];
        for (code, want) in new_client {
            assert_eq!(new_client_result(code).err(), want, "{code}");
        }
        assert!(
            NewClientError::NotEntitled
                .to_string()
                .contains("entitlement")
        );
        assert!(
            NewClientError::NotPermitted
                .to_string()
                .contains("Full Disk Access")
        );
        assert!(NewClientError::NotPrivileged.to_string().contains("root"));

        let respond = [
            (0, None),
            (1, Some(RespondError::InvalidArgument)),
            (2, Some(RespondError::Internal)),
            (3, Some(RespondError::NotFound)),
            (4, Some(RespondError::DuplicateResponse)),
            (5, Some(RespondError::EventType)),
            (9, Some(RespondError::Unknown(9))),
        ];
        for (code, want) in respond {
            assert_eq!(respond_result(code).err(), want, "{code}");
        }

        let clear = [
            (0, ClearCacheOutcome::Cleared),
            (1, ClearCacheOutcome::Internal),
            (2, ClearCacheOutcome::Throttled),
            (3, ClearCacheOutcome::Unknown(3)),
        ];
        for (code, want) in clear {
            assert_eq!(clear_cache_outcome(code), want, "{code}");
        }
    }

    #[test]
    fn file_identity_and_paths() {
        let st = RawStat {
            dev: 16_777_233,
            ino: 42,
            size: 1024,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 5,
            ctime_sec: 1_700_000_001,
            ctime_nsec: 999_999_999,
        };
        let id = file_identity(&st);
        assert_eq!(
            (id.dev, id.ino, id.size, id.mtime_ns, id.ctime_ns),
            (
                16_777_233,
                42,
                1024,
                1_700_000_000_000_000_005,
                1_700_000_001_999_999_999
            )
        );
        let odd = file_identity(&RawStat {
            size: -1,
            mtime_sec: i64::MAX,
            ..st
        });
        assert_eq!((odd.size, odd.mtime_ns), (0, i64::MAX));

        let joins = [
            ("/Users/a", "f.txt", "/Users/a/f.txt"),
            ("/", "etc", "/etc"),
            ("/tmp/", "x", "/tmp/x"),
        ];
        for (dir, name, want) in joins {
            assert_eq!(join_path(dir, name), want);
        }
    }

    #[test]
    fn os_version_table() {
        let cases = [
            ("14.5", Some((14, 5, 0))),
            ("13.6.1", Some((13, 6, 1))),
            ("15", Some((15, 0, 0))),
            ("15.0.1\n", Some((15, 0, 1))),
            ("26.0\0", Some((26, 0, 0))),
            ("", None),
            ("fourteen", None),
            ("14.x", None),
            ("1.2.3.4", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_os_version(text), want, "{text:?}");
        }
    }

    /// The recorder takes NOTIFY close, rename and exit exactly while the policy can record
    /// transitive allows (`transitive_rules` on and a compiler rule present).
    #[test]
    fn notify_kinds_follow_the_policy() {
        let rule = "[[exec]]\nname = \"ld\"\naction = \"allow\"\ncompiler = true\nsigning_id = \"platform:com.apple.ld\"\n";
        // (transitive_rules, compiler rule present, NOTIFY kinds wanted)
        let cases = [
            (true, true, true),
            (false, true, false),
            (true, false, false),
        ];
        for (on, with_rule, want) in cases {
            let text = format!(
                "version = 1\nmode = \"enforce\"\n[defaults]\ntransitive_rules = {on}\n{}",
                if with_rule { rule } else { "" }
            );
            let p = policy::Policy::parse_for("t.toml", &text, policy::Os::Macos).unwrap();
            let got = notify_kinds(&p);
            assert_eq!(!got.is_empty(), want, "on={on} rule={with_rule}");
            if want {
                assert_eq!(got, super::super::api::NotifyKind::ALL.to_vec());
            }
        }
    }

    #[test]
    fn subscriptions() {
        let kinds = subscription_kinds(&policy::Policy::embedded_default());
        assert!(
            kinds.contains(&EventKind::Exec),
            "exec is always subscribed"
        );
        use EventKind::*;
        let cases = [
            (vec![], vec![Exec, Open], (vec![Exec, Open], vec![])),
            (vec![Exec, Open], vec![Exec], (vec![], vec![Open])),
            (
                vec![Exec, Mount],
                vec![Exec, Open],
                (vec![Open], vec![Mount]),
            ),
            (vec![Exec], vec![Exec], (vec![], vec![])),
        ];
        for (current, wanted, want) in cases {
            assert_eq!(
                subscription_changes(&current, &wanted),
                want,
                "{current:?} -> {wanted:?}"
            );
        }
    }
}
