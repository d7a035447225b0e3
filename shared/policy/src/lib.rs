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
//! The file format is documented in `FORMAT.md` beside this crate; the rule semantics follow
//! docs/DESIGN.md section 3a (Santa-compatible).
#![forbid(unsafe_code)]

mod cache;
mod compile;
mod decide;
mod format;
mod glob;
pub mod local;
pub mod santa;
mod tables;
pub mod transitive;

use std::sync::Arc;
use std::time::Duration;

use model::{
    Event, EventKind, Facts, FallbackReason, MountFlags, MuteSpec, Outcome, RuleRef, Verdict,
};

pub use cache::{CacheKey, DENY_TTL, VerdictCache};
pub use defaults::Os;
pub use local::{LocalRules, RuleInfo, Tier};

/// Monitor never denies (except block rules and bad signatures) and records would-denies;
/// enforce denies what no rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Monitor,
    Enforce,
}

/// What to do at start-up with volumes mounted before the extension ran, when the mount rules
/// would not let them mount now (Santa's `OnStartUSBOptions`). A volume the rules allow is
/// always kept.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum MountedAtStart {
    /// Leave them mounted (Santa's default: no start-up action).
    #[default]
    Keep,
    /// Unmount them; a busy volume stays (Santa `Unmount`).
    Unmount,
    /// Unmount them even if busy (Santa `ForceUnmount`).
    ForceUnmount,
    /// Unmount, then mount again with a `remount` rule's flags; a volume a `block` rule
    /// denies stays unmounted (Santa `Remount`).
    Remount,
    /// As `Remount`, forcing the unmount (Santa `ForceRemount`).
    ForceRemount,
}

/// A policy file that failed validation: which file, where, which rule, and what is wrong.
/// Displays as `file:line:col: message (rule NAME)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}{}", rule_suffix(.rule))]
pub struct PolicyError {
    pub origin: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// The offending rule's name, when the error is inside one.
    pub rule: Option<String>,
    pub message: String,
}

fn rule_suffix(rule: &Option<String>) -> String {
    rule.as_ref()
        .map(|r| format!(" (rule {r})"))
        .unwrap_or_default()
}

/// A path a watch item names, for backends that must mark what to watch (Linux fanotify).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct WatchedPath {
    pub path: String,
    /// A plain string prefix (everything under a directory when it ends in `/`).
    pub prefix: bool,
}

/// A validated, compiled policy. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Policy {
    origin: String,
    source: String,
    compiled: compile::Compiled,
    /// The local rules tier composed in, if any.
    local: Option<LocalRules>,
}

/// The policy used when no file is given: monitor mode, self-protection on (see the file for
/// the protected paths and the processes allowed to change them).
pub const EMBEDDED_DEFAULT_TOML: &str = include_str!("default.toml");

/// The origin named in the embedded default's (impossible) errors and by [`Policy::origin`].
pub const EMBEDDED_ORIGIN: &str = "<embedded default>";

impl Policy {
    /// Parse and validate `text` for this host's OS; `origin` (a file path) appears in every
    /// error.
    pub fn parse(origin: &str, text: &str) -> Result<Policy, PolicyError> {
        Self::parse_for(origin, text, Os::HOST)
    }

    /// Parse and validate `text` as `os`'s build would: on macOS `/var`, `/etc` and `/tmp`
    /// paths become `/private/...` (what Endpoint Security reports), and package trust
    /// defaults off. Lets Linux tests and `policy eval --os macos` see macOS decisions.
    pub fn parse_for(origin: &str, text: &str, os: Os) -> Result<Policy, PolicyError> {
        let compiled = compile::compile(origin, text, os)?;
        Ok(Policy {
            origin: origin.to_owned(),
            source: text.to_owned(),
            compiled,
            local: None,
        })
    }

    /// This policy (the static tier) with `local` as its local rules tier, replacing any
    /// before: every local rule ranks below every rule of the policy file (identifier rules
    /// after the file's identifier rules, path scopes after the file's path scopes). `None`
    /// removes the local tier. Local rules compiled for another OS are not composed.
    pub fn with_local(mut self, local: Option<LocalRules>) -> Policy {
        let c = &mut self.compiled;
        // Drop a previous local tier: its rules follow the file's.
        for r in c.rules.drain(c.static_rules..) {
            c.names.remove(&r.name);
        }
        c.local = None;
        self.local = None;
        let Some(local) = local.filter(|l| l.os() == c.os) else {
            return self;
        };
        let by = u32::try_from(c.rules.len()).expect("fewer than 2^32 rules");
        c.local = Some(local.compiled.tier.clone().offset(by));
        for (n, r) in local.compiled.rules.iter().enumerate() {
            c.names.insert(r.name.clone(), by + n as u32);
            c.rules.push(r.clone());
        }
        self.local = Some(local);
        self
    }

    /// This policy reading transitive allows from `store` (shared: the extension adds to it
    /// as compilers write files). They apply only with `defaults.transitive_rules = true`.
    pub fn with_transitive(mut self, store: Option<Arc<transitive::TransitiveRules>>) -> Policy {
        self.compiled.transitive = store;
        self
    }

    /// Whether compiler rules create transitive allows (`defaults.transitive_rules`).
    pub fn transitive_rules(&self) -> bool {
        self.compiled.transitive_rules
    }

    /// Whether the decision's rule `rule` is a compiler rule whose process's output files
    /// become transitive allows: an exec allow with `compiler = true`, and only while
    /// `transitive_rules` is on (off, it is a plain allow, as in Santa).
    pub fn is_compiler_rule(&self, rule: &RuleRef) -> bool {
        self.compiled.transitive_rules
            && self
                .compiled
                .names
                .get(&rule.name)
                .is_some_and(|&i| self.compiled.rules[i as usize].compiler)
    }

    /// Whether the extension must watch what processes write: `transitive_rules` is on and
    /// some rule (of either tier) is a compiler rule. Off, nothing can become a transitive
    /// allow, so a backend marks no close-write events.
    pub fn records_transitive(&self) -> bool {
        self.compiled.transitive_rules && self.compiled.rules.iter().any(|r| r.compiler)
    }

    /// The local rules tier composed in ([`Policy::with_local`]).
    pub fn local_rules(&self) -> Option<&LocalRules> {
        self.local.as_ref()
    }

    /// Every named rule with its tier, static first, each tier in file order.
    pub fn rules(&self) -> Vec<RuleInfo> {
        let c = &self.compiled;
        c.rules
            .iter()
            .enumerate()
            .map(|(i, r)| RuleInfo {
                tier: if i < c.static_rules {
                    Tier::Static
                } else {
                    Tier::Local
                },
                name: r.name.clone(),
                what: r.what.clone(),
            })
            .collect()
    }

    /// How many rules of each type each tier holds, static first, types in order of first
    /// appearance: `exec sha256`, `exec signing_id (compiler)`, `exec_path prefix`, `watch`,
    /// `mount` (`gatehouse status`).
    pub fn rule_counts(&self) -> Vec<(Tier, String, usize)> {
        let mut out: Vec<(Tier, String, usize)> = Vec::new();
        for r in self.rules() {
            let kind = rule_kind(&r.what);
            match out.iter_mut().find(|(t, k, _)| *t == r.tier && *k == kind) {
                Some((_, _, n)) => *n += 1,
                None => out.push((r.tier, kind, 1)),
            }
        }
        out
    }

    pub fn embedded_default() -> Policy {
        Self::embedded_default_for(Os::HOST)
    }

    /// The embedded default as `os`'s build compiles it.
    pub fn embedded_default_for(os: Os) -> Policy {
        Policy::parse_for(EMBEDDED_ORIGIN, EMBEDDED_DEFAULT_TOML, os)
            .expect("the embedded default policy is valid (tested)")
    }

    /// The OS this policy was compiled for.
    pub fn os(&self) -> Os {
        self.compiled.os
    }

    /// Paths rewritten for [`Policy::os`], as written and as compiled (macOS `/private`
    /// forms), for `policy check` to show. Regexes are never rewritten.
    pub fn canonicalized_paths(&self) -> &[(String, String)] {
        &self.compiled.canonicalized
    }

    pub fn mode(&self) -> Mode {
        self.compiled.mode
    }

    /// The fast-path decision for `event`, given what is already known (`facts`: from the
    /// helper or a cache; `Facts::NONE` on the delivery thread).
    ///
    /// Returns `Analyze` only when a fact missing from both the message and `facts` could
    /// change the verdict. Called again with the helper's facts, it decides; if it still asks
    /// for analysis the helper could not supply what was needed, and the caller answers with
    /// [`Policy::fallback`] for [`FallbackReason::HelperError`].
    pub fn decide(&self, event: &Event, facts: &Facts) -> Outcome {
        self.compiled.decide(event, facts)
    }

    /// The explicit fallback verdict for `kind` when the slow path cannot answer for `why`:
    /// `fallback` for a late answer (watchdog), shutdown or a dropped responder;
    /// `helper_unavailable` when the helper is down, the queue is full or the helper erred.
    pub fn fallback(&self, kind: EventKind, why: FallbackReason) -> Verdict {
        let k = &self.compiled.kinds[kind.index()];
        match why {
            FallbackReason::Deadline | FallbackReason::Shutdown | FallbackReason::Dropped => {
                k.fallback
            }
            FallbackReason::QueueFull
            | FallbackReason::HelperUnavailable
            | FallbackReason::HelperError => k.helper_unavailable,
        }
    }

    /// Our own deadline for a permission event of `kind` (Linux; ES gives its own).
    pub fn deadline(&self, kind: EventKind) -> Duration {
        self.compiled.kinds[kind.index()].deadline
    }

    /// Paths never analysed.
    pub fn mutes(&self) -> &[MuteSpec] {
        &self.compiled.mutes
    }

    /// The TOML text this policy came from (for `policy show`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The file (or `<embedded default>`) this policy came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Every path any watch item names (exact or prefix). A Linux backend marks the
    /// filesystems holding them for the file-access kinds [`Policy::watches_kind`] reports.
    pub fn watched_paths(&self) -> &[WatchedPath] {
        &self.compiled.watched
    }

    /// True when a `processes_with_allowed_paths` watch item exists: its processes are denied
    /// everywhere outside its paths, so every file on every filesystem is in scope for them.
    pub fn watches_all_paths(&self) -> bool {
        self.compiled.process_watches.iter().any(|&i| {
            self.compiled.watches[i as usize].rule_type
                == format::RuleType::ProcessesWithAllowedPaths
        })
    }

    /// Whether any rule can act on events of `kind`, so a backend can skip subscribing to (or
    /// marking for) the rest. Exec is always in scope (the mode default applies to it).
    pub fn watches_kind(&self, kind: EventKind) -> bool {
        use format::Operation as Op;
        let c = &self.compiled;
        let op = match kind {
            EventKind::Exec => return true,
            EventKind::Mount | EventKind::Remount => return !c.mounts.is_empty(),
            EventKind::Open => Op::Open,
            EventKind::Rename => Op::Rename,
            EventKind::Unlink => Op::Unlink,
            EventKind::Truncate => Op::Truncate,
            EventKind::Link => Op::Link,
            EventKind::Create => Op::Create,
            EventKind::Clone => Op::Clone,
            EventKind::Copyfile => Op::Copyfile,
            EventKind::Exchangedata => Op::Exchangedata,
        };
        c.watches.iter().any(|w| w.ops.contains(op))
    }

    /// True when exec decisions may need the file's SHA-256 (a `sha256` rule exists) or
    /// package trust (Linux: `package_trust`, which the helper checks by hashing). A Linux
    /// backend can then expect first executions to go to the slow path.
    pub fn exec_rules_need_hash(&self) -> bool {
        let c = &self.compiled;
        !c.ids.sha256.is_empty()
            || c.local.as_ref().is_some_and(|l| !l.ids.sha256.is_empty())
            || c.package_trust
    }

    /// Whether an open's access flags can change any decision (a watch item exempts read-only
    /// opens). When not, a backend that pays to learn them (Linux reads
    /// `/proc/<tid>/syscall`) can skip that: an open of unknown flags is decided as possibly
    /// modifying, which is the same answer here.
    pub fn open_flags_matter(&self) -> bool {
        self.compiled.open_flags_matter
    }

    /// What to do with volumes already mounted when the extension starts.
    pub fn mounted_at_start(&self) -> MountedAtStart {
        self.compiled.mounted_at_start
    }

    /// The flags a `remount` mount rule requires (to add to the mount's existing flags), for
    /// the decision whose reason names `rule`.
    pub fn remount_flags(&self, rule: &RuleRef) -> Option<MountFlags> {
        self.compiled.remount_flags.get(&rule.name).copied()
    }

    /// The rule's `message` (Santa's `custom_msg`), to show the user on a block.
    pub fn rule_message(&self, rule: &RuleRef) -> Option<&str> {
        let idx = *self.compiled.names.get(&rule.name)?;
        self.compiled.rules[idx as usize].message.as_deref()
    }

    /// Number of named rules (exec, path scopes, watch items, mounts), local rules included.
    pub fn rule_count(&self) -> usize {
        self.compiled.rules.len()
    }
}

/// The signing id of a platform binary whose identity the kernel vouches for: the platform
/// flag, a signature that is not invalid, and an enforced CDHash (`CS_VALID` with `CS_HARD` or
/// `CS_KILL`), so the id is the kernel's word rather than a path's.
pub fn kernel_platform_signing_id(cs: &model::CodeSigning) -> Option<&str> {
    (cs.is_platform_binary && cs.status != model::SigningStatus::Invalid && cs.cdhash_enforced())
        .then_some(cs.signing_id.as_deref())
        .flatten()
}

/// The macOS system daemon `event` executes, when it is one the slow path depends on
/// (`defaults::MACOS_SLOW_PATH_DEPENDENCIES`): the extension allows it before the policy, so
/// `policy eval --os macos` reports it the same way. `None` on other OSes and for other events.
pub fn macos_slow_path_dependency(
    os: Os,
    event: &Event,
) -> Option<&'static defaults::SystemDependency> {
    let model::EventBody::Exec { target } = &event.body else {
        return None;
    };
    if os != Os::Macos {
        return None;
    }
    let id = kernel_platform_signing_id(&target.signing)?;
    defaults::MACOS_SLOW_PATH_DEPENDENCIES
        .iter()
        .find(|d| d.signing_id == id)
}

/// The current policy, swapped atomically; readers never wait.
#[derive(Debug)]
pub struct PolicyStore {
    current: arc_swap::ArcSwap<Snapshot>,
    /// Serializes writers so versions are strictly increasing; readers never take it.
    writer: std::sync::Mutex<()>,
}

/// One loaded policy and its version (1 for the first, +1 per successful load).
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub policy: Policy,
    /// When this snapshot went into force (`gatehouse status`).
    pub installed: std::time::SystemTime,
}

/// A rule's type from its [`RuleInfo::what`]: the section and the key it matches on, without
/// the action or the value (`exec allow sha256 <hex>` is `exec sha256`).
fn rule_kind(what: &str) -> String {
    let w: Vec<&str> = what.split_whitespace().collect();
    match w.as_slice() {
        ["exec", _action, key, .., "(compiler)"] => format!("exec {key} (compiler)"),
        [section @ ("exec" | "exec_path"), _action, key, ..] => format!("{section} {key}"),
        [section, ..] => (*section).to_owned(),
        [] => "other".to_owned(),
    }
}

impl PolicyStore {
    pub fn new(policy: Policy) -> Self {
        Self {
            current: arc_swap::ArcSwap::from_pointee(Snapshot {
                version: 1,
                policy,
                installed: std::time::SystemTime::now(),
            }),
            writer: std::sync::Mutex::new(()),
        }
    }

    /// Lock-free read of the current snapshot (delivery thread).
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replace the policy; returns the new version. Callers clear caches afterwards. Only a
    /// parsed (hence valid) [`Policy`] can be passed, so a bad file never replaces a good one.
    pub fn replace(&self, policy: Policy) -> u64 {
        // A poisoned lock only means another writer panicked; the snapshot itself is intact.
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let version = self.current.load().version + 1;
        self.current.store(Arc::new(Snapshot {
            version,
            policy,
            installed: std::time::SystemTime::now(),
        }));
        version
    }
}
