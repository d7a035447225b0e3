//! Compiling for macOS on any host: `/private` canonicalization, the package-trust default,
//! the helper's `valid` certificate fact, and the embedded self-protection's installer
//! exception for pkg upgrades.

mod common;

use common::*;
use model::{
    AuditToken, CertificateInfo, CodeSigning, Facts, Outcome, SigningBinding, SigningStatus::*,
};
use policy::{Os, Policy};

const PATHS: &str = r#"
version = 1
mode = "enforce"

[defaults]
package_trust = false

[[exec]]
name = "shell"
signing_id = "platform:com.apple.zsh"
action = "allow"

[[exec_path]]
name = "no-tmp"
prefix = "/tmp/"
action = "block"

[[watch]]
name = "zshrc"
paths = [{ path = "/etc/zshrc" }]
allow_read_access = true
audit_only = false
processes = [{ binary_path = "/etc/zsh-helper" }]

[mute]
targets = [{ path = "/var/log/", prefix = true }]
"#;

fn zsh() -> CodeSigning {
    sig(
        Production,
        None,
        Some("com.apple.zsh"),
        Some("aa"),
        ENFORCED,
        true,
    )
}

#[test]
fn paths_are_canonical_on_macos_only() {
    let mac = Policy::parse_for("p.toml", PATHS, Os::Macos).unwrap();
    let linux = Policy::parse_for("p.toml", PATHS, Os::Linux).unwrap();
    let app = || process("/Applications/X.app/Contents/MacOS/X", zsh());
    let cases: Vec<(&str, model::Event, &str, &str)> = vec![
        (
            "block of /tmp/",
            exec("/private/tmp/evil", CodeSigning::unsigned()),
            "deny:no-tmp",
            "deny:default",
        ),
        (
            "block of /tmp/ as Linux reports it",
            exec("/tmp/evil", CodeSigning::unsigned()),
            "deny:default",
            "deny:no-tmp",
        ),
        (
            "watch on /etc/zshrc",
            open(app(), "/private/etc/zshrc", WRITE),
            "deny:zshrc",
            "allow:default",
        ),
        (
            "watch on /etc/zshrc as Linux reports it",
            open(app(), "/etc/zshrc", WRITE),
            "allow:default",
            "deny:zshrc",
        ),
        (
            "watch process by binary_path",
            open(
                process("/private/etc/zsh-helper", CodeSigning::unsigned()),
                "/private/etc/zshrc",
                WRITE,
            ),
            "allow:zshrc",
            "allow:default",
        ),
        (
            "mute of /var/log/",
            open(app(), "/private/var/log/system.log", WRITE),
            "allow:muted",
            "allow:default",
        ),
        (
            "/variable is not /var",
            exec("/variable/x", zsh()),
            "allow:shell",
            "allow:shell",
        ),
    ];
    for (name, event, want_mac, want_linux) in cases {
        assert_eq!(
            summary(&mac.decide(&event, &Facts::NONE)),
            want_mac,
            "macOS: {name}"
        );
        // An ELF binary (Linux asks what an unsigned exec target is).
        let elf = Facts {
            file_kind: Some(model::FileKind::Elf),
            ..Facts::NONE
        };
        assert_eq!(
            summary(&linux.decide(&event, &elf)),
            want_linux,
            "Linux: {name}"
        );
    }
    let mut shown: Vec<(&str, &str)> = mac
        .canonicalized_paths()
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    shown.sort_unstable();
    assert_eq!(
        shown,
        [
            ("/etc/zsh-helper", "/private/etc/zsh-helper"),
            ("/etc/zshrc", "/private/etc/zshrc"),
            ("/tmp/", "/private/tmp/"),
            ("/var/log/", "/private/var/log/"),
        ]
    );
    assert!(linux.canonicalized_paths().is_empty());
    assert_eq!((mac.os(), linux.os()), (Os::Macos, Os::Linux));
}

#[test]
fn a_prefix_and_its_private_form_are_one_prefix_on_macos() {
    let text = r#"
version = 1
mode = "enforce"
[[exec_path]]
name = "a"
prefix = "/tmp/"
action = "block"
[[exec_path]]
name = "b"
prefix = "/private/tmp/"
action = "allow"
"#;
    assert!(Policy::parse_for("p.toml", text, Os::Linux).is_ok());
    let e = Policy::parse_for("p.toml", text, Os::Macos).unwrap_err();
    assert!(e.message.contains("conflicting rules"), "{e}");
}

#[test]
fn package_trust_defaults_by_os() {
    let text = "version = 1\nmode = \"enforce\"\n";
    let event = exec("/usr/bin/tool", CodeSigning::unsigned());
    let cases = [
        (Os::Linux, "analyze:package+file_kind"),
        (Os::Macos, "deny:default"),
    ];
    for (os, want) in cases {
        let p = Policy::parse_for("p.toml", text, os).unwrap();
        assert_eq!(summary(&p.decide(&event, &Facts::NONE)), want, "{os}");
    }
}

#[test]
fn certificate_rules_honour_valid() {
    let text = format!(
        r#"
version = 1
mode = "enforce"
[[exec]]
name = "good-cert"
certificate = "{}"
action = "allow"
[[exec]]
name = "bad-cert"
certificate = "{}"
action = "block"

[[watch]]
name = "secrets"
paths = [{{ path = "/secrets/", prefix = true }}]
audit_only = false
processes = [{{ certificate = "{}" }}]
"#,
        hex("aa", 32),
        hex("bb", 32),
        hex("aa", 32),
    );
    let p = Policy::parse_for("p.toml", &text, Os::Macos).unwrap();
    let signed = sig(
        Production,
        Some("ABCDE12345"),
        Some("com.example.app"),
        Some("11"),
        ENFORCED,
        false,
    );
    let cert = |byte: &str, valid: bool| Facts {
        certificate: Some(CertificateInfo {
            leaf_sha256: sha(byte),
            team_id: Some("ABCDE12345".into()),
            valid,
        }),
        ..Facts::NONE
    };
    let run = exec("/Applications/App", signed.clone());
    let write = open(process("/Applications/App", signed), "/secrets/x", WRITE);
    let cases = [
        ("allow, valid", &run, cert("aa", true), "allow:good-cert"),
        ("allow, not valid", &run, cert("aa", false), "deny:default"),
        ("block, valid", &run, cert("bb", true), "deny:bad-cert"),
        ("block, not valid", &run, cert("bb", false), "deny:bad-cert"),
        (
            "watch entry, valid",
            &write,
            cert("aa", true),
            "allow:secrets",
        ),
        (
            "watch entry, not valid",
            &write,
            cert("aa", false),
            "deny:secrets",
        ),
    ];
    for (name, event, facts, want) in cases {
        assert_eq!(summary(&p.decide(event, &facts)), want, "{name}");
    }
}

/// Issue 10 item 3, invariant `identity-from-kernel`: a certificate the helper reads must be
/// the code the kernel checked. An exec asks with the target's enforced CDHash (never an
/// unenforced one), a file access with the acting process's audit token; without either the
/// request goes unbound, and the helper refuses it.
#[test]
fn certificate_requests_carry_the_kernels_identity() {
    let text = format!(
        r#"
version = 1
mode = "enforce"
[[exec]]
name = "good-cert"
certificate = "{}"
action = "allow"

[[watch]]
name = "secrets"
paths = [{{ path = "/secrets/", prefix = true }}]
audit_only = false
processes = [{{ certificate = "{}" }}]
"#,
        hex("aa", 32),
        hex("aa", 32),
    );
    let p = Policy::parse_for("p.toml", &text, Os::Macos).unwrap();
    let signed = |flags| {
        sig(
            Production,
            Some("ABCDE12345"),
            Some("com.example.app"),
            Some("11"),
            flags,
            false,
        )
    };
    let token = AuditToken([501, 501, 20, 501, 20, 100, 100_001, 9]);
    let mut running = process("/Applications/App", signed(ENFORCED));
    running.audit_token = Some(token);
    let cd = hex("11", 20).parse().unwrap();
    let cases: Vec<(&str, model::Event, Option<SigningBinding>)> = vec![
        (
            "exec, enforced CDHash",
            exec("/Applications/App", signed(ENFORCED)),
            Some(SigningBinding::CdHash(cd)),
        ),
        (
            "exec, CDHash not enforced (CS_VALID alone)",
            exec("/Applications/App", signed(model::cs_flags::CS_VALID)),
            None,
        ),
        (
            "file access by a process with a token",
            open(running, "/secrets/x", WRITE),
            Some(SigningBinding::AuditToken(token)),
        ),
        (
            "file access by a process without one",
            open(
                process("/Applications/App", signed(ENFORCED)),
                "/secrets/x",
                WRITE,
            ),
            None,
        ),
    ];
    for (what, ev, want) in cases {
        let Outcome::Analyze(r) = p.decide(&ev, &Facts::NONE) else {
            panic!("{what}: not sent for analysis")
        };
        assert!(r.needs.certificate, "{what}");
        assert_eq!(r.binding, want, "{what}");
    }
}

#[test]
fn embedded_self_protection_on_macos() {
    let p = Policy::embedded_default_for(Os::Macos);
    let installer = |sid: &str, platform: bool| {
        process(
            "/System/Library/PrivateFrameworks/PackageKit.framework/Resources/installd",
            sig(Production, None, Some(sid), Some("cc"), ENFORCED, platform),
        )
    };
    let log = "/private/var/log/gatehouse/events.jsonl";
    let support = "/Library/Application Support/Gatehouse/gatehouse-helper";
    let mut cases: Vec<(String, model::Event, &str)> = vec![
        (
            "stranger writes the events log".into(),
            open(shell(), log, WRITE),
            "deny:gatehouse-self-protection",
        ),
        (
            "stranger reads the events log".into(),
            open(shell(), log, READ),
            "allow:default",
        ),
        (
            "stranger replaces the helper".into(),
            open(shell(), support, WRITE),
            "deny:gatehouse-self-protection",
        ),
        (
            "stranger edits the helper's launchd job".into(),
            open(
                shell(),
                "/Library/LaunchDaemons/dev.gatehouse.helper.plist",
                WRITE,
            ),
            "deny:gatehouse-self-protection",
        ),
        (
            "installd id without the platform flag".into(),
            open(installer("com.apple.installd", false), support, WRITE),
            "deny:gatehouse-self-protection",
        ),
        (
            "another Apple platform binary".into(),
            open(installer("com.apple.cp", true), support, WRITE),
            "deny:gatehouse-self-protection",
        ),
    ];
    for sid in defaults::MACOS_INSTALLER_SIGNING_IDS {
        cases.push((
            format!("{sid} upgrades the helper"),
            open(installer(sid, true), support, WRITE),
            "allow:gatehouse-self-protection",
        ));
        cases.push((
            format!("{sid} writes in the log directory"),
            open(installer(sid, true), log, WRITE),
            "allow:gatehouse-self-protection",
        ));
    }
    for (name, event, want) in cases {
        assert_eq!(summary(&p.decide(&event, &Facts::NONE)), want, "{name}");
    }
    // As Linux compiles it, `/private/var` is not Gatehouse's.
    let linux = Policy::embedded_default_for(Os::Linux);
    assert_eq!(
        summary(&linux.decide(&open(shell(), log, WRITE), &Facts::NONE)),
        "allow:default"
    );
}

#[test]
fn embedded_installer_list_is_the_defaults_list() {
    let mut in_toml: Vec<&str> = policy::EMBEDDED_DEFAULT_TOML
        .lines()
        .filter_map(|l| l.split("\"platform:").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    let mut want = defaults::MACOS_INSTALLER_SIGNING_IDS.to_vec();
    in_toml.sort_unstable();
    want.sort_unstable();
    assert_eq!(in_toml, want);
}
