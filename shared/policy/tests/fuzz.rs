//! Fuzzing the policy decoders, which read untrusted files (docs/DESIGN.md 7: "Decoders of every
//! untrusted input ... never panic under fuzzing"): `Policy::parse` on arbitrary text and on
//! mutations of the real example policies and the embedded default returns `Ok` or an error
//! whose line and column point inside the text; Santa import on mutated inputs never panics.
//! Policies that parse are also asked to decide a few events, which must not panic either.

mod common;

use common::*;
use model::{
    AccessFlags, CodeSigning, Event, Facts, MountDisposition, MountFlags, SigningStatus, cs_flags,
};
use policy::{Policy, PolicyError};
use proptest::prelude::*;

/// The real policies: every example shipped in `examples/` and the embedded default.
const BASES: &[(&str, &str)] = &[
    (
        "developer-laptop.toml",
        include_str!("../../../examples/developer-laptop.toml"),
    ),
    ("kiosk.toml", include_str!("../../../examples/kiosk.toml")),
    (
        "server-packaged-only.toml",
        include_str!("../../../examples/server-packaged-only.toml"),
    ),
    ("default.toml", policy::EMBEDDED_DEFAULT_TOML),
];

const SANTA_RULES: &str = include_str!("fixtures/santa-rules.json");
const SANTA_FAA: &[u8] = include_bytes!("fixtures/santa-faa.plist");

/// Keys the format knows, at every level, plus a few it does not.
const KEYS: &[&str] = &[
    "version",
    "mode",
    "name",
    "action",
    "sha256",
    "cdhash",
    "signing_id",
    "certificate",
    "team_id",
    "message",
    "prefix",
    "regex",
    "paths",
    "path",
    "processes",
    "binary_path",
    "platform_binary",
    "rule_type",
    "allow_read_access",
    "audit_only",
    "operations",
    "fallback",
    "helper_unavailable",
    "deadline_ms",
    "bad_signature_protection",
    "package_trust",
    "remount_flags",
    "removable",
    "encrypted",
    "bus",
    "volume_uuid",
    "fs_type",
    "disposition",
    "network_hosts",
    "targets",
    "kind",
    "read_only",
    "noexec",
    "bogus_key",
    "\"quoted key\"",
    "a.b.c",
];

/// Values of every TOML type, valid and invalid for the keys above, including edge cases.
const VALUES: &[&str] = &[
    "1",
    "0",
    "-1",
    "18446744073709551615",
    "9223372036854775807",
    "1e309",
    "nan",
    "true",
    "\"enforce\"",
    "\"monitor\"",
    "\"allow\"",
    "\"block\"",
    "\"remount\"",
    "\"deny\"",
    "\"\"",
    "\"/\"",
    "\"relative/path\"",
    "\"/tmp/\"",
    "\"(a+)+$\"",
    "\"[\"",
    "\"^/Users/[^/]+/Downloads/\"",
    "\"ABCDE12345\"",
    "\"platform:com.apple.ls\"",
    "\"ABCDE12345:com.example.*.*\"",
    "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
    "\"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\"",
    "\"0000000000000000000000000000000000000000\"",
    "\"é\u{1F600}\"",
    "[]",
    "[1, \"a\"]",
    "[\"open\", \"exec\"]",
    "[\"usb\", \"floppy\"]",
    "[{ path = \"/etc/\", prefix = true }]",
    "[{ path = \"/etc/\" }, { path = \"/etc/\" }]",
    "[{ binary_path = \"/bin/x\" }, {}]",
    "[{ team_id = \"platform\", platform_binary = true }]",
    "{ read_only = true, noexec = 1 }",
    "{}",
    "1979-05-27T07:32:00Z",
    "'''\nmulti\nline'''",
];

/// Table headers, valid and not.
const HEADERS: &[&str] = &[
    "[[exec]]",
    "[[exec_path]]",
    "[[watch]]",
    "[[mount]]",
    "[mute]",
    "[defaults]",
    "[defaults.kind.exec]",
    "[defaults.kind.bogus]",
    "[exec]",
    "[[defaults]]",
    "[[unknown]]",
    "[",
];

/// One edit of a policy text.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte (the text is then read as UTF-8, lossily, as a file would be).
    FlipByte { at: usize, mask: u8 },
    /// Cut the text at a byte offset.
    Truncate { at: usize },
    /// Repeat one line `times` more times in place.
    DuplicateLine { line: usize, times: usize },
    /// Drop one line.
    DeleteLine { line: usize },
    /// Insert `key = value` before a line.
    InsertKey {
        line: usize,
        key: usize,
        value: usize,
    },
    /// Insert a table header before a line.
    InsertHeader { line: usize, header: usize },
    /// Insert arbitrary text at a byte offset.
    InsertText { at: usize, text: String },
    /// Swap two lines.
    SwapLines { a: usize, b: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Mutation::FlipByte { at, mask }),
        2 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        2 => (any::<usize>(), 1..4usize)
            .prop_map(|(line, times)| Mutation::DuplicateLine { line, times }),
        1 => any::<usize>().prop_map(|line| Mutation::DeleteLine { line }),
        3 => (any::<usize>(), 0..KEYS.len(), 0..VALUES.len())
            .prop_map(|(line, key, value)| Mutation::InsertKey { line, key, value }),
        1 => (any::<usize>(), 0..HEADERS.len())
            .prop_map(|(line, header)| Mutation::InsertHeader { line, header }),
        2 => (any::<usize>(), "[\\[\\]{}=\",.#'\\\\ a-z0-9_\n\t\u{0}-\u{7f}é]{0,24}")
            .prop_map(|(at, text)| Mutation::InsertText { at, text }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
    ]
}

/// The largest char boundary at or below `at`.
fn floor_boundary(s: &str, at: usize) -> usize {
    let mut i = at.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let pick = |i: usize, n: usize| i % n.max(1);
    match m {
        Mutation::FlipByte { at, mask } => {
            let mut bytes = text.as_bytes().to_vec();
            if !bytes.is_empty() {
                let i = pick(*at, bytes.len());
                bytes[i] ^= mask;
            }
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        Mutation::Truncate { at } => {
            return text[..floor_boundary(text, pick(*at, text.len() + 1))].to_owned();
        }
        Mutation::InsertText { at, text: t } => {
            let i = floor_boundary(text, pick(*at, text.len() + 1));
            return format!("{}{t}{}", &text[..i], &text[i..]);
        }
        Mutation::DuplicateLine { line, times } => {
            let i = pick(*line, lines.len());
            let l = lines[i].clone();
            for _ in 0..*times {
                lines.insert(i, l.clone());
            }
        }
        Mutation::DeleteLine { line } => {
            let i = pick(*line, lines.len());
            lines.remove(i);
        }
        Mutation::InsertKey { line, key, value } => {
            let i = pick(*line, lines.len() + 1);
            lines.insert(i, format!("{} = {}", KEYS[*key], VALUES[*value]));
        }
        Mutation::InsertHeader { line, header } => {
            let i = pick(*line, lines.len() + 1);
            lines.insert(i, HEADERS[*header].to_owned());
        }
        Mutation::SwapLines { a, b } => {
            let (a, b) = (pick(*a, lines.len()), pick(*b, lines.len()));
            lines.swap(a, b);
        }
    }
    lines.join("\n")
}

/// The error's line and column name a position inside `text`: line 1..=lines, column
/// 1..=(characters in that line + 1, the end of the line).
fn check_position(text: &str, e: &PolicyError) -> Result<(), TestCaseError> {
    let lines: Vec<&str> = text.split('\n').collect();
    prop_assert!(e.line >= 1, "line {} < 1: {e}", e.line);
    prop_assert!(e.column >= 1, "column {} < 1: {e}", e.column);
    prop_assert!(
        e.line <= lines.len(),
        "line {} past the last line {}: {e}",
        e.line,
        lines.len()
    );
    let width = lines[e.line - 1].chars().count();
    prop_assert!(
        e.column <= width + 1,
        "column {} past the end of line {} ({width} characters): {e}",
        e.column,
        e.line
    );
    prop_assert_eq!(&e.origin, "fuzz.toml");
    prop_assert!(!e.message.is_empty(), "empty message: {}", e);
    prop_assert!(
        e.to_string()
            .starts_with(&format!("fuzz.toml:{}:{}: ", e.line, e.column)),
        "display does not lead with the position: {}",
        e
    );
    Ok(())
}

/// A few events of every shape the fast path looks at, for policies that parse.
fn sample_events() -> Vec<Event> {
    let production = sig(
        SigningStatus::Production,
        Some("K10SK00001"),
        Some("K10SK00001:com.example.kiosk"),
        Some("ab"),
        ENFORCED,
        false,
    );
    let platform = sig(
        SigningStatus::Production,
        None,
        Some("platform:com.apple.ls"),
        None,
        ENFORCED | cs_flags::CS_PLATFORM_BINARY,
        true,
    );
    let cat = || process("/bin/cat", CodeSigning::unsigned());
    let write = AccessFlags {
        write: true,
        ..AccessFlags::READ
    };
    vec![
        exec("/tmp/x", CodeSigning::unsigned()),
        exec("/Applications/Kiosk.app/Contents/MacOS/Kiosk", production),
        exec("/bin/ls", platform),
        open(cat(), "/etc/gatehouse/policy.toml", Some(write)),
        open(cat(), "/home/u/notes", None),
        file_event(cat(), "rename", "/etc/ssh/sshd_config", "/tmp/x"),
        mount(
            "/dev/sdb1",
            "exfat",
            MountDisposition::External,
            MountFlags::default(),
        ),
    ]
}

/// Parse `text`; on success decide the sample events, on failure check the error's position.
fn parse_never_panics(text: &str, samples: &[Event]) -> Result<(), TestCaseError> {
    match Policy::parse("fuzz.toml", text) {
        Ok(p) => {
            for ev in samples {
                let _ = p.decide(ev, &Facts::NONE);
            }
            let _ = (p.watched_paths(), p.mutes());
            Ok(())
        }
        Err(e) => check_position(text, &e),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        parse_never_panics(&text, &sample_events())?;
    }

    #[test]
    fn toml_shaped_text_never_panics(
        text in "(version = 1\nmode = \"(enforce|monitor)\"\n)?([\\[\\]{}=\",. a-z_0-9/\n]{0,80}\n){0,6}"
    ) {
        parse_never_panics(&text, &sample_events())?;
    }

}

proptest! {
    // The mutations are the interesting inputs (near-valid files): run many more of them.
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn mutated_real_policies_never_panic(
        base in 0..BASES.len(),
        edits in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut text = BASES[base].1.to_owned();
        for m in &edits {
            text = apply(&text, m);
        }
        parse_never_panics(&text, &sample_events())?;
    }

    #[test]
    fn mutated_santa_imports_never_panic(
        rule_edits in prop::collection::vec(mutation(), 0..4),
        faa_edits in prop::collection::vec(mutation(), 0..4),
        use_rules in any::<bool>(),
        use_faa in any::<bool>(),
    ) {
        let mut rules = SANTA_RULES.to_owned();
        for m in &rule_edits {
            rules = apply(&rules, m);
        }
        let mut faa = String::from_utf8_lossy(SANTA_FAA).into_owned();
        for m in &faa_edits {
            faa = apply(&faa, m);
        }
        let imported = policy::santa::import(
            use_rules.then_some(rules.as_str()),
            use_faa.then_some(faa.as_bytes()),
        );
        // What import produces is fed to the parser by `gatehouse policy import-santa`.
        if let Ok(imported) = imported {
            parse_never_panics(&imported.policy, &sample_events())?;
        }
    }
}

/// The bases themselves are valid: the mutations start from real, accepted policies.
#[test]
fn every_base_policy_is_valid() {
    for (name, text) in BASES {
        if let Err(e) = Policy::parse(name, text) {
            panic!("{name} does not parse: {e}");
        }
    }
}

/// The position check accepts end-of-line and end-of-text positions, and rejects one past.
#[test]
fn position_check_bounds() {
    let err = |line, column| PolicyError {
        origin: "fuzz.toml".into(),
        line,
        column,
        rule: None,
        message: "m".into(),
    };
    let text = "ab\ncdé\n";
    for (line, column, ok) in [
        (1, 1, true),
        (1, 3, true),
        (1, 4, false),
        (2, 4, true),
        (2, 5, false),
        (3, 1, true),
        (3, 2, false),
        (4, 1, false),
        (0, 1, false),
        (1, 0, false),
    ] {
        assert_eq!(
            check_position(text, &err(line, column)).is_ok(),
            ok,
            "line {line} column {column}"
        );
    }
}
