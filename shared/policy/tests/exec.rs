//! Exec decisions: every identifier kind, the full precedence order, signing-status limits,
//! bad-signature protection, platform binaries (macOS flag and Linux package trust), path
//! scopes, monitor vs enforce, and when the fast path must ask for analysis.

mod common;

use common::*;
use model::{Cacheability, Facts, FileKind, Outcome, SigningStatus::*};
use policy::{LocalRules, Os, Policy};

fn exec_policy(mode: &str, extra: &str) -> Policy {
    let text = format!(
        r#"
version = 1
mode = "{mode}"
{extra}

[[exec]]
name = "cd-allow"
action = "allow"
cdhash = "{cd_a}"
[[exec]]
name = "cd-block"
action = "block"
cdhash = "{cd_b}"
[[exec]]
name = "sha-allow"
action = "allow"
sha256 = "{sha_a}"
[[exec]]
name = "sha-block"
action = "block"
sha256 = "{sha_b}"
[[exec]]
name = "sid-allow"
action = "allow"
signing_id = "ABCDE12345:com.example.good"
[[exec]]
name = "sid-block"
action = "block"
signing_id = "ABCDE12345:com.example.bad"
[[exec]]
name = "sid-platform-block"
action = "block"
signing_id = "platform:com.apple.curl"
[[exec]]
name = "cert-allow"
action = "allow"
certificate = "{cert_a}"
[[exec]]
name = "cert-block"
action = "block"
certificate = "{cert_b}"
[[exec]]
name = "team-allow"
action = "allow"
team_id = "abcde12345"
[[exec]]
name = "team-block"
action = "block"
team_id = "BADBAD1234"

[[exec_path]]
name = "tmp-block"
action = "block"
prefix = "/tmp/"
[[exec_path]]
name = "tools-allow"
action = "allow"
prefix = "/opt/tools/"
[[exec_path]]
name = "tools-evil-block"
action = "block"
prefix = "/opt/tools/evil/"
[[exec_path]]
name = "downloads-block"
action = "block"
regex = "^/Users/[^/]+/Downloads/"
[[exec_path]]
name = "apps-allow"
action = "allow"
regex = "^/Applications/.*\\.app/"
"#,
        cd_a = hex("aa", 20),
        cd_b = hex("bb", 20),
        // Upper-case in the file: hashes compare lower-case.
        sha_a = hex("1A", 32),
        sha_b = hex("2b", 32),
        cert_a = hex("33", 32),
        cert_b = hex("44", 32),
    );
    Policy::parse("exec.toml", &text).unwrap()
}

/// Facts with a hash that matches no rule, so identifier steps below SHA-256 can decide.
fn other_sha() -> Facts {
    facts_sha("99")
}

fn with_cert(mut f: Facts, byte: &str) -> Facts {
    f.certificate = facts_cert(byte).certificate;
    f
}

#[test]
fn exec_table() {
    let enforce = exec_policy("enforce", "[defaults]\npackage_trust = false");
    let monitor = exec_policy("monitor", "[defaults]\npackage_trust = false");
    let no_badsig = exec_policy(
        "monitor",
        "[defaults]\npackage_trust = false\nbad_signature_protection = false",
    );
    let no_badsig_enforce = exec_policy(
        "enforce",
        "[defaults]\npackage_trust = false\nbad_signature_protection = false",
    );
    let good = Some("com.example.good");
    let bad = Some("com.example.bad");
    let team = Some("ABCDE12345");
    #[rustfmt::skip]
    let cases: Vec<(&str, &Policy, model::Event, Facts, &str)> = vec![
        // Each identifier kind on its own.
        ("cdhash allow", &enforce, exec("/x", sig(Production, None, None, Some("aa"), ENFORCED, false)), Facts::NONE, "allow:cd-allow"),
        ("cdhash block", &enforce, exec("/x", sig(AdHoc, None, None, Some("bb"), ENFORCED, false)), Facts::NONE, "deny:cd-block"),
        ("sha allow", &enforce, exec("/x", sig(Unsigned, None, None, None, 0, false)), facts_sha("1a"), "allow:sha-allow"),
        ("sha block", &enforce, exec("/x", sig(Unsigned, None, None, None, 0, false)), facts_sha("2b"), "deny:sha-block"),
        ("signing id allow", &enforce, exec("/x", sig(Production, team, good, None, 0, false)), other_sha(), "allow:sid-allow"),
        ("signing id block", &enforce, exec("/x", sig(Production, team, bad, None, 0, false)), other_sha(), "deny:sid-block"),
        ("platform signing id", &enforce, exec("/usr/bin/curl", sig(Production, None, Some("com.apple.curl"), None, 0, true)), other_sha(), "deny:sid-platform-block"),
        ("cert allow", &enforce, exec("/x", sig(Development, None, None, None, 0, false)), with_cert(other_sha(), "33"), "allow:cert-allow"),
        ("cert block", &enforce, exec("/x", sig(Production, Some("ZZZZZ00000"), None, None, 0, false)), with_cert(other_sha(), "44"), "deny:cert-block"),
        ("team allow", &enforce, exec("/x", sig(Production, team, Some("com.example.other"), None, 0, false)), with_cert(other_sha(), "99"), "allow:team-allow"),
        ("team block", &enforce, exec("/x", sig(Production, Some("BADBAD1234"), None, None, 0, false)), with_cert(other_sha(), "99"), "deny:team-block"),
        // Precedence: CDHash > SHA-256 > signing ID > certificate > team ID.
        ("cdhash beats sha", &enforce, exec("/x", sig(Production, team, good, Some("bb"), ENFORCED, false)), facts_sha("1a"), "deny:cd-block"),
        ("cdhash needs no hash", &enforce, exec("/x", sig(Production, Some("BADBAD1234"), None, Some("aa"), ENFORCED, false)), Facts::NONE, "allow:cd-allow"),
        ("sha beats signing id", &enforce, exec("/x", sig(Production, team, bad, None, 0, false)), facts_sha("1a"), "allow:sha-allow"),
        ("signing id beats cert", &enforce, exec("/x", sig(Production, team, good, None, 0, false)), with_cert(other_sha(), "44"), "allow:sid-allow"),
        ("cert beats team", &enforce, exec("/x", sig(Production, Some("BADBAD1234"), None, None, 0, false)), with_cert(other_sha(), "33"), "allow:cert-allow"),
        ("rules beat path scope", &enforce, exec("/tmp/x", sig(Production, team, None, None, 0, false)), with_cert(other_sha(), "99"), "allow:team-allow"),
        // CDHash only when the kernel enforces it.
        ("cdhash not enforced", &enforce, exec("/x", sig(Production, None, None, Some("bb"), 0, false)), with_cert(other_sha(), "99"), "deny:default"),
        ("cdhash valid only", &enforce, exec("/x", sig(Production, None, None, Some("aa"), model::cs_flags::CS_VALID, false)), with_cert(other_sha(), "99"), "deny:default"),
        // Signing-status limits.
        ("dev: no signing id", &enforce, exec("/x", sig(Development, team, bad, None, 0, false)), with_cert(other_sha(), "99"), "deny:default"),
        ("dev: no team id", &enforce, exec("/x", sig(Development, team, None, None, 0, false)), with_cert(other_sha(), "99"), "deny:default"),
        ("dev: cdhash ok", &enforce, exec("/x", sig(Development, team, None, Some("aa"), ENFORCED, false)), Facts::NONE, "allow:cd-allow"),
        ("adhoc: no cert", &enforce, exec("/x", sig(AdHoc, None, None, None, 0, false)), with_cert(other_sha(), "33"), "deny:default"),
        ("adhoc: sha ok", &enforce, exec("/x", sig(AdHoc, None, None, None, 0, false)), facts_sha("1a"), "allow:sha-allow"),
        ("unsigned: no team", &enforce, exec("/x", sig(Unsigned, team, good, Some("aa"), ENFORCED, false)), other_sha(), "deny:default"),
        ("invalid: sha ok", &monitor, exec("/x", sig(Invalid, None, None, None, 0, false)), facts_sha("1a"), "allow:sha-allow"),
        ("invalid: no cdhash", &enforce, exec("/x", sig(Invalid, team, good, Some("aa"), ENFORCED, false)), other_sha(), "deny:invalid_signature"),
        // Bad-signature protection, in monitor too; off when disabled; unsigned is not bad.
        ("bad signature monitor", &monitor, exec("/x", sig(Invalid, None, None, None, 0, false)), other_sha(), "deny:invalid_signature"),
        ("bad signature off", &no_badsig, exec("/x", sig(Invalid, None, None, None, 0, false)), other_sha(), "would_deny"),
        ("unsigned not bad", &monitor, exec("/x", sig(Unsigned, None, None, None, 0, false)), other_sha(), "would_deny"),
        ("invalid platform flag", &enforce, exec("/x", sig(Invalid, None, None, None, 0, true)), other_sha(), "deny:invalid_signature"),
        // Without the protection the platform flag decides whatever the signature's state, as
        // Santa (SNTPolicyProcessor.mm `decisionForFileInfo:` checks only kRuntimeTrue;
        // SNTPolicyProcessorTest.mm `testDecisionAllowsPlatformBinary`).
        ("invalid platform flag, protection off", &no_badsig_enforce, exec("/tmp/x", sig(Invalid, None, None, None, 0, true)), other_sha(), "allow:platform"),
        ("invalid, no platform flag, protection off", &no_badsig_enforce, exec("/x", sig(Invalid, None, None, None, 0, false)), other_sha(), "deny:default"),
        // Platform binaries with no rule are allowed (also in /tmp: before path scopes).
        ("platform binary", &enforce, exec("/bin/ls", sig(Production, None, Some("com.apple.ls"), None, 0, true)), with_cert(other_sha(), "99"), "allow:platform"),
        ("platform before paths", &enforce, exec("/tmp/ls", sig(Production, None, Some("com.apple.ls"), None, 0, true)), with_cert(other_sha(), "99"), "allow:platform"),
        // Path scopes: prefix and regex, block wins.
        ("path block prefix", &enforce, exec("/tmp/evil", sig(Unsigned, None, None, None, 0, false)), other_sha(), "deny:tmp-block"),
        ("path allow prefix", &enforce, exec("/opt/tools/make", sig(Unsigned, None, None, None, 0, false)), other_sha(), "allow:tools-allow"),
        ("path block wins", &enforce, exec("/opt/tools/evil/x", sig(Unsigned, None, None, None, 0, false)), other_sha(), "deny:tools-evil-block"),
        ("path block regex", &enforce, exec("/Users/bob/Downloads/x", sig(Unsigned, None, None, None, 0, false)), other_sha(), "deny:downloads-block"),
        ("path allow regex", &enforce, exec("/Applications/Foo.app/Contents/MacOS/Foo", sig(Unsigned, None, None, None, 0, false)), other_sha(), "allow:apps-allow"),
        ("path block in monitor", &monitor, exec("/tmp/evil", sig(Unsigned, None, None, None, 0, false)), other_sha(), "deny:tmp-block"),
        // Mode default.
        ("enforce default", &enforce, exec("/usr/local/bin/x", sig(Unsigned, None, None, None, 0, false)), other_sha(), "deny:default"),
        ("monitor default", &monitor, exec("/usr/local/bin/x", sig(Unsigned, None, None, None, 0, false)), other_sha(), "would_deny"),
        ("monitor block rule", &monitor, exec("/x", sig(Production, Some("BADBAD1234"), None, None, 0, false)), with_cert(other_sha(), "99"), "deny:team-block"),
        // Analysis: a SHA-256 rule of either action could override anything below CDHash.
        ("needs sha", &enforce, exec("/x", sig(Unsigned, None, None, None, 0, false)), Facts::NONE, "analyze:sha256+file_kind"),
        ("needs sha and cert", &enforce, exec("/x", sig(Production, Some("ZZZZZ00000"), None, None, 0, false)), Facts::NONE, "analyze:sha256+certificate"),
        ("needs cert only", &enforce, exec("/x", sig(Production, Some("ZZZZZ00000"), None, None, 0, false)), other_sha(), "analyze:certificate"),
        ("adhoc never needs cert", &enforce, exec("/x", sig(AdHoc, None, None, None, 0, false)), other_sha(), "deny:default"),
    ];
    for (what, p, ev, facts, want) in cases {
        assert_eq!(summary(&p.decide(&ev, &facts)), want, "{what}");
    }
}

/// A cheaper identifier decides without the hash when no SHA-256 rule could change the verdict.
#[test]
fn analysis_only_when_a_fact_could_change_the_verdict() {
    let p = |mode: &str, sha_action: &str, team_action: &str, package: bool| {
        Policy::parse(
            "t.toml",
            &format!(
                r#"version = 1
mode = "{mode}"
[defaults]
package_trust = {package}
[[exec]]
name = "sha"
action = "{sha_action}"
sha256 = "{h}"
[[exec]]
name = "team"
action = "{team_action}"
team_id = "ABCDE12345"
"#,
                h = hex("11", 32)
            ),
        )
        .unwrap()
    };
    let teamed = exec(
        "/x",
        sig(Production, Some("ABCDE12345"), None, None, 0, false),
    );
    let other = exec(
        "/x",
        sig(Production, Some("QQQQQ11111"), None, None, 0, false),
    );
    let linux = exec("/usr/bin/ls", sig(Unsigned, None, None, None, 0, false));
    #[rustfmt::skip]
    let cases: Vec<(&str, Policy, &model::Event, Facts, &str)> = vec![
        ("team allow, sha allow: decided", p("enforce", "allow", "allow", false), &teamed, Facts::NONE, "allow:team"),
        ("team block, sha block: decided", p("enforce", "block", "block", false), &teamed, Facts::NONE, "deny:team"),
        ("team block, sha allow: hash", p("enforce", "allow", "block", false), &teamed, Facts::NONE, "analyze:sha256"),
        ("team allow, sha block: hash", p("enforce", "block", "allow", false), &teamed, Facts::NONE, "analyze:sha256"),
        ("enforce default, sha block: decided", p("enforce", "block", "allow", false), &other, Facts::NONE, "deny:default"),
        ("enforce default, sha allow: hash", p("enforce", "allow", "allow", false), &other, Facts::NONE, "analyze:sha256"),
        ("monitor default, sha allow: hash", p("monitor", "allow", "allow", false), &other, Facts::NONE, "analyze:sha256"),
        // Linux: every file unsigned, package trust makes a platform binary.
        ("linux: needs hash and package", p("enforce", "allow", "allow", true), &linux, Facts::NONE, "analyze:sha256+package+file_kind"),
        ("linux: package trusted", p("enforce", "allow", "allow", true), &linux, Facts { sha256: Some(sha("99")), ..facts_package(true) }, "allow:platform"),
        ("linux: package untrusted", p("enforce", "allow", "allow", true), &linux, Facts { sha256: Some(sha("99")), ..facts_package(false) }, "deny:default"),
        ("linux: sha rule first", p("enforce", "block", "allow", true), &linux, Facts { sha256: Some(sha("11")), ..facts_package(true) }, "deny:sha"),
        ("linux: block sha only, package pending", p("enforce", "block", "allow", true), &linux, facts_sha("99"), "analyze:package"),
        ("linux: monitor needs package", p("monitor", "block", "allow", true), &linux, facts_sha("99"), "analyze:package"),
        ("package trust off", p("enforce", "block", "allow", false), &linux, Facts::NONE, "analyze:sha256+file_kind"),
        ("package trust off, an ELF", p("enforce", "block", "allow", false), &linux, facts_sha("99"), "deny:default"),
    ];
    for (what, p, ev, facts, want) in cases {
        assert_eq!(summary(&p.decide(ev, &facts)), want, "{what}");
    }
}

#[test]
fn linux_server_example_is_packaged_only() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/server-packaged-only.toml"
    ))
    .unwrap();
    let p = Policy::parse("server-packaged-only.toml", &text).unwrap();
    let ls = exec("/usr/bin/ls", sig(Unsigned, None, None, None, 0, false));
    let dropped = exec("/tmp/miner", sig(Unsigned, None, None, None, 0, false));
    let cases = [
        (&ls, Facts::NONE, "analyze:"),
        (
            &ls,
            Facts {
                sha256: Some(sha("99")),
                ..facts_package(true)
            },
            "allow:platform",
        ),
        (
            &dropped,
            Facts {
                sha256: Some(sha("99")),
                ..facts_package(false)
            },
            "deny:",
        ),
    ];
    for (ev, facts, want) in cases {
        let got = summary(&p.decide(ev, &facts));
        assert!(got.starts_with(want), "{got} for {ev:?}");
    }
}

#[test]
fn cacheability_table() {
    let enforce = exec_policy("enforce", "[defaults]\npackage_trust = false");
    let monitor = exec_policy("monitor", "[defaults]\npackage_trust = false");
    let plain = Policy::parse(
        "p.toml",
        "version = 1\nmode = \"enforce\"\n[defaults]\npackage_trust = false\n",
    )
    .unwrap();
    #[rustfmt::skip]
    let cases: Vec<(&str, &Policy, model::Event, Facts, Cacheability)> = vec![
        ("identifier allow: kernel", &enforce, exec("/x", sig(Production, None, None, Some("aa"), ENFORCED, false)), Facts::NONE, Cacheability::Kernel),
        ("identifier block: identity", &enforce, exec("/x", sig(Unsigned, None, None, None, 0, false)), facts_sha("2b"), Cacheability::Identity),
        ("platform: kernel", &enforce, exec("/bin/ls", sig(Production, None, None, None, 0, true)), with_cert(other_sha(), "99"), Cacheability::Kernel),
        ("bad signature: identity", &enforce, exec("/x", sig(Invalid, None, None, None, 0, false)), other_sha(), Cacheability::Identity),
        ("path allow: never", &enforce, exec("/opt/tools/x", sig(Unsigned, None, None, None, 0, false)), other_sha(), Cacheability::Never),
        ("path block: never", &enforce, exec("/tmp/x", sig(Unsigned, None, None, None, 0, false)), other_sha(), Cacheability::Never),
        ("monitor would-deny: never", &monitor, exec("/x", sig(Unsigned, None, None, None, 0, false)), other_sha(), Cacheability::Never),
        ("enforce default, no path scopes: identity", &plain, exec("/x", sig(Unsigned, None, None, None, 0, false)), other_sha(), Cacheability::Identity),
    ];
    for (what, p, ev, facts, want) in cases {
        match p.decide(&ev, &facts) {
            Outcome::Decided(d) => assert_eq!(d.cacheable, want, "{what}: {d:?}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn analyze_names_the_file() {
    let p = exec_policy("enforce", "");
    let ev = exec(
        "/usr/local/bin/tool",
        sig(Unsigned, None, None, None, 0, false),
    );
    match p.decide(&ev, &Facts::NONE) {
        Outcome::Analyze(r) => {
            assert_eq!(r.file.unwrap().path, "/usr/local/bin/tool");
            assert!(r.mount.is_none());
        }
        other => panic!("{other:?}"),
    }
}

/// Issue 13: what is not a native binary is out of scope, as in Santa's
/// `SNTPolicyProcessor` `fileIsScopeAllowed:` ("Not a Mach-O": allowed when no rule named the
/// file; rules and blocked paths still apply first). On Linux the kernel asks about a script
/// before its interpreter, so the helper reads the first bytes; on macOS every exec target is
/// a Mach-O image and nothing is asked. `allow_scripts = false` sends scripts to the default.
#[test]
fn scripts_are_out_of_scope_unless_a_rule_names_them() {
    let policy = |extra: &str, os: Os| {
        Policy::parse_for(
            "s.toml",
            &format!(
                r#"version = 1
mode = "enforce"
[defaults]
package_trust = false
{extra}
[[exec]]
name = "bad-script"
action = "block"
sha256 = "{h}"
[[exec_path]]
name = "no-tmp"
action = "block"
prefix = "/tmp/"
"#,
                h = hex("66", 32)
            ),
            os,
        )
        .unwrap()
    };
    let linux = policy("", Os::Linux);
    let strict = policy("allow_scripts = false", Os::Linux);
    let macos = policy("", Os::Macos);
    let kind = |k: FileKind, byte: &str| Facts {
        file_kind: Some(k),
        ..facts_sha(byte)
    };
    let unsigned = |path: &str| exec(path, sig(Unsigned, None, None, None, 0, false));
    #[rustfmt::skip]
    let cases: Vec<(&str, &Policy, model::Event, Facts, &str)> = vec![
        ("a script no rule names", &linux, unsigned("/home/a/run.sh"), kind(FileKind::Script, "99"), "allow:not_a_binary"),
        ("another non-binary format", &linux, unsigned("/home/a/app.jar"), kind(FileKind::Other, "99"), "allow:not_a_binary"),
        ("an ELF binary gets the default", &linux, unsigned("/home/a/tool"), kind(FileKind::Elf, "99"), "deny:default"),
        // Linux runs a Mach-O (or a Java class, same magic) only through binfmt_misc: not native.
        ("a Mach-O on Linux", &linux, unsigned("/home/a/Main.class"), kind(FileKind::MachO, "99"), "allow:not_a_binary"),
        ("a rule naming the script wins", &linux, unsigned("/home/a/run.sh"), kind(FileKind::Script, "66"), "deny:bad-script"),
        ("a blocked path wins", &linux, unsigned("/tmp/run.sh"), kind(FileKind::Script, "99"), "deny:no-tmp"),
        ("the kind is asked for with the hash", &linux, unsigned("/home/a/run.sh"), Facts::NONE, "analyze:sha256+file_kind"),
        ("scope off: scripts get the default", &strict, unsigned("/home/a/run.sh"), kind(FileKind::Script, "99"), "deny:default"),
        ("scope off: nothing to ask (only a block rule, the default denies)", &strict, unsigned("/home/a/run.sh"), Facts::NONE, "deny:default"),
        ("macOS: exec targets are Mach-O, never asked", &macos, unsigned("/Users/a/tool"), facts_sha("99"), "deny:default"),
    ];
    for (what, p, ev, facts, want) in cases {
        assert_eq!(summary(&p.decide(&ev, &facts)), want, "{what}");
    }
    // Out of scope depends on the file's contents alone: cached by identity.
    let Outcome::Decided(d) =
        linux.decide(&unsigned("/home/a/run.sh"), &kind(FileKind::Script, "99"))
    else {
        panic!()
    };
    assert_eq!(d.cacheable, Cacheability::Identity);
}

/// Santa anchors its path regexes: SNTConfigurator.mm `expressionForPattern:` puts `^` in front
/// of `AllowedPathRegex` and `BlockedPathRegex` unless the pattern begins with one, and
/// SNTPolicyProcessor.mm `fileIsScopeBlocked:` / `fileIsScopeAllowed:` then search the path with
/// it (SNTPolicyProcessorTest.mm `testFileIsScopeBlockedWithMatchingRegexReturnsReason`,
/// `^/bin/` against `/bin/ls`). So a pattern never matches in the middle of a path; the text is
/// prefixed, not grouped, so only the first alternative of `a|b` is anchored. Both tiers.
#[test]
fn path_regexes_are_anchored_as_santa_anchors_them() {
    let text = r#"
version = 1
mode = "enforce"
[defaults]
package_trust = false
[[exec_path]]
name = "downloads"
action = "block"
regex = "/Downloads/"
[[exec_path]]
name = "opt"
action = "block"
regex = "^/opt/"
[[exec_path]]
name = "a-or-b"
action = "block"
regex = "/a/|/b/"
[[exec_path]]
name = "apps"
action = "allow"
regex = "Applications/"
[[exec_path]]
name = "any-app"
action = "allow"
regex = ".*\\.app/"
"#;
    let local = LocalRules::parse_for(
        "local.toml",
        "version = 1\n[[exec_path]]\nname = \"tools\"\naction = \"allow\"\nregex = \"tools/\"\n",
        Os::Linux,
    )
    .unwrap();
    let p = Policy::parse_for("r.toml", text, Os::Linux)
        .unwrap()
        .with_local(Some(local));
    let elf = Facts {
        file_kind: Some(FileKind::Elf),
        ..other_sha()
    };
    #[rustfmt::skip]
    let cases = [
        ("unanchored pattern, path starting with it", "/Downloads/x", "deny:downloads"),
        ("unanchored pattern, in the middle of a path", "/Users/bob/Downloads/x", "deny:default"),
        ("anchored pattern", "/opt/x", "deny:opt"),
        ("anchored pattern, in the middle", "/x/opt/y", "deny:default"),
        ("first alternative anchored", "/a/x", "deny:a-or-b"),
        ("first alternative, in the middle", "/x/a/y", "deny:default"),
        ("second alternative left unanchored, as in Santa", "/x/b/y", "deny:a-or-b"),
        ("allow regex, relative text never matches an absolute path", "/Applications/Foo", "deny:default"),
        ("a leading .* still matches anywhere", "/Applications/Foo.app/Contents/MacOS/Foo", "allow:any-app"),
        ("local tier anchored too", "/home/a/tools/x", "deny:default"),
    ];
    for (what, path, want) in cases {
        let ev = exec(path, sig(Unsigned, None, None, None, 0, false));
        assert_eq!(summary(&p.decide(&ev, &elf)), want, "{what}");
    }
}
