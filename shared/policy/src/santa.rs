//! Import of Santa configuration into a Gatehouse policy: `santactl rule --import` JSON rules
//! and a file-access authorization (FAA) plist become one policy TOML that [`crate::Policy::parse`]
//! accepts. Rules Gatehouse has no equivalent for are left out with a comment saying so.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::compile::parse_hex;
use crate::tables::{SigTeam, team_key};

/// A Santa input that could not be read or translated.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("Santa rules JSON is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("file-access plist is not valid: {0}")]
    Plist(#[from] plist::Error),
    #[error("file-access plist: {0}")]
    Shape(String),
    #[error("Santa rules JSON: {0}")]
    RulesShape(String),
    /// One rule Santa itself would refuse (santactl aborts the whole import on it too).
    #[error("Santa rule {n} {id:?} {what}; fix or remove that rule and import again")]
    Rule { n: usize, id: String, what: String },
    /// The translation produced a policy that does not parse: an importer bug, never written.
    #[error("the imported policy does not parse (please report this): {0}")]
    Untranslatable(Box<crate::PolicyError>),
}

/// The result of an import: the policy text and notes about what was skipped.
#[derive(Debug, Clone)]
pub struct Imported {
    pub policy: String,
    pub notes: Vec<String>,
}

/// TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Translates Santa's rules JSON and/or FAA plist into a Gatehouse policy (monitor mode, as
/// Santa's own default; change `mode` to enforce lockdown).
pub fn import(
    rules_json: Option<&str>,
    file_access_plist: Option<&[u8]>,
) -> Result<Imported, ImportError> {
    let mut out = String::new();
    let mut notes = Vec::new();
    out.push_str("# Imported from Santa by `gatehouse policy import-santa`.\n");
    out.push_str("version = 1\n# Santa's default client mode; set \"enforce\" for lockdown.\nmode = \"monitor\"\n");
    if let Some(json) = rules_json {
        import_rules(json, &mut out, &mut notes)?;
    }
    if let Some(plist) = file_access_plist {
        import_faa(plist, &mut out, &mut notes)?;
    }
    // The output is written out as a policy: never hand back one that does not load.
    crate::Policy::parse("imported.toml", &out)
        .map_err(|e| ImportError::Untranslatable(Box::new(e)))?;
    Ok(Imported { policy: out, notes })
}

/// What a Santa rule's `policy` becomes. Santa's table is SNTRule.mm `initWithDictionary:`.
enum Policy {
    Allow,
    Block,
    /// Santa blocks without telling the user (SILENT_*): the block stays, the message goes.
    SilentBlock,
    Remove,
    /// Valid in Santa, no Gatehouse equivalent: left out with a note.
    Unsupported,
}

fn santa_policy(p: &str) -> Option<Policy> {
    Some(match p {
        "ALLOWLIST" | "WHITELIST" | "ALLOWLIST_COMPILER" | "WHITELIST_COMPILER" => Policy::Allow,
        "BLOCKLIST" | "BLACKLIST" => Policy::Block,
        "SILENT_BLOCKLIST"
        | "SILENT_BLACKLIST"
        | "SILENT_GUI_BLOCKLIST"
        | "SILENT_TTY_BLOCKLIST" => Policy::SilentBlock,
        "REMOVE" => Policy::Remove,
        "CEL" | "ALLOWLIST_LOCAL_BINARY" | "ALLOWLIST_LOCAL_SIGNINGID" => Policy::Unsupported,
        _ => return None,
    })
}

/// Santa's identifier check and normalisation for a rule type (SNTRule.mm
/// `initWithIdentifier:`): hashes are lower-case hex, team ids upper-case, a signing id is
/// `TEAMID:id` or `platform:id` (either case) with the team half normalised and the id kept as
/// written. The result is what Gatehouse's compiler accepts, so the import always parses.
fn canonical_identifier(key: &str, id: &str) -> Result<String, String> {
    match key {
        "sha256" | "certificate" => parse_hex::<32>(id)
            .map(|_| id.to_ascii_lowercase())
            .ok_or_else(|| "must be 64 hex characters (a SHA-256)".to_owned()),
        "cdhash" => parse_hex::<20>(id)
            .map(|_| id.to_ascii_lowercase())
            .ok_or_else(|| "must be 40 hex characters".to_owned()),
        "team_id" => team_key(id)
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .ok_or_else(|| "must be 10 letters or digits".to_owned()),
        _ => {
            let Some((team, sid)) = id.split_once(':') else {
                return Err("must be TEAMID:signing.id or platform:signing.id".to_owned());
            };
            let team = match SigTeam::parse(team) {
                Some(SigTeam::Platform) => "platform".to_owned(),
                Some(SigTeam::Team(k)) => String::from_utf8_lossy(&k).into_owned(),
                None => {
                    return Err(format!(
                        "{team:?} is neither a 10-character team id nor \"platform\""
                    ));
                }
            };
            if sid.is_empty() {
                return Err("the signing id after ':' is empty".to_owned());
            }
            if sid.contains('*') {
                // Santa matches a '*' in an execution rule literally; Gatehouse refuses it
                // there (wildcards are for watch-item processes), so say so rather than guess.
                return Err("Gatehouse execution signing ids cannot contain '*'".to_owned());
            }
            Ok(format!("{team}:{sid}"))
        }
    }
}

fn import_rules(json: &str, out: &mut String, notes: &mut Vec<String>) -> Result<(), ImportError> {
    let root: serde_json::Value = serde_json::from_str(json)?;
    let Some(rules) = root.get("rules").and_then(|r| r.as_array()) else {
        return Err(ImportError::RulesShape(
            "must be an object with a \"rules\" array".into(),
        ));
    };
    // SNTRuleTable.mm `addExecutionRules:...ruleCleanup:` refuses an empty rule array (santactl
    // imports without a cleanup), so an empty rules file is an error here too.
    if rules.is_empty() {
        return Err(ImportError::RulesShape(
            "the \"rules\" array is empty (santactl refuses to import it)".into(),
        ));
    }
    // Santa keys its rule table by (identifier, rule type), both normalised, and a later rule
    // for the same key replaces an earlier one (REMOVE deletes it); keep the last, in
    // first-seen order.
    let mut order: Vec<(&'static str, String)> = Vec::new();
    type Entry = (&'static str, Option<String>, bool);
    let mut last: HashMap<(&'static str, String), Entry> = HashMap::new();
    for (n, r) in rules.iter().enumerate() {
        let n = n + 1;
        let bad = |id: &str, what: String| ImportError::Rule {
            n,
            id: id.to_owned(),
            what,
        };
        let Some(r) = r.as_object() else {
            return Err(bad("", "is not an object".into()));
        };
        // Santa lower-cases the keys and upper-cases the policy and rule type.
        let field = |k: &str| {
            r.iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .and_then(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let Some(id) = field("identifier").or_else(|| field("sha256")) else {
            return Err(bad("", "has no identifier".into()));
        };
        let rule_type = field("rule_type").unwrap_or_default().to_ascii_uppercase();
        let key = match rule_type.as_str() {
            "BINARY" => "sha256",
            "CERTIFICATE" => "certificate",
            "TEAMID" => "team_id",
            "SIGNINGID" => "signing_id",
            "CDHASH" => "cdhash",
            other => return Err(bad(id, format!("has an unknown rule_type {other:?}"))),
        };
        let policy = field("policy").unwrap_or_default().to_ascii_uppercase();
        let Some(action) = santa_policy(&policy) else {
            return Err(bad(id, format!("has an unknown policy {policy:?}")));
        };
        let id = canonical_identifier(key, id)
            .map_err(|e| bad(id, format!("{rule_type} identifier {e}")))?;
        // SNTRule.mm `initWithIdentifier:` refuses a CEL rule without its expression.
        if policy == "CEL" && field("cel_expr").is_none() {
            return Err(bad(&id, "is a CEL rule without a cel_expr".into()));
        }
        let compiler = policy.ends_with("_COMPILER");
        let k = (key, id);
        // Every rule Santa stores, even one it never matches, takes the (identifier, type)
        // row (SNTRuleTable.mm `INSERT OR REPLACE`): a rule skipped here still ends an earlier
        // rule for the key, as REMOVE does.
        let mut forget = |k: &(&'static str, String)| {
            last.remove(k);
            order.retain(|o| o != k);
        };
        let (action, msg) = match action {
            // SNTPolicyProcessor.mm has no decision for a compiler rule on a certificate or a
            // team id: Santa stores it and then treats it as no rule at all.
            Policy::Allow if compiler && matches!(key, "certificate" | "team_id") => {
                notes.push(format!(
                    "rule {n} ({}): Santa never matches {policy} on a {rule_type} rule, skipped",
                    k.1
                ));
                forget(&k);
                continue;
            }
            Policy::Allow => ("allow", field("custom_msg")),
            Policy::Block => ("block", field("custom_msg")),
            Policy::SilentBlock => ("block", None),
            Policy::Remove => {
                forget(&k);
                continue;
            }
            Policy::Unsupported => {
                notes.push(format!(
                    "rule {n} ({}): policy {policy} has no Gatehouse equivalent, skipped",
                    k.1
                ));
                forget(&k);
                continue;
            }
        };
        // Shown by Santa's block dialog only; Gatehouse's message is text alone.
        for extra in ["custom_url", "event_detail_button_label"] {
            if field(extra).is_some() {
                notes.push(format!(
                    "rule {n} ({}): {extra} has no Gatehouse equivalent, dropped",
                    k.1
                ));
            }
        }
        if !last.contains_key(&k) {
            order.push(k.clone());
        }
        // ALLOWLIST_COMPILER keeps its meaning: a compiler rule (transitive allowlisting).
        last.insert(k, (action, msg.map(str::to_owned), compiler));
    }
    for (n, k) in order.iter().enumerate() {
        let (action, msg, compiler) = &last[k];
        let (key, id) = k;
        let _ = write!(
            out,
            "\n[[exec]]\nname = {}\naction = \"{action}\"\n{key} = {}\n",
            q(&format!("santa-{}-{}", key.replace('_', "-"), n + 1)),
            q(id)
        );
        if let Some(m) = msg {
            let _ = writeln!(out, "message = {}", q(m));
        }
        if *compiler {
            out.push_str("compiler = true\n");
        }
    }
    Ok(())
}

fn dict<'a>(v: &'a plist::Value, what: &str) -> Result<&'a plist::Dictionary, ImportError> {
    v.as_dictionary()
        .ok_or_else(|| ImportError::Shape(format!("{what} must be a dictionary")))
}

/// A plist boolean as Santa reads one: any NSNumber, through `boolValue` (an `<integer>` or
/// `<real>` counts, non-zero is true). `None` for another type, which WatchItems.mm's
/// `VerifyConfigKey` refuses.
fn santa_bool(v: &plist::Value) -> Option<bool> {
    match v {
        plist::Value::Boolean(b) => Some(*b),
        plist::Value::Integer(i) => Some(i.as_signed() != Some(0)),
        plist::Value::Real(r) => Some(*r != 0.0),
        _ => None,
    }
}

/// A string value of `d[key]` within Santa's length limits (`LenRangeValidator`, counted in
/// characters as NSString does for these ASCII-range limits); `Ok(None)` when absent.
fn santa_string<'a>(
    d: &'a plist::Dictionary,
    key: &str,
    len: std::ops::RangeInclusive<usize>,
) -> Result<Option<&'a str>, String> {
    let Some(v) = d.get(key) else {
        return Ok(None);
    };
    let s = v
        .as_string()
        .ok_or_else(|| format!("{key} must be a string"))?;
    let n = s.encode_utf16().count();
    if !len.contains(&n) {
        return Err(format!(
            "{key} must be {} to {} characters long, found {n}",
            len.start(),
            len.end()
        ));
    }
    Ok(Some(s))
}

/// The longest path WatchItems.mm accepts (`PATH_MAX`).
const PATH_MAX: usize = 1024;

fn import_faa(bytes: &[u8], out: &mut String, notes: &mut Vec<String>) -> Result<(), ImportError> {
    let root = plist::Value::from_reader(std::io::Cursor::new(bytes))?;
    let root = dict(&root, "the root")?;
    // WatchItems.mm `ParseConfig`: a malformed top-level Version, EventDetailURL or
    // EventDetailText fails the whole configuration; without a Version, every item needs its own.
    let top_version = santa_string(root, "Version", 1..=256).map_err(ImportError::Shape)?;
    for (key, len) in [("EventDetailURL", 0..=6000), ("EventDetailText", 0..=48)] {
        santa_string(root, key, len).map_err(ImportError::Shape)?;
    }
    let Some(items) = root.get("WatchItems") else {
        notes.push("file-access plist has no WatchItems".into());
        return Ok(());
    };
    let items = dict(items, "WatchItems")?;
    // Which path-keyed item holds each (path, prefix), for the duplicate check below.
    let mut path_owner: HashMap<(String, bool), &str> = HashMap::new();
    for (name, item) in items {
        let bad = |what: String| ImportError::Shape(format!("watch item {name}: {what}"));
        // WatchItems.mm `IsWatchItemNameValid`: at most 64 characters of `[A-Za-z0-9._:-]`.
        if name.is_empty()
            || name.encode_utf16().count() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        {
            return Err(bad(
                "the name must be 1 to 64 letters, digits, '.', '_', ':' or '-' (Santa ignores \
                 the item)"
                    .into(),
            ));
        }
        let item = dict(item, &format!("watch item {name}"))?;
        let item_start = out.len();
        let _ = write!(out, "\n[[watch]]\nname = {}\n", q(name));
        // Paths (`VerifyConfigWatchItemPaths`): required, not empty, each a string (exact) or a
        // dictionary with a Path and an optional numeric IsPrefix.
        let Some(path_values) = item.get("Paths").and_then(|v| v.as_array()) else {
            return Err(bad("Paths must be an array".into()));
        };
        let mut paths = Vec::new();
        let mut item_paths: Vec<(String, bool)> = Vec::new();
        for p in path_values {
            // Globs keep their meaning: Gatehouse matches `*`, `?` and `[...]` as glob(3).
            let (path, prefix) = if let Some(s) = p.as_string() {
                if s.is_empty() || s.encode_utf16().count() > PATH_MAX {
                    return Err(bad(format!(
                        "path {s:?} must be 1 to {PATH_MAX} characters"
                    )));
                }
                (s, false)
            } else if let Some(d) = p.as_dictionary() {
                let path = santa_string(d, "Path", 1..=PATH_MAX)
                    .map_err(|e| bad(format!("a path entry: {e}")))?
                    .ok_or_else(|| bad("a path entry has no Path".into()))?;
                let prefix = match d.get("IsPrefix") {
                    None => false,
                    Some(v) => santa_bool(v)
                        .ok_or_else(|| bad(format!("IsPrefix of {path:?} must be a boolean")))?,
                };
                (path, prefix)
            } else {
                return Err(bad("a Paths entry must be a string or a dictionary".into()));
            };
            // Santa keeps an item's paths as a set: the same entry twice is one.
            if item_paths
                .iter()
                .any(|(p, pre)| p == path && *pre == prefix)
            {
                continue;
            }
            item_paths.push((path.to_owned(), prefix));
            paths.push(format!("{{ path = {}, prefix = {prefix} }}", q(path)));
        }
        if paths.is_empty() {
            return Err(bad("Paths is empty".into()));
        }
        let _ = writeln!(out, "paths = [{}]", paths.join(", "));
        let opts = match item.get("Options") {
            None => None,
            Some(v) => Some(
                v.as_dictionary()
                    .ok_or_else(|| bad("Options must be a dictionary".into()))?,
            ),
        };
        let mut bools = HashMap::new();
        for key in [
            "AllowReadAccess",
            "AuditOnly",
            "InvertProcessExceptions",
            "EnableSilentMode",
            "EnableSilentTTYMode",
        ] {
            if let Some(v) = opts.and_then(|o| o.get(key)) {
                let b = santa_bool(v).ok_or_else(|| bad(format!("{key} must be a boolean")))?;
                bools.insert(key, b);
            }
        }
        let get_bool = |k: &str| bools.get(k).copied();
        if let Some(o) = opts {
            for (key, len) in [
                ("BlockMessage", 0..=2048),
                ("EventDetailURL", 0..=6000),
                ("EventDetailText", 0..=48),
                ("Version", 1..=256),
            ] {
                santa_string(o, key, len).map_err(bad)?;
            }
            if let Some(v) = o.get("RuleId") {
                let ok = match v {
                    plist::Value::Integer(i) => i.as_signed().is_none_or(|n| n >= 0),
                    plist::Value::Real(r) => *r >= 0.0,
                    _ => false,
                };
                if !ok {
                    return Err(bad("RuleId must be a non-negative number".into()));
                }
            }
        }
        if top_version.is_none() && opts.and_then(|o| o.get("Version")).is_none() {
            return Err(bad(
                "no Version, neither at the top level nor in Options (Santa ignores the item)"
                    .into(),
            ));
        }
        // WatchItems.mm: RuleType compares case-insensitively and, when present, wins; only
        // without it does the deprecated InvertProcessExceptions choose.
        let rule_type = match opts.and_then(|o| o.get("RuleType")) {
            None if get_bool("InvertProcessExceptions") == Some(true) => {
                "paths_with_denied_processes"
            }
            None => "paths_with_allowed_processes",
            Some(v) => match v.as_string().map(str::to_ascii_lowercase).as_deref() {
                Some("pathswithallowedprocesses") => "paths_with_allowed_processes",
                Some("pathswithdeniedprocesses") => "paths_with_denied_processes",
                Some("processeswithallowedpaths") => "processes_with_allowed_paths",
                Some("processeswithdeniedpaths") => "processes_with_denied_paths",
                _ => {
                    return Err(ImportError::Shape(format!(
                        "watch item {name}: unknown RuleType {v:?}"
                    )));
                }
            },
        };
        // Santa's prefix tree keeps one item per path, whichever it inserts last from an
        // unordered set; Gatehouse refuses the file rather than pick one.
        if rule_type.starts_with("paths_") {
            for key in item_paths {
                if let Some(other) = path_owner.insert(key.clone(), name) {
                    return Err(bad(format!(
                        "path {:?} is also watched by item {other}: Santa keeps one of the two \
                         (which one is not defined), Gatehouse refuses both",
                        key.0
                    )));
                }
            }
        }
        let _ = writeln!(out, "rule_type = \"{rule_type}\"");
        let _ = writeln!(
            out,
            "allow_read_access = {}",
            get_bool("AllowReadAccess").unwrap_or(false)
        );
        let _ = writeln!(
            out,
            "audit_only = {}",
            get_bool("AuditOnly").unwrap_or(true)
        );
        // BlockMessage is the user's message, unless the item is silent (EnableSilentMode).
        let message = opts
            .and_then(|o| o.get("BlockMessage"))
            .and_then(|v| v.as_string())
            .filter(|m| !m.is_empty());
        if let (Some(m), false) = (message, get_bool("EnableSilentMode") == Some(true)) {
            let _ = writeln!(out, "message = {}", q(m));
        }
        let mut procs = Vec::new();
        // Processes (`VerifyConfigWatchItemProcesses`): an array of dictionaries whose keys
        // have Santa's types and lengths; one malformed entry invalidates the item.
        let proc_values = match item.get("Processes") {
            None => &[][..],
            Some(v) => v
                .as_array()
                .ok_or_else(|| bad("Processes must be an array".into()))?
                .as_slice(),
        };
        for p in proc_values {
            let d = p
                .as_dictionary()
                .ok_or_else(|| bad("each Processes entry must be a dictionary".into()))?;
            let text = |k: &str, len| santa_string(d, k, len).map_err(&bad);
            let binary_path = text("BinaryPath", 1..=PATH_MAX)?;
            let signing_id = text("SigningID", 1..=512)?;
            let mut team = text("TeamID", 8..=10)?;
            let hex = |key: &str, len: usize| match text(key, 0..=usize::MAX)? {
                Some(h) if h.len() != len || !h.bytes().all(|b| b.is_ascii_hexdigit()) => Err(bad(
                    format!("{key} must be {len} hex characters, found {h:?}"),
                )),
                h => Ok(h),
            };
            let cdhash = hex("CDHash", 40)?;
            let certificate = hex("CertificateSha256", 64)?;
            if let Some(t) = team
                && t.len() == 8
                && !t.eq_ignore_ascii_case("platform")
            {
                return Err(bad(format!("invalid TeamID {t:?}")));
            }
            let mut platform = match d.get("PlatformBinary") {
                None => false,
                Some(v) => {
                    santa_bool(v).ok_or_else(|| bad("PlatformBinary must be a boolean".into()))?
                }
            };
            // WatchItemProcess::Create: an entry needs at least one attribute, and
            // PlatformBinary = false is none (it only means "no platform requirement").
            if !platform
                && [binary_path, signing_id, team, cdhash, certificate]
                    .iter()
                    .all(Option::is_none)
            {
                return Err(bad(
                    "a Processes entry sets no attribute (Santa refuses it)".into(),
                ));
            }
            // WatchItemProcess::Create (WatchItemPolicy.h): a TeamID "platform" (any case) means
            // a platform binary; a real TeamID together with PlatformBinary is refused.
            if team.is_some_and(|t| t.eq_ignore_ascii_case("platform")) {
                team = None;
                platform = true;
            }
            if let (Some(t), true) = (team, platform) {
                return Err(bad(format!(
                    "a process sets both TeamID {t} and PlatformBinary, which Santa refuses"
                )));
            }
            if let Some(t) = team
                && team_key(t).is_none()
            {
                return Err(bad(format!("TeamID {t:?} must be 10 letters or digits")));
            }
            let platform = platform.then_some(true);
            let mut keys = Vec::new();
            if let Some(sid) = signing_id {
                // With a TeamID or PlatformBinary the SigningID is taken whole; without, its
                // own TEAMID: or platform: prefix scopes it, and an unscoped one is an error.
                let full = match (team, platform) {
                    (Some(t), _) => format!("{t}:{sid}"),
                    (None, Some(true)) => format!("platform:{sid}"),
                    _ => match sid.split_once(':') {
                        Some((t, rest)) if !rest.is_empty() && SigTeam::parse(t).is_some() => {
                            sid.to_owned()
                        }
                        _ => {
                            return Err(bad(format!(
                                "SigningID {sid:?} has neither a TeamID, nor PlatformBinary, \
                                 nor a TEAMID: or platform: prefix"
                            )));
                        }
                    },
                };
                // Santa's wildcard is the first '*' and later ones match literally
                // (FAAPolicyProcessor.mm `PolicyMatchesProcess:`); Gatehouse refuses a second
                // one rather than guess which was meant.
                if sid.matches('*').count() > 1 {
                    return Err(bad(format!(
                        "SigningID {sid:?} has more than one '*', which Gatehouse refuses"
                    )));
                }
                // The team is part of the signing id now; a team_id key would only repeat it.
                keys.push(format!("signing_id = {}", q(&full)));
            } else if let Some(t) = team {
                keys.push(format!("team_id = {}", q(t)));
            }
            for (ours, value) in [
                ("cdhash", cdhash),
                ("certificate", certificate),
                ("binary_path", binary_path),
            ] {
                if let Some(v) = value {
                    keys.push(format!("{ours} = {}", q(v)));
                }
            }
            // Santa's PlatformBinary only ever requires a platform binary
            // (FAAPolicyProcessor.mm `PolicyMatchesProcess:`); false requires nothing, unlike
            // Gatehouse's `platform_binary = false`, so only true is written.
            if let Some(b) = platform {
                keys.push(format!("platform_binary = {b}"));
            }
            procs.push(format!("    {{ {} }},", keys.join(", ")));
        }
        if procs.is_empty() && rule_type.starts_with("processes_") {
            // Santa loads a process-keyed item without processes, and it applies to no one;
            // Gatehouse requires a process, so the item is left out to the same effect.
            out.truncate(item_start);
            notes.push(format!(
                "watch item {name}: {rule_type} without Processes applies to no process in \
                 Santa, skipped"
            ));
            continue;
        }
        if !procs.is_empty() {
            let _ = writeln!(out, "processes = [\n{}\n]", procs.join("\n"));
        }
    }
    Ok(())
}
