//! The policy file as written: serde structures that mirror FORMAT.md key for key.
//!
//! Every table denies unknown keys so that a typo is an error, not a silently ignored rule.
//! Values that validation may reject keep their spans (`Spanned`) so errors point at them.

use serde::Deserialize;
use toml::Spanned;

/// `allow` or `block`, for exec identifier and path rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    Allow,
    Block,
}

/// `allow` or `deny`, for fallbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FallbackVerdict {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    pub version: Spanned<i64>,
    pub mode: crate::Mode,
    #[serde(default)]
    pub defaults: Option<Defaults>,
    #[serde(default)]
    pub exec: Vec<Spanned<ExecRule>>,
    #[serde(default)]
    pub exec_path: Vec<Spanned<PathRule>>,
    #[serde(default)]
    pub watch: Vec<Spanned<WatchItem>>,
    #[serde(default)]
    pub mount: Vec<Spanned<MountRule>>,
    #[serde(default)]
    pub mute: Option<Mute>,
}

/// A local rules file (`gatehouse rule add`): exec identifier rules and exec path scopes only,
/// with the policy's keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LocalFile {
    pub version: Spanned<i64>,
    #[serde(default)]
    pub exec: Vec<Spanned<ExecRule>>,
    #[serde(default)]
    pub exec_path: Vec<Spanned<PathRule>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KindDefaults {
    pub fallback: Option<FallbackVerdict>,
    pub helper_unavailable: Option<FallbackVerdict>,
    pub deadline_ms: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KindOverrides {
    pub exec: Option<KindDefaults>,
    pub open: Option<KindDefaults>,
    pub mount: Option<KindDefaults>,
    pub remount: Option<KindDefaults>,
    pub rename: Option<KindDefaults>,
    pub unlink: Option<KindDefaults>,
    pub truncate: Option<KindDefaults>,
    pub link: Option<KindDefaults>,
    pub create: Option<KindDefaults>,
    pub clone: Option<KindDefaults>,
    pub copyfile: Option<KindDefaults>,
    pub exchangedata: Option<KindDefaults>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Defaults {
    pub fallback: Option<FallbackVerdict>,
    pub helper_unavailable: Option<FallbackVerdict>,
    pub deadline_ms: Option<Spanned<i64>>,
    pub bad_signature_protection: Option<bool>,
    /// Linux: a file owned by an installed package with a matching digest is a platform binary.
    pub package_trust: Option<bool>,
    /// macOS: volumes mounted before the extension started that the mount rules deny.
    pub mounted_at_start: Option<crate::MountedAtStart>,
    /// An exec of a file that is not a native binary (a script) and that no rule names is
    /// allowed by scope, as Santa allows what is not a Mach-O. Default true.
    pub allow_scripts: Option<bool>,
    /// Santa's `EnableTransitiveRules`: compiler rules create transitive allows (default false).
    pub transitive_rules: Option<bool>,
    #[serde(default)]
    pub kind: KindOverrides,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecRule {
    pub name: Option<Spanned<String>>,
    pub action: Action,
    /// Santa's `ALLOWLIST_COMPILER`: files this program writes become allowed (transitive).
    #[serde(default)]
    pub compiler: Option<Spanned<bool>>,
    pub cdhash: Option<Spanned<String>>,
    pub sha256: Option<Spanned<String>>,
    pub signing_id: Option<Spanned<String>>,
    pub certificate: Option<Spanned<String>>,
    pub team_id: Option<Spanned<String>>,
    /// Shown to the user on a block (Santa's `custom_msg`).
    pub message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PathRule {
    pub name: Option<Spanned<String>>,
    pub action: Action,
    pub prefix: Option<Spanned<String>>,
    pub regex: Option<Spanned<String>>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RuleType {
    #[default]
    PathsWithAllowedProcesses,
    PathsWithDeniedProcesses,
    ProcessesWithAllowedPaths,
    ProcessesWithDeniedPaths,
}

impl RuleType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RuleType::PathsWithAllowedProcesses => "paths_with_allowed_processes",
            RuleType::PathsWithDeniedProcesses => "paths_with_denied_processes",
            RuleType::ProcessesWithAllowedPaths => "processes_with_allowed_paths",
            RuleType::ProcessesWithDeniedPaths => "processes_with_denied_paths",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Operation {
    Open,
    Rename,
    Unlink,
    Truncate,
    Link,
    Create,
    Clone,
    Copyfile,
    Exchangedata,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchPath {
    pub path: Spanned<String>,
    #[serde(default)]
    pub prefix: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchProcess {
    pub signing_id: Option<Spanned<String>>,
    pub team_id: Option<Spanned<String>>,
    pub cdhash: Option<Spanned<String>>,
    pub certificate: Option<Spanned<String>>,
    pub binary_path: Option<Spanned<String>>,
    pub platform_binary: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchItem {
    pub name: Spanned<String>,
    pub paths: Spanned<Vec<WatchPath>>,
    #[serde(default)]
    pub rule_type: RuleType,
    #[serde(default)]
    pub allow_read_access: bool,
    #[serde(default = "yes")]
    pub audit_only: bool,
    pub operations: Option<Spanned<Vec<Operation>>>,
    #[serde(default)]
    pub processes: Vec<Spanned<WatchProcess>>,
    pub message: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MountAction {
    Allow,
    Block,
    Remount,
}

impl MountAction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MountAction::Allow => "allow",
            MountAction::Block => "block",
            MountAction::Remount => "remount",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MountRule {
    pub name: Spanned<String>,
    pub action: Spanned<MountAction>,
    /// Flags a `remount` rule requires; a mount that already has them is allowed.
    pub remount_flags: Option<model::MountFlags>,
    pub removable: Option<bool>,
    pub encrypted: Option<bool>,
    pub bus: Option<Vec<model::VolumeBus>>,
    pub fs_type: Option<Vec<String>>,
    pub disposition: Option<Vec<model::MountDisposition>>,
    pub network_hosts: Option<Vec<String>>,
    pub volume_uuid: Option<Vec<String>>,
    pub message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MutePath {
    pub path: Spanned<String>,
    #[serde(default)]
    pub prefix: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Mute {
    #[serde(default)]
    pub processes: Vec<MutePath>,
    #[serde(default)]
    pub targets: Vec<MutePath>,
}
