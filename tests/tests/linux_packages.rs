//! The Linux packages as an administrator meets them: the `.deb` installed into a scratch root
//! by dpkg itself (its maintainer scripts run, with `DPKG_ROOT` set), upgraded from a previous
//! build with a modified policy, and purged; the `.rpm`'s files, modes, config files and
//! scriptlets, installed, upgraded and erased in a scratch root by rpm. The packages come from
//! `scripts/package` (scripts/test builds them and sets `GATEHOUSE_PACKAGES_DIR`: `DIR/` holds
//! the current build, `DIR/prev/` a previous version of the same build).
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod linux_common;

fn packages_dir(test: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("GATEHOUSE_PACKAGES_DIR") else {
        tests::skip(
            test,
            "GATEHOUSE_PACKAGES_DIR is not set (scripts/test builds the packages with scripts/package and sets it)",
        );
        return None;
    };
    if !tests::is_root() {
        tests::skip(
            test,
            "needs root (package managers write their database as root)",
        );
        return None;
    }
    Some(PathBuf::from(dir))
}

/// The one file in `dir` ending in `ext`.
fn one(dir: &Path, ext: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    assert_eq!(found.len(), 1, "one .{ext} in {}: {found:?}", dir.display());
    found[0].clone()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// (installed path, mode) every package must carry; the units' directory differs.
fn expected_files(unit_dir: &str) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = [
        ("/usr/bin/gatehouse", 0o755),
        ("/usr/libexec/gatehouse/gatehouse-extension", 0o755),
        ("/usr/libexec/gatehouse/gatehouse-helper", 0o755),
        ("/usr/libexec/gatehouse/maint.sh", 0o644),
        ("/etc/gatehouse/policy.toml", 0o600),
        ("/usr/share/bash-completion/completions/gatehouse", 0o644),
        ("/usr/share/fish/vendor_completions.d/gatehouse.fish", 0o644),
        ("/usr/share/doc/gatehouse/README.md", 0o644),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_owned(), m))
    .collect();
    for u in ["gatehouse-extension.service", "gatehouse-helper.service"] {
        v.push((format!("{unit_dir}/{u}"), 0o644));
    }
    v
}

/// A scratch root dpkg accepts (`--root`): an empty status database.
fn dpkg_root() -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("gatehouse-dpkg-root-")
        .tempdir()
        .unwrap();
    let admin = root.path().join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(d)).unwrap();
    }
    std::fs::write(admin.join("status"), "").unwrap();
    root
}

fn dpkg(root: &Path, args: &[&str]) -> Output {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        // Maintainer scripts run outside a chroot with DPKG_ROOT set (the scratch root has no
        // shell); the package's scripts honour DPKG_ROOT and never call systemctl then.
        .arg("--force-script-chrootless")
        // The scratch root has no libc6 package to satisfy `Depends:`.
        .arg("--force-depends")
        .arg("--force-confold")
        .args(args))
}

fn in_root(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

#[test]
fn deb_installs_upgrades_keeping_the_policy_and_purges_to_nothing() {
    let test = "deb_installs_upgrades_keeping_the_policy_and_purges_to_nothing";
    let Some(dir) = packages_dir(test) else {
        return;
    };
    if !tests::have_command("dpkg") {
        tests::skip(test, "dpkg not installed");
        return;
    }
    let current = one(&dir, "deb");
    let prev = one(&dir.join("prev"), "deb");

    // What the package declares.
    let conffiles = text(&run(Command::new("dpkg-deb")
        .arg("--info")
        .arg(&current)
        .arg("conffiles")));
    assert_eq!(conffiles.trim(), "/etc/gatehouse/policy.toml");
    let contents = text(&run(Command::new("dpkg-deb")
        .arg("--contents")
        .arg(&current)));
    assert!(
        contents.contains("./usr/share/man/man1/gatehouse.1"),
        "man pages shipped: {contents}"
    );

    let root = dpkg_root();
    let r = root.path();
    dpkg(r, &["--install", prev.to_str().unwrap()]);
    for (p, m) in expected_files("/lib/systemd/system") {
        assert_eq!(mode(&in_root(r, &p)), m, "mode of {p}");
    }
    assert_eq!(
        mode(&in_root(r, "/var/log/gatehouse")),
        0o700,
        "postinst made the log dir"
    );
    let shipped = std::fs::read_to_string(in_root(r, "/etc/gatehouse/policy.toml")).unwrap();
    assert_eq!(
        shipped,
        policy::EMBEDDED_DEFAULT_TOML,
        "the shipped policy is the embedded default"
    );

    // The installed binaries run, and the shipped policy checks.
    let cli = in_root(r, "/usr/bin/gatehouse");
    run(Command::new(&cli).arg("--version"));
    run(Command::new(&cli)
        .args(["policy", "check"])
        .arg(in_root(r, "/etc/gatehouse/policy.toml")));
    for b in ["gatehouse-extension", "gatehouse-helper"] {
        run(Command::new(in_root(r, &format!("/usr/libexec/gatehouse/{b}"))).arg("--version"));
    }
    verify_units(r, "/lib/systemd/system");

    // The administrator edits the policy; the upgrade keeps the edit and replaces the binaries.
    let edited = format!("{shipped}\n# edited by the administrator\n");
    std::fs::write(in_root(r, "/etc/gatehouse/policy.toml"), &edited).unwrap();
    dpkg(r, &["--install", current.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(in_root(r, "/etc/gatehouse/policy.toml")).unwrap(),
        edited,
        "upgrade kept the modified policy"
    );
    let status = text(&dpkg(r, &["--status", "gatehouse"]));
    let want = text(&run(Command::new("dpkg-deb")
        .args(["--field"])
        .arg(&current)
        .arg("Version")));
    assert!(
        status.contains(&format!("Version: {}", want.trim())),
        "upgraded to the current build: {status}"
    );

    // Purge leaves nothing of ours behind.
    dpkg(r, &["--purge", "gatehouse"]);
    let left = leftovers(r);
    assert!(left.is_empty(), "purge left {left:?}");
}

/// Every path under `root` outside dpkg's and rpm's own databases.
fn leftovers(root: &Path) -> Vec<PathBuf> {
    let mut left = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_owned();
            let db = ["var/lib/dpkg", "var/lib/rpm", "usr/lib/sysimage/rpm"]
                .iter()
                .any(|x| rel.starts_with(x) || Path::new(x).starts_with(&rel));
            if db {
                if p.is_dir() && !rel.starts_with("var/lib/dpkg") {
                    stack.push(p);
                }
                continue;
            }
            if p.is_dir() {
                // Shared directories the package manager leaves (usr/, etc/...) are not ours;
                // a directory of ours (/etc/gatehouse, /var/log/gatehouse) is.
                if rel.to_string_lossy().contains("gatehouse") {
                    left.push(rel);
                }
                stack.push(p);
                continue;
            }
            left.push(rel);
        }
    }
    left
}

/// `systemd-analyze verify` of the installed units, their binaries and man page resolved in the
/// scratch root.
fn verify_units(root: &Path, unit_dir: &str) {
    if !tests::have_command("systemd-analyze") {
        eprintln!("systemd-analyze not installed: units not verified");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for name in ["gatehouse-extension.service", "gatehouse-helper.service"] {
        let t = std::fs::read_to_string(in_root(root, &format!("{unit_dir}/{name}"))).unwrap();
        let t = t.replace(
            "/usr/libexec/gatehouse/",
            &format!("{}/", in_root(root, "/usr/libexec/gatehouse").display()),
        );
        let p = dir.path().join(name);
        std::fs::write(&p, t).unwrap();
        units.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        // `Documentation=man:gatehouse(1)` must resolve to the installed page.
        .env("MANPATH", in_root(root, "/usr/share/man"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let man_missing = !tests::have_command("man");
    let complaints: Vec<&str> = t
        .lines()
        .filter(|l| l.contains("gatehouse-"))
        .filter(|l| !(man_missing && l.contains("man gatehouse(1)")))
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze verify: {t}");
}

#[test]
fn rpm_carries_the_files_config_and_scriptlets_and_installs_upgrades_erases() {
    let test = "rpm_carries_the_files_config_and_scriptlets_and_installs_upgrades_erases";
    let Some(dir) = packages_dir(test) else {
        return;
    };
    if !tests::have_command("rpm") {
        tests::skip(test, "rpm not installed (Debian package `rpm`)");
        return;
    }
    let current = one(&dir, "rpm");
    let prev = one(&dir.join("prev"), "rpm");

    // Files and modes as rpm reads them from the package header.
    let listing = text(&run(Command::new("rpm")
        .args(["-qp", "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]"])
        .arg(&current)));
    for (p, m) in expected_files("/usr/lib/systemd/system") {
        let perms = perms_string(m);
        assert!(
            listing.lines().any(|l| l == format!("-{perms} {p}")),
            "{p} with mode {perms} in {listing}"
        );
    }
    let config = text(&run(Command::new("rpm").args(["-qpc"]).arg(&current)));
    assert_eq!(config.trim(), "/etc/gatehouse/policy.toml");
    let scripts = text(&run(Command::new("rpm")
        .args(["-qp", "--scripts"])
        .arg(&current)));
    for want in [
        "postinstall scriptlet",
        "preuninstall scriptlet",
        "postuninstall scriptlet",
        "gh_after_upgrade",
        "gh_before_remove",
    ] {
        assert!(scripts.contains(want), "{want} in {scripts}");
    }

    // Install, upgrade with an edited policy, erase, in a scratch root. rpm runs the
    // scriptlets chrooted into it, so it gets the few host tools they use (systemctl is absent:
    // the scriptlets then leave systemd alone, as in a container).
    let root = tempfile::Builder::new()
        .prefix("gatehouse-rpm-root-")
        .tempdir()
        .unwrap();
    let r = root.path();
    let tools = give_tools(r, &["sh", "install", "rm", "rmdir"]);
    // Debian's rpm keeps its database in ~/.rpmdb by default: name the RPM systems' place.
    let rpm = |args: &[&str]| {
        run(Command::new("rpm")
            .arg("--root")
            .arg(r)
            .args(["--dbpath", "/var/lib/rpm"])
            .args(args))
    };
    rpm(&["--initdb"]);
    rpm(&["-i", "--nodeps", prev.to_str().unwrap()]);
    assert_eq!(
        mode(&in_root(r, "/var/log/gatehouse")),
        0o700,
        "%post ran and made the log dir"
    );
    for (p, m) in expected_files("/usr/lib/systemd/system") {
        assert_eq!(mode(&in_root(r, &p)), m, "mode of {p}");
    }
    let policy = in_root(r, "/etc/gatehouse/policy.toml");
    let edited = format!(
        "{}\n# edited by the administrator\n",
        std::fs::read_to_string(&policy).unwrap()
    );
    std::fs::write(&policy, &edited).unwrap();
    rpm(&["-U", "--nodeps", current.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(&policy).unwrap(),
        edited,
        "upgrade kept the modified policy (config noreplace)"
    );
    rpm(&["-e", "--nodeps", "gatehouse"]);
    assert!(
        in_root(r, "/etc/gatehouse/policy.toml.rpmsave").is_file(),
        "erase kept the modified policy as .rpmsave, as rpm does"
    );
    // Kept as rpm keeps them (packaging/README.md): the saved policy and the logs.
    let kept = [
        "etc/gatehouse",
        "etc/gatehouse/policy.toml.rpmsave",
        "var/log/gatehouse",
    ];
    let left: Vec<PathBuf> = leftovers(r)
        .into_iter()
        .filter(|p| !kept.iter().any(|k| p == Path::new(k)) && !tools.contains(p))
        .collect();
    assert!(left.is_empty(), "erase left {left:?}");
}

/// Copy each host tool and the shared libraries it loads (from `ldd`) into `root`, at the same
/// paths, with `/bin/NAME` for each tool; returns every path created (relative to `root`).
fn give_tools(root: &Path, names: &[&str]) -> Vec<PathBuf> {
    let mut made = Vec::new();
    let mut copy = |src: &Path, dst: &Path| {
        let to = root.join(dst.strip_prefix("/").unwrap_or(dst));
        if to.exists() {
            return;
        }
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src, &to).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        made.push(to.strip_prefix(root).unwrap().to_owned());
    };
    for name in names {
        let host = ["/bin", "/usr/bin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("host tool {name}"));
        let real = std::fs::canonicalize(&host).unwrap();
        copy(&real, &Path::new("/bin").join(name));
        let ldd = run(Command::new("ldd").arg(&real));
        for lib in text(&ldd).split_whitespace().filter(|w| w.starts_with('/')) {
            let lib = Path::new(lib);
            copy(&std::fs::canonicalize(lib).unwrap(), lib);
        }
    }
    // Scripts redirect to /dev/null, as on any real system.
    let null = root.join("dev/null");
    std::fs::create_dir_all(null.parent().unwrap()).unwrap();
    nix::sys::stat::mknod(
        &null,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .expect("mknod /dev/null in the scratch root");
    made.push(PathBuf::from("dev/null"));
    made
}

/// `0o755` as `rwxr-xr-x`.
fn perms_string(m: u32) -> String {
    (0..9)
        .map(|i| {
            let bit = 1 << (8 - i);
            if m & bit == 0 {
                '-'
            } else {
                ['r', 'w', 'x'][i % 3]
            }
        })
        .collect()
}

#[test]
fn perms_string_table() {
    for (m, s) in [
        (0o755, "rwxr-xr-x"),
        (0o644, "rw-r--r--"),
        (0o600, "rw-------"),
    ] {
        assert_eq!(perms_string(m), s);
    }
}

/// The upgrade an administrator runs on a protected machine: the extension enforces the
/// self-protection rule on the installed files (the embedded default's rule, its paths inside
/// the scratch root) while dpkg upgrades the package. dpkg, which the rule allows, replaces the
/// files; any other writer is refused; the extension keeps running throughout.
#[test]
fn deb_upgrade_succeeds_while_the_agent_enforces_self_protection() {
    let test = "deb_upgrade_succeeds_while_the_agent_enforces_self_protection";
    let Some(dir) = packages_dir(test) else {
        return;
    };
    if linux_common::skip(test) || !tests::have_command("dpkg") {
        return;
    }
    let current = one(&dir, "deb");
    let prev = one(&dir.join("prev"), "deb");
    // The root lives on a scratch tmpfs: the only filesystem the extension marks.
    let scratch = linux_common::Scratch::mount();
    let r = scratch.join("root");
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    dpkg(&r, &["--install", prev.to_str().unwrap()]);

    let rooted = |p: &str| in_root(&r, p).display().to_string();
    let rundir = tempfile::tempdir().unwrap();
    let policy = rundir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"version = 1
mode = "enforce"

[defaults]
fallback = "allow"
helper_unavailable = "allow"
deadline_ms = 3000

[[watch]]
name = "gatehouse-self-protection"
rule_type = "paths_with_allowed_processes"
allow_read_access = true
audit_only = false
operations = ["open", "rename", "unlink", "truncate", "link", "create"]
paths = [
    {{ path = "{etc}/", prefix = true }},
    {{ path = "{libexec}/", prefix = true }},
    {{ path = "{bin}", prefix = true }},
]
processes = [{{ binary_path = "/usr/bin/dpkg" }}]
"#,
            etc = rooted("/etc/gatehouse"),
            libexec = rooted("/usr/libexec/gatehouse"),
            bin = rooted("/usr/bin/gatehouse"),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(tests::binary("gatehouse-extension"));
    cmd.arg("--policy")
        .arg(&policy)
        .arg("--scope")
        .arg(&scratch.path)
        .arg("--control-socket")
        .arg(rundir.path().join("control.sock"))
        .arg("--helper-socket")
        .arg(rundir.path().join("helper.sock"))
        .arg("--events-log")
        .arg(rundir.path().join("events.jsonl"))
        .stderr(Stdio::inherit());
    let mut ext = linux_common::Guarded::spawn("extension", cmd);
    assert!(
        ext.wait_line(
            "gatehouse-extension: fanotify on",
            std::time::Duration::from_secs(30)
        )
        .is_some(),
        "the extension enforces"
    );

    // Any other writer is refused.
    let maint = rooted("/usr/libexec/gatehouse/maint.sh");
    let forged = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("echo forged >> '{maint}'"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!forged.status.success(), "a shell may not change {maint}");

    // dpkg upgrades the package while the extension enforces.
    dpkg(&r, &["--install", current.to_str().unwrap()]);
    let status = text(&dpkg(&r, &["--status", "gatehouse"]));
    let want = text(&run(Command::new("dpkg-deb")
        .arg("--field")
        .arg(&current)
        .arg("Version")));
    assert!(
        status.contains(&format!("Version: {}", want.trim())),
        "upgraded under enforcement: {status}"
    );
    assert!(!std::fs::read_to_string(&maint).unwrap().contains("forged"));
    assert!(
        ext.wait_exit(std::time::Duration::from_millis(100))
            .is_none(),
        "the extension kept running"
    );
    ext.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        ext.wait_exit(std::time::Duration::from_secs(15))
            .is_some_and(|s| s.success()),
        "clean stop"
    );
    dpkg(&r, &["--purge", "gatehouse"]);
}
