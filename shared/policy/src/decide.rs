//! The fast-path decision: exec rules in Santa's precedence, watch items, mount rules and
//! mutes, evaluated on message data plus whatever `Facts` are already known. No I/O, no locks.
//!
//! Analysis is requested only when a missing fact could change the answer: each step whose
//! input is unknown records which verdict classes its rules could produce; when a lower step
//! decides, the decision stands only if every pending class equals its own class (for example,
//! a team-id allow stands without the file hash when every SHA-256 rule is also an allow).

use model::{
    AccessFlags, AnalysisRequest, Cacheability, CodeSigning, Decision, Event, EventBody, EventKind,
    Facts, FileKind, MountDisposition, MountInfo, Needs, Outcome, Process, Reason, RuleRef,
    SigningBinding, SigningStatus,
};

use crate::Mode;
use crate::compile::{
    Compiled, CompiledMount, CompiledWatch, IdRules, LocalTier, ProcMatcher, TeamMatch,
};
use crate::format::{Action, MountAction, Operation, RuleType};
use crate::tables::{SigTeam, team_key};

/// The rule name transitive allows carry in decisions.
pub const TRANSITIVE_RULE: &str = "transitive";

/// What an exec decision amounts to, for comparing against pending unknowns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Allow,
    /// Monitor mode's default: allowed, recorded as a would-deny.
    AllowWouldDeny,
    Deny,
}

#[derive(Debug, Default)]
struct Pending {
    allow: bool,
    deny: bool,
    needs: Needs,
}

impl Pending {
    fn add(&mut self, allow: bool, block: bool) {
        self.allow |= allow;
        self.deny |= block;
    }

    /// True when some pending step could produce a class other than `c`.
    fn could_change(&self, c: Class) -> bool {
        match c {
            Class::Allow => self.deny,
            Class::Deny => self.allow,
            Class::AllowWouldDeny => self.allow || self.deny,
        }
    }
}

/// An exec decision before it is built, so that nothing allocates until it is final.
#[derive(Debug, Clone, Copy)]
enum Cand {
    Rule(u32, Action),
    BadSignature,
    Platform,
    PathBlock(u32),
    PathAllow(u32),
    /// A transitive allow (a file a compiler wrote).
    Transitive,
    NotABinary,
    Default,
}

impl Compiled {
    fn rule_ref(&self, idx: u32) -> RuleRef {
        RuleRef::new(self.rules[idx as usize].name.as_str())
    }

    fn rule_reason(&self, idx: u32) -> Reason {
        Reason::Rule {
            rule: self.rule_ref(idx),
        }
    }

    pub(crate) fn decide(&self, event: &Event, facts: &Facts) -> Outcome {
        if self.is_muted(event) {
            return Outcome::Decided(Decision::allow(Reason::Muted, Cacheability::Never));
        }
        match &event.body {
            EventBody::Exec { target } => self.decide_exec(target, facts),
            EventBody::Mount { mount } => self.decide_mount(mount, facts, false),
            EventBody::Remount { mount } => self.decide_mount(mount, facts, true),
            _ => self.decide_file(event, facts),
        }
    }

    fn is_muted(&self, event: &Event) -> bool {
        if !self.mute_process.is_empty()
            && self
                .mute_process
                .longest(&event.process.executable.path)
                .is_some()
        {
            return true;
        }
        if self.mute_target.is_empty() {
            return false;
        }
        // Every target must be muted: a rename out of a muted tree into a guarded one is not.
        let targets = event.target_paths();
        targets
            .iter()
            .all(|p| self.mute_target.longest(p).is_some())
    }

    fn class(&self, c: Cand) -> Class {
        match c {
            Cand::Rule(_, Action::Allow)
            | Cand::Platform
            | Cand::PathAllow(_)
            | Cand::Transitive
            | Cand::NotABinary => Class::Allow,
            Cand::Rule(_, Action::Block) | Cand::BadSignature | Cand::PathBlock(_) => Class::Deny,
            Cand::Default => match self.mode {
                Mode::Monitor => Class::AllowWouldDeny,
                Mode::Enforce => Class::Deny,
            },
        }
    }

    fn has_path_scopes(&self) -> bool {
        !(self.path_block.is_empty()
            && self.path_allow.is_empty()
            && self.regex_block.is_none()
            && self.regex_allow.is_none())
            || self.local.as_ref().is_some_and(LocalTier::has_path_scopes)
    }

    fn build(&self, c: Cand) -> Decision {
        match c {
            // Identifier rules depend only on the image: allows may be kernel-cached.
            // Except a compiler rule's while transitive rules are on: the extension must see
            // every exec of a compiler to track the process (a kernel-cached allow raises no
            // event). The in-process cache keeps the rule name, so a hit still tracks it.
            Cand::Rule(i, Action::Allow) => {
                let cache = if self.transitive_rules && self.rules[i as usize].compiler {
                    Cacheability::Identity
                } else {
                    Cacheability::Kernel
                };
                Decision::allow(self.rule_reason(i), cache)
            }
            Cand::Rule(i, Action::Block) => {
                Decision::deny(self.rule_reason(i), Cacheability::Identity)
            }
            Cand::BadSignature => Decision::deny(Reason::InvalidSignature, Cacheability::Identity),
            Cand::Platform => Decision::allow(Reason::PlatformBinary, Cacheability::Kernel),
            // Depends on the file alone (its hash), but the store changes at run time: an
            // allow decided just before a `clear` or an eviction could reach the kernel after
            // the kernel cache was cleared and stay there. So only the in-process cache keeps
            // it, which the extension guards with the store's generation.
            Cand::Transitive => Decision::allow(
                Reason::Rule {
                    rule: RuleRef::new(TRANSITIVE_RULE),
                },
                Cacheability::Identity,
            ),
            // Path scopes depend on where the file is, which neither a CDHash key nor the
            // kernel's caches track: never cached.
            Cand::PathBlock(i) => Decision::deny(self.rule_reason(i), Cacheability::Never),
            Cand::PathAllow(i) => Decision::allow(self.rule_reason(i), Cacheability::Never),
            // What the file is depends on its contents alone, which its identity pins.
            Cand::NotABinary => Decision::allow(Reason::NotABinary, Cacheability::Identity),
            Cand::Default => match self.mode {
                Mode::Monitor => {
                    let mut d = Decision::allow(Reason::Default, Cacheability::Never);
                    d.would_deny = true;
                    d
                }
                Mode::Enforce => {
                    // Without path scopes the default depends on the image alone.
                    let cache = if self.has_path_scopes() {
                        Cacheability::Never
                    } else {
                        Cacheability::Identity
                    };
                    Decision::deny(Reason::Default, cache)
                }
            },
        }
    }

    fn finish(&self, c: Cand, pending: &Pending, target: &Process) -> Outcome {
        if pending.could_change(self.class(c)) {
            return Outcome::Analyze(AnalysisRequest {
                needs: pending.needs,
                file: Some(target.executable.clone()),
                mount: None,
                // The certificate the helper reads must be the image the kernel checked.
                binding: target.signing.trusted_cdhash().map(SigningBinding::CdHash),
            });
        }
        Outcome::Decided(self.build(c))
    }

    fn decide_exec(&self, target: &Process, facts: &Facts) -> Outcome {
        let cs = &target.signing;
        let file = &target.executable;
        // Which identifiers this signature may match (docs/DESIGN.md 3a).
        let (may_cdhash, may_team, may_cert) = match cs.status {
            SigningStatus::Production => (true, true, true),
            SigningStatus::Development => (true, false, true),
            SigningStatus::AdHoc => (true, false, false),
            SigningStatus::Unsigned | SigningStatus::Invalid => (false, false, false),
        };
        let mut pending = Pending::default();

        // Identifier rules: the static tier (this policy file) whole, then the local tier, as
        // Santa checks its static rules before its database (SNTRuleTable.mm
        // `ruleForIdentifiers:`).
        let allowed = IdAllowed {
            cdhash: may_cdhash,
            team: may_team,
            cert: may_cert,
        };
        if let Some(c) = self.ids.find(cs, facts, allowed, &mut pending) {
            return self.finish(c, &pending, target);
        }
        if let Some(local) = &self.local
            && let Some(c) = local.ids.find(cs, facts, allowed, &mut pending)
        {
            return self.finish(c, &pending, target);
        }
        // Transitive allows, below every identifier rule (Santa's ALLOWLIST_TRANSITIVE, only
        // with EnableTransitiveRules).
        if self.transitive_rules
            && let Some(store) = &self.transitive
            && !store.is_empty()
        {
            match &facts.sha256 {
                Some(h) if store.contains(&h.0) => {
                    return self.finish(Cand::Transitive, &pending, target);
                }
                Some(_) => {}
                None => {
                    pending.add(true, false);
                    pending.needs.sha256 = true;
                }
            }
        }
        // Bad-signature protection.
        if cs.status == SigningStatus::Invalid && self.bad_signature_protection {
            return self.finish(Cand::BadSignature, &pending, target);
        }
        // Platform binaries: the kernel's flag, or (Linux) package trust from the helper. The
        // flag alone, whatever the signature's state, as Santa checks `is_platform_binary`
        // (SNTPolicyProcessor.mm `decisionForFileInfo:`, PlatformBinaryState::kRuntimeTrue):
        // an invalid one reaches here only with bad-signature protection off.
        if cs.is_platform_binary {
            return self.finish(Cand::Platform, &pending, target);
        }
        if self.package_trust && cs.status == SigningStatus::Unsigned {
            match &facts.package {
                Some(p) if p.trusted => return self.finish(Cand::Platform, &pending, target),
                Some(_) => {}
                None => {
                    pending.add(true, false);
                    pending.needs.package = true;
                }
            }
        }
        // Path scopes: block wins; the static tier's, then the local tier's.
        let path = file.path.as_str();
        let tiers = [
            Some((
                &self.path_block,
                &self.regex_block,
                &self.path_allow,
                &self.regex_allow,
            )),
            self.local
                .as_ref()
                .map(|l| (&l.path_block, &l.regex_block, &l.path_allow, &l.regex_allow)),
        ];
        for (block, regex_block, allow, regex_allow) in tiers.into_iter().flatten() {
            if let Some(i) = block.longest(path) {
                return self.finish(Cand::PathBlock(i), &pending, target);
            }
            if let Some(r) = regex_block
                && let Some(n) = first_match(r, path)
            {
                return self.finish(Cand::PathBlock(r.rules[n]), &pending, target);
            }
            if let Some(i) = allow.longest(path) {
                return self.finish(Cand::PathAllow(i), &pending, target);
            }
            if let Some(r) = regex_allow
                && let Some(n) = first_match(r, path)
            {
                return self.finish(Cand::PathAllow(r.rules[n]), &pending, target);
            }
        }
        // Out of scope: not a native binary (Santa's `fileIsScopeAllowed:`, "Not a Mach-O").
        // A signed image is Mach-O by construction (and on macOS every exec target is one: a
        // script's exec reports its interpreter), so only unsigned files are asked about.
        // `allow_scripts` is on only for Linux, whose native format is ELF: a Mach-O there runs
        // only through binfmt_misc like any other format (and a Java class shares the universal
        // Mach-O magic), so it is out of scope too.
        if self.allow_scripts && cs.status == SigningStatus::Unsigned {
            match facts.file_kind {
                Some(k) if k != FileKind::Elf => {
                    return self.finish(Cand::NotABinary, &pending, target);
                }
                Some(_) => {}
                None => {
                    pending.add(true, false);
                    pending.needs.file_kind = true;
                }
            }
        }
        self.finish(Cand::Default, &pending, target)
    }

    /// `remount`: the event is a remount of a mounted volume, whose `mount.flags` are the
    /// volume's current flags, not the ones the remount asks for.
    fn decide_mount(&self, mount: &MountInfo, facts: &Facts, remount: bool) -> Outcome {
        for m in &self.mounts {
            match mount_matches(m, mount, facts) {
                Tri::No => continue,
                Tri::Unknown => {
                    return Outcome::Analyze(AnalysisRequest {
                        needs: Needs {
                            volume: true,
                            ..Needs::default()
                        },
                        file: None,
                        mount: Some(mount.clone()),
                        binding: None,
                    });
                }
                Tri::Yes => {
                    let reason = self.rule_reason(m.rule);
                    // Mount answers depend on the volume, never on a file: not cached.
                    let d = match m.action {
                        MountAction::Allow => Decision::allow(reason, Cacheability::Never),
                        MountAction::Block => Decision::deny(reason, Cacheability::Never),
                        // A mount that already has the flags may go ahead. A remount may not,
                        // whatever the volume has now: it could be asking to drop them (read-only
                        // to read-write), so it is denied and the flags re-applied, as Santa does
                        // (SNTEndpointSecurityDeviceManager.mm `handleAuthDeviceMount:`).
                        MountAction::Remount if !remount && mount.flags.contains(&m.flags) => {
                            Decision::allow(reason, Cacheability::Never)
                        }
                        // Denied, then performed by the helper with the rule's flags added
                        // (Santa: `remount:mountMode:` after `handleAuthDeviceMount:` denies).
                        MountAction::Remount => {
                            let mut d = Decision::deny(reason, Cacheability::Never);
                            d.remount = Some(m.flags);
                            d
                        }
                    };
                    return Outcome::Decided(d);
                }
            }
        }
        Outcome::Decided(Decision::allow(Reason::Default, Cacheability::Never))
    }

    fn decide_file(&self, event: &Event, facts: &Facts) -> Outcome {
        let op = match &event.body {
            EventBody::Open { .. } => Operation::Open,
            EventBody::Rename { .. } => Operation::Rename,
            EventBody::Unlink { .. } => Operation::Unlink,
            EventBody::Truncate { .. } => Operation::Truncate,
            EventBody::Link { .. } => Operation::Link,
            EventBody::Create { .. } => Operation::Create,
            EventBody::Clone { .. } => Operation::Clone,
            EventBody::Copyfile { .. } => Operation::Copyfile,
            EventBody::Exchangedata { .. } => Operation::Exchangedata,
            EventBody::Exec { .. } | EventBody::Mount { .. } | EventBody::Remount { .. } => {
                return Outcome::Decided(Decision::allow(Reason::Default, Cacheability::Never));
            }
        };
        let targets = event.target_paths();
        let mut acc = FileAcc::default();
        for (i, path) in targets.iter().enumerate() {
            // Per target: a clone's source is only read, its destination written.
            let access = event.target_access(i);
            if let Some(item) = self.path_item(path) {
                self.apply_watch(&mut acc, item, op, access, &event.process, facts, |_| true);
            }
            for &item in &self.process_watches {
                self.apply_watch(&mut acc, item, op, access, &event.process, facts, |w| {
                    w.covers(path)
                });
            }
        }
        if acc.bad_signature {
            // Santa's FAAPolicyProcessor `ApplyPolicy`: a watched target touched by a process
            // whose signature is invalid is denied before any exemption, audit-only included.
            return Outcome::Decided(Decision::deny(
                Reason::InvalidSignature,
                Cacheability::Never,
            ));
        }
        if let Some((item, audit)) = acc.deny {
            // A hard deny stands whatever an unknown certificate would say elsewhere.
            if !audit || !acc.unknown {
                let reason = self.rule_reason(self.watches[item as usize].rule);
                let mut d = if audit {
                    let mut d = Decision::allow(reason, Cacheability::Never);
                    d.audit_only = true;
                    d
                } else {
                    Decision::deny(reason, Cacheability::Never)
                };
                d.would_deny = false;
                return Outcome::Decided(d);
            }
        }
        if acc.unknown {
            return Outcome::Analyze(AnalysisRequest {
                needs: Needs {
                    certificate: true,
                    ..Needs::default()
                },
                file: Some(event.process.executable.clone()),
                mount: None,
                // The acting process is running: the kernel's token names its code.
                binding: event.process.audit_token.map(SigningBinding::AuditToken),
            });
        }
        if let Some(item) = acc.allow {
            // Allowed because of who the caller is: never cached.
            let reason = self.rule_reason(self.watches[item as usize].rule);
            return Outcome::Decided(Decision::allow(reason, Cacheability::Never));
        }
        // No watch item decided. Never cache when one covers the path (a read exempted by
        // `allow_read_access` must not let a later write through a cached allow: the fanotify
        // ignore mark and the ES open cache both outlive the open mode) or when a process-keyed
        // item exists (the answer then depends on the caller, which the fanotify ignore mark
        // does not key on). Otherwise opens, unlinks and truncates of the same file get the same
        // answer from anyone; events with a destination path depend on that path.
        let process_keyed = self
            .process_watches
            .iter()
            .any(|&i| self.watches[i as usize].ops.contains(op));
        let cache = match event.kind() {
            _ if acc.covered || process_keyed => Cacheability::Never,
            EventKind::Open | EventKind::Unlink | EventKind::Truncate => Cacheability::Kernel,
            _ => Cacheability::Never,
        };
        Outcome::Decided(Decision::allow(Reason::Default, cache))
    }

    /// The path-keyed watch item for `path`: the longest match over literal paths, prefixes and
    /// globs (Santa's longest match over the expanded paths, `DataWatchItems::FindPolicies`).
    /// The matched length is all of `path` for an exact (non-prefix) entry and the covered
    /// leading part for a prefix; ties go to an exact entry, then a literal over a glob, then
    /// the earlier glob in the file.
    fn path_item(&self, path: &str) -> Option<u32> {
        let literal = self.watch_paths.longest_with_len(path);
        let Some(set) = &self.watch_glob_set else {
            return literal.map(|(_, _, item)| item);
        };
        // `is_match` first, so a path no glob can match never allocates.
        if !set.is_match(path) {
            return literal.map(|(_, _, item)| item);
        }
        // Rank: (length, exact, literal); a later candidate must be strictly better.
        let mut best = literal.map(|(len, exact, item)| ((len, exact, true), item));
        for n in set.matches(path).iter() {
            let (g, prefix, item) = &self.watch_globs[n];
            let len = if *prefix {
                g.longest_prefix(path)
            } else {
                g.matches(path).then_some(path.len())
            };
            if let Some(len) = len {
                let rank = (len, !*prefix, false);
                if best.is_none_or(|(r, _)| rank > r) {
                    best = Some((rank, *item));
                }
            }
        }
        best.map(|(_, item)| item)
    }

    /// Applies one watch item to one target; `covers` says whether a process-keyed item names
    /// the path.
    fn apply_watch(
        &self,
        acc: &mut FileAcc,
        item: u32,
        op: Operation,
        access: Option<AccessFlags>,
        process: &Process,
        facts: &Facts,
        covers: impl Fn(&CompiledWatch) -> bool,
    ) {
        let w = &self.watches[item as usize];
        if !w.ops.contains(op) {
            return;
        }
        acc.covered = true;
        // Bad-signature protection covers file access as well as exec: any item that applies
        // (a path-keyed item covering the target, or a process-keyed item naming the caller).
        if self.bad_signature_protection
            && process.signing.status == SigningStatus::Invalid
            && (matches!(
                w.rule_type,
                RuleType::PathsWithAllowedProcesses | RuleType::PathsWithDeniedProcesses
            ) || w
                .processes
                .iter()
                .any(|p| proc_matches(p, process, facts, false) == Tri::Yes))
        {
            acc.bad_signature = true;
            return;
        }
        // Targets only read (an open without write, append or truncate; the source of a clone
        // or copy) are exempt when reads are allowed, as Santa exempts its readable targets.
        // Unknown flags (Linux opens) count as possibly modifying.
        if w.allow_read_access && access.is_some_and(|a| !a.modifies()) {
            return;
        }
        let mut unknown = false;
        let mut matched = false;
        let allowing = w.rule_type == RuleType::PathsWithAllowedProcesses;
        for p in &w.processes {
            match proc_matches(p, process, facts, allowing) {
                Tri::Yes => {
                    matched = true;
                    break;
                }
                Tri::Unknown => unknown = true,
                Tri::No => {}
            }
        }
        // Whether this item denies, given whether the caller matches one of its entries.
        let denies = |is_match: bool| match w.rule_type {
            RuleType::PathsWithAllowedProcesses => !is_match,
            RuleType::PathsWithDeniedProcesses => is_match,
            RuleType::ProcessesWithAllowedPaths => is_match && !covers(w),
            RuleType::ProcessesWithDeniedPaths => is_match && covers(w),
        };
        // An entry that needs the certificate matters only if its match would change the answer.
        if !matched && unknown && denies(true) != denies(false) {
            acc.unknown = true;
            return;
        }
        if denies(matched) {
            acc.add_deny(item, w.audit_only);
        } else if matched && w.rule_type == RuleType::PathsWithAllowedProcesses {
            acc.allow.get_or_insert(item);
        }
    }
}

/// Which identifier kinds a signature may match (docs/DESIGN.md 3a).
#[derive(Debug, Clone, Copy)]
struct IdAllowed {
    cdhash: bool,
    team: bool,
    cert: bool,
}

impl IdRules {
    /// The first identifier rule of this tier that matches, in Santa's precedence (CDHash >
    /// SHA-256 > signing ID > certificate > team ID). Unknown facts this tier's rules depend on
    /// are added to `pending`.
    fn find(
        &self,
        cs: &CodeSigning,
        facts: &Facts,
        allowed: IdAllowed,
        pending: &mut Pending,
    ) -> Option<Cand> {
        // 1. CDHash, only when the kernel enforces it.
        if allowed.cdhash
            && !self.cdhash.is_empty()
            && let Some(cd) = cs.trusted_cdhash()
            && let Some(&(i, a)) = self.cdhash.get(&cd.0)
        {
            return Some(Cand::Rule(i, a));
        }
        // 2. Binary SHA-256 (never in the message).
        if !self.sha256.is_empty() {
            match &facts.sha256 {
                Some(h) => {
                    if let Some(&(i, a)) = self.sha256.get(&h.0) {
                        return Some(Cand::Rule(i, a));
                    }
                }
                None => {
                    pending.add(self.sha256_actions.allow, self.sha256_actions.block);
                    pending.needs.sha256 = true;
                }
            }
        }
        // 3. Signing ID.
        if allowed.team
            && !self.signing.is_empty()
            && let (Some(team), Some(id)) = (SigTeam::of(cs), cs.signing_id.as_deref())
            && let Some(&(i, a)) = self.signing.get(&team).and_then(|m| m.get(id))
        {
            return Some(Cand::Rule(i, a));
        }
        // 4. Certificate SHA-256 (from the helper on macOS).
        if allowed.cert && !self.certificate.is_empty() {
            match &facts.certificate {
                Some(c) => {
                    // The helper's `valid`: only a signature that validated earns an allow; a
                    // block applies to the certificate however its signature fared.
                    if let Some(&(i, a)) = self.certificate.get(&c.leaf_sha256.0)
                        && (c.valid || a == Action::Block)
                    {
                        return Some(Cand::Rule(i, a));
                    }
                }
                None => {
                    pending.add(
                        self.certificate_actions.allow,
                        self.certificate_actions.block,
                    );
                    pending.needs.certificate = true;
                }
            }
        }
        // 5. Team ID.
        if allowed.team
            && !self.team.is_empty()
            && let Some(t) = cs.team_id.as_deref().and_then(team_key)
            && let Some(&(i, a)) = self.team.get(&t)
        {
            return Some(Cand::Rule(i, a));
        }
        None
    }
}

/// Accumulates watch results over targets and items: any deny wins, a hard deny over an
/// audit-only one.
#[derive(Debug, Default)]
struct FileAcc {
    deny: Option<(u32, bool)>,
    allow: Option<u32>,
    unknown: bool,
    /// A watch item for this operation covers a target (even if it then exempted the event).
    covered: bool,
    /// A watch item applies and the caller's signature is invalid (bad-signature protection).
    bad_signature: bool,
}

impl FileAcc {
    fn add_deny(&mut self, item: u32, audit: bool) {
        match self.deny {
            Some((_, false)) => {}
            Some((_, true)) if audit => {}
            _ => self.deny = Some((item, audit)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Unknown,
}

/// Whether a watch item's process entry matches the acting process, as Santa's
/// `FAAPolicyProcessor::PolicyMatchesProcess` decides it: every key present must match. The
/// platform flag is the kernel's, whatever the signature's state; team id, signing id, CDHash
/// and certificate match any signed process (Santa's `CS_SIGNED`: production, development, ad
/// hoc, and invalid signatures too, which bad-signature protection deals with before this) and
/// never an unsigned one. `allowing`: a match would exempt the process (an allowed process of
/// `paths_with_allowed_processes`); then a certificate counts only if its signature validated,
/// so a binary modified on disk never earns an exemption from the certificate it used to carry.
fn proc_matches(p: &ProcMatcher, process: &Process, facts: &Facts, allowing: bool) -> Tri {
    let cs = &process.signing;
    let signed = cs.status != SigningStatus::Unsigned;
    if let Some(bp) = &p.binary_path
        && process.executable.path != **bp
    {
        return Tri::No;
    }
    // `platform_binary = false` is Gatehouse's (not a platform binary); Santa has only `true`.
    if let Some(want) = p.platform_binary
        && cs.is_platform_binary != want
    {
        return Tri::No;
    }
    if let Some(sig) = &p.signing_id {
        // The team half is checked on its own, as Santa keeps TeamID and SigningID apart: a
        // `platform:` id asks for the platform flag, not for the absence of a team id.
        let team_ok = match sig.team {
            SigTeam::Platform => cs.is_platform_binary,
            SigTeam::Team(k) => cs.team_id.as_deref().and_then(team_key) == Some(k),
        };
        let ok = signed
            && team_ok
            && cs
                .signing_id
                .as_deref()
                .is_some_and(|id| sig.matches_id(id));
        if !ok {
            return Tri::No;
        }
    }
    if let Some(t) = &p.team_id {
        let ok = match t {
            TeamMatch::Platform => cs.is_platform_binary,
            TeamMatch::Team(k) => {
                signed && cs.team_id.as_deref().and_then(team_key).as_ref() == Some(k)
            }
        };
        if !ok {
            return Tri::No;
        }
    }
    if let Some(cd) = &p.cdhash {
        // The running image's CDHash as the kernel reports it (Santa compares
        // `es_process_t.cdhash` for any signed process, enforced or not).
        let ok = signed && cs.cdhash.is_some_and(|h| h.0 == *cd);
        if !ok {
            return Tri::No;
        }
    }
    if let Some(cert) = &p.certificate {
        // Unsigned and ad hoc code has no certificate (Santa: `kBadCertHash`).
        if matches!(cs.status, SigningStatus::Unsigned | SigningStatus::AdHoc) {
            return Tri::No;
        }
        match &facts.certificate {
            Some(c) if c.leaf_sha256.0 == *cert && (c.valid || !allowing) => {}
            Some(_) => return Tri::No,
            None => return Tri::Unknown,
        }
    }
    Tri::Yes
}

/// The host of a network mount source, as Santa finds it (SNTEndpointSecurityDeviceManager.mm
/// `handleAuthNetworkMount:`: a source without `scheme://` or `//` gets the fs type as a scheme
/// and is parsed as a URL): `//user@host/share`, `smb://host/x`, `host:/export`, and IPv6 hosts in
/// brackets (`[2001:db8::5]:/srv`, `//user@[2001:db8::5]/share`), returned without them. `None`
/// when there is no host or the authority is malformed (an unclosed bracket, an unbracketed
/// IPv6 address, a character NSURL refuses in a host): then no `network_hosts` list matches,
/// as Santa's allow list does not.
fn network_host(source: &str) -> Option<&str> {
    let rest = match source.split_once("://") {
        Some((_, r)) => r,
        None => source.strip_prefix("//").unwrap_or(source),
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            if !(after.is_empty() || after.starts_with(':')) || !host.contains(':') {
                return None;
            }
            host
        }
        None => {
            let (host, port) = host_port.split_once(':').unwrap_or((host_port, ""));
            if port.contains(':') || !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // NSURL refuses a host with characters RFC 3986 does not allow in a reg-name (a
            // space, quotes, `<>`, `\`, `^`, `{|}`): Santa then has no host at all
            // (SNTEndpointSecurityDeviceManagerTest.mm `testNetworkMountFailClosedWithInvalidURL`).
            if host.bytes().any(|b| b.is_ascii() && !reg_name_byte(b)) {
                return None;
            }
            host
        }
    };
    (!host.is_empty() && !host.contains(['[', ']'])).then_some(host)
}

/// An ASCII byte RFC 3986 allows in a host's reg-name: unreserved, sub-delims, or the `%` of a
/// percent-encoding.
fn reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b)
}

fn mount_matches(m: &CompiledMount, mount: &MountInfo, facts: &Facts) -> Tri {
    // Without an explicit list, rules cover external, network and unknown volumes, not
    // internal disks or disk images (docs/DESIGN.md 3a).
    let disposition_ok = match &m.disposition {
        Some(list) => list.contains(&mount.disposition),
        None => matches!(
            mount.disposition,
            MountDisposition::External | MountDisposition::Network | MountDisposition::Unknown
        ),
    };
    if !disposition_ok {
        return Tri::No;
    }
    if let Some(types) = &m.fs_type
        && !types.iter().any(|t| t.eq_ignore_ascii_case(&mount.fs_type))
    {
        return Tri::No;
    }
    if let Some(hosts) = &m.network_hosts {
        let ok = mount.disposition == MountDisposition::Network
            && network_host(&mount.source)
                .is_some_and(|h| hosts.iter().any(|x| x.eq_ignore_ascii_case(h)));
        if !ok {
            return Tri::No;
        }
    }
    if !m.needs_volume() {
        return Tri::Yes;
    }
    let Some(v) = &facts.volume else {
        return Tri::Unknown;
    };
    let ok = m.removable.is_none_or(|r| r == v.removable)
        && m.encrypted.is_none_or(|e| e == v.encrypted)
        && m.bus.as_ref().is_none_or(|b| b.contains(&v.bus))
        && m.volume_uuid.as_ref().is_none_or(|u| {
            v.uuid
                .as_deref()
                .is_some_and(|id| u.iter().any(|x| x.eq_ignore_ascii_case(id)))
        });
    if ok { Tri::Yes } else { Tri::No }
}

/// The first matching pattern's index; `is_match` first so a miss never allocates.
fn first_match(r: &crate::compile::RegexScope, path: &str) -> Option<usize> {
    if !r.set.is_match(path) {
        return None;
    }
    r.set.matches(path).iter().next()
}

#[cfg(test)]
mod tests {
    use super::network_host;

    #[test]
    fn network_host_table() {
        #[rustfmt::skip]
        let cases = [
            ("//alice@nas.corp/share", Some("nas.corp")),
            ("smb://nas.corp/share", Some("nas.corp")),
            ("afp://bob@files:548/x", Some("files")),
            ("nfs.corp:/export/home", Some("nfs.corp")),
            ("/dev/disk4s1", None),
            // IPv6 hosts (issue 13): the host, not "[2001".
            ("[2001:db8::5]:/srv", Some("2001:db8::5")),
            ("//user@[2001:db8::5]/share", Some("2001:db8::5")),
            ("smb://[2001:db8::5]:445/share", Some("2001:db8::5")),
            ("nfs://[fe80::1%25en0]/x", Some("fe80::1%25en0")),
            // As Santa's URL parse: a bare host is a host (fs type prefixed as the scheme).
            ("nas.corp", Some("nas.corp")),
            // Unparsable: no host at all, or a malformed authority.
            ("", None),
            ("//", None),
            ("//user@/share", None),
            ("[2001:db8::5:/srv", None),
            ("2001:db8::5:/srv", None),
            ("[nas.corp]:/srv", None),
            ("[2001:db8::5]x:/srv", None),
            ("smb://host:port/x", None),
            // SNTEndpointSecurityDeviceManagerTest.mm, one row per network mount test: the host
            // Santa's allow list is checked against.
            ("smb://server.example.com/share", Some("server.example.com")), // testNetworkMountAllowedByHost
            ("localhost:/", Some("localhost")), // testNFSNetworkMountBlocked
            ("nfs-server.local:/exports/share", Some("nfs-server.local")), // testNFSNetworkMountAllowedByHost
            ("//admin@192.168.64.3/admin", Some("192.168.64.3")), // testSMBNetworkMountWithUNCFormat
            ("192.168.1.10:/exports/share", Some("192.168.1.10")), // testNFSNetworkMountWithIPAddress
            ("[2001:db8::1]:/export/path", Some("2001:db8::1")),   // testNFSNetworkMountWithIPv6
            ("//CORP;admin@server.corp.com/share", Some("server.corp.com")), // testSMBNetworkMountWithDomainPrefix
            ("//admin@[2001:db8::1]/share", Some("2001:db8::1")),  // testSMBNetworkMountWithIPv6
            ("//fileserver.local/public", Some("fileserver.local")), // testSMBNetworkMountAnonymous
            ("//admin@192.168.64.2:445/share", Some("192.168.64.2")), // testSMBNetworkMountWithPort
            ("afp://admin@timecapsule.local/backups", Some("timecapsule.local")), // testAFPNetworkMountAllowedByHost
            ("rogue-server.local:/exports/data", Some("rogue-server.local")), // testNFSNetworkMountBlockedNotOnAllowlist
            ("not a valid host", None), // testNetworkMountFailClosedWithInvalidURL
            // WebDAV keeps its URL; a space in the path is not in the host.
            ("https://dav.corp/remote.php/dav/files/a b", Some("dav.corp")),
            ("//bad\"host/share", None),
        ];
        for (src, want) in cases {
            assert_eq!(network_host(src), want, "{src}");
        }
    }
}
