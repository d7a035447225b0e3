//! The local rules tier: exec identifier rules and exec path scopes added on the machine
//! (`gatehouse rule add`), kept in their own file and ranked below every rule of the policy
//! file (the static tier), as Santa ranks its `StaticRules` above the rules database.
//!
//! [`LocalRules`] is a validated, compiled file; [`LocalDoc`] is its editable form, which the
//! CLI changes and renders back to TOML (comments are not kept: the file is the tool's).

use serde::{Deserialize, Serialize};

use crate::compile::{self, CompiledLocal};
use crate::{Os, PolicyError};

/// Largest local rules file read (the CLI's and the extension's bounded reads).
pub const LOCAL_RULES_MAX_BYTES: u64 = 1024 * 1024;
/// Most rules a local rules file may hold.
pub const LOCAL_RULES_MAX: usize = 10_000;

/// A validated local rules file, compiled for one OS. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalRules {
    origin: String,
    source: String,
    os: Os,
    pub(crate) compiled: std::sync::Arc<CompiledLocal>,
}

impl LocalRules {
    /// Parses and validates `text` (errors name `origin`, line and column) for `os`.
    pub fn parse_for(origin: &str, text: &str, os: Os) -> Result<LocalRules, PolicyError> {
        let compiled = compile::compile_local(origin, text, os)?;
        Ok(LocalRules {
            origin: origin.to_owned(),
            source: text.to_owned(),
            os,
            compiled: std::sync::Arc::new(compiled),
        })
    }

    /// The file this came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The TOML text.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn os(&self) -> Os {
        self.os
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.compiled.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.compiled.rules.is_empty()
    }
}

/// Which tier a rule belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// The policy file: ranks above every local rule.
    Static,
    /// `gatehouse rule add`.
    Local,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Static => "static",
            Tier::Local => "local",
        }
    }
}

/// One rule as `gatehouse rule list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleInfo {
    pub tier: Tier,
    /// The name decisions carry (local rules: `local:<name>`).
    pub name: String,
    /// What it matches: `exec allow sha256 <hex>`, `exec_path block prefix /tmp/`,
    /// `watch paths_with_allowed_processes`, `mount remount`.
    pub what: String,
}

/// The editable form of a local rules file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalDoc {
    pub version: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<LocalExec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec_path: Vec<LocalPath>,
}

/// An `[[exec]]` entry: one identifier key, as in the policy file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalExec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `allow` or `block`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdhash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// An `[[exec_path]]` entry: a prefix or a regex, as in the policy file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalPath {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl LocalExec {
    /// The identifier as `key:value` (the generated rule name).
    pub fn identifier(&self) -> Option<String> {
        [
            ("cdhash", &self.cdhash),
            ("sha256", &self.sha256),
            ("signing_id", &self.signing_id),
            ("certificate", &self.certificate),
            ("team_id", &self.team_id),
        ]
        .into_iter()
        .find_map(|(k, v)| v.as_ref().map(|v| format!("{k}:{v}")))
    }
}

impl LocalPath {
    pub fn identifier(&self) -> Option<String> {
        match (&self.prefix, &self.regex) {
            (Some(p), _) => Some(format!("path:{p}")),
            (None, Some(r)) => Some(format!("regex:{r}")),
            (None, None) => None,
        }
    }
}

/// Header written above the rules.
const HEADER: &str = "# Gatehouse local rules, written by `gatehouse rule add|remove`. They rank below every\n\
# rule of the policy file. Edit with the command: comments here are not kept.\n";

impl LocalDoc {
    pub fn new() -> LocalDoc {
        LocalDoc {
            version: 1,
            ..LocalDoc::default()
        }
    }

    /// Reads the editable form of a file's text (which may be invalid as rules; validate the
    /// result with [`LocalDoc::validate`]).
    pub fn from_toml(text: &str) -> Result<LocalDoc, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("a LocalDoc always serializes");
        format!("{HEADER}{body}")
    }

    /// The rendered file, validated as the extension will validate it.
    pub fn validate(&self, origin: &str, os: Os) -> Result<(String, LocalRules), PolicyError> {
        let text = self.to_toml();
        if text.len() as u64 > LOCAL_RULES_MAX_BYTES {
            return Err(PolicyError {
                origin: origin.to_owned(),
                line: 1,
                column: 1,
                rule: None,
                message: format!(
                    "the local rules would take {} bytes, over the {LOCAL_RULES_MAX_BYTES}-byte limit",
                    text.len()
                ),
            });
        }
        let rules = LocalRules::parse_for(origin, &text, os)?;
        Ok((text, rules))
    }

    /// Removes the rules named `key` (a rule name with or without `local:`, or an identifier
    /// as `sha256:<hex>`, `team_id:<id>`, `path:<prefix>`, ...). Returns how many went.
    pub fn remove(&mut self, key: &str) -> usize {
        let key = key.strip_prefix("local:").unwrap_or(key);
        let before = self.exec.len() + self.exec_path.len();
        self.exec.retain(|r| {
            r.name.as_deref() != Some(key)
                && !r.identifier().is_some_and(|i| i.eq_ignore_ascii_case(key))
        });
        self.exec_path
            .retain(|r| r.name.as_deref() != Some(key) && r.identifier().as_deref() != Some(key));
        before - self.exec.len() - self.exec_path.len()
    }
}
