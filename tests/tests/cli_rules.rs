//! `gatehouse rule add|remove|list` through the real binary, offline (`--no-reload`, or no
//! extension listening): every write is validated first (a bad rule writes nothing), the file
//! is replaced whole, the same identifier replaces an earlier rule (as Santa's rules database
//! keys rules by identifier: Source/santad/DataLayer/SNTRuleTable.mm `addRules:`), and `list`
//! shows each rule with its tier, the policy file's first. Needs no root.

use std::process::Output;

use tests::gatehouse;

fn text(o: &Output) -> String {
    tests::output_text(o)
}

const POLICY: &str = r#"
version = 1
mode = "enforce"

[[exec]]
name = "static-team"
action = "allow"
team_id = "ABCDE12345"
"#;

#[test]
fn rule_add_remove_list_table() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules").join("local-rules.toml");
    let rules_s = rules.to_str().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let tool = dir.path().join("tool");
    std::fs::write(&tool, b"#!/bin/sh\n").unwrap();
    let sock = dir.path().join("none.sock");
    let sock_s = sock.to_str().unwrap();
    let hex = "ab".repeat(32);
    // (arguments, succeeds, output contains, rules in the file after)
    let cases: Vec<(Vec<&str>, bool, &str, usize)> = vec![
        (
            vec!["add", "--action", "allow", "--sha256", &hex],
            true,
            "now holds 1",
            1,
        ),
        // The same identifier replaces the earlier rule.
        (
            vec!["add", "--action", "block", "--sha256", &hex],
            true,
            "now holds 1",
            1,
        ),
        (
            vec![
                "add",
                "--action",
                "block",
                "--team-id",
                "ZZZZZ99999",
                "--name",
                "t",
            ],
            true,
            "added local:t",
            2,
        ),
        (
            vec!["add", "--action", "allow", "--path-prefix", "/opt/tools/"],
            true,
            "now holds 3",
            3,
        ),
        (
            vec!["add", "--action", "allow", "--file", tool.to_str().unwrap()],
            true,
            "now holds 4",
            4,
        ),
        // Invalid rules write nothing.
        (
            vec!["add", "--action", "allow", "--sha256", "12"],
            false,
            "64 hex characters",
            4,
        ),
        (
            vec!["add", "--action", "allow", "--path-regex", "("],
            false,
            "invalid regex",
            4,
        ),
        // A named rule is replaced by identifier too.
        (
            vec!["add", "--action", "allow", "--team-id", "zzzzz99999"],
            true,
            "now holds 4",
            4,
        ),
        (vec!["add", "--action", "allow"], false, "required", 4),
        (vec!["remove", "local:t"], false, "no local rule", 4),
        (
            vec!["remove", "team_id:ZZZZZ99999", "path:/opt/tools/"],
            true,
            "removed 2",
            2,
        ),
        (vec!["remove", "nope"], false, "no local rule", 2),
    ];
    for (args, ok, want, count) in cases {
        let mut full: Vec<&str> = vec!["rule"];
        full.extend(&args);
        full.extend(["--rules-file", rules_s, "--os", "linux"]);
        // Half the cases with no extension listening: saved, with a warning.
        if args.len() % 2 == 0 {
            full.push("--no-reload");
        } else {
            full.extend(["--control-socket", sock_s]);
        }
        let o = gatehouse(&full);
        assert_eq!(o.status.success(), ok, "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
        if ok && !full.contains(&"--no-reload") {
            assert!(
                text(&o).contains("the extension was not told"),
                "{}",
                text(&o)
            );
        }
        let body = std::fs::read_to_string(&rules).unwrap();
        let n = body.matches("[[exec]]").count() + body.matches("[[exec_path]]").count();
        assert_eq!(n, count, "{args:?}:\n{body}");
    }
    // No temporary file left beside it.
    let names: Vec<_> = std::fs::read_dir(rules.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    let o = gatehouse(&[
        "rule",
        "list",
        "--policy",
        policy.to_str().unwrap(),
        "--rules-file",
        rules_s,
        "--os",
        "linux",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tiers: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["tier"].as_str().unwrap(), r["name"].as_str().unwrap()))
        .collect();
    assert_eq!(tiers[0], ("static", "static-team"));
    assert_eq!(tiers[1], ("local", &*format!("local:sha256:{hex}")));
    assert_eq!(tiers.len(), 3, "{tiers:?}");
    let o = gatehouse(&[
        "rule",
        "list",
        "--policy",
        policy.to_str().unwrap(),
        "--rules-file",
        rules_s,
    ]);
    assert!(text(&o).contains("static  static-team"), "{}", text(&o));
    assert!(text(&o).contains("local   local:sha256:"), "{}", text(&o));
}

#[test]
fn a_file_that_is_not_local_rules_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("local-rules.toml");
    std::fs::write(&rules, "version = 1\nmode = \"enforce\"\n").unwrap();
    let o = gatehouse(&[
        "rule",
        "add",
        "--action",
        "allow",
        "--team-id",
        "ABCDE12345",
        "--rules-file",
        rules.to_str().unwrap(),
        "--no-reload",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not a local rules file"), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(&rules).unwrap(),
        "version = 1\nmode = \"enforce\"\n"
    );
}
