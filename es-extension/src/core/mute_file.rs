//! The runtime mutes file (`gatehouse mute add|remove`): parsed and rendered here (pure), read
//! at start and rewritten atomically by the control thread on every change, so a runtime mute
//! survives a restart as a local rule does.
//!
//! The extension owns the file: it writes it under the control update lock *before* the new
//! mute set goes into force, so what is in force is never more than what a restart would
//! restore (a mute that could not be saved is refused, not applied for this run only). Reading
//! is bounded (size, count, each entry validated as `mute add` validates it); a bad file is
//! logged and skipped, never a reason not to start.

use model::{MuteScope, MuteSpec};
use serde::{Deserialize, Serialize};

use super::mutes::{MAX_MUTE_PATH, MAX_RUNTIME_MUTES, validate};

/// Largest mutes file read: every runtime mute at its longest path, with room for the keys.
pub const MUTES_FILE_MAX_BYTES: u64 = (MAX_RUNTIME_MUTES * (MAX_MUTE_PATH + 64)) as u64;

const HEADER: &str = "# Runtime mutes, written by gatehouse-extension on every `gatehouse mute add|remove`\n\
                      # and loaded at start. Edit with the CLI: a hand edit is read only at the next start.\n";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    version: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    mute: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    scope: MuteScope,
    path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    prefix: bool,
}

/// The file's text for `mutes` (in order).
pub fn render(mutes: &[MuteSpec]) -> String {
    let doc = Doc {
        version: 1,
        mute: mutes
            .iter()
            .map(|m| Entry {
                scope: m.scope,
                path: m.path.clone(),
                prefix: m.prefix,
            })
            .collect(),
    };
    // Plain strings and booleans: serializing cannot fail.
    let body = toml::to_string(&doc).unwrap_or_default();
    format!("{HEADER}{body}")
}

/// What reading a mutes file found: the mutes to restore, and each refused entry with why.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub mutes: Vec<MuteSpec>,
    pub refused: Vec<String>,
}

/// Parse a mutes file's text. A malformed document is an error (nothing restored); a
/// well-formed document with an invalid entry restores the others and reports the entry.
pub fn parse(origin: &str, text: &str) -> Result<Parsed, String> {
    let doc: Doc = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
    if doc.version != 1 {
        return Err(format!(
            "{origin}: version {} is not supported (this extension writes version 1)",
            doc.version
        ));
    }
    let mut out = Parsed::default();
    for (i, e) in doc.mute.into_iter().enumerate() {
        let spec = MuteSpec {
            scope: e.scope,
            path: e.path,
            prefix: e.prefix,
        };
        if out.mutes.len() >= MAX_RUNTIME_MUTES {
            out.refused.push(format!(
                "{origin}: entry {}: more than {MAX_RUNTIME_MUTES} runtime mutes",
                i + 1
            ));
            continue;
        }
        match validate(&spec) {
            Ok(()) => out.mutes.push(spec),
            Err(e) => out.refused.push(format!("{origin}: entry {}: {e}", i + 1)),
        }
    }
    Ok(out)
}

/// Read the mutes file at `path`: missing means none; anything else unreadable is an error.
pub fn read(path: &std::path::Path) -> Result<Parsed, String> {
    match protocol::bounded::read_text(path, MUTES_FILE_MAX_BYTES) {
        Ok(text) => parse(&path.display().to_string(), &text),
        Err(protocol::bounded::InputError::Open { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(Parsed::default())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Replace the file at `path` with `mutes`, atomically (mode 0600: it says what is not
/// checked).
pub fn write(path: &std::path::Path, mutes: &[MuteSpec]) -> Result<(), String> {
    protocol::bounded::write_atomic(path, render(mutes).as_bytes(), 0o600).map_err(|e| {
        format!(
            "cannot write the runtime mutes file {}: {e}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(scope: MuteScope, path: &str, prefix: bool) -> MuteSpec {
        MuteSpec {
            scope,
            path: path.to_owned(),
            prefix,
        }
    }

    #[test]
    fn render_then_parse_round_trips() {
        let cases: [&[MuteSpec]; 3] = [
            &[],
            &[m(MuteScope::Process, "/usr/bin/backup", false)],
            &[
                m(MuteScope::Process, "/opt/agent/", true),
                m(MuteScope::Target, "/var/cache/x \"quoted\"\n", false),
            ],
        ];
        for mutes in cases {
            let text = render(mutes);
            assert!(text.starts_with("# Runtime mutes"), "{text}");
            assert_eq!(
                parse("f", &text),
                Ok(Parsed {
                    mutes: mutes.to_vec(),
                    refused: vec![]
                }),
                "{text}"
            );
        }
    }

    #[test]
    fn parse_table() {
        // (text, restored paths, refused-entry fragments, error fragment)
        type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], Option<&'a str>);
        let cases: [Case<'_>; 6] = [
            ("version = 1\n", &[], &[], None),
            (
                "version = 1\n[[mute]]\nscope = \"process\"\npath = \"/a\"\n\
                 [[mute]]\nscope = \"target\"\npath = \"relative\"\n\
                 [[mute]]\nscope = \"target\"\npath = \"/\"\nprefix = true\n",
                &["/a"],
                &[
                    "entry 2: mute path \"relative\" is not absolute",
                    "entry 3:",
                ],
                None,
            ),
            (
                "version = 2\n",
                &[],
                &[],
                Some("version 2 is not supported"),
            ),
            (
                "version = 1\n[[mute]]\nscope = \"everything\"\npath = \"/a\"\n",
                &[],
                &[],
                Some("f:"),
            ),
            (
                "version = 1\n[[mute]]\nscope = \"process\"\npath = \"/a\"\nextra = 1\n",
                &[],
                &[],
                Some("unknown field"),
            ),
            ("not toml at all", &[], &[], Some("f:")),
        ];
        for (text, paths, refused, err) in cases {
            match (parse("f", text), err) {
                (Ok(p), None) => {
                    let got: Vec<&str> = p.mutes.iter().map(|m| m.path.as_str()).collect();
                    assert_eq!(got, paths, "{text}");
                    assert_eq!(p.refused.len(), refused.len(), "{text}: {:?}", p.refused);
                    for (r, want) in p.refused.iter().zip(refused) {
                        assert!(r.contains(want), "{r} lacks {want}");
                    }
                }
                (Err(e), Some(want)) => assert!(e.contains(want), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, wanted error {want:?}"),
            }
        }
    }

    #[test]
    fn more_than_the_bound_is_refused_past_it() {
        let many: Vec<MuteSpec> = (0..MAX_RUNTIME_MUTES + 3)
            .map(|i| m(MuteScope::Process, &format!("/bin/p{i}"), false))
            .collect();
        let p = parse("f", &render(&many)).unwrap();
        assert_eq!(p.mutes.len(), MAX_RUNTIME_MUTES);
        assert_eq!(p.refused.len(), 3);
    }

    #[test]
    fn read_and_write_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("mutes.toml");
        assert_eq!(read(&path), Ok(Parsed::default()), "missing is none");
        let mutes = [m(MuteScope::Target, "/srv/scratch/", true)];
        write(&path, &mutes).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read(&path).unwrap().mutes, mutes);
        // A directory where the file should be is an error, not "no mutes".
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        assert!(read(&d).unwrap_err().contains("not a regular file"));
    }
}
