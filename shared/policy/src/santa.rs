//! Import of Santa configuration into a Gatehouse policy: `santactl rule --import` JSON rules
//! and a file-access authorization (FAA) plist become one policy TOML that [`crate::Policy::parse`]
//! accepts. Rules Gatehouse has no equivalent for are left out with a comment saying so.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Deserialize;

/// A Santa input that could not be read or translated.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("Santa rules JSON is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("file-access plist is not valid: {0}")]
    Plist(#[from] plist::Error),
    #[error("file-access plist: {0}")]
    Shape(String),
}

/// The result of an import: the policy text and notes about what was skipped.
#[derive(Debug, Clone)]
pub struct Imported {
    pub policy: String,
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RulesFile {
    rules: Vec<SantaRule>,
}

#[derive(Debug, Deserialize)]
struct SantaRule {
    identifier: Option<String>,
    /// Older exports name the identifier `sha256`.
    sha256: Option<String>,
    policy: String,
    rule_type: String,
    custom_msg: Option<String>,
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
    Ok(Imported { policy: out, notes })
}

fn import_rules(json: &str, out: &mut String, notes: &mut Vec<String>) -> Result<(), ImportError> {
    let file: RulesFile = serde_json::from_str(json)?;
    // Santa applies rules in order and a later rule for the same identifier replaces an
    // earlier one; keep the last, in first-seen order.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut last: HashMap<(String, String), (&'static str, Option<String>)> = HashMap::new();
    for (n, r) in file.rules.iter().enumerate() {
        let Some(id) = r.identifier.as_ref().or(r.sha256.as_ref()) else {
            notes.push(format!("rule {}: no identifier, skipped", n + 1));
            continue;
        };
        let key = match r.rule_type.to_ascii_uppercase().as_str() {
            "BINARY" => "sha256",
            "CERTIFICATE" => "certificate",
            "TEAMID" => "team_id",
            "SIGNINGID" => "signing_id",
            "CDHASH" => "cdhash",
            other => {
                notes.push(format!(
                    "rule {} ({id}): rule_type {other} has no Gatehouse equivalent, skipped",
                    n + 1
                ));
                continue;
            }
        };
        let action = match r.policy.to_ascii_uppercase().as_str() {
            "ALLOWLIST" | "ALLOWLIST_COMPILER" | "WHITELIST" | "WHITELIST_COMPILER" => "allow",
            "BLOCKLIST" | "SILENT_BLOCKLIST" | "BLACKLIST" | "SILENT_BLACKLIST" => "block",
            "REMOVE" => {
                let k = (key.to_owned(), id.clone());
                last.remove(&k);
                order.retain(|o| *o != k);
                continue;
            }
            other => {
                notes.push(format!(
                    "rule {} ({id}): policy {other} has no Gatehouse equivalent, skipped",
                    n + 1
                ));
                continue;
            }
        };
        let k = (key.to_owned(), id.clone());
        if !last.contains_key(&k) {
            order.push(k.clone());
        }
        last.insert(k, (action, r.custom_msg.clone()));
    }
    for (n, k) in order.iter().enumerate() {
        let (action, msg) = &last[k];
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
    }
    Ok(())
}

fn dict<'a>(v: &'a plist::Value, what: &str) -> Result<&'a plist::Dictionary, ImportError> {
    v.as_dictionary()
        .ok_or_else(|| ImportError::Shape(format!("{what} must be a dictionary")))
}

fn import_faa(bytes: &[u8], out: &mut String, notes: &mut Vec<String>) -> Result<(), ImportError> {
    let root = plist::Value::from_reader(std::io::Cursor::new(bytes))?;
    let root = dict(&root, "the root")?;
    let Some(items) = root.get("WatchItems") else {
        notes.push("file-access plist has no WatchItems".into());
        return Ok(());
    };
    let items = dict(items, "WatchItems")?;
    for (name, item) in items {
        let item = dict(item, &format!("watch item {name}"))?;
        let _ = write!(out, "\n[[watch]]\nname = {}\n", q(name));
        // Paths: dictionaries {Path, IsPrefix}, or plain strings (exact).
        let mut paths = Vec::new();
        for p in item
            .get("Paths")
            .and_then(|v| v.as_array())
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let mut glob = |s: &str| {
                if s.contains(['*', '?', '[']) {
                    notes.push(format!(
                        "watch item {name}: path {s:?} is a glob in Santa; Gatehouse matches it literally"
                    ));
                }
            };
            if let Some(s) = p.as_string() {
                glob(s);
                paths.push(format!("{{ path = {}, prefix = false }}", q(s)));
            } else if let Some(d) = p.as_dictionary() {
                let path = d.get("Path").and_then(|v| v.as_string()).ok_or_else(|| {
                    ImportError::Shape(format!("watch item {name}: a path entry has no Path"))
                })?;
                glob(path);
                let prefix = d
                    .get("IsPrefix")
                    .and_then(|v| v.as_boolean())
                    .unwrap_or(false);
                paths.push(format!("{{ path = {}, prefix = {prefix} }}", q(path)));
            }
        }
        let _ = writeln!(out, "paths = [{}]", paths.join(", "));
        let opts = item.get("Options").and_then(|v| v.as_dictionary());
        let get_bool = |k: &str| opts.and_then(|o| o.get(k)).and_then(|v| v.as_boolean());
        let rule_type = match opts
            .and_then(|o| o.get("RuleType"))
            .and_then(|v| v.as_string())
        {
            Some("PathsWithAllowedProcesses") | None => {
                // Santa's legacy option inverted the process list.
                if get_bool("InvertProcessExceptions") == Some(true) {
                    "paths_with_denied_processes"
                } else {
                    "paths_with_allowed_processes"
                }
            }
            Some("PathsWithDeniedProcesses") => "paths_with_denied_processes",
            Some("ProcessesWithAllowedPaths") => "processes_with_allowed_paths",
            Some("ProcessesWithDeniedPaths") => "processes_with_denied_paths",
            Some(other) => {
                return Err(ImportError::Shape(format!(
                    "watch item {name}: unknown RuleType {other}"
                )));
            }
        };
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
        let mut procs = Vec::new();
        for p in item
            .get("Processes")
            .and_then(|v| v.as_array())
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let Some(d) = p.as_dictionary() else { continue };
            let s = |k: &str| d.get(k).and_then(|v| v.as_string());
            let platform = d.get("PlatformBinary").and_then(|v| v.as_boolean());
            let mut keys = Vec::new();
            if let Some(sid) = s("SigningID") {
                // Santa pairs a bare signing id with TeamID or PlatformBinary.
                let full = if sid.contains(':') {
                    Some(sid.to_owned())
                } else if let Some(t) = s("TeamID") {
                    Some(format!("{t}:{sid}"))
                } else if platform == Some(true) {
                    Some(format!("platform:{sid}"))
                } else {
                    notes.push(format!("watch item {name}: SigningID {sid} without TeamID or PlatformBinary, skipped"));
                    None
                };
                if let Some(f) = full {
                    keys.push(format!("signing_id = {}", q(&f)));
                }
            }
            for (santa, ours) in [
                ("TeamID", "team_id"),
                ("CDHash", "cdhash"),
                ("CertificateSha256", "certificate"),
                ("BinaryPath", "binary_path"),
            ] {
                if let Some(v) = s(santa) {
                    keys.push(format!("{ours} = {}", q(v)));
                }
            }
            if let Some(b) = platform {
                keys.push(format!("platform_binary = {b}"));
            }
            if !keys.is_empty() {
                procs.push(format!("    {{ {} }},", keys.join(", ")));
            }
        }
        if !procs.is_empty() {
            let _ = writeln!(out, "processes = [\n{}\n]", procs.join("\n"));
        }
    }
    Ok(())
}
