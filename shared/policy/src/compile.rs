//! Validation and compilation: turns the parsed file into hash maps, sorted prefix tables and
//! regex sets, rejecting anything malformed or contradictory with the exact line, column and
//! rule name. An invalid watch item invalidates the whole file (stricter than Santa).

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use model::{EventKind, MountDisposition, MountFlags, MuteScope, MuteSpec, Verdict, VolumeBus};
use toml::Spanned;

use crate::format::{
    Action, ExecRule, FallbackVerdict, KindDefaults, MountAction, Operation, PathRule, PolicyFile,
    RuleType, WatchItem, WatchProcess,
};
use crate::glob::{Glob, Parsed};
use crate::tables::{PathTable, SigTeam, TeamKey, team_key};
use crate::{Mode, Os, PolicyError, WatchedPath};

/// Default Linux permission-event deadline when the file names none.
pub(crate) const DEFAULT_DEADLINE_MS: u64 = 3000;
const DEADLINE_RANGE_MS: Range<i64> = 10..600_001;

/// A named rule, referenced by index from every table.
#[derive(Debug, Clone)]
pub(crate) struct RuleMeta {
    pub name: String,
    pub message: Option<String>,
    /// What the rule matches, for `gatehouse rule list` (`exec allow sha256 <hex>`, ...).
    pub what: String,
    /// An exec allow with `compiler = true`.
    pub compiler: bool,
}

/// Which verdict classes a group of rules can produce, to tell whether an unknown fact could
/// change the answer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ActionSet {
    pub allow: bool,
    pub block: bool,
}

impl ActionSet {
    fn add(&mut self, a: Action) {
        match a {
            Action::Allow => self.allow = true,
            Action::Block => self.block = true,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct KindSettings {
    pub fallback: Verdict,
    pub helper_unavailable: Verdict,
    pub deadline: Duration,
}

/// An operation set as bits indexed by [`Operation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpSet(u16);

impl OpSet {
    pub const ALL: OpSet = OpSet(0b1_1111_1111);
    fn bit(op: Operation) -> u16 {
        1 << (op as u8)
    }
    pub fn contains(self, op: Operation) -> bool {
        self.0 & Self::bit(op) != 0
    }
    fn from_ops(ops: &[Operation]) -> OpSet {
        OpSet(ops.iter().fold(0, |acc, op| acc | Self::bit(*op)))
    }
}

/// A signing-ID pattern of a watch process entry: exact, or with a wildcard at its first `*`.
#[derive(Debug, Clone)]
pub(crate) struct SigPattern {
    pub team: SigTeam,
    pub head: Box<str>,
    /// `Some` when the id had a `*`: the part after it.
    pub tail: Option<Box<str>>,
}

impl SigPattern {
    /// Whether `id` matches the id half (the team half is the caller's to check).
    pub fn matches_id(&self, id: &str) -> bool {
        match &self.tail {
            None => id == &*self.head,
            Some(tail) => {
                id.len() >= self.head.len() + tail.len()
                    && id.starts_with(&*self.head)
                    && id.ends_with(&**tail)
            }
        }
    }
}

/// A watch item's team-id key: a team, or `platform` (any platform binary).
#[derive(Debug, Clone, Copy)]
pub(crate) enum TeamMatch {
    Team(TeamKey),
    Platform,
}

/// One process entry of a watch item; every present key must match.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProcMatcher {
    pub signing_id: Option<SigPattern>,
    pub team_id: Option<TeamMatch>,
    pub cdhash: Option<[u8; 20]>,
    pub certificate: Option<[u8; 32]>,
    pub binary_path: Option<Box<str>>,
    pub platform_binary: Option<bool>,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledWatch {
    pub rule: u32,
    pub rule_type: RuleType,
    pub allow_read_access: bool,
    pub audit_only: bool,
    pub ops: OpSet,
    pub processes: Vec<ProcMatcher>,
    /// For the process-keyed rule types: the paths the item names...
    pub paths: PathTable<()>,
    /// ... and its glob paths, with their prefix flags.
    pub globs: Vec<(Glob, bool)>,
}

impl CompiledWatch {
    /// Whether a process-keyed item names `path` (literally, as a prefix or by a glob).
    pub fn covers(&self, path: &str) -> bool {
        self.paths.longest(path).is_some()
            || self.globs.iter().any(|(g, prefix)| {
                if *prefix {
                    g.longest_prefix(path).is_some()
                } else {
                    g.matches(path)
                }
            })
    }
}

/// At most this many glob paths per policy: path-keyed globs share one regex set (one pass over
/// an event's path), process-keyed ones are tried in turn after a literal-head check, so their
/// number bounds the set's size and the fast path's cost.
pub const MAX_WATCH_GLOBS: usize = 256;

#[derive(Debug, Clone)]
pub(crate) struct CompiledMount {
    pub rule: u32,
    pub action: MountAction,
    pub flags: MountFlags,
    pub removable: Option<bool>,
    pub encrypted: Option<bool>,
    pub bus: Option<Vec<VolumeBus>>,
    pub fs_type: Option<Vec<String>>,
    pub disposition: Option<Vec<MountDisposition>>,
    pub network_hosts: Option<Vec<String>>,
    pub volume_uuid: Option<Vec<String>>,
}

impl CompiledMount {
    /// Whether matching this rule needs the helper's volume facts.
    pub fn needs_volume(&self) -> bool {
        self.removable.is_some()
            || self.encrypted.is_some()
            || self.bus.is_some()
            || self.volume_uuid.is_some()
    }
}

/// A regex set for one path-scope action, with the rule behind each pattern.
#[derive(Debug, Clone)]
pub(crate) struct RegexScope {
    pub set: regex::RegexSet,
    pub rules: Vec<u32>,
}

/// The compiled policy that `decide` reads.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub mode: Mode,
    pub bad_signature_protection: bool,
    pub package_trust: bool,
    /// Files that are not native binaries (scripts) pass by scope when no rule names them.
    pub allow_scripts: bool,
    pub mounted_at_start: crate::MountedAtStart,
    /// Some watch item exempts read-only opens (`allow_read_access` on `open`): only then does
    /// how an open opens its file change a decision.
    pub open_flags_matter: bool,
    pub kinds: [KindSettings; EventKind::ALL.len()],
    pub rules: Vec<RuleMeta>,
    pub names: HashMap<String, u32>,
    /// The static tier's identifier rules (this file's `[[exec]]`).
    pub ids: IdRules,
    pub path_block: PathTable<u32>,
    pub path_allow: PathTable<u32>,
    pub regex_block: Option<RegexScope>,
    pub regex_allow: Option<RegexScope>,
    pub watches: Vec<CompiledWatch>,
    /// Path-keyed watch items (the two `paths_with_*` rule types) by path...
    pub watch_paths: PathTable<u32>,
    /// ... and by glob path (glob, prefix flag, item), in file order...
    pub watch_globs: Vec<(Glob, bool, u32)>,
    /// ... with one regex set over them all (pattern `n` is `watch_globs[n]`), so an event
    /// costs one pass over its path to find the candidate globs, whatever their number.
    pub watch_glob_set: Option<regex::RegexSet>,
    /// Indexes of process-keyed watch items, scanned per event (expected to be few).
    pub process_watches: Vec<u32>,
    pub watched: Vec<WatchedPath>,
    pub mounts: Vec<CompiledMount>,
    pub remount_flags: HashMap<String, MountFlags>,
    pub mutes: Vec<MuteSpec>,
    pub mute_process: PathTable<()>,
    pub mute_target: PathTable<()>,
    /// The OS compiled for, and every path rewritten for it (as written, as compiled).
    pub os: Os,
    pub canonicalized: Vec<(String, String)>,
    /// Rules added locally (`gatehouse rule add`), ranked below every rule of this file; their
    /// rule indexes follow this file's.
    pub local: Option<LocalTier>,
    /// Rules of this file (the static tier): `rules[..static_rules]`.
    pub static_rules: usize,
    /// Santa's `EnableTransitiveRules`.
    pub transitive_rules: bool,
    /// The transitive allows (files written by compilers), composed in at run time.
    pub transitive: Option<std::sync::Arc<crate::transitive::TransitiveRules>>,
}

/// Exec identifier rules of one tier, one map per identifier kind, with the action sets that
/// tell whether an unknown hash or certificate could change an answer.
#[derive(Debug, Clone, Default)]
pub(crate) struct IdRules {
    pub cdhash: HashMap<[u8; 20], (u32, Action)>,
    pub sha256: HashMap<[u8; 32], (u32, Action)>,
    pub sha256_actions: ActionSet,
    pub signing: HashMap<SigTeam, HashMap<Box<str>, (u32, Action)>>,
    pub certificate: HashMap<[u8; 32], (u32, Action)>,
    pub certificate_actions: ActionSet,
    pub team: HashMap<TeamKey, (u32, Action)>,
}

impl IdRules {
    /// The same rules with every rule index moved by `by` (to follow another tier's rules).
    fn offset(mut self, by: u32) -> IdRules {
        let o = |v: &mut (u32, Action)| v.0 += by;
        self.cdhash.values_mut().for_each(o);
        self.sha256.values_mut().for_each(o);
        self.certificate.values_mut().for_each(o);
        self.team.values_mut().for_each(o);
        self.signing
            .values_mut()
            .for_each(|m| m.values_mut().for_each(o));
        self
    }
}

/// The local rules tier: identifier rules and exec path scopes, compiled from a local rules
/// file (see `local.rs`).
#[derive(Debug, Clone, Default)]
pub(crate) struct LocalTier {
    pub ids: IdRules,
    pub path_block: PathTable<u32>,
    pub path_allow: PathTable<u32>,
    pub regex_block: Option<RegexScope>,
    pub regex_allow: Option<RegexScope>,
}

impl LocalTier {
    pub(crate) fn offset(self, by: u32) -> LocalTier {
        let re = |r: Option<RegexScope>| {
            r.map(|mut r| {
                r.rules.iter_mut().for_each(|i| *i += by);
                r
            })
        };
        LocalTier {
            ids: self.ids.offset(by),
            path_block: self.path_block.map_values(|i| i + by),
            path_allow: self.path_allow.map_values(|i| i + by),
            regex_block: re(self.regex_block),
            regex_allow: re(self.regex_allow),
        }
    }

    pub(crate) fn has_path_scopes(&self) -> bool {
        !(self.path_block.is_empty()
            && self.path_allow.is_empty()
            && self.regex_block.is_none()
            && self.regex_allow.is_none())
    }
}

/// A compiled local rules file: its tier (rule indexes from 0) and its rules.
#[derive(Debug, Clone)]
pub(crate) struct CompiledLocal {
    pub tier: LocalTier,
    pub rules: Vec<RuleMeta>,
}

/// The prefix of every local rule's name in decisions, so a decision names its tier and a
/// local rule can never take a static rule's name.
pub(crate) const LOCAL_NAME_PREFIX: &str = "local:";

/// Compiles a local rules file: `version = 1` plus `[[exec]]` and `[[exec_path]]` tables with
/// the policy's keys. The same validation as the policy file's, line and column included.
pub(crate) fn compile_local(
    origin: &str,
    text: &str,
    os: Os,
) -> Result<CompiledLocal, PolicyError> {
    let ctx = Ctx { origin, text };
    let file: crate::format::LocalFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let rule = enclosing_rule_name(text, span.start);
        ctx.err(span, rule.as_deref(), e.message().trim_end().to_owned())
    })?;
    if *file.version.get_ref() != 1 {
        return Err(ctx.err(
            file.version.span(),
            None,
            format!(
                "unsupported local rules version {}: this Gatehouse reads version 1",
                file.version.get_ref()
            ),
        ));
    }
    let count = file.exec.len() + file.exec_path.len();
    if count > crate::local::LOCAL_RULES_MAX {
        return Err(ctx.err(
            0..0,
            None,
            format!(
                "{count} local rules: at most {} are allowed",
                crate::local::LOCAL_RULES_MAX
            ),
        ));
    }
    let mut b = Builder {
        ctx,
        rules: Vec::new(),
        names: HashMap::new(),
        os,
        canonicalized: Vec::new(),
        reserve_local: false,
    };
    let mut ids = IdRules::default();
    for rule in &file.exec {
        compile_exec(&mut b, rule, &mut ids)?;
    }
    let (path_block, path_allow, regex_block, regex_allow) =
        compile_paths(&mut b, &file.exec_path)?;
    for r in &mut b.rules {
        r.name = format!("{LOCAL_NAME_PREFIX}{}", r.name);
    }
    Ok(CompiledLocal {
        tier: LocalTier {
            ids,
            path_block,
            path_allow,
            regex_block,
            regex_allow,
        },
        rules: b.rules,
    })
}

/// `path` as `os`'s kernel reports it. macOS resolves `/var`, `/etc` and `/tmp` (symlinks
/// into `/private`) before Endpoint Security sees a path, so a policy written with the short
/// form would never match there; Linux paths are kept as written.
pub(crate) fn canonical_path(os: Os, path: &str) -> Option<String> {
    if os != Os::Macos {
        return None;
    }
    ["/var", "/etc", "/tmp"]
        .iter()
        .any(|p| {
            path.strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .then(|| format!("/private{path}"))
}

/// Compile-time context: the source text for positions and the origin for messages.
struct Ctx<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(
        &self,
        span: Range<usize>,
        rule: Option<&str>,
        message: impl Into<String>,
    ) -> PolicyError {
        let (line, column) = line_col(self.text, span.start);
        PolicyError {
            origin: self.origin.to_owned(),
            line,
            column,
            rule: rule.map(str::to_owned),
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The `name = "..."` of the `[[table]]` (or `[table]`) around `offset`, found textually: used
/// for errors the deserializer reports before any rule exists (unknown keys, wrong types).
pub(crate) fn enclosing_rule_name(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let before = text.get(..offset)?;
    let header = before
        .rmatch_indices('\n')
        .map(|(i, _)| i + 1)
        .chain(std::iter::once(0))
        .find(|&i| text[i..].trim_start().starts_with('['))?;
    for line in text[header..].lines().skip(1) {
        let t = line.trim_start();
        if t.starts_with('[') {
            break;
        }
        if let Some(rest) = t.strip_prefix("name") {
            let rest = rest.trim_start().strip_prefix('=')?.trim();
            let v: toml::Value = toml::from_str(&format!("v = {rest}"))
                .ok()
                .and_then(|t: toml::Table| t.get("v").cloned())?;
            return v.as_str().map(str::to_owned);
        }
    }
    None
}

fn verdict(v: FallbackVerdict) -> Verdict {
    match v {
        FallbackVerdict::Allow => Verdict::Allow,
        FallbackVerdict::Deny => Verdict::Deny,
    }
}

pub(crate) fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    if s.len() != N * 2 {
        return None;
    }
    // Accept either case; compare lower-case (docs/DESIGN.md 3a) by storing bytes.
    let mut it = s.bytes();
    for o in out.iter_mut() {
        let hi = (it.next()? as char).to_digit(16)?;
        let lo = (it.next()? as char).to_digit(16)?;
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

struct Builder<'a> {
    ctx: Ctx<'a>,
    rules: Vec<RuleMeta>,
    names: HashMap<String, u32>,
    os: Os,
    canonicalized: Vec<(String, String)>,
    /// The policy file (static tier): names beginning `local:` belong to the local tier.
    reserve_local: bool,
}

impl Builder<'_> {
    /// `path` for the target OS, remembering any rewrite for `policy check`.
    fn path(&mut self, path: &str) -> String {
        match canonical_path(self.os, path) {
            Some(c) => {
                if !self.canonicalized.iter().any(|(from, _)| from == path) {
                    self.canonicalized.push((path.to_owned(), c.clone()));
                }
                c
            }
            None => path.to_owned(),
        }
    }

    /// Registers a rule name (given, or generated) and rejects duplicates.
    fn add_rule(
        &mut self,
        name: Option<&Spanned<String>>,
        generated: impl FnOnce() -> String,
        message: Option<String>,
    ) -> Result<u32, PolicyError> {
        let name_s = match name {
            Some(n) => {
                if n.get_ref().trim().is_empty() {
                    return Err(self.ctx.err(n.span(), None, "rule name is empty"));
                }
                if self.reserve_local && n.get_ref().starts_with(LOCAL_NAME_PREFIX) {
                    return Err(self.ctx.err(
                        n.span(),
                        Some(n.get_ref()),
                        format!(
                            "rule names beginning {LOCAL_NAME_PREFIX:?} are reserved for local \
                             rules (`gatehouse rule add`)"
                        ),
                    ));
                }
                if self.names.contains_key(n.get_ref()) {
                    return Err(self.ctx.err(
                        n.span(),
                        Some(n.get_ref()),
                        format!(
                            "duplicate rule name {:?}: names must be unique",
                            n.get_ref()
                        ),
                    ));
                }
                n.get_ref().clone()
            }
            None => {
                // Generated names may repeat only for identical rules; make them unique.
                let base = generated();
                let mut candidate = base.clone();
                let mut i = 2;
                while self.names.contains_key(&candidate) {
                    candidate = format!("{base}#{i}");
                    i += 1;
                }
                candidate
            }
        };
        let idx = u32::try_from(self.rules.len()).expect("fewer than 2^32 rules");
        self.names.insert(name_s.clone(), idx);
        self.rules.push(RuleMeta {
            name: name_s,
            message,
            what: String::new(),
            compiler: false,
        });
        Ok(idx)
    }

    fn name(&self, idx: u32) -> &str {
        &self.rules[idx as usize].name
    }
}

/// Inserts an identifier rule; the same identifier with the other action is a conflict.
fn insert_id<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, (u32, Action)>,
    key: K,
    idx: u32,
    action: Action,
) -> Result<(), (u32, Action)> {
    match map.get(&key) {
        Some(&(old, old_action)) if old_action != action => Err((old, old_action)),
        Some(_) => Ok(()),
        None => {
            map.insert(key, (idx, action));
            Ok(())
        }
    }
}

fn action_str(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Block => "block",
    }
}

pub(crate) fn compile(origin: &str, text: &str, os: Os) -> Result<Compiled, PolicyError> {
    let ctx = Ctx { origin, text };
    let file: PolicyFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let rule = enclosing_rule_name(text, span.start);
        ctx.err(span, rule.as_deref(), e.message().trim_end().to_owned())
    })?;
    if *file.version.get_ref() != 1 {
        return Err(ctx.err(
            file.version.span(),
            None,
            format!(
                "unsupported policy version {}: this Gatehouse reads version 1",
                file.version.get_ref()
            ),
        ));
    }
    let mut b = Builder {
        ctx,
        rules: Vec::new(),
        names: HashMap::new(),
        os,
        canonicalized: Vec::new(),
        reserve_local: true,
    };

    let defaults = file.defaults.unwrap_or_default();
    let base = KindSettings {
        fallback: defaults.fallback.map_or(Verdict::Allow, verdict),
        helper_unavailable: defaults.helper_unavailable.map_or(Verdict::Allow, verdict),
        deadline: deadline(&b.ctx, defaults.deadline_ms.as_ref(), None)?
            .unwrap_or(Duration::from_millis(DEFAULT_DEADLINE_MS)),
    };
    let mut kinds = [base; EventKind::ALL.len()];
    let o = &defaults.kind;
    for (kind, ov) in [
        (EventKind::Exec, &o.exec),
        (EventKind::Open, &o.open),
        (EventKind::Mount, &o.mount),
        (EventKind::Remount, &o.remount),
        (EventKind::Rename, &o.rename),
        (EventKind::Unlink, &o.unlink),
        (EventKind::Truncate, &o.truncate),
        (EventKind::Link, &o.link),
        (EventKind::Create, &o.create),
        (EventKind::Clone, &o.clone),
        (EventKind::Copyfile, &o.copyfile),
        (EventKind::Exchangedata, &o.exchangedata),
    ] {
        if let Some(KindDefaults {
            fallback,
            helper_unavailable,
            deadline_ms,
        }) = ov
        {
            let k = &mut kinds[kind.index()];
            if let Some(f) = fallback {
                k.fallback = verdict(*f);
            }
            if let Some(h) = helper_unavailable {
                k.helper_unavailable = verdict(*h);
            }
            if let Some(d) = deadline(&b.ctx, deadline_ms.as_ref(), Some(kind))? {
                k.deadline = d;
            }
        }
    }

    // Exec identifier rules.
    let mut ids = IdRules::default();
    for rule in &file.exec {
        compile_exec(&mut b, rule, &mut ids)?;
    }

    // Path scopes.
    let (path_block, path_allow, regex_block, regex_allow) =
        compile_paths(&mut b, &file.exec_path)?;

    // Watch items.
    let mut watches: Vec<CompiledWatch> = Vec::new();
    let mut path_entries = Vec::new();
    let mut process_watches = Vec::new();
    let mut watched = Vec::new();
    let mut watch_globs: Vec<(Glob, bool, u32)> = Vec::new();
    let mut glob_count = 0usize;
    let mut glob_seen: HashMap<(String, bool), u32> = HashMap::new();
    for item in &file.watch {
        let idx = u32::try_from(watches.len()).expect("fewer than 2^32 watch items");
        let (w, paths, globs) = compile_watch(&mut b, item)?;
        for (p, prefix, _) in &paths {
            watched.push(WatchedPath {
                path: p.clone(),
                prefix: *prefix,
            });
        }
        for (pattern, prefix, span, g) in &globs {
            glob_count += 1;
            if glob_count > MAX_WATCH_GLOBS {
                return Err(b.ctx.err(
                    span.clone(),
                    Some(b.name(w.rule)),
                    format!(
                        "more than {MAX_WATCH_GLOBS} glob watch paths in the policy: each is \
                         tried for every watched event; use prefixes or fewer globs"
                    ),
                ));
            }
            // Backends mark the glob's literal directory as a tree (fanotify marks and ES
            // target paths cannot hold a pattern).
            let root = WatchedPath {
                path: g.root().to_owned(),
                prefix: true,
            };
            if !watched.contains(&root) {
                watched.push(root);
            }
            if matches!(
                w.rule_type,
                RuleType::PathsWithAllowedProcesses | RuleType::PathsWithDeniedProcesses
            ) {
                if let Some(&old) = glob_seen.get(&(pattern.clone(), *prefix)) {
                    return Err(b.ctx.err(
                        span.clone(),
                        Some(b.name(w.rule)),
                        format!(
                            "path {pattern:?} is already watched by item {:?}: a path may belong \
                             to one path-keyed watch item",
                            b.name(watches[old as usize].rule)
                        ),
                    ));
                }
                glob_seen.insert((pattern.clone(), *prefix), idx);
            }
        }
        match w.rule_type {
            RuleType::PathsWithAllowedProcesses | RuleType::PathsWithDeniedProcesses => {
                path_entries.extend(paths.into_iter().map(|(p, pre, span)| (p, pre, idx, span)));
                watch_globs.extend(globs.into_iter().map(|(_, pre, _, g)| (g, pre, idx)));
            }
            RuleType::ProcessesWithAllowedPaths | RuleType::ProcessesWithDeniedPaths => {
                process_watches.push(idx);
            }
        }
        watches.push(w);
    }
    let numbered = path_entries.iter().enumerate().map(|(n, (p, pre, _, _))| {
        (
            p.clone(),
            *pre,
            u32::try_from(n).expect("fewer than 2^32 watch paths"),
        )
    });
    let watch_paths = PathTable::build(numbered)
        .map_err(|(path, _, old, new)| {
            let (_, _, old, _) = &path_entries[old as usize];
            let (_, _, new, span) = &path_entries[new as usize];
            b.ctx.err(
                span.clone(),
                Some(b.name(watches[*new as usize].rule)),
                format!(
                    "path {path:?} is already watched by item {:?}: a path may belong to one \
                     path-keyed watch item",
                    b.name(watches[*old as usize].rule)
                ),
            )
        })?
        .map_values(|n| path_entries[n as usize].2);

    let watch_glob_set = if watch_globs.is_empty() {
        None
    } else {
        let pats: Vec<String> = watch_globs
            .iter()
            .map(|(g, pre, _)| g.regex(*pre))
            .collect();
        Some(regex::RegexSet::new(&pats).map_err(|e| {
            b.ctx.err(
                0..0,
                None,
                format!("the glob watch paths exceed the regex size limit together ({e}); use fewer or shorter globs"),
            )
        })?)
    };

    // Mount rules.
    let mut mounts = Vec::new();
    let mut remount_flags = HashMap::new();
    for rule in &file.mount {
        let m = compile_mount(&mut b, rule)?;
        if m.action == MountAction::Remount {
            remount_flags.insert(b.name(m.rule).to_owned(), m.flags);
        }
        mounts.push(m);
    }

    // Mutes.
    let mute = file.mute.unwrap_or_default();
    let mut mutes = Vec::new();
    for (scope, list) in [
        (MuteScope::Process, &mute.processes),
        (MuteScope::Target, &mute.targets),
    ] {
        for m in list {
            if !m.path.get_ref().starts_with('/') {
                return Err(b
                    .ctx
                    .err(m.path.span(), None, "mute paths must be absolute"));
            }
            let path = b.path(m.path.get_ref());
            mutes.push(MuteSpec {
                scope,
                path,
                prefix: m.prefix,
            });
        }
    }
    let table = |scope| {
        PathTable::build(
            mutes
                .iter()
                .filter(|m| m.scope == scope)
                .map(|m| (m.path.clone(), m.prefix, ())),
        )
        .unwrap_or_else(|_| {
            // Duplicate mutes are harmless: rebuild without them.
            let mut seen = std::collections::HashSet::new();
            PathTable::build(
                mutes
                    .iter()
                    .filter(|m| m.scope == scope && seen.insert((m.path.clone(), m.prefix)))
                    .map(|m| (m.path.clone(), m.prefix, ())),
            )
            .unwrap_or_default()
        })
    };
    let mute_process = table(MuteScope::Process);
    let mute_target = table(MuteScope::Target);

    let package_trust = defaults.package_trust.unwrap_or(os == Os::Linux);
    let open_flags_matter = watches
        .iter()
        .any(|w| w.allow_read_access && w.ops.contains(Operation::Open));
    Ok(Compiled {
        open_flags_matter,
        mode: file.mode,
        bad_signature_protection: defaults.bad_signature_protection.unwrap_or(true),
        package_trust,
        // On macOS every exec target is a Mach-O image (a script's exec reports its
        // interpreter), so only Linux, where the kernel asks about the script itself, asks.
        allow_scripts: defaults.allow_scripts.unwrap_or(true) && os == Os::Linux,
        mounted_at_start: defaults.mounted_at_start.unwrap_or_default(),
        kinds,
        names: b.names,
        ids,
        path_block,
        path_allow,
        regex_block,
        regex_allow,
        watches,
        watch_paths,
        watch_globs,
        watch_glob_set,
        process_watches,
        watched,
        mounts,
        remount_flags,
        mutes,
        mute_process,
        mute_target,
        os,
        static_rules: b.rules.len(),
        local: None,
        transitive_rules: defaults.transitive_rules.unwrap_or(false),
        transitive: None,
        canonicalized: b.canonicalized,
        rules: b.rules,
    })
}

fn deadline(
    ctx: &Ctx<'_>,
    v: Option<&Spanned<i64>>,
    kind: Option<EventKind>,
) -> Result<Option<Duration>, PolicyError> {
    let Some(v) = v else { return Ok(None) };
    let ms = *v.get_ref();
    if !DEADLINE_RANGE_MS.contains(&ms) {
        let what = kind.map_or(String::new(), |k| format!(" for {}", k.as_str()));
        return Err(ctx.err(
            v.span(),
            None,
            format!(
                "deadline_ms{what} must be between {} and {} milliseconds, found {ms}",
                DEADLINE_RANGE_MS.start,
                DEADLINE_RANGE_MS.end - 1
            ),
        ));
    }
    Ok(Some(Duration::from_millis(ms.unsigned_abs())))
}

fn compile_exec(
    b: &mut Builder<'_>,
    rule: &Spanned<ExecRule>,
    ids: &mut IdRules,
) -> Result<(), PolicyError> {
    let IdRules {
        cdhash,
        sha256,
        sha256_actions,
        signing,
        certificate,
        certificate_actions,
        team,
    } = ids;
    let r = rule.get_ref();
    let ids: Vec<(&str, &Spanned<String>)> = [
        ("cdhash", &r.cdhash),
        ("sha256", &r.sha256),
        ("signing_id", &r.signing_id),
        ("certificate", &r.certificate),
        ("team_id", &r.team_id),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect();
    let shown_name = r.name.as_ref().map(|n| n.get_ref().clone());
    let at = r.name.as_ref().map_or(rule.span(), Spanned::span);
    let (key, value) = match ids.as_slice() {
        [one] => *one,
        [] => {
            return Err(b.ctx.err(
                at,
                shown_name.as_deref(),
                "exec rule needs exactly one of cdhash, sha256, signing_id, certificate, team_id; found none",
            ));
        }
        [..] => {
            // Point at the second identifier as written in the file.
            let mut by_pos: Vec<_> = ids.iter().map(|(_, v)| v.span()).collect();
            by_pos.sort_by_key(|s| s.start);
            return Err(b.ctx.err(
                by_pos[1].clone(),
                shown_name.as_deref(),
                format!(
                    "exec rule needs exactly one of cdhash, sha256, signing_id, certificate, team_id; found {}",
                    ids.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(" and ")
                ),
            ));
        }
    };
    let v = value.get_ref().as_str();
    let bad =
        |b: &Builder<'_>, msg: String| Err(b.ctx.err(value.span(), shown_name.as_deref(), msg));
    let idx = b.add_rule(r.name.as_ref(), || format!("{key}:{v}"), r.message.clone())?;
    b.rules[idx as usize].what = format!("exec {} {key} {v}", action_str(r.action));
    if let Some(c) = &r.compiler
        && *c.get_ref()
    {
        if r.action != Action::Allow {
            return Err(b.ctx.err(
                c.span(),
                Some(b.name(idx)),
                "compiler = true only applies to an allow rule",
            ));
        }
        // Santa has compiler decisions for CDHash, binary and signing-ID rules only
        // (SNTPolicyProcessor.mm `decision:forRule:`): elsewhere ALLOWLIST_COMPILER is an
        // invalid combination that decides nothing, so it is refused here rather than allowed.
        if matches!(key, "certificate" | "team_id") {
            return Err(b.ctx.err(
                c.span(),
                Some(b.name(idx)),
                format!(
                    "compiler = true applies only to cdhash, sha256 and signing_id rules, not \
                     {key} (Santa has no {key} compiler decision)"
                ),
            ));
        }
        let meta = &mut b.rules[idx as usize];
        meta.compiler = true;
        meta.what.push_str(" (compiler)");
    }
    let conflict = |b: &Builder<'_>, (old, old_action): (u32, Action)| {
        b.ctx.err(
            value.span(),
            Some(b.name(idx)),
            format!(
                "conflicting rules for {key} {v:?}: {} here, {} in rule {:?}",
                action_str(r.action),
                action_str(old_action),
                b.name(old)
            ),
        )
    };
    match key {
        "cdhash" => {
            let Some(h) = parse_hex::<20>(v) else {
                return bad(b, format!("cdhash must be 40 hex characters, found {v:?}"));
            };
            insert_id(cdhash, h, idx, r.action).map_err(|c| conflict(b, c))?;
        }
        "sha256" => {
            let Some(h) = parse_hex::<32>(v) else {
                return bad(b, format!("sha256 must be 64 hex characters, found {v:?}"));
            };
            insert_id(sha256, h, idx, r.action).map_err(|c| conflict(b, c))?;
            sha256_actions.add(r.action);
        }
        "certificate" => {
            let Some(h) = parse_hex::<32>(v) else {
                return bad(
                    b,
                    format!("certificate must be a 64 hex character SHA-256, found {v:?}"),
                );
            };
            insert_id(certificate, h, idx, r.action).map_err(|c| conflict(b, c))?;
            certificate_actions.add(r.action);
        }
        "team_id" => {
            let Some(t) = team_key(v) else {
                return bad(
                    b,
                    format!("team_id must be 10 letters or digits, found {v:?}"),
                );
            };
            insert_id(team, t, idx, r.action).map_err(|c| conflict(b, c))?;
        }
        _ => {
            let Some((t, id)) = v.split_once(':') else {
                return bad(
                    b,
                    format!(
                        "signing_id must be TEAMID:signing.id or platform:signing.id, found {v:?}"
                    ),
                );
            };
            let Some(t) = SigTeam::parse(t) else {
                return bad(
                    b,
                    format!(
                        "signing_id {v:?}: {t:?} is neither a 10-character team id nor \"platform\""
                    ),
                );
            };
            if id.is_empty() || id.contains('*') {
                return bad(
                    b,
                    format!(
                        "signing_id {v:?}: the id after ':' must be non-empty, without wildcards"
                    ),
                );
            }
            insert_id(signing.entry(t).or_default(), id.into(), idx, r.action)
                .map_err(|c| conflict(b, c))?;
        }
    }
    Ok(())
}

type PathScopes = (
    PathTable<u32>,
    PathTable<u32>,
    Option<RegexScope>,
    Option<RegexScope>,
);

fn compile_paths(
    b: &mut Builder<'_>,
    rules: &[Spanned<PathRule>],
) -> Result<PathScopes, PolicyError> {
    let mut block = Vec::new();
    let mut allow = Vec::new();
    let mut rblock: RegexRules = Default::default();
    let mut rallow: RegexRules = Default::default();
    let mut by_prefix: HashMap<String, (u32, Action)> = HashMap::new();
    for rule in rules {
        let r = rule.get_ref();
        let shown = r.name.as_ref().map(|n| n.get_ref().clone());
        let at = r.name.as_ref().map_or(rule.span(), Spanned::span);
        match (&r.prefix, &r.regex) {
            (Some(p), None) => {
                let v = p.get_ref();
                if !v.starts_with('/') {
                    return Err(b.ctx.err(
                        p.span(),
                        shown.as_deref(),
                        format!("prefix must be an absolute path, found {v:?}"),
                    ));
                }
                let idx = b.add_rule(r.name.as_ref(), || format!("path:{v}"), r.message.clone())?;
                b.rules[idx as usize].what =
                    format!("exec_path {} prefix {v}", action_str(r.action));
                // Canonical before the duplicate check: `/tmp/` and `/private/tmp/` are one
                // prefix on macOS.
                let v = &b.path(v);
                if let Some(&(old, old_action)) = by_prefix.get(v) {
                    if old_action != r.action {
                        return Err(b.ctx.err(
                            p.span(),
                            Some(b.name(idx)),
                            format!(
                                "conflicting rules for prefix {v:?}: {} here, {} in rule {:?}",
                                action_str(r.action),
                                action_str(old_action),
                                b.name(old)
                            ),
                        ));
                    }
                    continue;
                }
                by_prefix.insert(v.clone(), (idx, r.action));
                match r.action {
                    Action::Block => block.push((v.clone(), true, idx)),
                    Action::Allow => allow.push((v.clone(), true, idx)),
                }
            }
            (None, Some(re)) => {
                let v = re.get_ref();
                // The anchored form is what the set holds, so that is what must compile.
                let pattern = anchored(v);
                if let Err(e) = regex::Regex::new(&pattern) {
                    return Err(b.ctx.err(
                        re.span(),
                        shown.as_deref(),
                        format!("invalid regex {v:?}: {e}"),
                    ));
                }
                let idx =
                    b.add_rule(r.name.as_ref(), || format!("regex:{v}"), r.message.clone())?;
                b.rules[idx as usize].what =
                    format!("exec_path {} regex {v}", action_str(r.action));
                let target = match r.action {
                    Action::Block => &mut rblock,
                    Action::Allow => &mut rallow,
                };
                target.0.push(pattern);
                target.1.push(idx);
                target.2.push(re.span());
            }
            _ => {
                return Err(b.ctx.err(
                    at,
                    shown.as_deref(),
                    "exec_path rule needs exactly one of prefix, regex",
                ));
            }
        }
    }
    let tb = PathTable::build(block).unwrap_or_default();
    let ta = PathTable::build(allow).unwrap_or_default();
    let sb = regex_set(b, rblock, "block")?;
    let sa = regex_set(b, rallow, "allow")?;
    Ok((tb, ta, sb, sa))
}

/// A path regex as Santa compiles `AllowedPathRegex` and `BlockedPathRegex`
/// (SNTConfigurator.mm `expressionForPattern:`): `^` is put in front of the text unless it
/// already begins with one, so a pattern is matched from the start of the path (`/tmp/`
/// does not match `/Users/a/tmp/x`). The text is prefixed, not grouped, as Santa does: in
/// `a|b` only `a` is anchored.
fn anchored(pattern: &str) -> String {
    if pattern.starts_with('^') {
        pattern.to_owned()
    } else {
        format!("^{pattern}")
    }
}

/// Patterns of one action, their rules and where each is written.
type RegexRules = (Vec<String>, Vec<u32>, Vec<Range<usize>>);

/// One set per action. Each pattern compiled on its own, but the set can still exceed the
/// regex size limits together: that is an error at the first pattern that tips it over,
/// never a set silently left out (which would drop every one of those rules).
fn regex_set(
    b: &Builder<'_>,
    (pats, rules, spans): RegexRules,
    action: &str,
) -> Result<Option<RegexScope>, PolicyError> {
    if pats.is_empty() {
        return Ok(None);
    }
    match regex::RegexSet::new(&pats) {
        Ok(set) => Ok(Some(RegexScope { set, rules })),
        Err(e) => {
            // Only on this error path: the shortest failing prefix, by bisection (a longer
            // prefix only grows the set).
            let (mut lo, mut hi) = (1, pats.len());
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if regex::RegexSet::new(&pats[..mid]).is_err() {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            let at = hi - 1;
            Err(b.ctx.err(
                spans[at].clone(),
                Some(b.name(rules[at])),
                format!(
                    "the {action} regexes up to this one exceed the regex size limit together \
                     ({e}); simplify or merge them"
                ),
            ))
        }
    }
}

type WatchPaths = Vec<(String, bool, Range<usize>)>;
/// Glob paths of one item: pattern (as compiled for the OS), prefix flag, span, glob.
type WatchGlobs = Vec<(String, bool, Range<usize>, Glob)>;

fn compile_watch(
    b: &mut Builder<'_>,
    item: &Spanned<WatchItem>,
) -> Result<(CompiledWatch, WatchPaths, WatchGlobs), PolicyError> {
    let w = item.get_ref();
    let name = w.name.get_ref().clone();
    let err =
        |b: &Builder<'_>, span: Range<usize>, msg: String| Err(b.ctx.err(span, Some(&name), msg));
    let rule = b.add_rule(Some(&w.name), String::new, w.message.clone())?;
    b.rules[rule as usize].what = format!("watch {}", w.rule_type.as_str());
    if w.paths.get_ref().is_empty() {
        return err(
            b,
            w.paths.span(),
            "watch item needs at least one path".into(),
        );
    }
    let mut paths = Vec::new();
    let mut globs = Vec::new();
    for p in w.paths.get_ref() {
        let v = p.path.get_ref();
        if !v.starts_with('/') {
            return err(
                b,
                p.path.span(),
                format!("watch paths must be absolute, found {v:?}"),
            );
        }
        let v = b.path(v);
        if v.contains(['*', '?', '[']) {
            match Glob::parse(&v) {
                Ok(Parsed::Glob(g)) => globs.push((v, p.prefix, p.path.span(), g)),
                Ok(Parsed::Literal(l)) => paths.push((l, p.prefix, p.path.span())),
                Err(e) => return err(b, p.path.span(), format!("glob path {v:?}: {e}")),
            }
            continue;
        }
        paths.push((v, p.prefix, p.path.span()));
    }
    let ops = match &w.operations {
        Some(ops) if ops.get_ref().is_empty() => {
            return err(
                b,
                ops.span(),
                "operations must name at least one of open, rename, unlink, truncate, link, create"
                    .into(),
            );
        }
        Some(ops) => OpSet::from_ops(ops.get_ref()),
        None => OpSet::ALL,
    };
    let process_keyed = matches!(
        w.rule_type,
        RuleType::ProcessesWithAllowedPaths | RuleType::ProcessesWithDeniedPaths
    );
    if process_keyed && w.processes.is_empty() {
        return err(
            b,
            w.name.span(),
            "a processes_with_* watch item needs at least one process entry".into(),
        );
    }
    let mut processes = Vec::new();
    for p in &w.processes {
        let mut m = compile_process(b, &name, p)?;
        if let Some(bp) = m.binary_path.take() {
            m.binary_path = Some(b.path(&bp).into());
        }
        processes.push(m);
    }
    let table = if process_keyed {
        PathTable::build(paths.iter().map(|(p, pre, _)| (p.clone(), *pre, ()))).map_err(
            |(p, ..)| {
                b.ctx.err(
                    w.paths.span(),
                    Some(&name),
                    format!("path {p:?} is listed twice"),
                )
            },
        )?
    } else {
        PathTable::default()
    };
    Ok((
        CompiledWatch {
            rule,
            rule_type: w.rule_type,
            allow_read_access: w.allow_read_access,
            audit_only: w.audit_only,
            ops,
            processes,
            paths: table,
            globs: if process_keyed {
                globs
                    .iter()
                    .map(|(_, pre, _, g)| (g.clone(), *pre))
                    .collect()
            } else {
                Vec::new()
            },
        },
        paths,
        globs,
    ))
}

fn compile_process(
    b: &Builder<'_>,
    name: &str,
    p: &Spanned<WatchProcess>,
) -> Result<ProcMatcher, PolicyError> {
    let e = p.get_ref();
    let err = |span: Range<usize>, msg: String| Err(b.ctx.err(span, Some(name), msg));
    let mut m = ProcMatcher::default();
    if let Some(s) = &e.signing_id {
        let v = s.get_ref();
        let Some((t, id)) = v.split_once(':') else {
            return err(
                s.span(),
                format!("signing_id must be TEAMID:signing.id or platform:signing.id, found {v:?}"),
            );
        };
        let Some(team) = SigTeam::parse(t) else {
            return err(
                s.span(),
                format!(
                    "signing_id {v:?}: {t:?} is neither a 10-character team id nor \"platform\""
                ),
            );
        };
        if id.is_empty() {
            return err(
                s.span(),
                format!("signing_id {v:?}: the id after ':' must be non-empty"),
            );
        }
        // The first `*` is the wildcard and any later one is literal, as Santa's
        // `PolicyMatchesProcess` splits at `signing_id_wildcard_pos` (the first `*`).
        m.signing_id = Some(match id.split_once('*') {
            Some((head, tail)) => SigPattern {
                team,
                head: head.into(),
                tail: Some(tail.into()),
            },
            None => SigPattern {
                team,
                head: id.into(),
                tail: None,
            },
        });
    }
    if let Some(t) = &e.team_id {
        let v = t.get_ref();
        m.team_id = Some(if v.eq_ignore_ascii_case("platform") {
            TeamMatch::Platform
        } else {
            match team_key(v) {
                Some(k) => TeamMatch::Team(k),
                None => {
                    return err(
                        t.span(),
                        format!(
                            "team_id must be 10 letters or digits or \"platform\", found {v:?}"
                        ),
                    );
                }
            }
        });
    }
    if let Some(c) = &e.cdhash {
        match parse_hex::<20>(c.get_ref()) {
            Some(h) => m.cdhash = Some(h),
            None => {
                return err(
                    c.span(),
                    format!("cdhash must be 40 hex characters, found {:?}", c.get_ref()),
                );
            }
        }
    }
    if let Some(c) = &e.certificate {
        match parse_hex::<32>(c.get_ref()) {
            Some(h) => m.certificate = Some(h),
            None => {
                return err(
                    c.span(),
                    format!(
                        "certificate must be a 64 hex character SHA-256, found {:?}",
                        c.get_ref()
                    ),
                );
            }
        }
    }
    if let Some(bp) = &e.binary_path {
        if !bp.get_ref().starts_with('/') {
            return err(
                bp.span(),
                format!("binary_path must be absolute, found {:?}", bp.get_ref()),
            );
        }
        m.binary_path = Some(bp.get_ref().as_str().into());
    }
    m.platform_binary = e.platform_binary;
    // A platform binary has no team id (WatchItemPolicy.h `WatchItemProcess::Create` refuses
    // TeamID with PlatformBinary): an entry asking for both, or for a team's signing id from a
    // platform binary, or the reverse, can never match and is a mistake.
    let team_platform = match (&m.team_id, &m.signing_id) {
        (Some(TeamMatch::Platform), _) => Some(true),
        (Some(TeamMatch::Team(_)), _) => Some(false),
        (None, Some(sig)) => Some(sig.team == SigTeam::Platform),
        (None, None) => None,
    };
    if let (Some(team_is_platform), Some(want)) = (team_platform, e.platform_binary)
        && team_is_platform != want
    {
        return err(
            p.span(),
            format!(
                "a process entry with platform_binary = {want} cannot also name {}",
                if team_is_platform {
                    "the \"platform\" team"
                } else {
                    "a team id (platform binaries have none)"
                }
            ),
        );
    }
    let empty = m.signing_id.is_none()
        && m.team_id.is_none()
        && m.cdhash.is_none()
        && m.certificate.is_none()
        && m.binary_path.is_none()
        && m.platform_binary.is_none();
    if empty {
        return err(p.span(), "a process entry needs at least one of signing_id, team_id, cdhash, certificate, binary_path, platform_binary".into());
    }
    Ok(m)
}

fn compile_mount(
    b: &mut Builder<'_>,
    rule: &Spanned<crate::format::MountRule>,
) -> Result<CompiledMount, PolicyError> {
    let r = rule.get_ref();
    let name = r.name.get_ref().clone();
    let idx = b.add_rule(Some(&r.name), String::new, r.message.clone())?;
    let action = *r.action.get_ref();
    b.rules[idx as usize].what = format!("mount {}", action.as_str());
    let flags = r.remount_flags;
    match (action, flags) {
        (MountAction::Remount, None) => {
            return Err(b.ctx.err(
                r.action.span(),
                Some(&name),
                "action \"remount\" needs remount_flags",
            ));
        }
        (MountAction::Remount, Some(f)) if f == MountFlags::default() => {
            return Err(b.ctx.err(
                r.action.span(),
                Some(&name),
                "remount_flags must set at least one flag",
            ));
        }
        (MountAction::Allow | MountAction::Block, Some(_)) => {
            return Err(b.ctx.err(
                r.action.span(),
                Some(&name),
                "remount_flags only apply to action \"remount\"",
            ));
        }
        _ => {}
    }
    let lower = |v: &Option<Vec<String>>| {
        v.as_ref()
            .map(|v| v.iter().map(|s| s.to_ascii_lowercase()).collect())
    };
    Ok(CompiledMount {
        rule: idx,
        action,
        flags: flags.unwrap_or_default(),
        removable: r.removable,
        encrypted: r.encrypted,
        bus: r.bus.clone(),
        fs_type: lower(&r.fs_type),
        disposition: r.disposition.clone(),
        // An IPv6 host may be written with or without brackets; sources are parsed without.
        network_hosts: r.network_hosts.as_ref().map(|v| {
            v.iter()
                .map(|h| {
                    let h = h
                        .strip_prefix('[')
                        .and_then(|h| h.strip_suffix(']'))
                        .unwrap_or(h);
                    h.to_ascii_lowercase()
                })
                .collect()
        }),
        volume_uuid: lower(&r.volume_uuid),
    })
}
