//! The static rules tier (the policy file) ranks above the local tier (`gatehouse rule add`).
//!
//! Santa: Source/santad/DataLayer/SNTRuleTable.mm `ruleForIdentifiers:` checks every static
//! rule (the `StaticRules` configuration key), in CDHash > binary > signing ID > certificate >
//! team ID order, before it queries the rules database (rules added locally or by sync), and
//! SNTRuleTableTest.mm `testRetrieveRuleByStaticRules`-style cases: a static rule wins over a
//! database rule for the same binary, and over a database rule of a higher-precedence type.

mod common;

use common::*;
use model::SigningStatus::*;
use policy::local::{LocalDoc, LocalExec, LocalPath};
use policy::{LocalRules, Os, Policy, Tier};

const STATIC: &str = r#"
version = 1
mode = "enforce"

[[exec]]
name = "static-team-allow"
action = "allow"
team_id = "ABCDE12345"

[[exec]]
name = "static-sha-block"
action = "block"
sha256 = "2222222222222222222222222222222222222222222222222222222222222222"

[[exec_path]]
name = "static-opt-allow"
action = "allow"
prefix = "/opt/"
"#;

const LOCAL: &str = r#"
version = 1

[[exec]]
name = "cdhash-block"
action = "block"
cdhash = "1111111111111111111111111111111111111111"

[[exec]]
action = "allow"
sha256 = "2222222222222222222222222222222222222222222222222222222222222222"

[[exec]]
action = "allow"
sha256 = "3333333333333333333333333333333333333333333333333333333333333333"

[[exec]]
action = "block"
team_id = "ZZZZZ99999"

[[exec_path]]
action = "block"
prefix = "/opt/bad/"

[[exec_path]]
action = "allow"
prefix = "/usr/local/tools/"
"#;

fn composed() -> Policy {
    let local = LocalRules::parse_for("local.toml", LOCAL, Os::Macos).unwrap();
    Policy::parse_for("static.toml", STATIC, Os::Macos)
        .unwrap()
        .with_local(Some(local))
}

#[test]
fn static_tier_ranks_above_local_table() {
    let p = composed();
    let team = |t: &str, cd: &str| {
        sig(
            Production,
            Some(t),
            Some("com.example.tool"),
            Some(cd),
            ENFORCED,
            false,
        )
    };
    let unsigned = sig(Unsigned, None, None, None, 0, false);
    let cases = [
        // A static team-id allow beats a local CDHash block (the whole static tier first; the
        // hash is known, as the static SHA-256 block could otherwise still apply).
        (
            "/Applications/t",
            team("ABCDE12345", "11"),
            Some("44"),
            "allow:static-team-allow",
        ),
        // Without the static rule's team, the local CDHash rule decides.
        (
            "/Applications/t",
            team("YYYYY88888", "11"),
            Some("44"),
            "deny:local:cdhash-block",
        ),
        // The same SHA-256 in both tiers: the static block wins over the local allow.
        (
            "/bin/x",
            unsigned.clone(),
            Some("22"),
            "deny:static-sha-block",
        ),
        (
            "/bin/x",
            unsigned.clone(),
            Some("33"),
            "allow:local:sha256:3333333333333333333333333333333333333333333333333333333333333333",
        ),
        // Local identifier rules still outrank every path scope (identifier rules first).
        (
            "/opt/x",
            team("ZZZZZ99999", "44"),
            Some("44"),
            "deny:local:team_id:ZZZZZ99999",
        ),
        // Path scopes: the static tier's first, then the local tier's (block wins within a tier).
        (
            "/opt/bad/x",
            unsigned.clone(),
            Some("44"),
            "allow:static-opt-allow",
        ),
        (
            "/usr/local/tools/x",
            unsigned.clone(),
            Some("44"),
            "allow:local:path:/usr/local/tools/",
        ),
        ("/usr/bin/x", unsigned.clone(), Some("44"), "deny:default"),
    ];
    for (path, signing, sha, want) in cases {
        let facts = sha.map(facts_sha).unwrap_or(model::Facts::NONE);
        let ev = exec(path, signing);
        assert_eq!(summary(&p.decide(&ev, &facts)), want, "{path} {sha:?}");
    }
    // Unknown hash: both tiers' SHA-256 rules are pending, so analysis is needed.
    let ev = exec("/bin/x", unsigned);
    assert_eq!(
        summary(&p.decide(&ev, &model::Facts::NONE)),
        "analyze:sha256"
    );
}

#[test]
fn local_rules_need_the_hash_only_when_they_have_sha256_rules() {
    let st = "version = 1\nmode = \"monitor\"\n";
    let local = "version = 1\n[[exec]]\naction = \"block\"\nteam_id = \"ZZZZZ99999\"\n";
    let p = Policy::parse_for("s", st, Os::Linux).unwrap();
    assert!(p.exec_rules_need_hash(), "package trust on Linux");
    let p = Policy::parse_for(
        "s",
        &format!("{st}[defaults]\npackage_trust = false\n"),
        Os::Linux,
    )
    .unwrap();
    assert!(!p.exec_rules_need_hash());
    let l = LocalRules::parse_for("l", local, Os::Linux).unwrap();
    let p = p.with_local(Some(l));
    assert!(!p.exec_rules_need_hash());
    let l = LocalRules::parse_for("l", LOCAL, Os::Linux).unwrap();
    assert!(p.with_local(Some(l)).exec_rules_need_hash());
}

#[test]
fn rules_are_listed_with_their_tier_and_replaced_whole() {
    let p = composed();
    let rules = p.rules();
    let statics: Vec<_> = rules.iter().filter(|r| r.tier == Tier::Static).collect();
    let locals: Vec<_> = rules.iter().filter(|r| r.tier == Tier::Local).collect();
    assert_eq!(statics.len(), 3);
    assert_eq!(locals.len(), 6);
    assert_eq!(locals[0].name, "local:cdhash-block");
    assert_eq!(
        locals[0].what,
        "exec block cdhash 1111111111111111111111111111111111111111"
    );
    assert_eq!(statics[2].what, "exec_path allow prefix /opt/");
    // Replacing the local tier drops the old one whole; `None` removes it.
    let one = LocalRules::parse_for(
        "l",
        "version = 1\n[[exec]]\naction = \"allow\"\nteam_id = \"QQQQQ77777\"\n",
        Os::Macos,
    )
    .unwrap();
    let p = p.with_local(Some(one));
    assert_eq!(p.rules().len(), 4);
    assert_eq!(p.rule_count(), 4);
    let p = p.with_local(None);
    assert_eq!(p.rules().len(), 3);
    assert!(p.local_rules().is_none());
    let ev = exec(
        "/Applications/t",
        sig(
            Production,
            Some("YYYYY88888"),
            None,
            Some("11"),
            ENFORCED,
            false,
        ),
    );
    assert_eq!(summary(&p.decide(&ev, &model::Facts::NONE)), "deny:default");
}

#[test]
fn local_files_are_validated_table() {
    let cases = [
        ("version = 2\n", "unsupported local rules version 2"),
        (
            "version = 1\n[[watch]]\nname = \"w\"\n",
            "unknown field `watch`",
        ),
        ("version = 1\nmode = \"enforce\"\n", "unknown field `mode`"),
        (
            "version = 1\n[[exec]]\naction = \"allow\"\nsha256 = \"12\"\n",
            "sha256 must be 64 hex characters",
        ),
        (
            "version = 1\n[[exec]]\naction = \"allow\"\nteam_id = \"ABCDE12345\"\n[[exec]]\naction = \"block\"\nteam_id = \"abcde12345\"\n",
            "conflicting rules for team_id",
        ),
        (
            "version = 1\n[[exec_path]]\naction = \"allow\"\nregex = \"(\"\n",
            "invalid regex",
        ),
    ];
    for (text, want) in cases {
        let e = LocalRules::parse_for("local.toml", text, Os::Linux).unwrap_err();
        assert!(e.to_string().contains(want), "{text:?}: {e}");
        assert!(e.to_string().starts_with("local.toml:"), "{e}");
    }
    // Static rule names may not take the local tier's prefix.
    let e = Policy::parse_for(
        "p",
        "version = 1\nmode = \"monitor\"\n[[exec]]\nname = \"local:x\"\naction = \"allow\"\nteam_id = \"ABCDE12345\"\n",
        Os::Linux,
    )
    .unwrap_err();
    assert!(e.to_string().contains("reserved for local"), "{e}");
}

#[test]
fn local_doc_round_trips_and_removes() {
    let mut doc = LocalDoc::new();
    doc.exec.push(LocalExec {
        action: "allow".into(),
        sha256: Some("ab".repeat(32)),
        ..Default::default()
    });
    doc.exec.push(LocalExec {
        name: Some("tools".into()),
        action: "block".into(),
        team_id: Some("ABCDE12345".into()),
        message: Some("no".into()),
        ..Default::default()
    });
    doc.exec_path.push(LocalPath {
        action: "allow".into(),
        prefix: Some("/opt/t/".into()),
        ..Default::default()
    });
    let (text, rules) = doc.validate("l", Os::Linux).unwrap();
    assert_eq!(rules.len(), 3);
    assert_eq!(LocalDoc::from_toml(&text).unwrap(), doc);
    assert_eq!(doc.remove("local:tools"), 1);
    assert_eq!(doc.remove(&format!("sha256:{}", "AB".repeat(32))), 1);
    assert_eq!(doc.remove("path:/opt/t/"), 1);
    assert_eq!(doc.remove("path:/opt/t/"), 0);
    assert!(doc.validate("l", Os::Linux).unwrap().1.is_empty());
}

/// `gatehouse status` counts rules by tier and type: the action and the value are not part of
/// the type, a compiler rule is its own type, and watch and mount rules count by section.
#[test]
fn rule_counts_by_tier_and_type() {
    let with_more = format!(
        "{STATIC}\n[[exec]]\nname = \"cc\"\naction = \"allow\"\nsha256 = \"{}\"\ncompiler = true\n\
         [[watch]]\nname = \"w\"\npaths = [{{ path = \"/etc/secret\" }}]\n\
         processes = [{{ binary_path = \"/bin/cat\" }}]\n",
        "4".repeat(64)
    );
    let local = LocalRules::parse_for("local.toml", LOCAL, Os::Macos).unwrap();
    let p = Policy::parse_for("static.toml", &with_more, Os::Macos)
        .unwrap()
        .with_local(Some(local));
    let counts = p.rule_counts();
    let got: Vec<(Tier, &str, usize)> = counts
        .iter()
        .map(|(t, k, n)| (*t, k.as_str(), *n))
        .collect();
    let want = [
        (Tier::Static, "exec team_id", 1),
        (Tier::Static, "exec sha256", 1),
        (Tier::Static, "exec sha256 (compiler)", 1),
        (Tier::Static, "exec_path prefix", 1),
        (Tier::Static, "watch", 1),
        (Tier::Local, "exec cdhash", 1),
        (Tier::Local, "exec sha256", 2),
        (Tier::Local, "exec team_id", 1),
        (Tier::Local, "exec_path prefix", 2),
    ];
    assert_eq!(got, want);
    assert_eq!(
        got.iter().map(|(_, _, n)| n).sum::<usize>(),
        p.rule_count(),
        "every rule counted once"
    );
}
