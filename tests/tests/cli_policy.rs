//! The offline policy commands through the real `gatehouse` binary: `policy check` on the
//! shipped examples and on malformed files (exact position, rule and exit code), `policy eval`
//! before and after the helper's facts, and `policy import-santa` producing a policy that
//! `policy check` accepts. Needs no root and no kernel feature.

use std::path::{Path, PathBuf};
use std::process::Output;

use tests::gatehouse;

fn text(o: &Output) -> String {
    tests::output_text(o)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_string_lossy().into_owned()
}

const HASH: &str = "9999999999999999999999999999999999999999999999999999999999999999";

#[test]
fn check_accepts_every_example() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let o = gatehouse(&["policy", "check", path.to_str().unwrap()]);
            assert!(o.status.success(), "{}: {}", path.display(), text(&o));
            assert!(text(&o).contains(": ok"), "{}", text(&o));
            seen += 1;
        }
    }
    assert!(
        seen >= 3,
        "expected the three shipped examples, found {seen}"
    );
}

#[test]
fn check_rejects_malformed_files_with_position_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    // (file body, expected "line:col", expected fragment of the message)
    let cases: &[(&str, &str, &str)] = &[
        (
            "version = 1\nmode = \"enforce\"\n[[exec]]\nname = \"bad\"\naction = \"allow\"\nsha256 = \"xyz\"\n",
            ":6:10:",
            "(rule bad)",
        ),
        (
            "version = 1\nmode = \"lockdown!\"\n",
            ":2:8:",
            "expected `monitor` or `enforce`",
        ),
        (
            "version = 1\nmode = \"monitor\"\nsurprise = true\n",
            ":3:",
            "surprise",
        ),
        (
            "version = 1\nmode = \"enforce\"\n[[exec]]\nname = \"a\"\naction = \"allow\"\nteam_id = \"ABCDE12345\"\n\
             [[exec]]\nname = \"b\"\naction = \"block\"\nteam_id = \"ABCDE12345\"\n",
            ":",
            "(rule b)",
        ),
    ];
    for (i, (body, pos, fragment)) in cases.iter().enumerate() {
        let file = write(dir.path(), &format!("bad{i}.toml"), body);
        let o = gatehouse(&["policy", "check", &file]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(1), "case {i}: {out}");
        assert!(
            out.contains(&format!("{file}{pos}")),
            "case {i}: no {file}{pos} in {out}"
        );
        assert!(out.contains(fragment), "case {i}: no {fragment:?} in {out}");
    }
    // A missing file is a failure (1); a missing argument is a usage error (2).
    assert_eq!(
        gatehouse(&["policy", "check", "/nonexistent.toml"])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(gatehouse(&["policy", "check"]).status.code(), Some(2));
}

#[test]
fn eval_needs_the_slow_path_until_facts_are_given() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(
        dir.path(),
        "p.toml",
        &format!(
            "version = 1\nmode = \"enforce\"\n[defaults]\npackage_trust = false\n\
             [[exec]]\nname = \"allow-tool\"\naction = \"allow\"\nsha256 = \"{HASH}\"\n"
        ),
    );
    let event = write(
        dir.path(),
        "e.json",
        r#"{"process":{"pid":10,"uid":0,"executable":{"path":"/bin/sh"},"signing":{"status":"unsigned"}},
            "kind":"exec","target":{"pid":11,"uid":0,"executable":{"path":"/usr/local/bin/tool"},
            "signing":{"status":"unsigned"}}}"#,
    );
    let matching = write(dir.path(), "f1.json", &format!(r#"{{"sha256":"{HASH}"}}"#));
    let other = write(
        dir.path(),
        "f2.json",
        // An ELF binary: an unsigned exec target's kind is a fact too (scripts are out of
        // scope).
        &format!(r#"{{"sha256":"{}","file_kind":"elf"}}"#, "1".repeat(64)),
    );
    /// Extra arguments, then what `eval --json` must say.
    type Expect<'a> = (bool, Option<&'a str>, Option<&'a str>);
    let cases: [(&[&str], Expect<'_>); 3] = [
        (&[], (true, None, None)),
        (
            &["--facts", &matching],
            (false, Some("allow"), Some("allow-tool")),
        ),
        (&["--facts", &other], (false, Some("deny"), None)),
    ];
    for (extra, (slow, verdict, rule)) in &cases {
        let mut args = vec!["policy", "eval", &policy, "--event", &event, "--json"];
        args.extend_from_slice(extra);
        let o = gatehouse(&args);
        assert!(o.status.success(), "{extra:?}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("eval --json is JSON");
        assert_eq!(v["slow_path"], *slow, "{extra:?}: {v}");
        if let Some(verdict) = verdict {
            assert_eq!(v["verdict"], *verdict, "{extra:?}: {v}");
        }
        if let Some(rule) = rule {
            assert_eq!(v["rule"], *rule, "{extra:?}: {v}");
        }
    }
}

#[test]
fn import_santa_output_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = repo().join("shared/policy/tests/fixtures");
    let out = dir.path().join("imported.toml");
    let o = gatehouse(&[
        "policy",
        "import-santa",
        "--rules",
        fixtures.join("santa-rules.json").to_str().unwrap(),
        "--file-access",
        fixtures.join("santa-faa.plist").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let imported = std::fs::read_to_string(&out).unwrap();
    assert!(
        imported.contains("[[exec]]") && imported.contains("[[watch]]"),
        "{imported}"
    );
    let check = gatehouse(&["policy", "check", out.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check));
    // Neither input is a usage error.
    assert_eq!(
        gatehouse(&["policy", "import-santa"]).status.code(),
        Some(2)
    );
}

/// `policy eval --os` decides as that OS's build would: macOS canonicalizes `/etc` to
/// `/private/etc`, allows the system daemons the slow path waits on before the policy (even
/// with a SHA-256 block rule, which otherwise sends every exec to the helper), and has no
/// package trust; `policy check --os macos` lists each rewritten path.
#[test]
fn eval_decides_as_the_named_os() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(
        dir.path(),
        "p.toml",
        &format!(
            "version = 1\nmode = \"enforce\"\n\
             [[exec]]\nname = \"bad-tool\"\naction = \"block\"\nsha256 = \"{HASH}\"\n\
             [[watch]]\nname = \"zshrc\"\npaths = [{{ path = \"/etc/zshrc\" }}]\n\
             allow_read_access = true\naudit_only = false\n\
             processes = [{{ binary_path = \"/usr/bin/true\" }}]\n"
        ),
    );
    // CS_VALID | CS_HARD | CS_KILL: the kernel enforces the CDHash.
    let platform = |sid: &str, flags: u32| {
        format!(
            r#"{{"status":"production","signing_id":"{sid}","cdhash":"{}","flags":{flags},"is_platform_binary":true}}"#,
            "ab".repeat(20)
        )
    };
    let exec = |name: &str, path: &str, signing: &str| {
        write(
            dir.path(),
            name,
            &format!(
                r#"{{"process":{{"pid":1,"uid":0,"executable":{{"path":"/sbin/launchd"}},"signing":{{"status":"unsigned"}}}},
                    "kind":"exec","target":{{"pid":2,"uid":0,"executable":{{"path":"{path}"}},"signing":{signing}}}}}"#
            ),
        )
    };
    let trustd = exec(
        "trustd.json",
        "/usr/libexec/trustd",
        &platform("com.apple.trustd", 0x301),
    );
    let trustd_unenforced = exec(
        "trustd-soft.json",
        "/usr/libexec/trustd",
        &platform("com.apple.trustd", 0x1),
    );
    let safari = exec(
        "safari.json",
        "/Applications/Safari.app/Contents/MacOS/Safari",
        &platform("com.apple.Safari", 0x301),
    );
    let tool = exec(
        "tool.json",
        "/usr/local/bin/tool",
        r#"{"status":"unsigned"}"#,
    );
    let zshrc = write(
        dir.path(),
        "zshrc.json",
        r#"{"process":{"pid":3,"uid":501,"executable":{"path":"/bin/zsh"},"signing":{"status":"unsigned"}},
            "kind":"open","file":{"path":"/private/etc/zshrc"},"access":{"write":true}}"#,
    );
    let other_hash = write(
        dir.path(),
        "f.json",
        &format!(r#"{{"sha256":"{}"}}"#, "1".repeat(64)),
    );
    let with_hash: [&str; 2] = ["--facts", &other_hash];
    // (case, os, event, extra args, slow path, verdict, rule)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a [&'a str],
        bool,
        Option<&'a str>,
        Option<&'a str>,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "trustd on macOS",
            "macos",
            &trustd,
            &[],
            false,
            Some("allow"),
            None,
        ),
        ("trustd on Linux", "linux", &trustd, &[], true, None, None),
        (
            "trustd, CDHash not enforced",
            "macos",
            &trustd_unenforced,
            &[],
            true,
            None,
            None,
        ),
        (
            "another platform binary",
            "macos",
            &safari,
            &[],
            true,
            None,
            None,
        ),
        (
            "unsigned tool, hash known, macOS: no package trust",
            "macos",
            &tool,
            &with_hash,
            false,
            Some("deny"),
            None,
        ),
        (
            "unsigned tool, hash known, Linux: package trust pending",
            "linux",
            &tool,
            &with_hash,
            true,
            None,
            None,
        ),
        (
            "write to /etc/zshrc on macOS",
            "macos",
            &zshrc,
            &[],
            false,
            Some("deny"),
            Some("zshrc"),
        ),
        (
            "the same event on Linux",
            "linux",
            &zshrc,
            &[],
            false,
            Some("allow"),
            None,
        ),
    ];
    for (name, os, event, extra, slow, verdict, rule) in &cases {
        let mut args = vec![
            "policy", "eval", &policy, "--event", event, "--os", os, "--json",
        ];
        args.extend_from_slice(extra);
        let o = gatehouse(&args);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("eval --json is JSON");
        assert_eq!(v["slow_path"], *slow, "{name}: {v}");
        if let Some(verdict) = verdict {
            assert_eq!(v["verdict"], *verdict, "{name}: {v}");
        }
        assert_eq!(v["rule"].as_str(), *rule, "{name}: {v}");
    }

    let o = gatehouse(&[
        "policy", "eval", &policy, "--event", &trustd, "--os", "macos",
    ]);
    assert!(
        text(&o).contains("allow: slow-path dependency (macOS system daemon com.apple.trustd"),
        "{}",
        text(&o)
    );
    let o = gatehouse(&[
        "policy", "eval", &policy, "--event", &trustd, "--os", "windows",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    let o = gatehouse(&["policy", "check", &policy, "--os", "macos"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("macos: /etc/zshrc compiles to /private/etc/zshrc"),
        "{}",
        text(&o)
    );
    let o = gatehouse(&["policy", "check", &policy, "--os", "linux", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("check --json is JSON");
    assert_eq!(v["os"], "linux", "{v}");
    assert_eq!(v["canonicalized"], serde_json::json!([]), "{v}");
}

/// `policy eval --exec PATH` hashes the real file (the SHA-256 rule for its content decides),
/// `--local-rules` composes the local tier below the policy, and a decision that needs the slow
/// path shows the verdicts the extension gives when the helper is unavailable or late.
#[test]
fn eval_exec_hashes_the_file_and_shows_the_fallbacks() {
    let dir = tempfile::tempdir().unwrap();
    let tool = dir.path().join("tool");
    std::fs::write(&tool, b"#!/bin/sh\necho tool\n").unwrap();
    // The SHA-256 of that content (`printf '#!/bin/sh\necho tool\n' | sha256sum`).
    let digest = "bf664cf84f00f6ed76164c8457fdeaf8e4dee547226e9ffcf8274e2d2246fed9";
    let base = "version = 1\nmode = \"enforce\"\n[defaults]\npackage_trust = false\n\
                helper_unavailable = \"deny\"\nfallback = \"allow\"\n";
    let blocks = write(
        dir.path(),
        "blocks.toml",
        &format!("{base}[[exec]]\nname = \"blk\"\naction = \"block\"\nsha256 = \"{digest}\"\n"),
    );
    let other = write(
        dir.path(),
        "other.toml",
        &format!("{base}[[exec]]\nname = \"x\"\naction = \"allow\"\nsha256 = \"{HASH}\"\n"),
    );
    let local = write(
        dir.path(),
        "local.toml",
        &format!(
            "version = 1\n[[exec]]\nname = \"mine\"\naction = \"allow\"\nsha256 = \"{digest}\"\n"
        ),
    );
    let missing = write(dir.path(), "facts.json", "{}");
    let tool_s = tool.to_str().unwrap();
    // (policy, extra arguments, verdict, rule)
    let cases: [(&str, &[&str], &str, Option<&str>); 3] = [
        (&blocks, &[], "deny", Some("blk")),
        // A script no rule names is out of scope (Santa's "Not a Mach-O"): --exec read its
        // first bytes, so no slow path either.
        (&other, &[], "allow", None),
        (
            &other,
            &["--local-rules", &local],
            "allow",
            Some("local:mine"),
        ),
    ];
    for (policy, extra, verdict, rule) in cases {
        let mut args = vec![
            "policy", "eval", policy, "--exec", tool_s, "--os", "linux", "--json",
        ];
        args.extend_from_slice(extra);
        let o = gatehouse(&args);
        assert!(o.status.success(), "{extra:?}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["verdict"], verdict, "{v}");
        assert_eq!(v["rule"].as_str(), rule, "{v}");
        assert_eq!(v["slow_path"], false, "the hash was computed: {v}");
        assert!(v["fallback"].is_null(), "{v}");
    }
    // With an event that lacks the hash, the slow path is needed: the fallbacks are shown.
    let event = write(
        dir.path(),
        "e.json",
        r#"{"process":{"pid":10,"uid":0,"executable":{"path":"/bin/sh"},"signing":{"status":"unsigned"}},
            "kind":"exec","target":{"pid":11,"uid":0,"executable":{"path":"/usr/local/bin/tool"},
            "signing":{"status":"unsigned"}}}"#,
    );
    let o = gatehouse(&[
        "policy", "eval", &other, "--event", &event, "--facts", &missing, "--os", "linux", "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["slow_path"], true, "{v}");
    assert_eq!(v["fallback"]["helper_unavailable"], "deny", "{v}");
    assert_eq!(v["fallback"]["late"], "allow", "{v}");
    let o = gatehouse(&["policy", "eval", &other, "--event", &event, "--os", "linux"]);
    assert!(
        text(&o).contains("if the helper is unavailable, erring or the queue is full: deny")
            && text(&o).contains("if it answers late: allow"),
        "{}",
        text(&o)
    );
    // Not a regular file: refused by the bounded reader, no hang.
    let o = gatehouse(&["policy", "eval", &other, "--exec", "/dev/zero"]);
    assert!(!o.status.success(), "{}", text(&o));
    // --event or --exec is required.
    assert_eq!(
        gatehouse(&["policy", "eval", &other]).status.code(),
        Some(2)
    );
}
