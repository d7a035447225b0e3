//! Compiler rules and transitive allowlisting, policy side: which rules are compiler rules,
//! where transitive allows rank, the bounded store, and the Santa import.
//!
//! Santa: https://northpole.dev/features/binary-authorization#allowlist-compiler (northpolesec/santa
//! docs/docs/features/binary-authorization.md, "ALLOWLIST_COMPILER"; docs/docs/cookbook/transitive.md)
//! and Source/santad/SNTPolicyProcessorTest.mm (`testRule:transitiveRules:` cases: with
//! EnableTransitiveRules off an ALLOWLIST_COMPILER rule is a plain allow and an
//! ALLOWLIST_TRANSITIVE rule is ignored; on, the compiler rule marks its process and the
//! transitive rule allows). Transitive rules rank below every other rule type (issue 13).

mod common;

use common::*;
use model::SigningStatus::*;
use model::{Facts, Outcome, RuleRef};
use policy::transitive::{TransitiveEntry, TransitiveRules};
use policy::{LocalRules, Os, Policy};

fn text(transitive: bool) -> String {
    format!(
        r#"
version = 1
mode = "enforce"

[defaults]
package_trust = false
transitive_rules = {transitive}

[[exec]]
name = "cc"
action = "allow"
compiler = true
signing_id = "platform:com.apple.ld"

[[exec]]
name = "blocked-team"
action = "block"
team_id = "ZZZZZ99999"

[[exec_path]]
name = "block-tmp"
action = "block"
prefix = "/tmp/"
"#
    )
}

fn store_with(sha: &str) -> std::sync::Arc<TransitiveRules> {
    let s = TransitiveRules::new(2);
    s.add(TransitiveEntry {
        sha256: hex(sha, 32).parse().unwrap(),
        path: "/Users/a/build/out".into(),
        compiler_rule: "cc".into(),
        added_ms: 1,
    });
    s
}

#[test]
fn compiler_rules_only_with_transitive_rules_on() {
    for (on, want) in [(true, true), (false, false)] {
        let p = Policy::parse_for("p", &text(on), Os::Macos).unwrap();
        assert_eq!(p.transitive_rules(), on);
        assert_eq!(p.is_compiler_rule(&RuleRef::new("cc")), want, "on={on}");
        assert!(!p.is_compiler_rule(&RuleRef::new("blocked-team")));
        // Either way the compiler itself is allowed by its rule.
        let ld = exec(
            "/usr/bin/ld",
            sig(Production, None, Some("com.apple.ld"), None, 0, true),
        );
        assert_eq!(summary(&p.decide(&ld, &Facts::NONE)), "allow:cc");
        // On, the extension must see every exec of a compiler to track it: never a
        // kernel-cached allow (the in-process cache keeps the rule name). Off, a plain allow.
        let Outcome::Decided(d) = p.decide(&ld, &Facts::NONE) else {
            panic!("decided")
        };
        let want_cache = if on {
            model::Cacheability::Identity
        } else {
            model::Cacheability::Kernel
        };
        assert_eq!(d.cacheable, want_cache, "on={on}");
        assert_eq!(p.records_transitive(), on, "on={on}");
    }
    let e = Policy::parse_for(
        "p",
        "version = 1\nmode = \"enforce\"\n[[exec]]\nname = \"x\"\naction = \"block\"\ncompiler = true\nteam_id = \"ABCDE12345\"\n",
        Os::Linux,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("only applies to an allow rule"),
        "{e}"
    );
}

#[test]
fn transitive_allows_rank_below_every_rule_table() {
    let unsigned = || sig(Unsigned, None, None, None, 0, false);
    let team = || sig(Production, Some("ZZZZZ99999"), None, None, 0, false);
    let local = LocalRules::parse_for(
        "l",
        &format!(
            "version = 1\n[[exec]]\nname = \"no\"\naction = \"block\"\nsha256 = \"{}\"\n",
            hex("ee", 32)
        ),
        Os::Macos,
    )
    .unwrap();
    let cases = [
        // (transitive_rules, store hash, exec path, signature, facts hash, want)
        (
            true,
            "aa",
            "/Users/a/build/out",
            unsigned(),
            Some("aa"),
            "allow:transitive",
        ),
        // Off: the store is ignored (Santa ignores ALLOWLIST_TRANSITIVE rules).
        (
            false,
            "aa",
            "/Users/a/build/out",
            unsigned(),
            Some("aa"),
            "deny:default",
        ),
        // A static identifier rule outranks it ...
        (
            true,
            "aa",
            "/Users/a/build/out",
            team(),
            Some("aa"),
            "deny:blocked-team",
        ),
        // ... and so does a local one.
        (
            true,
            "ee",
            "/Users/a/build/out",
            unsigned(),
            Some("ee"),
            "deny:local:no",
        ),
        // It outranks path scopes (it is an identifier rule, the last one).
        (
            true,
            "aa",
            "/tmp/out",
            unsigned(),
            Some("aa"),
            "allow:transitive",
        ),
        // Unknown hash with a non-empty store: the hash is needed.
        (true, "aa", "/Users/a/x", unsigned(), None, "analyze:sha256"),
        (
            true,
            "aa",
            "/Users/a/x",
            unsigned(),
            Some("bb"),
            "deny:default",
        ),
    ];
    for (on, stored, path, signing, sha, want) in cases {
        let p = Policy::parse_for("p", &text(on), Os::Macos)
            .unwrap()
            .with_local(Some(local.clone()))
            .with_transitive(Some(store_with(stored)));
        let facts = sha.map(facts_sha).unwrap_or(Facts::NONE);
        assert_eq!(
            summary(&p.decide(&exec(path, signing), &facts)),
            want,
            "on={on} {path} {sha:?}"
        );
    }
}

#[test]
fn the_store_is_bounded_and_clearable() {
    let s = TransitiveRules::new(2);
    let e = |b: &str| TransitiveEntry {
        sha256: hex(b, 32).parse().unwrap(),
        path: format!("/out/{b}"),
        compiler_rule: "cc".into(),
        added_ms: 0,
    };
    assert!(s.add(e("01")).is_none());
    assert!(s.add(e("02")).is_none());
    // Re-adding refreshes without growing.
    assert!(s.add(e("01")).is_none());
    assert_eq!(s.len(), 2);
    // At capacity the oldest (02, since 01 was refreshed) goes.
    assert_eq!(s.add(e("03")).map(|x| x.path), Some("/out/02".into()));
    assert_eq!(s.evicted(), 1);
    let paths: Vec<_> = s.list().into_iter().map(|x| x.path).collect();
    assert_eq!(paths, ["/out/01", "/out/03"]);
    assert!(s.contains(&[0x01; 32]) && !s.contains(&[0x02; 32]));
    assert_eq!(s.clear(), 2);
    assert!(s.is_empty());
}

/// `add_all` (one copy per burst) ends in the same store as `add` one entry at a time:
/// (capacity, what is already in the store, the burst).
#[test]
fn adding_a_burst_is_adding_one_by_one() {
    let e = |b: &str, at: u64| TransitiveEntry {
        sha256: hex(b, 32).parse().unwrap(),
        path: format!("/out/{b}"),
        compiler_rule: "cc".into(),
        added_ms: at,
    };
    let cases: &[(usize, &[&str], &[&str])] = &[
        (4, &[], &[]),
        (4, &[], &["01", "02"]),
        (4, &["01", "02"], &["03"]),
        // Refreshes, within the burst and of earlier entries.
        (4, &["01", "02"], &["01", "03", "03"]),
        // Evictions, of earlier entries and of the burst's own first ones.
        (2, &["01", "02"], &["03"]),
        (2, &[], &["01", "02", "03", "04"]),
        (2, &["01"], &["02", "01", "03"]),
    ];
    for (cap, before, burst) in cases {
        let one = TransitiveRules::new(*cap);
        let all = TransitiveRules::new(*cap);
        for (i, b) in before.iter().enumerate() {
            one.add(e(b, i as u64));
            all.add(e(b, i as u64));
        }
        for (i, b) in burst.iter().enumerate() {
            one.add(e(b, 100 + i as u64));
        }
        let evicted = all.add_all(
            burst
                .iter()
                .enumerate()
                .map(|(i, b)| e(b, 100 + i as u64))
                .collect(),
        );
        let case = format!("cap {cap} before {before:?} burst {burst:?}");
        assert_eq!(all.list(), one.list(), "{case}");
        assert_eq!(all.evicted(), one.evicted(), "{case}");
        assert_eq!(evicted as u64, one.evicted(), "{case}");
    }
}

#[test]
fn santa_compiler_rules_import_as_compiler_rules() {
    let rules = r#"{"rules": [
        {"identifier": "7f6a1d0f3e1c2b4a5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4",
         "policy": "ALLOWLIST_COMPILER", "rule_type": "BINARY"},
        {"identifier": "platform:com.apple.ld", "policy": "allowlist_compiler",
         "rule_type": "SIGNINGID"},
        {"identifier": "ABCDE12345", "policy": "ALLOWLIST", "rule_type": "TEAMID"}
    ]}"#;
    let imported = policy::santa::import(Some(rules), None).unwrap();
    assert_eq!(
        imported.policy.matches("compiler = true").count(),
        2,
        "{}",
        imported.policy
    );
    let p = Policy::parse_for("i", &imported.policy, Os::Macos).unwrap();
    assert!(
        !p.transitive_rules(),
        "the import leaves EnableTransitiveRules off"
    );
    let names: Vec<String> = p
        .rules()
        .into_iter()
        .filter(|r| r.what.ends_with("(compiler)"))
        .map(|r| r.name)
        .collect();
    assert_eq!(names.len(), 2, "{names:?} in {}", imported.policy);
}

/// Santa's decision table (SNTPolicyProcessor.mm `decision:forRule:`) has compiler states for
/// CDHash, binary and signing-ID rules only (SNTPolicyProcessorTest.mm
/// `testDecisionForCDHashCompilerRuleMatches`, `testDecisionForSHA256CompilerRuleMatches`,
/// `testDecisionForSigningIDCompilerRuleMatches`); a certificate or team-id ALLOWLIST_COMPILER
/// rule is an invalid combination treated as no rule, so it never allows. Gatehouse refuses
/// it, in a policy file and in the import, rather than turning it into an allow.
#[test]
fn compiler_rules_are_cdhash_sha256_or_signing_id_only() {
    let ids = [
        ("cdhash", hex("aa", 20), true),
        ("sha256", hex("bb", 32), true),
        ("signing_id", "ABCDE12345:com.example.cc".to_owned(), true),
        ("certificate", hex("cc", 32), false),
        ("team_id", "ABCDE12345".to_owned(), false),
    ];
    for (key, id, ok) in ids {
        let text = format!(
            "version = 1\nmode = \"enforce\"\n[defaults]\ntransitive_rules = true\n\
             [[exec]]\nname = \"cc\"\naction = \"allow\"\ncompiler = true\n{key} = \"{id}\"\n"
        );
        match Policy::parse_for("p", &text, Os::Macos) {
            Ok(p) => {
                assert!(ok, "{key}: accepted");
                assert!(p.is_compiler_rule(&RuleRef::new("cc")), "{key}");
            }
            Err(e) => {
                assert!(!ok, "{key}: {e}");
                assert!(
                    e.message.contains("compiler = true applies only to cdhash"),
                    "{key}: {e}"
                );
                // At the `compiler` key, line 8.
                assert_eq!(e.line, 8, "{key}: {e}");
            }
        }
    }
    let cert = hex("cc", 32);
    let rule = |policy: &str, ty: &str, id: &str| {
        format!(r#"{{"identifier": "{id}", "policy": "{policy}", "rule_type": "{ty}"}}"#)
    };
    #[rustfmt::skip]
    let imports: Vec<(&str, Vec<String>, Option<usize>)> = vec![
        ("certificate compiler", vec![rule("ALLOWLIST_COMPILER", "CERTIFICATE", &cert)], Some(1)),
        ("team-id compiler", vec![rule("ALLOWLIST", "BINARY", &hex("dd", 32)), rule("allowlist_compiler", "teamid", "abcde12345")], Some(2)),
        ("replaced by a plain allow later", vec![rule("ALLOWLIST_COMPILER", "CERTIFICATE", &cert), rule("ALLOWLIST", "CERTIFICATE", &cert)], None),
        ("removed later", vec![rule("ALLOWLIST_COMPILER", "TEAMID", "ABCDE12345"), rule("REMOVE", "TEAMID", "ABCDE12345")], None),
        ("signing-id compiler", vec![rule("ALLOWLIST_COMPILER", "SIGNINGID", "ABCDE12345:cc")], None),
    ];
    for (what, rules, want_err) in imports {
        let json = format!(r#"{{"rules": [{}]}}"#, rules.join(","));
        match (policy::santa::import(Some(&json), None), want_err) {
            (Ok(_), None) => {}
            (Err(policy::santa::ImportError::Inexpressible { n, .. }), Some(want)) => {
                assert_eq!(n, want, "{what}")
            }
            (got, _) => panic!("{what}: {got:?}"),
        }
    }
}
