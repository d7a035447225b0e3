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
    /// One rule Santa accepts but whose effect no Gatehouse rule has.
    #[error(
        "Santa rule {n} {id:?} {what}; Gatehouse cannot express it: remove that rule and import again"
    )]
    Inexpressible { n: usize, id: String, what: String },
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
    /// Action, message, compiler flag, and the rule's number in the JSON.
    type Entry = (&'static str, Option<String>, bool, usize);
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
        let k = (key, id);
        // Every rule Santa stores, even one it never matches, takes the (identifier, type)
        // row (SNTRuleTable.mm `INSERT OR REPLACE`): a rule skipped here still ends an earlier
        // rule for the key, as REMOVE does.
        let mut forget = |k: &(&'static str, String)| {
            last.remove(k);
            order.retain(|o| o != k);
        };
        let (action, msg) = match action {
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
        let compiler = policy.ends_with("_COMPILER");
        last.insert(k, (action, msg.map(str::to_owned), compiler, n));
    }
    for (n, k) in order.iter().enumerate() {
        let (action, msg, compiler, json_n) = &last[k];
        let (key, id) = k;
        // Santa's decision table has compiler states for CDHash, binary and signing-ID rules
        // only (SNTPolicyProcessor.mm `decision:forRule:`); on a certificate or team-id rule it
        // is an "invalid rule type/state combination", treated as no rule, which also hides
        // every lower-precedence rule for that binary. Checked after last-wins, so a rule
        // replaced or removed later in the file does not count.
        if *compiler && matches!(*key, "certificate" | "team_id") {
            return Err(ImportError::Inexpressible {
                n: *json_n,
                id: id.clone(),
                what: format!(
                    "is an ALLOWLIST_COMPILER {} rule, which Santa ignores (compiler rules are \
                     BINARY, CDHASH or SIGNINGID)",
                    if *key == "team_id" {
                        "TEAMID"
                    } else {
                        "CERTIFICATE"
                    }
                ),
            });
        }
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

/// `path` as the macOS build compiles it: `/tmp`, `/var` and `/etc` (and what lies under them)
/// become their `/private/...` form, so two spellings of one path compare equal.
fn private_form(path: &str) -> String {
    for root in ["/tmp", "/var", "/etc"] {
        if path == root || path.strip_prefix(root).is_some_and(|r| r.starts_with('/')) {
            return format!("/private{path}");
        }
    }
    path.to_owned()
}

fn dict<'a>(v: &'a plist::Value, what: &str) -> Result<&'a plist::Dictionary, ImportError> {
    v.as_dictionary()
        .ok_or_else(|| ImportError::Shape(format!("{what} must be a dictionary")))
}

/// An `NSNumber`'s `boolValue`, as WatchItems.mm reads its boolean keys (`VerifyConfigKey` with
/// `[NSNumber class]`): a plist boolean, or any number (non-zero is true). Other types: `None`.
fn ns_bool(v: &plist::Value) -> Option<bool> {
    match v {
        plist::Value::Boolean(b) => Some(*b),
        plist::Value::Integer(i) => Some(i.as_signed() != Some(0)),
        plist::Value::Real(f) => Some(*f != 0.0),
        _ => None,
    }
}

/// Santa's rule-name check (WatchItems.mm `IsWatchItemNameValid`: 1 to 64 characters of
/// letters, digits, `.`, `:`, `-` and `_`).
fn valid_item_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'-' | b'_'))
}

/// Whether Santa's string key `k` of `d` is present and valid: absent is fine; otherwise a
/// string whose length (UTF-16 units, as `NSString.length`) is in `len`.
fn ns_string<'a>(
    d: &'a plist::Dictionary,
    k: &str,
    len: std::ops::RangeInclusive<usize>,
) -> Result<Option<&'a str>, String> {
    match d.get(k) {
        None => Ok(None),
        Some(v) => match v.as_string() {
            Some(s) if len.contains(&s.encode_utf16().count()) => Ok(Some(s)),
            Some(s) => Err(format!(
                "{k} has {} characters, Santa allows {} to {}",
                s.encode_utf16().count(),
                len.start(),
                len.end()
            )),
            None => Err(format!("{k} must be a string")),
        },
    }
}

/// macOS `PATH_MAX`, the longest path and binary path WatchItems.mm accepts.
const SANTA_PATH_MAX: usize = 1024;

/// Why a process entry that Santa accepts can never match a process there, if it cannot: a
/// relative BinaryPath (executables are reported by absolute path), a team id that is not a
/// real one (Santa compares it exactly with the kernel's ten upper-case characters), or a
/// certificate hash in upper case (compared exactly with the lower-case hex Santa computes).
fn dead_entry(binary_path: Option<&str>, team: Option<&str>, cert: Option<&str>) -> Option<String> {
    if let Some(bp) = binary_path
        && !bp.starts_with('/')
    {
        return Some(format!("BinaryPath {bp:?} is not absolute"));
    }
    if let Some(t) = team
        && !(t.len() == 10
            && t.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()))
    {
        return Some(format!(
            "TeamID {t:?} is not ten upper-case letters or digits"
        ));
    }
    if let Some(c) = cert
        && c.bytes().any(|b| b.is_ascii_uppercase())
    {
        return Some(format!("CertificateSha256 {c:?} is not lower-case"));
    }
    None
}

/// Translates a FileAccessPolicy plist (WatchItems.mm `ParseConfig`). An item Santa would ignore
/// (a malformed key, a bad name, no version) is an error, as an invalid watch item is in a
/// policy file. Entries and items Santa accepts but that can never apply there are left out
/// with a note, so the import decides as Santa does.
fn import_faa(bytes: &[u8], out: &mut String, notes: &mut Vec<String>) -> Result<(), ImportError> {
    let root = plist::Value::from_reader(std::io::Cursor::new(bytes))?;
    let root = dict(&root, "the root")?;
    // Santa refuses the whole configuration when these are malformed (`ParseConfig`).
    let top = |k: &str, len| ns_string(root, k, len).map_err(ImportError::Shape);
    let top_version = top("Version", 1..=256)?;
    top("EventDetailURL", 0..=6000)?;
    top("EventDetailText", 0..=48)?;
    let Some(items) = root.get("WatchItems") else {
        notes.push("file-access plist has no WatchItems".into());
        return Ok(());
    };
    let items = dict(items, "WatchItems")?;
    // Path-keyed paths already imported, to refuse what Santa leaves undefined.
    let mut seen: HashMap<(String, bool), String> = HashMap::new();
    for (name, item) in items {
        let bad = |what: String| ImportError::Shape(format!("watch item {name}: {what}"));
        if !valid_item_name(name) {
            return Err(bad(
                "Santa refuses this rule name (1 to 64 letters, digits, '.', ':', '-' or '_')"
                    .into(),
            ));
        }
        let item = dict(item, &format!("watch item {name}"))?;
        // Paths: dictionaries {Path, IsPrefix}, or plain strings (exact). Santa puts a `/` in
        // front of a relative path (Glob.mm `FindMatches`) and keeps each (path, prefix) once.
        let Some(path_values) = item.get("Paths").and_then(|v| v.as_array()) else {
            return Err(bad("Paths must be an array".into()));
        };
        let mut paths: Vec<(String, bool)> = Vec::new();
        for p in path_values {
            let (path, prefix) = if let Some(s) = p.as_string() {
                (s, false)
            } else if let Some(d) = p.as_dictionary() {
                let path = ns_string(d, "Path", 1..=SANTA_PATH_MAX)
                    .map_err(&bad)?
                    .ok_or_else(|| bad("a path entry has no Path".into()))?;
                let prefix = match d.get("IsPrefix") {
                    None => false,
                    Some(v) => {
                        ns_bool(v).ok_or_else(|| bad("IsPrefix must be a boolean".into()))?
                    }
                };
                (path, prefix)
            } else {
                return Err(bad("a Paths entry must be a string or a dictionary".into()));
            };
            let n = path.encode_utf16().count();
            if !(1..=SANTA_PATH_MAX).contains(&n) {
                return Err(bad(format!(
                    "a path has {n} characters, Santa allows 1 to {SANTA_PATH_MAX}"
                )));
            }
            // Globs keep their meaning: Gatehouse matches `*`, `?` and `[...]` as glob(3).
            let path = if path.starts_with('/') {
                path.to_owned()
            } else {
                format!("/{path}")
            };
            if !paths.contains(&(path.clone(), prefix)) {
                paths.push((path, prefix));
            }
        }
        if paths.is_empty() {
            return Err(bad("no paths".into()));
        }
        let opts = match item.get("Options") {
            None => None,
            Some(v) => Some(dict(v, &format!("watch item {name}: Options"))?),
        };
        let get_bool = |k: &str| -> Result<Option<bool>, ImportError> {
            match opts.and_then(|o| o.get(k)) {
                None => Ok(None),
                Some(v) => ns_bool(v)
                    .map(Some)
                    .ok_or_else(|| bad(format!("{k} must be a boolean"))),
            }
        };
        let opt_string = |k: &str, len| match opts {
            Some(o) => ns_string(o, k, len).map_err(&bad),
            None => Ok(None),
        };
        // Not imported (no TTY channel), but a malformed one makes Santa ignore the item.
        get_bool("EnableSilentTTYMode")?;
        opt_string("EventDetailURL", 0..=6000)?;
        opt_string("EventDetailText", 0..=48)?;
        // An NSNumber whose `longLongValue` (truncated toward zero) is not negative.
        if let Some(v) = opts.and_then(|o| o.get("RuleId")) {
            let ok = match v {
                plist::Value::Integer(i) => i.as_signed().is_none_or(|n| n >= 0),
                plist::Value::Real(f) => *f > -1.0,
                plist::Value::Boolean(_) => true,
                _ => false,
            };
            if !ok {
                return Err(bad("RuleId must be a non-negative number".into()));
            }
        }
        // Each rule needs a version: its own, or the file's (WatchItems.mm
        // `ParseConfigSingleWatchItem`: "No version information set for rule").
        if opt_string("Version", 1..=256)?.is_none() && top_version.is_none() {
            return Err(bad(
                "no Version, in its Options or at the top of the file (Santa ignores it)".into(),
            ));
        }
        // WatchItems.mm: RuleType compares case-insensitively and, when present, wins; only
        // without it does the deprecated InvertProcessExceptions choose.
        let invert = get_bool("InvertProcessExceptions")?;
        let rule_type = match opts.and_then(|o| o.get("RuleType")) {
            None if invert == Some(true) => "paths_with_denied_processes",
            None => "paths_with_allowed_processes",
            Some(v) => match v.as_string().map(str::to_ascii_lowercase).as_deref() {
                Some("pathswithallowedprocesses") => "paths_with_allowed_processes",
                Some("pathswithdeniedprocesses") => "paths_with_denied_processes",
                Some("processeswithallowedpaths") => "processes_with_allowed_paths",
                Some("processeswithdeniedpaths") => "processes_with_denied_paths",
                _ => return Err(bad(format!("unknown RuleType {v:?}"))),
            },
        };
        let process_keyed = rule_type.starts_with("processes_");
        let allow_read = get_bool("AllowReadAccess")?.unwrap_or(false);
        let audit_only = get_bool("AuditOnly")?.unwrap_or(true);
        let silent = get_bool("EnableSilentMode")?.unwrap_or(false);
        // BlockMessage is the user's message, unless the item is silent (EnableSilentMode).
        let message = opt_string("BlockMessage", 0..=2048)?.filter(|m| !m.is_empty());
        let process_values = match item.get("Processes") {
            None => &[][..],
            Some(v) => v
                .as_array()
                .map(Vec::as_slice)
                .ok_or_else(|| bad("Processes must be an array".into()))?,
        };
        let mut procs = Vec::new();
        for p in process_values {
            let d = p
                .as_dictionary()
                .ok_or_else(|| bad("a Processes entry must be a dictionary".into()))?;
            let s = |k: &str, len| ns_string(d, k, len).map_err(&bad);
            let binary_path = s("BinaryPath", 1..=SANTA_PATH_MAX)?;
            let sid = s("SigningID", 1..=512)?;
            let mut team = s("TeamID", 8..=10)?;
            let hex_key = |k: &str, n: usize| -> Result<Option<&str>, ImportError> {
                match s(k, n..=n)? {
                    Some(v) if v.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(Some(v)),
                    Some(_) => Err(bad(format!("{k} must be {n} hex characters"))),
                    None => Ok(None),
                }
            };
            let cdhash = hex_key("CDHash", 40)?;
            let cert = hex_key("CertificateSha256", 64)?;
            let mut platform = match d.get("PlatformBinary") {
                None => false,
                Some(v) => {
                    ns_bool(v).ok_or_else(|| bad("PlatformBinary must be a boolean".into()))?
                }
            };
            // WatchItemProcess::Create (WatchItemPolicy.h): a TeamID "platform" (any case) means
            // a platform binary; another 8-character TeamID, and a real TeamID together with
            // PlatformBinary, are refused.
            if team.is_some_and(|t| t.len() == 8 && !t.eq_ignore_ascii_case("platform")) {
                return Err(bad(format!(
                    "invalid TeamID {:?}",
                    team.unwrap_or_default()
                )));
            }
            if team.is_some_and(|t| t.eq_ignore_ascii_case("platform")) {
                team = None;
                platform = true;
            }
            if let (Some(t), true) = (team, platform) {
                return Err(bad(format!(
                    "a process sets both TeamID {t} and PlatformBinary, which Santa refuses"
                )));
            }
            if binary_path.is_none()
                && sid.is_none()
                && team.is_none()
                && cdhash.is_none()
                && cert.is_none()
                && !platform
            {
                return Err(bad("a process entry sets no attribute".into()));
            }
            let mut keys = Vec::new();
            if let Some(sid) = sid {
                // With a TeamID or PlatformBinary the SigningID is taken whole; without, its
                // own TEAMID: or platform: prefix scopes it, and an unscoped one is an error.
                let (t, id) = match (team, platform) {
                    (Some(t), _) => (Some(t), sid),
                    (None, true) => (None, sid),
                    _ => match sid.split_once(':') {
                        Some((t, rest)) if !rest.is_empty() && t.len() == 10 => (Some(t), rest),
                        Some((t, rest))
                            if !rest.is_empty() && t.eq_ignore_ascii_case("platform") =>
                        {
                            platform = true;
                            (None, rest)
                        }
                        _ => {
                            return Err(bad(format!(
                                "SigningID {sid:?} has neither a TeamID, nor PlatformBinary, \
                                 nor a TEAMID: or platform: prefix"
                            )));
                        }
                    },
                };
                team = t;
                // The team is part of the signing id now; a team_id key would only repeat it.
                let scope = team.unwrap_or("platform");
                keys.push(format!("signing_id = {}", q(&format!("{scope}:{id}"))));
            } else if let Some(t) = team {
                keys.push(format!("team_id = {}", q(t)));
            }
            if let Some(why) = dead_entry(binary_path, team, cert) {
                notes.push(format!(
                    "watch item {name}: a process entry left out, Santa never matches it: {why}"
                ));
                continue;
            }
            for (ours, v) in [
                ("cdhash", cdhash),
                ("certificate", cert),
                ("binary_path", binary_path),
            ] {
                if let Some(v) = v {
                    keys.push(format!("{ours} = {}", q(v)));
                }
            }
            // Santa's PlatformBinary constrains only when true (`PolicyMatchesProcess`); a
            // Gatehouse `platform_binary = false` would exclude platform binaries instead.
            if platform {
                keys.push("platform_binary = true".to_owned());
            }
            procs.push(format!("    {{ {} }},", keys.join(", ")));
        }
        // A process-keyed item applies to the processes its entries match: with none, Santa
        // never applies it (`findPolicyForProcess`).
        if process_keyed && procs.is_empty() {
            notes.push(format!(
                "watch item {name}: left out, a {rule_type} item with no process Santa can match \
                 never applies"
            ));
            continue;
        }
        if !process_keyed {
            for (path, prefix) in &paths {
                // `/tmp/x` and `/private/tmp/x` are one path to the macOS build, which
                // rewrites the first (FORMAT.md, "Compiling for an OS").
                if let Some(other) = seen.insert((private_form(path), *prefix), name.clone()) {
                    return Err(bad(format!(
                        "path {path:?} is also in watch item {other} (as written or as its \
                         /private form): Santa applies one of the two, which one is undefined; \
                         give each path to one item"
                    )));
                }
            }
        }
        let _ = write!(out, "\n[[watch]]\nname = {}\n", q(name));
        let paths: Vec<String> = paths
            .iter()
            .map(|(p, prefix)| format!("{{ path = {}, prefix = {prefix} }}", q(p)))
            .collect();
        let _ = writeln!(out, "paths = [{}]", paths.join(", "));
        let _ = writeln!(out, "rule_type = \"{rule_type}\"");
        let _ = writeln!(out, "allow_read_access = {allow_read}");
        let _ = writeln!(out, "audit_only = {audit_only}");
        if let (Some(m), false) = (message, silent) {
            let _ = writeln!(out, "message = {}", q(m));
        }
        if !procs.is_empty() {
            let _ = writeln!(out, "processes = [\n{}\n]", procs.join("\n"));
        }
    }
    Ok(())
}
