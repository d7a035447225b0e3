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
    // Glob paths keep their meaning (no note).
    assert_eq!(imported.notes.len(), 1, "{:?}", imported.notes);
    assert!(imported.notes[0].contains("CEL"));
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

fn rules(rules: &[&str]) -> String {
    format!("{{\"rules\": [{}]}}", rules.join(","))
}

/// An identifier Santa refuses for its rule type (SNTRule.mm `initWithIdentifier:`, which
/// santactl's `--import` turns into an abort) is an import error naming the rule, never a
/// policy that `Policy::parse` then rejects. The first row is the `santa` fuzz target's finding.
#[test]
fn invalid_identifiers_are_refused_by_name() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str)] = &[
        // (rule_type, identifier, part of the error)
        ("TEAMID", "ZZZZZ99999EQHXZ8M8AV", "10 letters or digits"),
        ("TEAMID", "ABCDE1234", "10 letters or digits"),
        ("TEAMID", "ABCDE-1234", "10 letters or digits"),
        ("BINARY", "abc", "64 hex"),
        ("CERTIFICATE", "111111111111111111111111111111111111111111111111111111111111111", "64 hex"),
        ("BINARY", "g111111111111111111111111111111111111111111111111111111111111111", "64 hex"),
        ("CDHASH", "ABABABABABABABABABABABABABABABABABABABA", "40 hex"),
        ("SIGNINGID", "com.example", "TEAMID:signing.id"),
        ("SIGNINGID", "ABCDE1234:com.example", "neither a 10-character team id"),
        ("SIGNINGID", "platforms:com.example", "neither a 10-character team id"),
        ("SIGNINGID", "ABCDE12345:", "empty"),
        ("SIGNINGID", "ABCDE12345:com.*", "'*'"),
    ];
    for (ty, id, want) in cases {
        let json = rules(&[
            r#"{"identifier": "EQHXZ8M8AV", "policy": "ALLOWLIST", "rule_type": "TEAMID"}"#,
            &format!(r#"{{"identifier": "{id}", "policy": "BLOCKLIST", "rule_type": "{ty}"}}"#),
        ]);
        let e = policy::santa::import(Some(&json), None)
            .map(|i| i.policy)
            .expect_err(id)
            .to_string();
        assert!(
            e.contains("rule 2") && e.contains(id) && e.contains(want),
            "{ty} {id}: {e}"
        );
    }
}

/// Rules Santa itself refuses are errors too, not skipped entries.
#[test]
fn malformed_rules_are_errors() {
    #[rustfmt::skip]
    let cases: &[(&str, &str)] = &[
        (r#"{"policy": "BLOCKLIST", "rule_type": "BINARY"}"#, "no identifier"),
        (r#"{"identifier": "", "policy": "BLOCKLIST", "rule_type": "BINARY"}"#, "no identifier"),
        (r#"{"identifier": "EQHXZ8M8AV", "policy": "BLOCKLIST", "rule_type": "TEAM"}"#, "unknown rule_type"),
        (r#"{"identifier": "EQHXZ8M8AV", "policy": "BLOCKLIST"}"#, "unknown rule_type"),
        (r#"{"identifier": "EQHXZ8M8AV", "policy": "MAYBE", "rule_type": "TEAMID"}"#, "unknown policy"),
        ("5", "not an object"),
    ];
    for (rule, want) in cases {
        let e = policy::santa::import(Some(&rules(&[rule])), None)
            .map(|i| i.policy)
            .expect_err(rule)
            .to_string();
        assert!(e.contains("rule 1") && e.contains(want), "{rule}: {e}");
    }
}

/// Santa's rule table semantics (SNTRule.mm `normalizeRuleDictionary:` and
/// `initWithIdentifier:`, SNTRuleTable's (identifier, type) key): keys compare without case,
/// policy and rule type are upper-cased, identifiers normalised, so a later rule for the same
/// identifier in another case replaces the earlier one; silent blocks keep no user message.
#[test]
fn import_follows_santas_rule_table() {
    let team = |t: &str| {
        exec(
            "/x",
            sig(
                Production,
                Some(t),
                Some("com.example.tool"),
                None,
                0,
                false,
            ),
        )
    };
    let known = Facts {
        sha256: Some(sha("99")),
        certificate: facts_cert("99").certificate,
        ..Facts::NONE
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<&str>, model::Event, &str)> = vec![
        ("a later rule in another case replaces the earlier", vec![
            r#"{"identifier": "abcde12345", "policy": "BLOCKLIST", "rule_type": "TEAMID"}"#,
            r#"{"identifier": "ABCDE12345", "policy": "ALLOWLIST", "rule_type": "TEAMID"}"#,
        ], team("ABCDE12345"), "allow:santa-team-id-1"),
        ("REMOVE matches without case", vec![
            r#"{"identifier": "ABCDE12345", "policy": "BLOCKLIST", "rule_type": "TEAMID"}"#,
            r#"{"identifier": "abcde12345", "policy": "remove", "rule_type": "teamid"}"#,
        ], team("ABCDE12345"), "would_deny"),
        ("keys, policy and rule type in any case", vec![
            r#"{"Identifier": "ABCDE12345", "POLICY": "blocklist", "Rule_Type": "TeamID"}"#,
        ], team("ABCDE12345"), "deny:santa-team-id-1"),
        ("the signing id team half in any case", vec![
            r#"{"identifier": "abcde12345:com.example.tool", "policy": "BLOCKLIST", "rule_type": "SIGNINGID"}"#,
            r#"{"identifier": "ABCDE12345:com.example.tool", "policy": "ALLOWLIST", "rule_type": "SIGNINGID"}"#,
        ], team("ABCDE12345"), "allow:santa-signing-id-1"),
        ("Platform: is the platform keyword", vec![
            r#"{"identifier": "Platform:com.apple.osascript", "policy": "BLOCKLIST", "rule_type": "SIGNINGID"}"#,
        ], exec("/usr/bin/osascript", sig(Production, None, Some("com.apple.osascript"), None, 0, true)), "deny:santa-signing-id-1"),
        ("the signing id itself keeps its case", vec![
            r#"{"identifier": "ABCDE12345:COM.EXAMPLE.TOOL", "policy": "BLOCKLIST", "rule_type": "SIGNINGID"}"#,
        ], team("ABCDE12345"), "would_deny"),
    ];
    for (what, rs, ev, want) in cases {
        let imported = policy::santa::import(Some(&rules(&rs)), None).unwrap();
        let p = Policy::parse("imported.toml", &imported.policy).unwrap();
        assert_eq!(
            summary(&p.decide(&ev, &known)),
            want,
            "{what}\n{}",
            imported.policy
        );
    }
    // Silent blocks (SILENT_BLOCKLIST and its GUI/TTY kinds) block without a user message.
    for policy in [
        "SILENT_BLOCKLIST",
        "SILENT_BLACKLIST",
        "SILENT_GUI_BLOCKLIST",
        "SILENT_TTY_BLOCKLIST",
    ] {
        let json = rules(&[&format!(
            r#"{{"identifier": "ABCDE12345", "policy": "{policy}", "rule_type": "TEAMID", "custom_msg": "you should not see this"}}"#
        )]);
        let imported = policy::santa::import(Some(&json), None).unwrap();
        let p = Policy::parse("imported.toml", &imported.policy).unwrap();
        assert_eq!(
            summary(&p.decide(&team("ABCDE12345"), &known)),
            "deny:santa-team-id-1",
            "{policy}"
        );
        assert_eq!(
            p.rule_message(&model::RuleRef::new("santa-team-id-1")),
            None,
            "{policy}"
        );
    }
}

fn faa(processes: &str, options: &str) -> Vec<u8> {
    format!(
        r#"<?xml version="1.0"?><plist version="1.0"><dict><key>Version</key><string>v1</string><key>WatchItems</key><dict><key>W</key><dict>
        <key>Paths</key><array><dict><key>Path</key><string>/etc/w</string></dict></array>
        <key>Options</key><dict><key>AuditOnly</key><false/>{options}</dict>
        <key>Processes</key><array>{processes}</array></dict></dict></dict></plist>"#
    )
    .into_bytes()
}

/// File-access import follows WatchItems.mm (`GetRuleType`: case-insensitive, and RuleType wins
/// over the deprecated InvertProcessExceptions) and WatchItemProcess::Create
/// (WatchItemPolicyTest.mm `testWatchItemProcessCreate`: an unscoped SigningID and TeamID
/// together with PlatformBinary are refused; TeamID "platform" in any case is a platform binary;
/// with a TeamID the SigningID is taken whole).
#[test]
fn file_access_import_follows_santa() {
    let tool = |team: Option<&str>, id: &str, platform: bool| {
        open(
            process(
                "/opt/tool",
                sig(Production, team, Some(id), None, 0, platform),
            ),
            "/etc/w",
            WRITE,
        )
    };
    let signed = r#"<dict><key>SigningID</key><string>ABCDE12345:com.example</string></dict>"#;
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<u8>, model::Event, &str)> = vec![
        ("RuleType in lower case", faa(signed, "<key>RuleType</key><string>pathswithdeniedprocesses</string>"),
            tool(Some("ABCDE12345"), "com.example", false), "deny:W"),
        ("RuleType wins over InvertProcessExceptions", faa(signed, "<key>RuleType</key><string>PathsWithAllowedProcesses</string><key>InvertProcessExceptions</key><true/>"),
            tool(Some("ABCDE12345"), "com.example", false), "allow:W"),
        ("InvertProcessExceptions without RuleType", faa(signed, "<key>InvertProcessExceptions</key><true/>"),
            tool(Some("ABCDE12345"), "com.example", false), "deny:W"),
        ("TeamID PLATFORM is a platform binary", faa(r#"<dict><key>SigningID</key><string>com.apple.cat</string><key>TeamID</key><string>PLatFOrm</string></dict>"#, ""),
            tool(None, "com.apple.cat", true), "allow:W"),
        ("TeamID scopes a SigningID taken whole", faa(r#"<dict><key>SigningID</key><string>platform:com.example</string><key>TeamID</key><string>ABCDE12345</string></dict>"#, ""),
            tool(Some("ABCDE12345"), "platform:com.example", false), "allow:W"),
        ("platFORM: prefix", faa(r#"<dict><key>SigningID</key><string>platFORM:com.apple.*</string></dict>"#, ""),
            tool(None, "com.apple.cat", true), "allow:W"),
        // FAAPolicyProcessor.mm `PolicyMatchesProcess` checks PlatformBinary only when true
        // (FAAPolicyProcessorTest.mm `testPolicyMatchesProcess`: `platform_binary = false`
        // with a team id matches): false does not exclude platform binaries.
        ("PlatformBinary false is no constraint", faa(r#"<dict><key>BinaryPath</key><string>/opt/tool</string><key>PlatformBinary</key><false/></dict>"#, ""),
            tool(None, "com.apple.cat", true), "allow:W"),
    ];
    for (what, plist, ev, want) in cases {
        let imported =
            policy::santa::import(None, Some(&plist)).unwrap_or_else(|e| panic!("{what}: {e}"));
        let p = Policy::parse("imported.toml", &imported.policy).unwrap();
        assert_eq!(
            summary(&p.decide(&ev, &Facts::NONE)),
            want,
            "{what}\n{}",
            imported.policy
        );
    }
    #[rustfmt::skip]
    let refused: &[(&str, &str)] = &[
        (r#"<dict><key>SigningID</key><string>com.example</string></dict>"#, "neither a TeamID"),
        (r#"<dict><key>SigningID</key><string>ABCDE1234:com.example</string></dict>"#, "neither a TeamID"),
        (r#"<dict><key>TeamID</key><string>ABCDE12345</string><key>PlatformBinary</key><true/></dict>"#, "both TeamID"),
    ];
    for (proc, want) in refused {
        let e = policy::santa::import(None, Some(&faa(proc, "")))
            .map(|i| i.policy)
            .expect_err(proc)
            .to_string();
        assert!(
            e.contains("watch item W") && e.contains(want),
            "{proc}: {e}"
        );
    }
}

/// BlockMessage becomes the item's message, except in silent mode (WatchItems.mm
/// `EnableSilentMode`, `BlockMessage`).
#[test]
fn file_access_block_message_unless_silent() {
    for (options, want) in [
        ("<key>BlockMessage</key><string>no</string>", Some("no")),
        (
            "<key>BlockMessage</key><string>no</string><key>EnableSilentMode</key><true/>",
            None,
        ),
        ("", None),
    ] {
        let imported = policy::santa::import(None, Some(&faa("", options))).unwrap();
        let p = Policy::parse("imported.toml", &imported.policy).unwrap();
        assert_eq!(p.rule_message(&model::RuleRef::new("W")), want, "{options}");
    }
}

/// A FileAccessPolicy plist around `items` (the WatchItems dictionary's body), with or without
/// the top-level Version.
fn faa_items(version: bool, items: &str) -> Vec<u8> {
    let version = if version {
        "<key>Version</key><string>v1</string>"
    } else {
        ""
    };
    format!(
        r#"<?xml version="1.0"?><plist version="1.0"><dict>{version}<key>WatchItems</key><dict>{items}</dict></dict></plist>"#
    )
    .into_bytes()
}

/// One watch item `name` with `paths`, `options` and `processes` (each an element's body).
fn faa_item(name: &str, paths: &str, options: &str, processes: &str) -> String {
    format!(
        "<key>{name}</key><dict><key>Paths</key><array>{paths}</array>\
         <key>Options</key><dict>{options}</dict>\
         <key>Processes</key><array>{processes}</array></dict>"
    )
}

/// (what, plist, event, decision, a note the import must give).
type ImportCase = (
    &'static str,
    Vec<u8>,
    model::Event,
    &'static str,
    Option<&'static str>,
);

/// What Santa's WatchItems.mm accepts, the import takes, and decides as Santa does: a relative
/// path gets a leading `/` (Glob.mm `FindMatches`; WatchItemsTest.mm
/// `testPathPatternExpectations`, `testDataWatchItemsSubtraction`), boolean options may be any
/// NSNumber (`testParseConfigSingleWatchItemGeneral`: `@(0)` is valid), a rule's own Version
/// stands in for the file's, and a process entry Santa accepts but can never match (a relative
/// BinaryPath, a team id compared exactly that no process has, an upper-case certificate hash;
/// FAAPolicyProcessor.mm `PolicyMatchesProcess` compares them as strings) is left out with a
/// note, as is a process-keyed item left with no entry (it never applies).
#[test]
fn file_access_import_accepts_what_santa_accepts() {
    let w = r#"<dict><key>Path</key><string>/etc/w</string></dict>"#;
    let hard = "<key>AuditOnly</key><false/>";
    let team_entry = |t: &str| format!("<dict><key>TeamID</key><string>{t}</string></dict>");
    let by = |team: Option<&str>| {
        process(
            "/opt/tool",
            sig(Production, team, Some("com.example"), None, 0, false),
        )
    };
    let upper_cert = format!(
        "<dict><key>CertificateSha256</key><string>{}</string></dict>",
        hex("AB", 32)
    );
    #[rustfmt::skip]
    let cases: Vec<ImportCase> = vec![
        ("relative path", faa_items(true, &faa_item("W", "<string>etc/w</string>", hard, "")),
            open(by(None), "/etc/w", WRITE), "deny:W", None),
        ("integer AuditOnly", faa_items(true, &faa_item("W", w, "<key>AuditOnly</key><integer>0</integer>", "")),
            open(by(None), "/etc/w", WRITE), "deny:W", None),
        ("integer IsPrefix", faa_items(true, &faa_item("W", "<dict><key>Path</key><string>/etc/d/</string><key>IsPrefix</key><integer>1</integer></dict>", hard, "")),
            open(by(None), "/etc/d/x", WRITE), "deny:W", None),
        ("rule Version without a file Version", faa_items(false, &faa_item("W", w, &format!("{hard}<key>Version</key><string>v2</string>"), "")),
            open(by(None), "/etc/w", WRITE), "deny:W", None),
        ("team id as written", faa_items(true, &faa_item("W", w, hard, &team_entry("ABCDE12345"))),
            open(by(Some("ABCDE12345")), "/etc/w", WRITE), "allow:W", None),
        ("lower-case team id never matches", faa_items(true, &faa_item("W", w, hard, &team_entry("abcde12345"))),
            open(by(Some("ABCDE12345")), "/etc/w", WRITE), "deny:W", Some("TeamID \"abcde12345\"")),
        ("nine-character team id never matches", faa_items(true, &faa_item("W", w, hard, &team_entry("ABCDE1234"))),
            open(by(Some("ABCDE1234")), "/etc/w", WRITE), "deny:W", Some("TeamID \"ABCDE1234\"")),
        ("relative BinaryPath never matches", faa_items(true, &faa_item("W", w, hard, "<dict><key>BinaryPath</key><string>opt/tool</string></dict>")),
            open(by(None), "/etc/w", WRITE), "deny:W", Some("BinaryPath \"opt/tool\"")),
        ("upper-case certificate never matches", faa_items(true, &faa_item("W", w, hard, &upper_cert)),
            open(by(None), "/etc/w", WRITE), "deny:W", Some("CertificateSha256")),
        ("process-keyed item without processes never applies", faa_items(true, &faa_item("W", w, &format!("{hard}<key>RuleType</key><string>ProcessesWithDeniedPaths</string>"), "")),
            open(by(None), "/etc/w", WRITE), "allow:default", Some("never applies")),
        ("process-keyed item whose only entry is dead", faa_items(true, &faa_item("W", w, &format!("{hard}<key>RuleType</key><string>ProcessesWithDeniedPaths</string>"), &team_entry("abcde12345"))),
            open(by(Some("ABCDE12345")), "/etc/w", WRITE), "allow:default", Some("never applies")),
    ];
    for (what, plist, ev, want, note) in cases {
        let imported =
            policy::santa::import(None, Some(&plist)).unwrap_or_else(|e| panic!("{what}: {e}"));
        let p = Policy::parse("imported.toml", &imported.policy).unwrap();
        assert_eq!(
            summary(&p.decide(&ev, &Facts::NONE)),
            want,
            "{what}\n{}",
            imported.policy
        );
        match note {
            Some(n) => assert!(
                imported.notes.iter().any(|x| x.contains(n)),
                "{what}: {:?}",
                imported.notes
            ),
            None => assert!(imported.notes.is_empty(), "{what}: {:?}", imported.notes),
        }
    }
}

/// Items Santa's WatchItems.mm ignores (`ParseConfig` logs "Ignoring file access rule") make the
/// import fail, as an invalid item makes a policy file invalid: a bad name
/// (`testIsWatchItemNameValid`), no version, keys of the wrong type or length
/// (`testParseConfigSingleWatchItemGeneral`, `testVerifyConfigWatchItemPaths`,
/// `testVerifyConfigWatchItemProcesses`), and two items with the same path, whose winner Santa
/// leaves undefined (faa.md "only one rule will be applied ... which rule will be applied is
/// undefined").
#[test]
fn file_access_import_refuses_what_santa_ignores() {
    let w = r#"<dict><key>Path</key><string>/etc/w</string></dict>"#;
    let long = "A".repeat(2049);
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad name", faa_items(true, &faa_item("My Rule", w, "", "")), "rule name"),
        ("name too long", faa_items(true, &faa_item(&"a".repeat(65), w, "", "")), "rule name"),
        ("no version", faa_items(false, &faa_item("W", w, "", "")), "no Version"),
        ("string AuditOnly", faa_items(true, &faa_item("W", w, "<key>AuditOnly</key><string>NO</string>", "")), "AuditOnly must be a boolean"),
        ("string EnableSilentTTYMode", faa_items(true, &faa_item("W", w, "<key>EnableSilentTTYMode</key><string>x</string>", "")), "EnableSilentTTYMode"),
        ("integer path entry", faa_items(true, &faa_item("W", "<integer>0</integer>", "", "")), "string or a dictionary"),
        ("string IsPrefix", faa_items(true, &faa_item("W", "<dict><key>Path</key><string>/a</string><key>IsPrefix</key><string>yes</string></dict>", "", "")), "IsPrefix"),
        ("no paths", faa_items(true, &faa_item("W", "", "", "")), "no paths"),
        ("long BlockMessage", faa_items(true, &faa_item("W", w, &format!("<key>BlockMessage</key><string>{long}</string>"), "")), "BlockMessage"),
        ("negative RuleId", faa_items(true, &faa_item("W", w, "<key>RuleId</key><integer>-1</integer>", "")), "RuleId"),
        ("string process entry", faa_items(true, &faa_item("W", w, "", "<string>x</string>")), "must be a dictionary"),
        ("empty process entry", faa_items(true, &faa_item("W", w, "", "<dict></dict>")), "no attribute"),
        ("short TeamID", faa_items(true, &faa_item("W", w, "", "<dict><key>TeamID</key><string>Blatform</string></dict>")), "invalid TeamID"),
        ("long TeamID", faa_items(true, &faa_item("W", w, "", "<dict><key>TeamID</key><string>LongerThanExpected</string></dict>")), "TeamID"),
        ("non-hex CDHash", faa_items(true, &faa_item("W", w, "", &format!("<dict><key>CDHash</key><string>{}</string></dict>", "Z".repeat(40)))), "CDHash"),
        ("string PlatformBinary", faa_items(true, &faa_item("W", w, "", "<dict><key>PlatformBinary</key><string>YES</string></dict>")), "PlatformBinary"),
        ("long top-level EventDetailText", faa_items(true, &format!("</dict><key>EventDetailText</key><string>{}</string><key>X</key><dict>", "a".repeat(49))), "EventDetailText"),
        ("same path in two items", faa_items(true, &format!("{}{}", faa_item("A", w, "", ""), faa_item("B", w, "", ""))), "undefined"),
    ];
    for (what, plist, want) in cases {
        let e = policy::santa::import(None, Some(&plist))
            .map(|i| i.policy)
            .expect_err(what)
            .to_string();
        assert!(e.contains(want), "{what}: {e}");
    }
}

/// Every rule Santa stores takes its (identifier, type) row (SNTRuleTable.mm
/// `addExecutionRules:toDB:errors:`, `INSERT OR REPLACE`; SNTRuleTableTest.mm
/// `testAddMultipleRules`), including rules Gatehouse skips: a later CEL or local-allow rule
/// ends an earlier block for the key, as in Santa's table.
#[test]
fn skipped_rules_still_replace_earlier_ones() {
    let team = exec(
        "/x",
        sig(
            Production,
            Some("ABCDE12345"),
            Some("com.example.tool"),
            None,
            0,
            false,
        ),
    );
    let block = r#"{"identifier": "ABCDE12345", "policy": "BLOCKLIST", "rule_type": "TEAMID"}"#;
    let sig_block = r#"{"identifier": "ABCDE12345:com.example.tool", "policy": "BLOCKLIST", "rule_type": "SIGNINGID"}"#;
    let known = Facts {
        sha256: Some(sha("99")),
        certificate: facts_cert("99").certificate,
        ..Facts::NONE
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<&str>, &str, usize)> = vec![
        // (what, rules, decision for the team's tool, notes)
        ("a block alone", vec![block], "deny:santa-team-id-1", 0),
        ("a later CEL rule replaces the block", vec![block,
            r#"{"identifier": "ABCDE12345", "policy": "CEL", "rule_type": "TEAMID", "cel_expr": "true"}"#,
        ], "would_deny", 1),
        ("a later local-signing-id allow replaces the block", vec![sig_block,
            r#"{"identifier": "ABCDE12345:com.example.tool", "policy": "ALLOWLIST_LOCAL_SIGNINGID", "rule_type": "SIGNINGID"}"#,
        ], "would_deny", 1),
        // (A team-id compiler rule that stands is refused: `compiler_rules_are_cdhash_sha256_or_
        // signing_id_only` in transitive.rs.) One replaced later is no rule at all:
        ("a team-id compiler rule replaced by a CEL rule", vec![
            r#"{"identifier": "ABCDE12345", "policy": "ALLOWLIST_COMPILER", "rule_type": "TEAMID"}"#,
            r#"{"identifier": "ABCDE12345", "policy": "CEL", "rule_type": "TEAMID", "cel_expr": "true"}"#,
        ], "would_deny", 1),
        ("a signing-id compiler rule is an allow", vec![sig_block,
            r#"{"identifier": "ABCDE12345:com.example.tool", "policy": "ALLOWLIST_COMPILER", "rule_type": "SIGNINGID"}"#,
        ], "allow:santa-signing-id-1", 0),
        ("a rule for another type leaves the block", vec![block,
            r#"{"identifier": "ABCDE12345:x", "policy": "CEL", "rule_type": "SIGNINGID", "cel_expr": "true"}"#,
        ], "deny:santa-team-id-1", 1),
        ("the block's dialog URL and button are reported, not kept", vec![
            r#"{"identifier": "ABCDE12345", "policy": "BLOCKLIST", "rule_type": "TEAMID", "custom_url": "https://x", "event_detail_button_label": "More"}"#,
        ], "deny:santa-team-id-1", 2),
    ];
    for (what, rs, want, notes) in cases {
        let imported = policy::santa::import(Some(&rules(&rs)), None).unwrap();
        let p = Policy::parse("imported.toml", &imported.policy).unwrap();
        assert_eq!(
            summary(&p.decide(&team, &known)),
            want,
            "{what}\n{}",
            imported.policy
        );
        assert_eq!(imported.notes.len(), notes, "{what}: {:?}", imported.notes);
    }
}

/// Inputs santactl's `--import` refuses as a whole: a CEL rule without `cel_expr` (SNTRule.mm
/// `initWithIdentifier:`, SNTErrorCodeRuleInvalidCELExpression) and an empty rule array
/// (SNTRuleTableTest.mm `testAddRulesEmptyArray`, SNTErrorCodeEmptyRuleArray).
#[test]
fn santactl_refusals_are_errors() {
    #[rustfmt::skip]
    let cases: &[(&str, &str)] = &[
        (r#"{"rules": [{"identifier": "ABCDE12345", "policy": "CEL", "rule_type": "TEAMID"}]}"#, "without a cel_expr"),
        (r#"{"rules": [{"identifier": "ABCDE12345", "policy": "cel", "rule_type": "TEAMID", "cel_expr": ""}]}"#, "without a cel_expr"),
        (r#"{"rules": []}"#, "empty"),
    ];
    for (json, want) in cases {
        let e = policy::santa::import(Some(json), None)
            .map(|i| i.policy)
            .expect_err(json)
            .to_string();
        assert!(e.contains(want), "{json}: {e}");
    }
}

/// On macOS `/tmp/x` is compiled to `/private/tmp/x` (Endpoint Security reports resolved
/// paths), so two path-keyed items naming the two spellings would protect one path twice: the
/// import refuses it naming both, as for the same path written twice (Santa applies one of
/// the two items, which one is undefined).
#[test]
fn two_spellings_of_one_path_in_two_items_are_refused() {
    let item = |name: &str, path: &str| {
        format!(
            "<key>{name}</key><dict><key>Paths</key><array><string>{path}</string></array>\
             <key>Options</key><dict><key>Version</key><string>v1</string></dict></dict>"
        )
    };
    let plist = |a: &str, b: &str| {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict><key>Version</key><string>v1</string><key>WatchItems</key><dict>{}{}</dict></dict></plist>"#,
            item("A", a),
            item("B", b)
        )
    };
    // (path of A, path of B, refused?)
    let cases = [
        ("/tmp/x", "/private/tmp/x", true),
        ("/private/etc/y", "/etc/y", true),
        ("/var", "/private/var", true),
        ("/tmp/x", "/tmp/y", false),
        ("/tmpfoo/x", "/private/tmpfoo/x", false),
    ];
    for (a, b, refused) in cases {
        let got = policy::santa::import(None, Some(plist(a, b).as_bytes()));
        match (&got, refused) {
            (Err(e), true) => assert!(
                e.to_string().contains("is also in watch item A"),
                "{a} {b}: {e}"
            ),
            (Ok(_), false) => {}
            _ => panic!("{a} {b}: {:?}", got.map(|i| i.policy)),
        }
    }
}
