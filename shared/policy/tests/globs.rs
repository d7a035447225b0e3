//! Glob watch paths: glob(3) semantics and the longest-match rule, as Santa's file-access
//! authorization applies them.
//!
//! Santa: https://northpolesec.github.io/santa/features/faa ("Globs", "Prefix and Glob
//! Evaluation"; northpolesec/santa docs/docs/features/faa.md) and
//! Source/santad/DataLayer/WatchItems.mm `DataWatchItems::Build` (`glob(path, 0, ...)`, each
//! expansion inserted as a literal or prefix into one prefix tree) and `FindPolicies`
//! (`LookupLongestMatchingPrefix`).

mod common;

use common::*;
use model::SigningStatus::*;
use policy::{Os, Policy, WatchedPath};

const GLOBS: &str = r#"
version = 1
mode = "monitor"

[[watch]]
name = "cookies"
paths = [{ path = "/Users/*/Library/Cookies/*.binarycookies" }]
audit_only = false

[[watch]]
name = "user-tmp"
paths = [{ path = "/Users/*/tmp/foo", prefix = true }]
audit_only = false
processes = [{ binary_path = "/usr/bin/vim" }]

[[watch]]
name = "alice-tmp"
paths = [{ path = "/Users/alice/tmp/foo/bar", prefix = true }]
audit_only = false
rule_type = "paths_with_denied_processes"
processes = [{ binary_path = "/usr/bin/cat" }]

[[watch]]
name = "ssh-configs"
paths = [{ path = "/etc/ssh/ssh[!_]*_config" }, { path = "/etc/ssh/?.key" }]
audit_only = false

[[watch]]
name = "users-docs"
paths = [{ path = "/Users/*/Documents/", prefix = true }]
audit_only = true

[[watch]]
name = "curl-confined"
rule_type = "processes_with_denied_paths"
audit_only = false
paths = [{ path = "/home/*/.ssh/", prefix = true }]
processes = [{ binary_path = "/usr/bin/curl" }]
"#;

fn by(path: &str) -> model::Process {
    process(path, sig(Unsigned, None, None, None, 0, false))
}

#[test]
fn glob_watch_paths_table() {
    let p = Policy::parse_for("globs.toml", GLOBS, Os::Linux).unwrap();
    let cases = [
        // `*` is one component: matches any user, never crosses `/` (faa.md "A glob (*) will
        // only ever match files/directories within a given path").
        (
            "/usr/bin/cat",
            "/Users/alice/Library/Cookies/c.binarycookies",
            "deny:cookies",
        ),
        (
            "/usr/bin/cat",
            "/Users/alice/x/Library/Cookies/c.binarycookies",
            "allow:default",
        ),
        // Not a prefix: nothing under a matching name.
        (
            "/usr/bin/cat",
            "/Users/alice/Library/Cookies/c.binarycookies/x",
            "allow:default",
        ),
        // glob(3) without GLOB_PERIOD: a wildcard never matches a leading `.`.
        (
            "/usr/bin/cat",
            "/Users/.hidden/Library/Cookies/c.binarycookies",
            "allow:default",
        ),
        // IsPrefix with a glob: everything under (and string-prefixed by) an expansion.
        ("/usr/bin/cat", "/Users/bob/tmp/foo/x", "deny:user-tmp"),
        ("/usr/bin/cat", "/Users/bob/tmp/foobar", "deny:user-tmp"),
        ("/usr/bin/vim", "/Users/bob/tmp/foo/x", "allow:user-tmp"),
        // Longest match: the literal prefix is longer than the glob's expansion here...
        (
            "/usr/bin/cat",
            "/Users/alice/tmp/foo/bar/x",
            "deny:alice-tmp",
        ),
        (
            "/usr/bin/vim",
            "/Users/alice/tmp/foo/bar/x",
            "allow:default",
        ),
        // ... and shorter here, so the glob's item applies.
        ("/usr/bin/vim", "/Users/alice/tmp/foo/ba", "allow:user-tmp"),
        // Classes and `?`.
        ("/usr/bin/cat", "/etc/ssh/sshd_config", "deny:ssh-configs"),
        ("/usr/bin/cat", "/etc/ssh/ssh_config", "allow:default"),
        ("/usr/bin/cat", "/etc/ssh/a.key", "deny:ssh-configs"),
        ("/usr/bin/cat", "/etc/ssh/ab.key", "allow:default"),
        // Audit-only glob prefix.
        (
            "/usr/bin/cat",
            "/Users/bob/Documents/x.txt",
            "audit:users-docs",
        ),
        // Process-keyed item with a glob path (a leading `.` written literally matches).
        (
            "/usr/bin/curl",
            "/home/bob/.ssh/id_ed25519",
            "deny:curl-confined",
        ),
        ("/usr/bin/curl", "/home/bob/ssh/id_ed25519", "allow:default"),
        ("/usr/bin/cat", "/home/bob/.ssh/id_ed25519", "allow:default"),
    ];
    for (who, path, want) in cases {
        let ev = open(by(who), path, WRITE);
        assert_eq!(
            summary(&p.decide(&ev, &model::Facts::NONE)),
            want,
            "{who} opens {path}"
        );
    }
}

#[test]
fn glob_roots_are_watched_as_directory_prefixes() {
    let p = Policy::parse_for("globs.toml", GLOBS, Os::Linux).unwrap();
    let watched = p.watched_paths();
    for root in ["/Users/", "/etc/ssh/", "/home/"] {
        assert!(
            watched.contains(&WatchedPath {
                path: root.into(),
                prefix: true
            }),
            "{root} in {watched:?}"
        );
    }
    assert!(
        !watched.iter().any(|w| w.path.contains(['*', '?', '['])),
        "no pattern reaches a backend: {watched:?}"
    );
}

#[test]
fn glob_errors_table() {
    let item = |paths: &str| {
        format!(
            "version = 1\nmode = \"monitor\"\n[[watch]]\nname = \"w\"\npaths = {paths}\n\
             [[watch]]\nname = \"v\"\npaths = [{{ path = \"/x/*\" }}]\n"
        )
    };
    let cases = [
        (r#"[{ path = "/a/[b/c]" }]"#, "cannot contain '/'"),
        (r#"[{ path = "/x/*" }]"#, "already watched by item \"w\""),
    ];
    for (paths, want) in cases {
        let e = Policy::parse_for("p.toml", &item(paths), Os::Linux).unwrap_err();
        assert!(e.to_string().contains(want), "{paths}: {e}");
    }
    // Bounded: at most MAX globs per policy.
    let many: Vec<String> = (0..257)
        .map(|i| format!("{{ path = \"/g{i}/*\" }}"))
        .collect();
    let text = format!(
        "version = 1\nmode = \"monitor\"\n[[watch]]\nname = \"w\"\npaths = [{}]\n",
        many.join(", ")
    );
    let e = Policy::parse_for("p.toml", &text, Os::Linux).unwrap_err();
    assert!(e.to_string().contains("more than 256 glob"), "{e}");
    // Quoted metacharacters and an unclosed `[` are literal, kept as written (see
    // `quoted_paths_without_wildcards_are_watched_as_written`).
    let lit = "version = 1\nmode = \"monitor\"\n[[watch]]\nname = \"w\"\naudit_only = false\n\
               paths = [{ path = '/a/\\*' }, { path = \"/a/[b\" }]\n";
    let p = Policy::parse_for("p.toml", lit, Os::Linux).unwrap();
    for (path, want) in [
        ("/a/\\*", "deny:w"),
        ("/a/*", "allow:default"),
        ("/a/x", "allow:default"),
        ("/a/[b", "deny:w"),
    ] {
        let ev = open(by("/usr/bin/cat"), path, None);
        assert_eq!(summary(&p.decide(&ev, &model::Facts::NONE)), want, "{path}");
    }
}

#[test]
fn macos_glob_paths_are_canonicalized() {
    let text = "version = 1\nmode = \"monitor\"\n[[watch]]\nname = \"w\"\naudit_only = false\n\
                paths = [{ path = \"/tmp/*.sock\" }]\n";
    let p = Policy::parse_for("p.toml", text, Os::Macos).unwrap();
    let ev = open(by("/usr/bin/cat"), "/private/tmp/a.sock", None);
    assert_eq!(summary(&p.decide(&ev, &model::Facts::NONE)), "deny:w");
    assert!(p.watched_paths().contains(&WatchedPath {
        path: "/private/tmp/".into(),
        prefix: true
    }));
}

/// A watch path whose only glob characters are quoted (`\*`, `\[`) or an unclosed `[` has no
/// wildcard for glob(3) (no `GLOB_MAGCHAR`), so Santa's Glob.mm `FindMatches` watches it exactly
/// as written, backslashes included; a quoted character next to a real wildcard is that
/// character.
#[test]
fn quoted_paths_without_wildcards_are_watched_as_written() {
    let p = Policy::parse_for(
        "quoted.toml",
        r#"
version = 1
mode = "monitor"
[[watch]]
name = "star"
paths = [{ path = '/q/\*' }]
audit_only = false
[[watch]]
name = "class"
paths = [{ path = '/q/\[x]' }]
audit_only = false
[[watch]]
name = "unclosed"
paths = [{ path = "/q/[y" }]
audit_only = false
[[watch]]
name = "mixed"
paths = [{ path = '/r/\**' }]
audit_only = false
"#,
        Os::Linux,
    )
    .unwrap();
    let cases = [
        (r"/q/\*", "deny:star"),
        ("/q/*", "allow:default"),
        (r"/q/\[x]", "deny:class"),
        ("/q/[x]", "allow:default"),
        ("/q/[y", "deny:unclosed"),
        ("/r/*abc", "deny:mixed"),
        ("/r/abc", "allow:default"),
    ];
    for (path, want) in cases {
        let ev = open(by("/usr/bin/cat"), path, WRITE);
        assert_eq!(summary(&p.decide(&ev, &model::Facts::NONE)), want, "{path}");
    }
}
