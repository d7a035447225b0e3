//! Mute specifications: paths whose processes (or targets) are never analysed.

use serde::{Deserialize, Serialize};

/// Whether a mute applies to the acting process's executable or to the event's target path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MuteScope {
    Process,
    Target,
}

/// One muted path: literal, or a plain string prefix (as `es_mute_path` takes them).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MuteSpec {
    pub scope: MuteScope,
    pub path: String,
    #[serde(default)]
    pub prefix: bool,
}

impl MuteSpec {
    pub fn matches(&self, path: &str) -> bool {
        if self.prefix {
            path.starts_with(&self.path)
        } else {
            path == self.path
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_table() {
        let lit = MuteSpec {
            scope: MuteScope::Process,
            path: "/usr/bin/a".into(),
            prefix: false,
        };
        let pre = MuteSpec {
            scope: MuteScope::Target,
            path: "/var/log/".into(),
            prefix: true,
        };
        let cases = [
            (&lit, "/usr/bin/a", true),
            (&lit, "/usr/bin/ab", false),
            (&pre, "/var/log/x", true),
            (&pre, "/var/lo", false),
        ];
        for (spec, path, want) in cases {
            assert_eq!(spec.matches(path), want, "{spec:?} {path}");
        }
    }
}
