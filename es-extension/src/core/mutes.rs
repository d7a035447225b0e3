//! Muted paths, mirrored in-process: the policy's `[mute]` lists plus runtime `mute add`s, as
//! one immutable [`MuteSet`] the delivery thread matches lock-free (arc-swapped) and the control
//! thread updates by cheap copy-on-write steps.
//!
//! # Cost (invariant `bounded`, and `delivery-never-blocks`)
//! The sets are persistent B-trees (`imbl`): cloning one is O(1) and an insert or remove copies
//! only the O(log n) nodes on its path, so a runtime add is O(log n) however many mutes exist,
//! and the delivery thread keeps reading the snapshot it loaded. A match is O(log n) string
//! comparisons: one lookup for literals, and one predecessor lookup for prefixes, because the
//! prefix index keeps only *minimal* prefixes (none a prefix of another). Among minimal
//! prefixes, if `p` is a prefix of `path` then no other element lies between `p` and `path` in
//! byte order (it would have to start with `p`), so the greatest element not above `path` is
//! the only candidate.

use std::ops::Bound;

use imbl::OrdSet;
use model::{Event, MuteScope, MuteSpec};

/// Runtime mutes kept at most (`gatehouse mute add`); the policy's own are bounded by its size.
pub const MAX_RUNTIME_MUTES: usize = 10_000;
/// Longest muted path accepted at run time (Linux `PATH_MAX`).
pub const MAX_MUTE_PATH: usize = 4096;

/// Why a runtime mute was refused. The message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuteError {
    #[error("a mute needs a path; name the executable or file to mute")]
    Empty,
    #[error("mute path {0:?} is not absolute; give the full path, starting with /")]
    NotAbsolute(String),
    #[error(
        "a prefix mute of {0:?} would mute every path and turn protection off; mute a directory instead"
    )]
    Everything(String),
    #[error("mute path contains a NUL byte; no file can have that name")]
    Nul,
    #[error("mute path is {len} bytes long; the limit is {MAX_MUTE_PATH}")]
    TooLong { len: usize },
    #[error(
        "{MAX_RUNTIME_MUTES} runtime mutes are already in force; remove some (`gatehouse mute remove`), or use a prefix mute or the policy's [mute] lists"
    )]
    Full,
    /// The mutes file could not be written; nothing changed (a mute in force must be one a
    /// restart restores, and a removed one must not come back).
    #[error("{0}; nothing changed (check the disk and the directory's permissions)")]
    NotSaved(String),
}

/// Check a runtime mute before it is added.
pub fn validate(spec: &MuteSpec) -> Result<(), MuteError> {
    let p = spec.path.as_str();
    if p.is_empty() {
        return Err(MuteError::Empty);
    }
    if !p.starts_with('/') {
        return Err(MuteError::NotAbsolute(p.to_owned()));
    }
    if p.len() > MAX_MUTE_PATH {
        return Err(MuteError::TooLong { len: p.len() });
    }
    if p.contains('\0') {
        return Err(MuteError::Nul);
    }
    if spec.prefix && p.bytes().all(|b| b == b'/') {
        return Err(MuteError::Everything(p.to_owned()));
    }
    Ok(())
}

/// One scope's literals and prefixes.
#[derive(Debug, Clone, Default)]
struct ScopeIndex {
    literals: OrdSet<String>,
    /// Every prefix mute, minimal or not (needed again when a covering prefix is removed).
    prefixes: OrdSet<String>,
    /// The prefixes no other prefix covers.
    minimal: OrdSet<String>,
}

/// The prefixes in `set` that start with `p` (`p` included), in order.
fn starting_with(set: &OrdSet<String>, p: &str) -> Vec<String> {
    set.range::<_, str>((Bound::Included(p), Bound::Unbounded))
        .take_while(|q| q.starts_with(p))
        .cloned()
        .collect()
}

impl ScopeIndex {
    fn is_empty(&self) -> bool {
        self.literals.is_empty() && self.prefixes.is_empty()
    }

    /// Lock-free and allocation-free: two B-tree descents.
    fn matches(&self, path: &str) -> bool {
        self.literals.contains(path) || self.covering(path).is_some()
    }

    /// The minimal prefix that `path` starts with, if any (see the module docs).
    fn covering(&self, path: &str) -> Option<&String> {
        self.minimal
            .get_prev(path)
            .filter(|p| path.starts_with(p.as_str()))
    }

    fn insert(&mut self, path: &str, prefix: bool) {
        if !prefix {
            self.literals.insert(path.to_owned());
            return;
        }
        if self.prefixes.insert(path.to_owned()).is_some() || self.covering(path).is_some() {
            return;
        }
        for q in starting_with(&self.minimal, path) {
            self.minimal.remove(q.as_str());
        }
        self.minimal.insert(path.to_owned());
    }

    fn remove(&mut self, path: &str, prefix: bool) {
        if !prefix {
            self.literals.remove(path);
            return;
        }
        if self.prefixes.remove(path).is_none() || self.minimal.remove(path).is_none() {
            return;
        }
        // What `path` covered is covered by nothing else (minimal prefixes are incomparable):
        // promote its minimal sub-prefixes, in order, skipping those an earlier one covers.
        let mut last: Option<String> = None;
        for q in starting_with(&self.prefixes, path) {
            if last.as_deref().is_some_and(|l| q.starts_with(l)) {
                continue;
            }
            self.minimal.insert(q.clone());
            last = Some(q);
        }
    }
}

/// The mutes in force: the policy's plus the runtime ones, indexed per scope.
#[derive(Debug, Clone, Default)]
pub struct MuteSet {
    policy: OrdSet<MuteSpec>,
    runtime: OrdSet<MuteSpec>,
    process: ScopeIndex,
    target: ScopeIndex,
}

impl MuteSet {
    /// A set of policy mutes only.
    pub fn from_specs<'a>(specs: impl IntoIterator<Item = &'a MuteSpec>) -> Self {
        Self::default().with_policy(specs)
    }

    /// The same runtime mutes over a new policy's mutes (a policy load). O(n log n).
    pub fn with_policy<'a>(&self, specs: impl IntoIterator<Item = &'a MuteSpec>) -> Self {
        let mut s = MuteSet {
            policy: specs.into_iter().cloned().collect(),
            runtime: self.runtime.clone(),
            ..MuteSet::default()
        };
        let all: Vec<MuteSpec> = s.all();
        for m in &all {
            s.index(m.scope).insert(&m.path, m.prefix);
        }
        s
    }

    fn index(&mut self, scope: MuteScope) -> &mut ScopeIndex {
        match scope {
            MuteScope::Process => &mut self.process,
            MuteScope::Target => &mut self.target,
        }
    }

    /// Every mute in force, in order, each once (policy and runtime may name the same one).
    pub fn all(&self) -> Vec<MuteSpec> {
        let mut v: Vec<MuteSpec> = self.policy.iter().cloned().collect();
        v.extend(
            self.runtime
                .iter()
                .filter(|m| !self.policy.contains(*m))
                .cloned(),
        );
        v.sort();
        v
    }

    pub fn len(&self) -> usize {
        self.policy.len()
            + self
                .runtime
                .iter()
                .filter(|m| !self.policy.contains(*m))
                .count()
    }

    pub fn is_empty(&self) -> bool {
        self.policy.is_empty() && self.runtime.is_empty()
    }

    /// The runtime mutes alone, in order (what the mutes file holds).
    pub fn runtime(&self) -> Vec<MuteSpec> {
        self.runtime.iter().cloned().collect()
    }

    pub fn runtime_len(&self) -> usize {
        self.runtime.len()
    }

    pub fn in_policy(&self, spec: &MuteSpec) -> bool {
        self.policy.contains(spec)
    }

    /// Add a runtime mute (validated, bounded). `Ok(true)`: it is newly in force and the
    /// kernel should be told; `Ok(false)`: it already was. O(log n).
    pub fn add_runtime(&mut self, spec: &MuteSpec) -> Result<bool, MuteError> {
        validate(spec)?;
        if self.runtime.contains(spec) {
            return Ok(false);
        }
        if self.runtime.len() >= MAX_RUNTIME_MUTES {
            return Err(MuteError::Full);
        }
        self.runtime.insert(spec.clone());
        if self.policy.contains(spec) {
            return Ok(false);
        }
        self.index(spec.scope).insert(&spec.path, spec.prefix);
        Ok(true)
    }

    /// Remove a runtime mute. `None`: it was not a runtime mute; `Some(true)`: it is no longer
    /// in force and the kernel should be told; `Some(false)`: the policy still mutes it.
    pub fn remove_runtime(&mut self, spec: &MuteSpec) -> Option<bool> {
        self.runtime.remove(spec)?;
        if self.policy.contains(spec) {
            return Some(false);
        }
        self.index(spec.scope).remove(&spec.path, spec.prefix);
        Some(true)
    }

    /// Muted when the acting process's executable is muted, or when every path the event
    /// touches is target-muted (a rename into a guarded directory is not muted by its source).
    /// Runs on the delivery thread: O(log n) per path, no lock, no allocation.
    pub fn matches(&self, event: &Event) -> bool {
        if self.process.matches(&event.process.executable.path) {
            return true;
        }
        !self.target.is_empty() && event.target_paths().iter().all(|p| self.target.matches(p))
    }

    /// Whether `path` is muted in `scope` (tests and diagnostics).
    pub fn matches_path(&self, scope: MuteScope, path: &str) -> bool {
        match scope {
            MuteScope::Process => self.process.matches(path),
            MuteScope::Target => self.target.matches(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(scope: MuteScope, path: &str, prefix: bool) -> MuteSpec {
        MuteSpec {
            scope,
            path: path.to_owned(),
            prefix,
        }
    }

    /// The obvious linear matcher the index must agree with.
    fn naive(specs: &[MuteSpec], scope: MuteScope, path: &str) -> bool {
        specs.iter().any(|m| m.scope == scope && m.matches(path))
    }

    #[test]
    fn validate_table() {
        let p = MuteScope::Process;
        let cases: [(MuteSpec, Result<(), MuteError>); 9] = [
            (spec(p, "/usr/bin/a", false), Ok(())),
            (spec(p, "/usr/", true), Ok(())),
            (spec(p, "/", false), Ok(())),
            (spec(p, "", false), Err(MuteError::Empty)),
            (spec(p, "", true), Err(MuteError::Empty)),
            (spec(p, "/", true), Err(MuteError::Everything("/".into()))),
            (spec(p, "//", true), Err(MuteError::Everything("//".into()))),
            (
                spec(p, "bin/a", false),
                Err(MuteError::NotAbsolute("bin/a".into())),
            ),
            (spec(p, "/a\0b", false), Err(MuteError::Nul)),
        ];
        for (s, want) in cases {
            assert_eq!(validate(&s), want, "{s:?}");
        }
        let long = spec(p, &format!("/{}", "a".repeat(MAX_MUTE_PATH)), false);
        assert_eq!(
            validate(&long),
            Err(MuteError::TooLong {
                len: MAX_MUTE_PATH + 1
            })
        );
    }

    /// Adds and removes in an order that makes prefixes cover, uncover and re-cover each other;
    /// after each step the index agrees with the linear matcher on every probe path.
    #[test]
    fn prefix_index_agrees_with_linear_match() {
        let t = MuteScope::Target;
        let specs = [
            spec(t, "/a/b/", true),
            spec(t, "/a/", true),
            spec(t, "/a/b/c", true),
            spec(t, "/a/bz", true),
            spec(t, "/a/b/c/d", false),
            spec(t, "/b", true),
            spec(t, "/ab", true),
            spec(t, "/a", true),
        ];
        let probes = [
            "/a", "/a/", "/a/b", "/a/b/", "/a/b/c", "/a/b/c/d", "/a/b/d", "/a/bz", "/a/bzz", "/ab",
            "/abc", "/b", "/bb", "/c", "/", "/a/a", "/a0",
        ];
        let check = |set: &MuteSet, live: &[MuteSpec], step: &str| {
            for p in probes {
                assert_eq!(
                    set.matches_path(t, p),
                    naive(live, t, p),
                    "{step}: {p} with {live:?}"
                );
            }
        };
        let mut set = MuteSet::default();
        let mut live: Vec<MuteSpec> = Vec::new();
        for s in &specs {
            assert_eq!(set.add_runtime(s), Ok(true));
            live.push(s.clone());
            check(&set, &live, &format!("add {s:?}"));
        }
        assert_eq!(set.add_runtime(&specs[0]), Ok(false), "a duplicate add");
        // Remove in an order that uncovers nested prefixes one level at a time.
        for i in [7, 1, 0, 3, 2, 6, 4, 5] {
            assert_eq!(set.remove_runtime(&specs[i]), Some(true));
            live.retain(|m| *m != specs[i]);
            check(&set, &live, &format!("remove {:?}", specs[i]));
        }
        assert!(set.is_empty());
        assert_eq!(set.remove_runtime(&specs[0]), None);
    }

    #[test]
    fn policy_and_runtime_overlap() {
        let p = spec(MuteScope::Process, "/usr/bin/a", false);
        let mut set = MuteSet::from_specs([&p]);
        assert_eq!(
            set.add_runtime(&p),
            Ok(false),
            "already in force via the policy"
        );
        assert_eq!(set.all(), vec![p.clone()]);
        assert_eq!(
            set.remove_runtime(&p),
            Some(false),
            "the policy still mutes it"
        );
        assert!(set.matches_path(MuteScope::Process, "/usr/bin/a"));
        // A new policy without it: the runtime mute (re-added) survives the swap.
        set.add_runtime(&p).unwrap();
        let set = set.with_policy([]);
        assert!(set.matches_path(MuteScope::Process, "/usr/bin/a"));
        assert_eq!(set.runtime_len(), 1);
    }

    #[test]
    fn runtime_mutes_are_bounded() {
        let mut set = MuteSet::default();
        for i in 0..MAX_RUNTIME_MUTES {
            set.add_runtime(&spec(MuteScope::Target, &format!("/m/{i}"), false))
                .unwrap();
        }
        let one_more = spec(MuteScope::Target, "/m/one-more", false);
        assert_eq!(set.add_runtime(&one_more), Err(MuteError::Full));
        assert_eq!(
            set.add_runtime(&spec(MuteScope::Target, "/m/0", false)),
            Ok(false),
            "re-adding one already in force is not refused"
        );
        assert_eq!(set.runtime_len(), MAX_RUNTIME_MUTES);
    }
}
