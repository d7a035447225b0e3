//! Gatehouse's pure policy engine: parses and validates TOML policies, compiles them into
//! lookup structures, and decides events without I/O, locks or unsafe code.
//!
//! API CONTRACT (pinned; the extension core codes against it — keep these signatures):
//! - [`Policy::parse`], [`Policy::embedded_default`], [`Policy::decide`], [`Policy::fallback`],
//!   [`Policy::deadline`], [`Policy::mode`], [`Policy::mutes`], [`Policy::source`],
//!   [`Policy::origin`]
//! - [`PolicyStore`]: atomically swapped snapshots with a version counter.
//! - [`VerdictCache`] and [`CacheKey`]: bounded, reads never wait on a writer.
//!
//! THIS FILE IS A PLACEHOLDER written by the foundation so dependants compile; issue 3 replaces
//! the bodies.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use model::{Decision, Event, EventKind, Facts, FallbackReason, MuteSpec, Outcome, Verdict};

/// Monitor never denies (except block rules and bad signatures) and records would-denies;
/// enforce denies what no rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Monitor,
    Enforce,
}

/// A policy file that failed validation: which file, where, which rule, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct PolicyError {
    pub origin: String,
    pub line: usize,
    pub column: usize,
    pub rule: Option<String>,
    pub message: String,
}

/// A validated, compiled policy. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Policy {
    origin: String,
    source: String,
}

/// The policy used when no file is given: monitor mode, self-protection on.
pub const EMBEDDED_DEFAULT_TOML: &str = "version = 1\nmode = \"monitor\"\n";

impl Policy {
    /// Parse and validate `text`; `origin` (a file path) appears in every error.
    pub fn parse(origin: &str, text: &str) -> Result<Policy, PolicyError> {
        Ok(Policy {
            origin: origin.to_owned(),
            source: text.to_owned(),
        })
    }

    pub fn embedded_default() -> Policy {
        Policy {
            origin: "<embedded default>".into(),
            source: EMBEDDED_DEFAULT_TOML.into(),
        }
    }

    pub fn mode(&self) -> Mode {
        Mode::Monitor
    }

    /// The fast-path decision for `event`, given what is already known (`facts`: from the
    /// helper or a cache; `Facts::NONE` on the delivery thread).
    pub fn decide(&self, _event: &Event, _facts: &Facts) -> Outcome {
        Outcome::Decided(Decision::allow(
            model::Reason::Default,
            model::Cacheability::Never,
        ))
    }

    /// The explicit fallback verdict for `kind` when the slow path cannot answer for `why`.
    pub fn fallback(&self, _kind: EventKind, _why: FallbackReason) -> Verdict {
        Verdict::Allow
    }

    /// Our own deadline for a permission event of `kind` (Linux; ES gives its own).
    pub fn deadline(&self, _kind: EventKind) -> Duration {
        Duration::from_secs(5)
    }

    /// Paths never analysed.
    pub fn mutes(&self) -> &[MuteSpec] {
        &[]
    }

    /// The TOML text this policy came from (for `policy show`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The file (or `<embedded default>`) this policy came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// The current policy, swapped atomically; readers never wait.
#[derive(Debug)]
pub struct PolicyStore {
    current: arc_swap::ArcSwap<Snapshot>,
}

/// One loaded policy and its version (1 for the first, +1 per successful load).
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub policy: Policy,
}

impl PolicyStore {
    pub fn new(policy: Policy) -> Self {
        Self {
            current: arc_swap::ArcSwap::from_pointee(Snapshot { version: 1, policy }),
        }
    }

    /// Lock-free read of the current snapshot (delivery thread).
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replace the policy; returns the new version. Callers clear caches afterwards.
    pub fn replace(&self, policy: Policy) -> u64 {
        let version = self.current.load().version + 1;
        self.current.store(Arc::new(Snapshot { version, policy }));
        version
    }
}

/// What a cached verdict is keyed by: the kernel-vouched CDHash, else the file's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheKey {
    CdHash(EventKind, model::CdHash),
    File(EventKind, model::FileIdentity),
}

/// Bounded verdict cache; `get` never waits on `insert`.
#[derive(Debug, Default)]
pub struct VerdictCache {}

impl VerdictCache {
    pub fn with_capacity(_entries: usize) -> Self {
        Self {}
    }
    pub fn key_for(_event: &Event) -> Option<CacheKey> {
        None
    }
    pub fn get(&self, _key: &CacheKey, _now: Instant) -> Option<Decision> {
        None
    }
    pub fn insert(&self, _key: CacheKey, _decision: &Decision, _now: Instant) {}
    pub fn clear(&self) {}
    pub fn len(&self) -> usize {
        0
    }
    pub fn is_empty(&self) -> bool {
        true
    }
}
