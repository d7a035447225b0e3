//! File access (watch items), mounts, mutes, defaults and the embedded default policy.

mod common;

use common::*;
use model::{
    Cacheability, EventKind, Facts, FallbackReason, MountDisposition as D, MountFlags, Outcome,
    SigningStatus::*, Verdict, VolumeBus,
};
use policy::{Mode, Policy};

const WATCH: &str = r#"
version = 1
mode = "monitor"

[[watch]]
name = "ssh"
paths = [{ path = "/etc/ssh/", prefix = true }]
allow_read_access = true
audit_only = false
processes = [
    { binary_path = "/usr/sbin/sshd" },
    { signing_id = "ABCDE12345:com.example.*", team_id = "ABCDE12345" },
]

[[watch]]
name = "ssh-keys"
paths = [{ path = "/etc/ssh/keys/", prefix = true }]
rule_type = "paths_with_denied_processes"
audit_only = false
operations = ["unlink", "rename"]
processes = [{ team_id = "platform" }]

[[watch]]
name = "audit-log"
paths = [{ path = "/var/audit/log" }]

[[watch]]
name = "browser-confined"
rule_type = "processes_with_allowed_paths"
audit_only = false
allow_read_access = true
paths = [{ path = "/Users/alice/Downloads/", prefix = true }]
processes = [{ signing_id = "EQHXZ8M8AV:com.google.Chrome" }]

[[watch]]
name = "curl-no-secrets"
rule_type = "processes_with_denied_paths"
audit_only = false
paths = [{ path = "/secrets/", prefix = true }]
processes = [{ binary_path = "/usr/bin/curl" }]

[[watch]]
name = "vault"
paths = [{ path = "/vault/", prefix = true }]
audit_only = false
processes = [{ certificate = "3333333333333333333333333333333333333333333333333333333333333333" }]

[mute]
processes = [{ path = "/usr/sbin/backupd", prefix = false }]
targets = [{ path = "/var/log/", prefix = true }]
"#;

fn vim() -> model::Process {
    process("/usr/bin/vim", sig(Unsigned, None, None, None, 0, false))
}
fn sshd() -> model::Process {
    process("/usr/sbin/sshd", sig(Unsigned, None, None, None, 0, false))
}
fn example_app() -> model::Process {
    process(
        "/Applications/X.app/x",
        sig(
            Production,
            Some("ABCDE12345"),
            Some("com.example.tool"),
            None,
            0,
            false,
        ),
    )
}
fn apple_rm() -> model::Process {
    process(
        "/bin/rm",
        sig(Production, None, Some("com.apple.rm"), None, 0, true),
    )
}
fn chrome() -> model::Process {
    process(
        "/Applications/Chrome.app/chrome",
        sig(
            Production,
            Some("EQHXZ8M8AV"),
            Some("com.google.Chrome"),
            None,
            0,
            false,
        ),
    )
}
fn curl() -> model::Process {
    process("/usr/bin/curl", sig(Unsigned, None, None, None, 0, false))
}
fn signed_dev() -> model::Process {
    process(
        "/opt/dev",
        sig(Development, Some("ZZZZZ00000"), None, None, 0, false),
    )
}

#[test]
fn watch_table() {
    let p = Policy::parse("watch.toml", WATCH).unwrap();
    #[rustfmt::skip]
    let cases: Vec<(&str, model::Event, Facts, &str)> = vec![
        // paths_with_allowed_processes, each operation.
        ("open write by other", open(vim(), "/etc/ssh/sshd_config", WRITE), Facts::NONE, "deny:ssh"),
        ("open read exempt", open(vim(), "/etc/ssh/sshd_config", READ), Facts::NONE, "allow:default"),
        ("open unknown flags (linux)", open(vim(), "/etc/ssh/sshd_config", None), Facts::NONE, "deny:ssh"),
        ("open write by allowed path", open(sshd(), "/etc/ssh/sshd_config", WRITE), Facts::NONE, "allow:ssh"),
        ("open write by signing id wildcard", open(example_app(), "/etc/ssh/x", WRITE), Facts::NONE, "allow:ssh"),
        ("rename out of watched", file_event(vim(), "rename", "/etc/ssh/a", "/tmp/a"), Facts::NONE, "deny:ssh"),
        ("rename into watched", file_event(vim(), "rename", "/tmp/a", "/etc/ssh/a"), Facts::NONE, "deny:ssh"),
        ("unlink", file_event(vim(), "unlink", "/etc/ssh/a", ""), Facts::NONE, "deny:ssh"),
        ("truncate", file_event(vim(), "truncate", "/etc/ssh/a", ""), Facts::NONE, "deny:ssh"),
        ("link", file_event(vim(), "link", "/etc/ssh/a", "/tmp/b"), Facts::NONE, "deny:ssh"),
        ("create", file_event(vim(), "create", "/etc/ssh/new", ""), Facts::NONE, "deny:ssh"),
        ("create by allowed", file_event(sshd(), "create", "/etc/ssh/new", ""), Facts::NONE, "allow:ssh"),
        ("unwatched path", open(vim(), "/etc/hosts", WRITE), Facts::NONE, "allow:default"),
        // Longest match: ssh-keys (paths_with_denied_processes, unlink+rename only).
        ("denied process unlink", file_event(apple_rm(), "unlink", "/etc/ssh/keys/k", ""), Facts::NONE, "deny:ssh-keys"),
        ("other process unlink", file_event(vim(), "unlink", "/etc/ssh/keys/k", ""), Facts::NONE, "allow:default"),
        ("op not covered", open(apple_rm(), "/etc/ssh/keys/k", WRITE), Facts::NONE, "allow:default"),
        ("rename: any deny wins", file_event(sshd(), "rename", "/etc/ssh/a", "/var/audit/log"), Facts::NONE, "audit:audit-log"),
        ("rename: hard deny over audit", file_event(vim(), "rename", "/etc/ssh/a", "/var/audit/log"), Facts::NONE, "deny:ssh"),
        // Audit only (default): a deny becomes a logged allow; exact paths only.
        ("audit only", open(vim(), "/var/audit/log", WRITE), Facts::NONE, "audit:audit-log"),
        ("exact path only", open(vim(), "/var/audit/log2", WRITE), Facts::NONE, "allow:default"),
        ("no read exemption by default", open(vim(), "/var/audit/log", READ), Facts::NONE, "audit:audit-log"),
        // processes_with_allowed_paths.
        ("confined inside", file_event(chrome(), "create", "/Users/alice/Downloads/x.zip", ""), Facts::NONE, "allow:default"),
        ("confined outside", file_event(chrome(), "create", "/Users/alice/Documents/x", ""), Facts::NONE, "deny:browser-confined"),
        ("confined read outside", open(chrome(), "/usr/lib/libx.dylib", READ), Facts::NONE, "allow:default"),
        ("confined write outside", open(chrome(), "/Users/alice/.zshrc", WRITE), Facts::NONE, "deny:browser-confined"),
        ("not confined", file_event(vim(), "create", "/Users/alice/Documents/x", ""), Facts::NONE, "allow:default"),
        // processes_with_denied_paths.
        ("curl into secrets", open(curl(), "/secrets/key", READ), Facts::NONE, "deny:curl-no-secrets"),
        ("curl elsewhere", open(curl(), "/tmp/x", WRITE), Facts::NONE, "allow:default"),
        ("vim into secrets", open(vim(), "/secrets/key", WRITE), Facts::NONE, "allow:default"),
        // Certificate process keys need the helper, unless the signature cannot have one.
        ("cert unknown", open(signed_dev(), "/vault/x", WRITE), Facts::NONE, "analyze:certificate"),
        ("cert match", open(signed_dev(), "/vault/x", WRITE), facts_cert("33"), "allow:vault"),
        ("cert mismatch", open(signed_dev(), "/vault/x", WRITE), facts_cert("44"), "deny:vault"),
        ("unsigned has no cert", open(vim(), "/vault/x", WRITE), Facts::NONE, "deny:vault"),
        // Mutes: process literal, target prefix; every target must be muted.
        ("muted process", open(process("/usr/sbin/backupd", sig(Unsigned, None, None, None, 0, false)), "/etc/ssh/x", WRITE), Facts::NONE, "allow:muted"),
        ("muted target", open(vim(), "/var/log/syslog", WRITE), Facts::NONE, "allow:muted"),
        ("half-muted rename", file_event(vim(), "rename", "/var/log/a", "/etc/ssh/a"), Facts::NONE, "deny:ssh"),
        ("muted exec caller", {
            let mut e = exec("/tmp/x", sig(Unsigned, None, None, None, 0, false));
            e.process = process("/usr/sbin/backupd", sig(Unsigned, None, None, None, 0, false));
            e
        }, Facts::NONE, "allow:muted"),
    ];
    for (what, ev, facts, want) in cases {
        assert_eq!(summary(&p.decide(&ev, &facts)), want, "{what}");
    }
    // Watch decisions for a watched path depend on the caller: never cached.
    for ev in [
        open(vim(), "/etc/ssh/x", WRITE),
        open(sshd(), "/etc/ssh/x", WRITE),
    ] {
        let Outcome::Decided(d) = p.decide(&ev, &Facts::NONE) else {
            panic!()
        };
        assert_eq!(d.cacheable, Cacheability::Never);
    }
    let Outcome::Decided(d) = p.decide(&open(vim(), "/etc/hosts", READ), &Facts::NONE) else {
        panic!()
    };
    // This policy has a process-keyed item ("browser-confined"), so even an unwatched open's
    // answer depends on the caller: never cached (see file_allows_are_kernel_cached_only_...).
    assert_eq!(
        d.cacheable,
        Cacheability::Never,
        "unwatched open under a process-keyed item"
    );
    // Analysis for a process certificate names the acting process's executable.
    let Outcome::Analyze(r) = p.decide(&open(signed_dev(), "/vault/x", WRITE), &Facts::NONE) else {
        panic!()
    };
    assert_eq!(r.file.unwrap().path, "/opt/dev");
}

const MOUNTS: &str = r#"
version = 1
mode = "monitor"

[[mount]]
name = "corp-nas"
action = "allow"
network_hosts = ["NAS.corp"]

[[mount]]
name = "other-network"
action = "block"
disposition = ["network"]

[[mount]]
name = "encrypted-usb"
action = "allow"
removable = true
encrypted = true

[[mount]]
name = "usb-read-only"
action = "remount"
removable = true
remount_flags = { read_only = true, noexec = true }

[[mount]]
name = "no-exfat"
action = "block"
fs_type = ["exfat"]

[[mount]]
name = "images-noexec"
action = "remount"
disposition = ["virtual"]
remount_flags = { noexec = true }
"#;

#[test]
fn mount_table() {
    let p = Policy::parse("mounts.toml", MOUNTS).unwrap();
    let none = MountFlags::default();
    let ro_noexec = MountFlags {
        read_only: true,
        noexec: true,
        ..Default::default()
    };
    let noexec = MountFlags {
        noexec: true,
        ..Default::default()
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, model::Event, Facts, &str)> = vec![
        ("allowed host", mount("//alice@nas.corp/share", "smbfs", D::Network, none), Facts::NONE, "allow:corp-nas"),
        ("nfs allowed host", mount("nas.corp:/export", "nfs", D::Network, none), Facts::NONE, "allow:corp-nas"),
        ("other host", mount("//evil.example/share", "smbfs", D::Network, none), Facts::NONE, "deny:other-network"),
        ("external needs volume", mount("/dev/disk4s1", "apfs", D::External, none), Facts::NONE, "analyze:volume"),
        ("encrypted usb", mount("/dev/disk4s1", "apfs", D::External, none), facts_volume(true, true, VolumeBus::Usb), "allow:encrypted-usb"),
        ("plain usb remount", mount("/dev/disk4s1", "msdos", D::External, none), facts_volume(true, false, VolumeBus::Usb), "deny:usb-read-only"),
        ("usb with flags", mount("/dev/disk4s1", "msdos", D::External, ro_noexec), facts_volume(true, false, VolumeBus::Usb), "allow:usb-read-only"),
        ("fixed exfat", mount("/dev/disk5s1", "ExFAT", D::External, none), facts_volume(false, false, VolumeBus::Thunderbolt), "deny:no-exfat"),
        ("fixed apfs", mount("/dev/disk5s1", "apfs", D::External, none), facts_volume(false, false, VolumeBus::Thunderbolt), "allow:default"),
        ("internal out of scope", mount("/dev/disk1s1", "apfs", D::Internal, none), Facts::NONE, "allow:default"),
        ("image explicit", mount("/dev/disk9s1", "hfs", D::Virtual, none), Facts::NONE, "deny:images-noexec"),
        ("image has flags", mount("/dev/disk9s1", "hfs", D::Virtual, noexec), Facts::NONE, "allow:images-noexec"),
    ];
    for (what, ev, facts, want) in cases {
        assert_eq!(summary(&p.decide(&ev, &facts)), want, "{what}");
    }
    // Remount events follow the same rules.
    let mut ev = mount("/dev/disk4s1", "msdos", D::External, none);
    if let model::EventBody::Mount { mount } = ev.body {
        ev.body = model::EventBody::Remount { mount };
    }
    let out = p.decide(&ev, &facts_volume(true, false, VolumeBus::Usb));
    assert_eq!(summary(&out), "deny:usb-read-only");
    let Outcome::Decided(d) = out else { panic!() };
    let model::Reason::Rule { rule } = &d.reason else {
        panic!()
    };
    assert_eq!(p.remount_flags(rule), Some(ro_noexec));
    // Volume analysis carries the mount.
    let Outcome::Analyze(r) = p.decide(
        &mount("/dev/disk4s1", "apfs", D::External, none),
        &Facts::NONE,
    ) else {
        panic!()
    };
    assert_eq!(r.mount.unwrap().source, "/dev/disk4s1");
    assert!(r.file.is_none());
}

#[test]
fn defaults_fallbacks_and_deadlines() {
    let text = r#"
version = 1
mode = "enforce"
[defaults]
fallback = "allow"
helper_unavailable = "deny"
deadline_ms = 1500
[defaults.kind.exec]
fallback = "deny"
helper_unavailable = "allow"
deadline_ms = 2500
[defaults.kind.open]
deadline_ms = 500
"#;
    let p = Policy::parse("d.toml", text).unwrap();
    assert_eq!(p.mode(), Mode::Enforce);
    #[rustfmt::skip]
    let cases = [
        (EventKind::Exec, FallbackReason::Deadline, Verdict::Deny),
        (EventKind::Exec, FallbackReason::Shutdown, Verdict::Deny),
        (EventKind::Exec, FallbackReason::QueueFull, Verdict::Allow),
        (EventKind::Exec, FallbackReason::HelperUnavailable, Verdict::Allow),
        (EventKind::Exec, FallbackReason::HelperError, Verdict::Allow),
        (EventKind::Open, FallbackReason::Deadline, Verdict::Allow),
        (EventKind::Open, FallbackReason::HelperUnavailable, Verdict::Deny),
        (EventKind::Mount, FallbackReason::QueueFull, Verdict::Deny),
    ];
    for (kind, why, want) in cases {
        assert_eq!(p.fallback(kind, why), want, "{kind:?} {why:?}");
    }
    let ms = |k| p.deadline(k).as_millis();
    assert_eq!(
        (
            ms(EventKind::Exec),
            ms(EventKind::Open),
            ms(EventKind::Unlink)
        ),
        (2500, 500, 1500)
    );
    // Unset: allow, allow, 3 s, bad-signature protection on.
    let min = Policy::parse("m.toml", "version = 1\nmode = \"monitor\"\n").unwrap();
    for kind in EventKind::ALL {
        for why in FallbackReason::ALL {
            assert_eq!(min.fallback(kind, why), Verdict::Allow);
        }
        assert_eq!(min.deadline(kind).as_millis(), 3000);
    }
}

#[test]
fn embedded_default_is_monitor_with_self_protection() {
    let p = Policy::embedded_default();
    assert_eq!(p.mode(), Mode::Monitor);
    assert_eq!(p.origin(), "<embedded default>");
    assert!(
        p.watched_paths()
            .iter()
            .any(|w| w.path == "/etc/gatehouse/" && w.prefix)
    );
    let gatehouse = process(
        "/usr/local/bin/gatehouse-extension",
        sig(Unsigned, None, None, None, 0, false),
    );
    #[rustfmt::skip]
    let cases: Vec<(&str, model::Event, &str)> = vec![
        ("other writes policy", open(vim(), "/etc/gatehouse/policy.toml", WRITE), "deny:gatehouse-self-protection"),
        ("other reads policy (macOS)", open(vim(), "/etc/gatehouse/policy.toml", READ), "allow:default"),
        ("other deletes log", file_event(vim(), "unlink", "/var/log/gatehouse/events.jsonl", ""), "deny:gatehouse-self-protection"),
        ("other replaces binary", file_event(vim(), "rename", "/tmp/x", "/usr/local/bin/gatehouse-helper"), "deny:gatehouse-self-protection"),
        ("gatehouse writes log", open(gatehouse, "/var/log/gatehouse/events.jsonl", WRITE), "allow:gatehouse-self-protection"),
        ("unrelated write", open(vim(), "/home/u/notes", WRITE), "allow:default"),
        ("exec unknown: would-deny", exec("/usr/local/bin/x", sig(Production, Some("ABCDE12345"), None, None, 0, false)), "would_deny"),
    ];
    for (what, ev, want) in cases {
        assert_eq!(summary(&p.decide(&ev, &Facts::NONE)), want, "{what}");
    }
}

#[test]
fn backend_hints() {
    let p = Policy::parse("watch.toml", WATCH).unwrap();
    assert!(p.watches_all_paths(), "processes_with_allowed_paths item");
    assert!(p.watches_kind(EventKind::Open) && p.watches_kind(EventKind::Exec));
    assert!(!p.watches_kind(EventKind::Mount));
    assert_eq!(p.mutes().len(), 2);
    let m = Policy::parse("m.toml", MOUNTS).unwrap();
    assert!(m.watches_kind(EventKind::Mount) && !m.watches_kind(EventKind::Open));
    assert!(!m.watches_all_paths());
    let h = Policy::parse(
        "h.toml",
        &format!("version = 1\nmode = \"enforce\"\n[defaults]\npackage_trust = false\n[[exec]]\naction = \"allow\"\nsha256 = \"{}\"\n", hex("ab", 32)),
    )
    .unwrap();
    assert!(h.exec_rules_need_hash());
    let n = Policy::parse(
        "n.toml",
        "version = 1\nmode = \"enforce\"\n[defaults]\npackage_trust = false\n",
    )
    .unwrap();
    assert!(!n.exec_rules_need_hash());
}

/// A kernel-cached allow outlives the open mode (the fanotify ignore mark is per inode, the ES
/// open cache per process and file), so an allow is kernel-cacheable only when no watch item
/// covers the path and no process-keyed item could answer differently for another caller.
#[test]
fn file_allows_are_kernel_cached_only_when_nothing_watches() {
    let path_keyed = r#"
version = 1
mode = "monitor"
[[watch]]
name = "guarded"
paths = [{ path = "/g/", prefix = true }]
allow_read_access = true
audit_only = false
processes = [{ binary_path = "/usr/bin/writer" }]
"#;
    let process_keyed = r#"
version = 1
mode = "monitor"
[[watch]]
name = "confined"
rule_type = "processes_with_allowed_paths"
audit_only = false
paths = [{ path = "/home/", prefix = true }]
processes = [{ binary_path = "/usr/bin/browser" }]
"#;
    let cat = || process("/bin/cat", sig(Unsigned, None, None, None, 0, false));
    // (policy, event, verdict, cacheability)
    let cases = [
        // The read exemption allows, but a later write of the same file must still be asked.
        (
            path_keyed,
            open(cat(), "/g/notes", READ),
            Verdict::Allow,
            Cacheability::Never,
        ),
        (
            path_keyed,
            open(cat(), "/g/notes", WRITE),
            Verdict::Deny,
            Cacheability::Never,
        ),
        // Unwatched path, no process-keyed item: the same answer for everyone.
        (
            path_keyed,
            open(cat(), "/etc/hosts", WRITE),
            Verdict::Allow,
            Cacheability::Kernel,
        ),
        // A process-keyed item: /etc/hosts is denied to the browser, so cat's allow must not
        // become an inode-wide ignore mark.
        (
            process_keyed,
            open(cat(), "/etc/hosts", READ),
            Verdict::Allow,
            Cacheability::Never,
        ),
        (
            process_keyed,
            open(
                process(
                    "/usr/bin/browser",
                    sig(Unsigned, None, None, None, 0, false),
                ),
                "/etc/hosts",
                READ,
            ),
            Verdict::Deny,
            Cacheability::Never,
        ),
    ];
    for (text, ev, verdict, cache) in cases {
        let p = Policy::parse("c.toml", text).unwrap();
        match p.decide(&ev, &Facts::NONE) {
            Outcome::Decided(d) => {
                assert_eq!((d.verdict, d.cacheable), (verdict, cache), "{:?}", ev.body)
            }
            other => panic!("{:?}: {other:?}", ev.body),
        }
    }
}

fn remount(mut ev: model::Event) -> model::Event {
    if let model::EventBody::Mount { mount } = ev.body {
        ev.body = model::EventBody::Remount { mount };
    }
    ev
}

/// A `remount` rule forces its flags on every remount, whatever the volume has now: a remount's
/// flags are the mounted volume's current ones, not what it asks for, so "already read-only"
/// says nothing about a remount to read-write. Santa denies every matching remount and
/// re-applies the flags (SNTEndpointSecurityDeviceManager.mm `handleAuthDeviceMount:`, the
/// `m->event_type != ES_EVENT_TYPE_AUTH_REMOUNT` condition); a mount that already has them
/// is allowed.
#[test]
fn remount_rule_forces_flags_on_every_remount() {
    let p = Policy::parse("mounts.toml", MOUNTS).unwrap();
    let usb = facts_volume(true, false, VolumeBus::Usb);
    let ro_noexec = MountFlags {
        read_only: true,
        noexec: true,
        ..Default::default()
    };
    let ro = MountFlags {
        read_only: true,
        ..Default::default()
    };
    let dev = |flags| mount("/dev/disk4s1", "msdos", D::External, flags);
    #[rustfmt::skip]
    let cases: Vec<(&str, model::Event, &str)> = vec![
        ("mount without the flags", dev(MountFlags::default()), "deny:usb-read-only"),
        ("mount with part of them", dev(ro), "deny:usb-read-only"),
        ("mount already with them", dev(ro_noexec), "allow:usb-read-only"),
        ("remount of a volume without them", remount(dev(MountFlags::default())), "deny:usb-read-only"),
        ("remount of a volume already read-only + noexec", remount(dev(ro_noexec)), "deny:usb-read-only"),
        ("remount of an image already noexec", remount(mount("/dev/disk9s1", "hfs", D::Virtual, MountFlags { noexec: true, ..Default::default() })), "deny:images-noexec"),
        ("remount no rule covers", remount(mount("/dev/disk1s1", "apfs", D::Internal, MountFlags::default())), "allow:default"),
    ];
    for (what, ev, want) in cases {
        assert_eq!(summary(&p.decide(&ev, &usb)), want, "{what}");
    }
}

/// Issue 10 item 7: a `remount` rule's deny carries the flags to remount with (the extension
/// hands them to the helper, as Santa's device manager calls `remount:mountMode:` after
/// denying); a `block` deny, an allow and a mount that already has the flags carry none.
#[test]
fn remount_denies_carry_the_rules_flags() {
    let p = Policy::parse("mounts.toml", MOUNTS).unwrap();
    let usb = facts_volume(true, false, VolumeBus::Usb);
    let ro_noexec = MountFlags {
        read_only: true,
        noexec: true,
        ..Default::default()
    };
    let noexec = MountFlags {
        noexec: true,
        ..Default::default()
    };
    let dev = |flags| mount("/dev/disk4s1", "msdos", D::External, flags);
    let image = |flags| mount("/dev/disk9s1", "hfs", D::Virtual, flags);
    let fixed = facts_volume(false, false, VolumeBus::Thunderbolt);
    #[rustfmt::skip]
    let cases: Vec<(&str, model::Event, &Facts, Option<MountFlags>)> = vec![
        ("usb mount without the flags", dev(MountFlags::default()), &usb, Some(ro_noexec)),
        ("usb remount of a read-only volume", remount(dev(ro_noexec)), &usb, Some(ro_noexec)),
        ("usb mount already with them", dev(ro_noexec), &usb, None),
        ("image remount", remount(image(MountFlags::default())), &usb, Some(noexec)),
        ("block rule", mount("/dev/disk5s1", "ExFAT", D::External, MountFlags::default()), &fixed, None),
        ("no rule", mount("/dev/disk1s1", "apfs", D::Internal, MountFlags::default()), &usb, None),
    ];
    for (what, ev, facts, want) in cases {
        let Outcome::Decided(d) = p.decide(&ev, facts) else {
            panic!("{what}: not decided")
        };
        assert_eq!(d.remount, want, "{what}");
        if want.is_some() {
            assert_eq!(d.verdict, model::Verdict::Deny, "{what}");
        }
    }
}

/// Network sources with IPv6 hosts match by host, written with or without brackets in the
/// policy; sources whose host cannot be parsed match no `network_hosts` list (Santa:
/// `handleAuthNetworkMount:` finds no host, so its allow list never applies).
#[test]
fn network_hosts_parse_ipv6_sources() {
    let p = Policy::parse(
        "net.toml",
        r#"
version = 1
mode = "enforce"

[[mount]]
name = "v6-nas"
action = "allow"
network_hosts = ["2001:DB8::5", "[2001:db8::6]"]

[[mount]]
name = "other-network"
action = "block"
disposition = ["network"]
"#,
    )
    .unwrap();
    let net = |src: &str, fs: &str| mount(src, fs, D::Network, MountFlags::default());
    #[rustfmt::skip]
    let cases: Vec<(&str, model::Event, &str)> = vec![
        ("nfs v6", net("[2001:db8::5]:/srv", "nfs"), "allow:v6-nas"),
        ("smb v6 with user", net("//user@[2001:db8::5]/share", "smbfs"), "allow:v6-nas"),
        ("bracketed in the policy", net("[2001:db8::6]:/srv", "nfs"), "allow:v6-nas"),
        ("url with port", net("smb://[2001:db8::5]:445/share", "smbfs"), "allow:v6-nas"),
        ("another v6 host", net("[2001:db8::7]:/srv", "nfs"), "deny:other-network"),
        ("the old misparse's prefix", net("[2001]:/srv", "nfs"), "deny:other-network"),
        ("unclosed bracket", net("[2001:db8::5:/srv", "nfs"), "deny:other-network"),
        ("unbracketed v6", net("2001:db8::5:/srv", "nfs"), "deny:other-network"),
        ("no host", net("//", "smbfs"), "deny:other-network"),
    ];
    for (what, ev, want) in cases {
        assert_eq!(summary(&p.decide(&ev, &Facts::NONE)), want, "{what}");
    }
}

/// Bad-signature protection covers file access too: a process with an invalid signature
/// touching a watched path is denied before any exemption (allowed process, read access, audit
/// only), as Santa's FAAPolicyProcessor `ApplyPolicy` does (FAAPolicyProcessorTest.mm: "denied
/// when `EnableBadSignatureProtection` is true"); with protection off, watch items decide.
#[test]
fn bad_signature_protection_covers_file_access() {
    let policy = |protect: bool| {
        Policy::parse(
            "bad-sig.toml",
            &format!(
                r#"
version = 1
mode = "monitor"
[defaults]
bad_signature_protection = {protect}

[[watch]]
name = "ssh"
paths = [{{ path = "/etc/ssh/", prefix = true }}]
allow_read_access = true
audit_only = false
processes = [{{ binary_path = "/usr/sbin/sshd" }}]

[[watch]]
name = "audit-log"
paths = [{{ path = "/var/audit/log" }}]
processes = [{{ binary_path = "/usr/sbin/sshd" }}]

[[watch]]
name = "curl-confined"
rule_type = "processes_with_allowed_paths"
audit_only = false
paths = [{{ path = "/tmp/curl/", prefix = true }}]
processes = [{{ binary_path = "/usr/bin/curl" }}]
"#
            ),
        )
        .unwrap()
    };
    let bad = |path: &str| {
        process(
            path,
            sig(Invalid, Some("ABCDE12345"), Some("x"), None, 0, false),
        )
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, model::Event, &str, &str)> = vec![
        // (what, event, protection on, protection off)
        ("allowed process, invalid signature", open(bad("/usr/sbin/sshd"), "/etc/ssh/sshd_config", WRITE), "deny:invalid_signature", "allow:ssh"),
        ("read exempt, invalid signature", open(bad("/usr/bin/vim"), "/etc/ssh/sshd_config", READ), "deny:invalid_signature", "allow:default"),
        ("audit-only item, invalid signature", open(bad("/usr/bin/vim"), "/var/audit/log", WRITE), "deny:invalid_signature", "audit:audit-log"),
        ("process-keyed item names the caller", open(bad("/usr/bin/curl"), "/tmp/curl/x", WRITE), "deny:invalid_signature", "allow:default"),
        ("unwatched path", open(bad("/usr/bin/vim"), "/home/a", WRITE), "allow:default", "allow:default"),
        ("valid signature unaffected", open(process("/usr/sbin/sshd", sig(Unsigned, None, None, None, 0, false)), "/etc/ssh/sshd_config", WRITE), "allow:ssh", "allow:ssh"),
    ];
    let (on, off) = (policy(true), policy(false));
    for (what, ev, want_on, want_off) in cases {
        assert_eq!(
            summary(&on.decide(&ev, &Facts::NONE)),
            want_on,
            "{what} (protection on)"
        );
        assert_eq!(
            summary(&off.decide(&ev, &Facts::NONE)),
            want_off,
            "{what} (protection off)"
        );
    }
}

/// Issue 13: clone, copyfile and exchangedata are file-access operations like the others.
/// Santa's `FAAPolicyProcessor::PathTargets` gives a clone or copy two targets, the source
/// readable and the destination not, and an exchangedata two unreadable ones; a readable
/// target of an item with `allow_read_access` is allowed, every other covered target goes
/// through the item's process check. An item without `operations` covers them all.
#[test]
fn clone_copyfile_and_exchangedata_are_watched() {
    let p = Policy::parse("watch.toml", WATCH).unwrap();
    let ev = |by, kind, a, b| p.decide(&file_event(by, kind, a, b), &Facts::NONE);
    #[rustfmt::skip]
    let cases: Vec<(&str, Outcome, &str)> = vec![
        // "ssh": allow_read_access, only sshd and example apps may modify.
        ("clone out of a read-allowed item", ev(vim(), "clone", "/etc/ssh/sshd_config", "/tmp/c"), "allow:default"),
        ("clone into it", ev(vim(), "clone", "/tmp/c", "/etc/ssh/sshd_config"), "deny:ssh"),
        ("copy out of it", ev(vim(), "copyfile", "/etc/ssh/sshd_config", "/tmp/c"), "allow:default"),
        ("copy into it", ev(vim(), "copyfile", "/tmp/c", "/etc/ssh/moduli"), "deny:ssh"),
        ("copy into it by an allowed process", ev(sshd(), "copyfile", "/tmp/c", "/etc/ssh/moduli"), "allow:ssh"),
        ("exchangedata with a file in it", ev(vim(), "exchangedata", "/tmp/c", "/etc/ssh/moduli"), "deny:ssh"),
        ("exchangedata with it, first target", ev(vim(), "exchangedata", "/etc/ssh/moduli", "/tmp/c"), "deny:ssh"),
        // "audit-log" (audit-only by default) has no allow_read_access: reading its file by a
        // clone is covered, and logged.
        ("clone out of an item without read access", ev(vim(), "clone", "/var/audit/log", "/tmp/l"), "audit:audit-log"),
        // "ssh-keys" lists only unlink and rename: platform processes may clone its keys.
        ("an item whose operations leave clones out", ev(apple_rm(), "clone", "/etc/ssh/keys/k", "/tmp/k"), "allow:default"),
        ("nothing watched", ev(vim(), "exchangedata", "/tmp/a", "/tmp/b"), "allow:default"),
    ];
    for (what, out, want) in cases {
        assert_eq!(summary(&out), want, "{what}");
    }
    for kind in [
        EventKind::Clone,
        EventKind::Copyfile,
        EventKind::Exchangedata,
    ] {
        assert!(p.watches_kind(kind), "{kind:?}");
    }
}

/// `mounted_at_start` takes Santa's `OnStartUSBOptions` values (snake case); anything else is
/// an error at its position.
#[test]
fn mounted_at_start_values() {
    use policy::MountedAtStart as M;
    let cases = [
        (None, Some(M::Keep)),
        (Some("keep"), Some(M::Keep)),
        (Some("unmount"), Some(M::Unmount)),
        (Some("force_unmount"), Some(M::ForceUnmount)),
        (Some("remount"), Some(M::Remount)),
        (Some("force_remount"), Some(M::ForceRemount)),
        (Some("ForceRemount"), None),
    ];
    for (value, want) in cases {
        let line = value.map_or(String::new(), |v| format!("mounted_at_start = \"{v}\"\n"));
        let text = format!("version = 1\nmode = \"enforce\"\n[defaults]\n{line}");
        let got = Policy::parse("m.toml", &text).map(|p| p.mounted_at_start());
        assert_eq!(got.as_ref().ok().copied(), want, "{value:?}: {got:?}");
    }
}

/// Open flags matter only where a watch item covering opens exempts reads.
#[test]
fn open_flags_matter_only_with_a_read_exemption() {
    let watch = |extra: &str| {
        format!(
            "version = 1\nmode = \"enforce\"\n[[watch]]\nname = \"w\"\npaths = [{{ path = \"/s/\", prefix = true }}]\n{extra}"
        )
    };
    let cases = [
        ("version = 1\nmode = \"enforce\"\n".to_owned(), false),
        (watch(""), false),
        (watch("allow_read_access = true\n"), true),
        (
            watch("allow_read_access = true\noperations = [\"unlink\"]\n"),
            false,
        ),
        (
            watch("allow_read_access = true\noperations = [\"open\", \"rename\"]\n"),
            true,
        ),
    ];
    for (text, want) in cases {
        let p = Policy::parse("f.toml", &text).unwrap();
        assert_eq!(p.open_flags_matter(), want, "{text}");
    }
}

/// How a watch item's process entry matches the acting process, after Santa's
/// `FAAPolicyProcessor::PolicyMatchesProcess` (FAAPolicyProcessorTest.mm
/// `testPolicyMatchesProcess`, whose process is only `CS_SIGNED`): team id, signing id and
/// CDHash match any signed process (development, ad hoc and invalid signatures too; never an
/// unsigned one), the CDHash whether or not the kernel enforces it, and the platform flag is
/// the kernel's whatever the signature's state. Each entry sits in a
/// `paths_with_denied_processes` item, so a match is a deny; bad-signature protection is off so
/// that invalid signatures reach the entry.
#[test]
fn watch_process_entries_match_as_santa() {
    let policy = |entry: &str| {
        Policy::parse(
            "match.toml",
            &format!(
                r#"
version = 1
mode = "monitor"
[defaults]
bad_signature_protection = false
[[watch]]
name = "w"
paths = [{{ path = "/w/", prefix = true }}]
rule_type = "paths_with_denied_processes"
audit_only = false
processes = [{entry}]
"#
            ),
        )
        .unwrap()
    };
    let team = r#"{ team_id = "ABCDE12345" }"#;
    let sid = r#"{ signing_id = "ABCDE12345:com.example.tool" }"#;
    let platform_sid = r#"{ signing_id = "platform:com.apple.ls" }"#;
    let cdhash = r#"{ cdhash = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" }"#;
    let platform = r#"{ platform_binary = true }"#;
    let platform_team = r#"{ team_id = "platform" }"#;
    let not_platform = r#"{ platform_binary = false }"#;
    let s = |status, team, id, cd, platform| {
        process("/opt/tool", sig(status, team, id, cd, 0, platform))
    };
    let t = Some("ABCDE12345");
    let tool = Some("com.example.tool");
    let ls = Some("com.apple.ls");
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, model::Process, bool)> = vec![
        ("team id, production", team, s(Production, t, tool, None, false), true),
        ("team id, development", team, s(Development, t, tool, None, false), true),
        ("team id, invalid signature", team, s(Invalid, t, tool, None, false), true),
        ("team id, other team", team, s(Production, Some("ZZZZZ00000"), tool, None, false), false),
        ("team id, unsigned", team, s(Unsigned, t, tool, None, false), false),
        ("signing id, development", sid, s(Development, t, tool, None, false), true),
        ("signing id, invalid signature", sid, s(Invalid, t, tool, None, false), true),
        ("signing id, other id", sid, s(Production, t, Some("com.example.other"), None, false), false),
        ("signing id, unsigned", sid, s(Unsigned, t, tool, None, false), false),
        ("platform signing id", platform_sid, s(Production, None, ls, None, true), true),
        // Santa checks the platform flag, not the absence of a team id.
        ("platform signing id, platform binary with a team id", platform_sid, s(Production, t, ls, None, true), true),
        ("platform signing id, not platform", platform_sid, s(Production, None, ls, None, false), false),
        ("cdhash, ad hoc, not kernel-enforced", cdhash, s(AdHoc, None, None, Some("aa"), false), true),
        ("cdhash, production, not kernel-enforced", cdhash, s(Production, t, tool, Some("aa"), false), true),
        ("cdhash, invalid signature", cdhash, s(Invalid, t, tool, Some("aa"), false), true),
        ("cdhash, other", cdhash, s(AdHoc, None, None, Some("ab"), false), false),
        ("cdhash, unsigned", cdhash, s(Unsigned, None, None, Some("aa"), false), false),
        ("platform binary, invalid signature", platform, s(Invalid, None, ls, None, true), true),
        ("team platform, invalid signature", platform_team, s(Invalid, None, ls, None, true), true),
        ("platform binary, not one", platform, s(Production, t, tool, None, false), false),
        ("platform_binary = false, not one", not_platform, s(Production, t, tool, None, false), true),
        ("platform_binary = false, platform", not_platform, s(Production, None, ls, None, true), false),
    ];
    for (what, entry, by, matched) in cases {
        let want = if matched { "deny:w" } else { "allow:default" };
        let got = summary(&policy(entry).decide(&open(by, "/w/x", WRITE), &Facts::NONE));
        assert_eq!(got, want, "{what}");
    }
}

/// A certificate entry matches a signed process whose leaf certificate has the hash, as
/// Santa's `PolicyMatchesProcess` (`GetCertificateHash`) does, for invalid signatures too; but
/// where a match would exempt the process (`paths_with_allowed_processes`), Gatehouse counts
/// it only when the helper says the signature validated (FORMAT.md, "Deviations from Santa").
#[test]
fn watch_certificate_entries() {
    let policy = |rule_type: &str| {
        Policy::parse(
            "cert.toml",
            &format!(
                r#"
version = 1
mode = "monitor"
[defaults]
bad_signature_protection = false
[[watch]]
name = "w"
paths = [{{ path = "/w/", prefix = true }}]
rule_type = "{rule_type}"
audit_only = false
processes = [{{ certificate = "{}" }}]
"#,
                hex("33", 32)
            ),
        )
        .unwrap()
    };
    let cert = |valid: bool| {
        let mut f = facts_cert("33");
        if let Some(c) = &mut f.certificate {
            c.valid = valid;
        }
        f
    };
    let by = |status| {
        process(
            "/opt/tool",
            sig(status, Some("ABCDE12345"), None, None, 0, false),
        )
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, model::Process, Facts, &str)> = vec![
        ("denied, production", "paths_with_denied_processes", by(Production), cert(true), "deny:w"),
        ("denied, development", "paths_with_denied_processes", by(Development), cert(true), "deny:w"),
        ("denied, invalid signature", "paths_with_denied_processes", by(Invalid), cert(false), "deny:w"),
        ("denied, ad hoc has none", "paths_with_denied_processes", by(AdHoc), Facts::NONE, "allow:default"),
        ("denied, other certificate", "paths_with_denied_processes", by(Production), facts_cert("44"), "allow:default"),
        ("confined, invalid signature", "processes_with_denied_paths", by(Invalid), cert(false), "deny:w"),
        ("allowed, valid", "paths_with_allowed_processes", by(Production), cert(true), "allow:w"),
        ("allowed, not valid", "paths_with_allowed_processes", by(Invalid), cert(false), "deny:w"),
        ("allowed, unknown", "paths_with_allowed_processes", by(Invalid), Facts::NONE, "analyze:certificate"),
    ];
    for (what, rule_type, by, facts, want) in cases {
        let got = summary(&policy(rule_type).decide(&open(by, "/w/x", WRITE), &facts));
        assert_eq!(got, want, "{what}");
    }
}

/// Signing-id wildcards as FAAPolicyProcessorTest.mm `testPolicyMatchesProcess` ("SigningID
/// prefix" section) has them: the first `*` matches any run of characters (empty too) and any
/// later `*` is literal, so `com.*.*` does not match `com.northpolesec.test` but matches the
/// id `com.northpolesec.*`.
#[test]
fn watch_signing_id_wildcards() {
    let id = |pattern: &str, id: &str| {
        let p = Policy::parse(
            "sid.toml",
            &format!(
                r#"
version = 1
mode = "monitor"
[[watch]]
name = "w"
paths = [{{ path = "/w" }}]
rule_type = "paths_with_denied_processes"
audit_only = false
processes = [{{ signing_id = "ABCDE12345:{pattern}" }}]
"#
            ),
        )
        .unwrap();
        let by = process(
            "/opt/tool",
            sig(Production, Some("ABCDE12345"), Some(id), None, 0, false),
        );
        summary(&p.decide(&open(by, "/w", WRITE), &Facts::NONE)) == "deny:w"
    };
    #[rustfmt::skip]
    let cases = [
        ("com.northpolesec.*", "com.northpolesec.test", true),
        ("badtid*", "com.northpolesec.test", false),
        ("com.*.test", "com.northpolesec.test", true),
        ("*.northpolesec.test", "com.northpolesec.test", true),
        ("*com.northpolesec.test", "com.northpolesec.test", true),
        ("com.northpolesec.test", "com.northpolesec.test", true),
        ("com.northpolesec.test*", "com.northpolesec.test", true),
        ("*southpolesec.test", "com.northpolesec.test", false),
        ("this.is.very.long.*.com.northpolesec.test", "com.northpolesec.test", false),
        ("com.*.*", "com.northpolesec.test", false),
        ("com.*.*", "com.northpolesec.*", true),
        ("com.northpolesec.*", "com.northpolesec.*", true),
    ];
    for (pattern, sid, want) in cases {
        assert_eq!(id(pattern, sid), want, "{pattern} vs {sid}");
    }
}
