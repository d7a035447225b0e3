//! Santa import round trip: JSON rules and a file-access plist become a policy that parses and
//! decides as Santa would.

mod common;

use common::*;
use model::{Facts, SigningStatus::*};
use policy::Policy;

const RULES: &str = include_str!("fixtures/santa-rules.json");
const FAA: &[u8] = include_bytes!("fixtures/santa-faa.plist");

#[test]
fn import_round_trip() {
    let imported = policy::santa::import(Some(RULES), Some(FAA)).unwrap();
    let p = Policy::parse("imported.toml", &imported.policy)
        .unwrap_or_else(|e| panic!("{e}\n{}", imported.policy));
    // The CEL rule has no equivalent and is reported; REMOVE dropped the ZZZZZ99999 allow.
    // The glob path is kept literally and reported.
    assert_eq!(imported.notes.len(), 2, "{:?}", imported.notes);
    assert!(imported.notes[0].contains("CEL"));
    assert!(imported.notes[1].contains("glob"));
    assert!(!imported.policy.contains("ZZZZZ99999"));
    let chrome = || {
        sig(
            Production,
            Some("EQHXZ8M8AV"),
            Some("com.google.Chrome"),
            None,
            0,
            false,
        )
    };
    let canary = sig(
        Production,
        Some("EQHXZ8M8AV"),
        Some("com.google.Chrome.canary"),
        None,
        0,
        false,
    );
    let known = Facts {
        sha256: Some(sha("99")),
        certificate: facts_cert("99").certificate,
        ..Facts::NONE
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, model::Event, Facts, &str)> = vec![
        ("team allow", exec("/Applications/Chrome", chrome()), known.clone(), "allow:santa-team-id-1"),
        ("signing id block + message", exec("/Applications/Canary", canary), known.clone(), "deny:santa-signing-id-2"),
        ("platform signing id", exec("/usr/bin/osascript", sig(Production, None, Some("com.apple.osascript"), None, 0, true)), known.clone(), "deny:santa-signing-id-3"),
        ("binary block (upper-case hex)", exec("/x", sig(Unsigned, None, None, None, 0, false)), facts_sha_hex("2d7e45a7e2c2b3f1c8e7b6a5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5"), "deny:santa-sha256-4"),
        ("last rule wins", exec("/x", sig(Production, Some("ABCDE12345"), None, None, 0, false)), known.clone(), "allow:santa-team-id-8"),
        ("cdhash block", exec("/x", sig(AdHoc, None, None, Some("ab"), ENFORCED, false)), Facts::NONE, "deny:santa-cdhash-7"),
        ("faa allowed binary", open(process("/usr/local/bin/foo", sig(Unsigned, None, None, None, 0, false)), "/etc/foo.conf", WRITE), Facts::NONE, "allow:UserFoo"),
        ("faa signing id + team", open(process("/opt/foo", sig(Production, Some("ABCDEF1234"), Some("com.northpolesec.foo"), None, 0, false)), "/etc/foo.conf", WRITE), Facts::NONE, "allow:UserFoo"),
        ("faa platform signing id", open(process("/bin/cat", sig(Production, None, Some("com.apple.cat"), None, 0, true)), "/etc/foo.conf", WRITE), Facts::NONE, "allow:UserFoo"),
        ("faa other denied", open(process("/usr/bin/vim", sig(Unsigned, None, None, None, 0, false)), "/etc/foo.conf", WRITE), Facts::NONE, "deny:UserFoo"),
        ("faa audit only", open(process("/usr/bin/sqlite3", sig(Unsigned, None, None, None, 0, false)), "/Users/alice/Library/Application Support/Google/Chrome/Default/Cookies", READ), Facts::NONE, "audit:ChromeCookies"),
        ("faa chrome wildcard", open(process("/Applications/Chrome", chrome()), "/Users/alice/Library/Application Support/Google/Chrome/Default/Cookies", WRITE), Facts::NONE, "allow:ChromeCookies"),
        ("faa denied paths", open(process("/usr/bin/curl", sig(Unsigned, None, None, None, 0, false)), "/secrets/k", READ), Facts::NONE, "deny:CurlNoSecrets"),
    ];
    for (what, ev, facts, want) in cases {
        assert_eq!(summary(&p.decide(&ev, &facts)), want, "{what}");
    }
    assert_eq!(
        p.rule_message(&model::RuleRef::new("santa-signing-id-2")),
        Some("Canary builds are not allowed")
    );
}

fn facts_sha_hex(h: &str) -> Facts {
    Facts {
        sha256: Some(h.parse().unwrap()),
        ..Facts::NONE
    }
}

#[test]
fn bad_inputs_are_errors() {
    assert!(policy::santa::import(Some("{\"rules\": 5}"), None).is_err());
    assert!(policy::santa::import(None, Some(b"not a plist")).is_err());
    let bad_type = br#"<?xml version="1.0"?><plist version="1.0"><dict><key>WatchItems</key><dict><key>X</key><dict><key>Paths</key><array><string>/a</string></array><key>Options</key><dict><key>RuleType</key><string>Everything</string></dict></dict></dict></dict></plist>"#;
    assert!(policy::santa::import(None, Some(bad_type)).is_err());
}
