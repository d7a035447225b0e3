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
    let bad_type = br#"<?xml version="1.0"?><plist version="1.0"><dict><key>Version</key><string>v1</string><key>WatchItems</key><dict><key>X</key><dict><key>Paths</key><array><string>/a</string></array><key>Options</key><dict><key>RuleType</key><string>Everything</string></dict></dict></dict></dict></plist>"#;
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

/// Every rule Santa stores takes its (identifier, type) row (SNTRuleTable.mm
/// `addExecutionRules:toDB:errors:`, `INSERT OR REPLACE`; SNTRuleTableTest.mm
/// `testAddMultipleRules`), including rules Gatehouse skips: a later CEL or local-allow rule
/// ends an earlier block for the key, as in Santa's table. A compiler rule on a certificate or
/// team id has no entry in SNTPolicyProcessor.mm's decision map, so Santa treats it as no rule.
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
        ("a team-id compiler rule is no rule", vec![
            r#"{"identifier": "ABCDE12345", "policy": "ALLOWLIST_COMPILER", "rule_type": "TEAMID"}"#,
        ], "would_deny", 1),
        ("a team-id compiler rule still replaces the block", vec![block,
            r#"{"identifier": "ABCDE12345", "policy": "WHITELIST_COMPILER", "rule_type": "TEAMID"}"#,
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

/// A plist with one watch item `name` whose dictionary holds `body`, and `top` before
/// WatchItems (a top-level Version, or nothing).
fn faa_item(top: &str, name: &str, body: &str) -> Vec<u8> {
    format!(
        r#"<?xml version="1.0"?><plist version="1.0"><dict>{top}<key>WatchItems</key><dict><key>{name}</key><dict>{body}</dict></dict></dict></plist>"#
    )
    .into_bytes()
}

/// Watch items Santa ignores are refused (Gatehouse invalidates the file instead: see the
/// deviations), following WatchItems.mm's checks and WatchItemsTest.mm
/// `testIsWatchItemNameValid`, `testVerifyConfigWatchItemPaths`,
/// `testVerifyConfigWatchItemProcesses`, `testParseConfigSingleWatchItemGeneral` (no version
/// anywhere) and WatchItemPolicy.h `WatchItemProcess::Create` (an entry with no attribute).
#[test]
fn file_access_items_santa_ignores_are_refused() {
    let v = "<key>Version</key><string>v1</string>";
    let paths = "<key>Paths</key><array><string>/etc/w</string></array>";
    let procs = |p: &str| format!("{paths}<key>Processes</key><array>{p}</array>");
    let long = "A".repeat(513);
    let long_path = format!("/{}", "a".repeat(1024));
    #[rustfmt::skip]
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a name with a space", faa_item(v, "My Item", paths), "the name"),
        ("a name over 64 characters", faa_item(v, &"N".repeat(65), paths), "the name"),
        ("no Version anywhere", faa_item("", "W", paths), "no Version"),
        ("a top-level Version that is not a string", faa_item("<key>Version</key><integer>1</integer>", "W", paths), "Version must be a string"),
        ("a top-level EventDetailText over 48", faa_item(&format!("{v}<key>EventDetailText</key><string>{}</string>", "t".repeat(49)), "W", paths), "EventDetailText"),
        ("an empty item Version", faa_item("", "W", &format!("{paths}<key>Options</key><dict><key>Version</key><string></string></dict>")), "Version"),
        ("no Paths", faa_item(v, "W", ""), "Paths must be an array"),
        ("empty Paths", faa_item(v, "W", "<key>Paths</key><array/>"), "Paths is empty"),
        ("an empty path", faa_item(v, "W", "<key>Paths</key><array><string></string></array>"), "characters"),
        ("a path over PATH_MAX", faa_item(v, "W", &format!("<key>Paths</key><array><string>{long_path}</string></array>")), "characters"),
        ("a number among Paths", faa_item(v, "W", "<key>Paths</key><array><integer>1</integer></array>"), "string or a dictionary"),
        ("IsPrefix as a string", faa_item(v, "W", "<key>Paths</key><array><dict><key>Path</key><string>/a</string><key>IsPrefix</key><string>yes</string></dict></array>"), "IsPrefix"),
        ("Options not a dictionary", faa_item(v, "W", &format!("{paths}<key>Options</key><string>x</string>")), "Options must be"),
        ("AuditOnly as a string", faa_item(v, "W", &format!("{paths}<key>Options</key><dict><key>AuditOnly</key><string>NO</string></dict>")), "AuditOnly"),
        ("a BlockMessage over 2048", faa_item(v, "W", &format!("{paths}<key>Options</key><dict><key>BlockMessage</key><string>{}</string></dict>", "m".repeat(2049))), "BlockMessage"),
        ("a negative RuleId", faa_item(v, "W", &format!("{paths}<key>Options</key><dict><key>RuleId</key><integer>-1</integer></dict>")), "RuleId"),
        ("Processes not an array", faa_item(v, "W", &format!("{paths}<key>Processes</key><dict/>")), "Processes must be"),
        ("a string among Processes", faa_item(v, "W", &procs("<string>/bin/ls</string>")), "dictionary"),
        ("an empty process", faa_item(v, "W", &procs("<dict/>")), "no attribute"),
        ("PlatformBinary false alone", faa_item(v, "W", &procs("<dict><key>PlatformBinary</key><false/></dict>")), "no attribute"),
        ("a SigningID over 512", faa_item(v, "W", &procs(&format!("<dict><key>SigningID</key><string>ABCDE12345:{long}</string></dict>"))), "SigningID"),
        ("a 7-character TeamID", faa_item(v, "W", &procs("<dict><key>TeamID</key><string>ABCDE12</string></dict>")), "TeamID"),
        ("an 8-character TeamID that is not platform", faa_item(v, "W", &procs("<dict><key>TeamID</key><string>ABCDE123</string></dict>")), "TeamID"),
        ("two wildcards (deviation: Santa matches the second literally)", faa_item(v, "W", &procs("<dict><key>SigningID</key><string>com.*.*test</string><key>TeamID</key><string>ABCDE12345</string></dict>")), "more than one"),
        ("a 10-character TeamID with a dash (deviation: Santa loads it, never matching)", faa_item(v, "W", &procs("<dict><key>TeamID</key><string>ABCDE-1234</string></dict>")), "10 letters or digits"),
        ("a short CDHash", faa_item(v, "W", &procs("<dict><key>CDHash</key><string>abab</string></dict>")), "CDHash"),
        ("a certificate that is not hex", faa_item(v, "W", &procs(&format!("<dict><key>CertificateSha256</key><string>{}</string></dict>", "g".repeat(64)))), "CertificateSha256"),
    ];
    let two = |second_type: &str| {
        format!(
            r#"<?xml version="1.0"?><plist version="1.0"><dict>{v}<key>WatchItems</key><dict>
            <key>A</key><dict>{paths}</dict>
            <key>B</key><dict>{paths}<key>Options</key><dict><key>RuleType</key><string>{second_type}</string></dict>
            <key>Processes</key><array><dict><key>BinaryPath</key><string>/bin/x</string></dict></array></dict>
            </dict></dict></plist>"#
        )
        .into_bytes()
    };
    cases.push((
        "the same path in two path-keyed items (PrefixTree.h keeps the last inserted)",
        two("PathsWithDeniedProcesses"),
        "also watched by item A",
    ));
    for (what, plist, want) in cases {
        let e = policy::santa::import(None, Some(&plist))
            .map(|i| i.policy)
            .expect_err(what)
            .to_string();
        assert!(e.contains(want), "{what}: {e}");
    }
}

/// Values Santa reads more loosely than a plist's types suggest: any NSNumber is a boolean
/// (`boolValue`), so `<integer>1</integer>` is true; PlatformBinary false requires nothing
/// (FAAPolicyProcessor.mm `PolicyMatchesProcess:` only checks it when true); an item's own
/// Version stands in for a top-level one (WatchItems.mm `ParseConfigSingleWatchItem`).
#[test]
fn file_access_values_read_as_santa_reads_them() {
    let v = "<key>Version</key><string>v1</string>";
    let ls = |platform: bool| {
        open(
            process(
                "/bin/ls",
                sig(Production, None, Some("com.apple.ls"), None, 0, platform),
            ),
            "/etc/w/x",
            WRITE,
        )
    };
    let prefix_int = "<key>Paths</key><array><dict><key>Path</key><string>/etc/w/</string><key>IsPrefix</key><integer>1</integer></dict></array><key>Options</key><dict><key>AuditOnly</key><integer>0</integer></dict>";
    let ls_not_platform = "<key>Paths</key><array><dict><key>Path</key><string>/etc/w/</string><key>IsPrefix</key><true/></dict></array><key>Options</key><dict><key>AuditOnly</key><false/></dict><key>Processes</key><array><dict><key>BinaryPath</key><string>/bin/ls</string><key>PlatformBinary</key><false/></dict></array>";
    let own_version = "<key>Paths</key><array><dict><key>Path</key><string>/etc/w/</string><key>IsPrefix</key><true/></dict></array><key>Options</key><dict><key>Version</key><string>v2</string><key>AuditOnly</key><false/></dict>";
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<u8>, model::Event, &str)> = vec![
        ("IsPrefix 1 and AuditOnly 0 as numbers", faa_item(v, "W", prefix_int), ls(true), "deny:W"),
        ("PlatformBinary false allows a platform ls", faa_item(v, "W", ls_not_platform), ls(true), "allow:W"),
        ("PlatformBinary false allows another ls", faa_item(v, "W", ls_not_platform), ls(false), "allow:W"),
        ("the item's own Version", faa_item("", "W", own_version), ls(true), "deny:W"),
        ("an item's path twice is one path (Santa's set)", faa_item(v, "W", &format!("<key>Paths</key><array><string>/etc/w/x</string><dict><key>Path</key><string>/etc/w/x</string></dict></array>{}", "<key>Options</key><dict><key>AuditOnly</key><false/></dict>")), ls(true), "deny:W"),
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
    // A process-keyed item without processes applies to no process in Santa (its policies are
    // found by process, SNTEndpointSecurityProcessFileAccessAuthorizer.mm
    // `findPolicyForProcess:` walks their processes): left out, with a note.
    for rule_type in ["ProcessesWithDeniedPaths", "ProcessesWithAllowedPaths"] {
        let body = format!(
            "<key>Paths</key><array><string>/etc/w/x</string></array><key>Options</key><dict><key>AuditOnly</key><false/><key>RuleType</key><string>{rule_type}</string></dict>"
        );
        let imported = policy::santa::import(None, Some(&faa_item(v, "W", &body)))
            .unwrap_or_else(|e| panic!("{rule_type}: {e}"));
        let p = Policy::parse("imported.toml", &imported.policy).unwrap();
        assert_eq!(
            summary(&p.decide(&ls(false), &Facts::NONE)),
            "allow:default",
            "{rule_type}"
        );
        assert_eq!(imported.notes.len(), 1, "{rule_type}: {:?}", imported.notes);
    }
}
