//! The slow path never gates its own dependencies (Linux, as root, real kernel): with execs
//! failing closed while the helper is down, restarting the helper from its pinned executable is
//! allowed on the fast path, another binary is still denied, and a modified copy of the helper
//! goes through the normal policy (denied while the helper is down).
//!
//! The real `gatehouse-extension` and `gatehouse-helper` run from copies on a scratch tmpfs
//! mounted here, which is the only filesystem in scope, so the helper's exec is an event the
//! extension must answer. Each runs as `timeout -s KILL <secs> <binary>` in its own process
//! group; the guards SIGKILL the group by its own pgid.
#![cfg(target_os = "linux")]

mod linux_common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use linux_common::{Guarded, sha256, skip, wait_timeout};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

const HARD_KILL_SECS: &str = "120";

/// A process group (`timeout -s KILL ... <program>`), SIGKILLed as a whole on drop.
struct Group {
    g: Guarded,
    pgid: Pid,
}

impl Group {
    fn spawn(name: &str, program: &Path, args: &[&std::ffi::OsStr]) -> Group {
        let mut cmd = Command::new("timeout");
        cmd.args(["-s", "KILL", HARD_KILL_SECS])
            .arg(program)
            .args(args)
            .stderr(Stdio::inherit())
            .process_group(0);
        let g = Guarded::spawn(name, cmd);
        let pgid = Pid::from_raw(g.pid());
        Group { g, pgid }
    }

    fn kill(&mut self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
        let _ = self.g.kill();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
    }
}

struct Paths {
    bin: PathBuf,
    run: PathBuf,
    helper: PathBuf,
    other: PathBuf,
    /// The same contents as `other` in a file never executed before (nothing cached for it).
    fresh: PathBuf,
    blocked: PathBuf,
}

impl Paths {
    fn sock(&self) -> PathBuf {
        self.run.join("helper.sock")
    }
    fn control(&self) -> PathBuf {
        self.run.join("control.sock")
    }
}

fn start_helper(p: &Paths) -> Group {
    let _ = std::fs::remove_file(p.sock());
    // Its default peers are the extension and CLI next to it: the scratch copies.
    Group::spawn(
        "helper",
        &p.helper,
        &["--socket".as_ref(), p.sock().as_os_str()],
    )
}

/// `gatehouse <args> --control-socket <sock>`, the CLI from the build (outside the scope).
fn ctl(p: &Paths, args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .args(["-s", "KILL", "30"])
        .arg(tests::binary("gatehouse"))
        .args(args)
        .arg("--control-socket")
        .arg(p.control())
        .stdin(Stdio::null())
        .output()
        .expect("run gatehouse");
    assert!(out.status.success(), "gatehouse {args:?}: {out:?}");
    out
}

fn helper_connected(p: &Paths) -> bool {
    let out = ctl(p, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    v["helper_connected"] == serde_json::Value::Bool(true)
}

fn counter(p: &Paths, name: &str) -> u64 {
    let out = ctl(p, &["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    let counters: Vec<(String, u64)> =
        serde_json::from_value(v["counters"].clone()).expect("counters as (name, value)");
    counters
        .into_iter()
        .find(|(n, _)| n == name)
        .map_or_else(|| panic!("no counter {name}"), |(_, v)| v)
}

/// Whether `path` could be executed: an exec the extension denies fails with EPERM.
fn runs(path: &Path) -> bool {
    match Command::new(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(mut c) => {
            let st = wait_timeout(&mut c, Duration::from_secs(30));
            let _ = c.kill();
            let _ = c.wait();
            st.is_some_and(|s| s.success())
        }
        Err(e) => {
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EPERM),
                "{}: {e}",
                path.display()
            );
            false
        }
    }
}

/// The helper group is up and serving once its socket exists and the extension reports it
/// connected; a helper whose exec was denied never gets there (`timeout` exits 126).
fn helper_comes_up(p: &Paths, helper: &mut Group) -> bool {
    let mut exited = false;
    tests::wait_until(Duration::from_secs(15), || {
        exited = helper.g.wait_exit(Duration::ZERO).is_some();
        exited || (p.sock().exists() && helper_connected(p))
    }) && !exited
}

#[test]
fn helper_restart_is_never_gated_by_the_helper() {
    if skip("helper_restart_is_never_gated_by_the_helper") {
        return;
    }
    let mount_point = tempfile::Builder::new()
        .prefix("gatehouse-selftrust-")
        .tempdir()
        .expect("scratch mount point");
    // Debug builds of the two binaries are about 120 MB.
    let _mount = tests::MountGuard::tmpfs(mount_point.path(), "512m").expect("mount tmpfs");
    let root = mount_point.path();
    let p = Paths {
        bin: root.join("bin"),
        run: root.join("run"),
        helper: root.join("bin/gatehouse-helper"),
        other: root.join("bin/other"),
        fresh: root.join("bin/fresh"),
        blocked: root.join("bin/blocked"),
    };
    std::fs::create_dir_all(&p.bin).unwrap();
    std::fs::create_dir_all(&p.run).unwrap();
    let extension = p.bin.join("gatehouse-extension");
    std::fs::copy(tests::binary("gatehouse-extension"), &extension).unwrap();
    std::fs::copy(tests::binary("gatehouse-helper"), &p.helper).unwrap();
    std::fs::copy("/bin/true", &p.other).unwrap();
    std::fs::copy("/bin/true", &p.fresh).unwrap();
    std::fs::copy("/bin/echo", &p.blocked).unwrap();
    let policy = p.run.join("policy.toml");
    // SHA-256 rules, and enforce mode's default deny: every exec needs the helper's hash, and
    // fails closed while the helper is down (the helper itself included, unless pinned).
    std::fs::write(
        &policy,
        format!(
            r#"version = 1
mode = "enforce"

[defaults]
fallback = "allow"
helper_unavailable = "allow"
deadline_ms = 10000

[defaults.kind.exec]
fallback = "deny"
helper_unavailable = "deny"
deadline_ms = 10000

[[exec]]
name = "block-blocked"
action = "block"
sha256 = "{}"

[[exec]]
name = "allow-other"
action = "allow"
sha256 = "{}"
"#,
            sha256(&p.blocked),
            sha256(&p.other),
        ),
    )
    .unwrap();

    // Helper first (no group exists yet), then the extension from its scratch copy.
    let mut helper = start_helper(&p);
    assert!(
        tests::wait_until(Duration::from_secs(10), || p.sock().exists()),
        "first helper socket"
    );
    let ext = Group::spawn(
        "extension",
        &extension,
        &[
            "--policy".as_ref(),
            policy.as_os_str(),
            "--helper-socket".as_ref(),
            p.sock().as_os_str(),
            "--control-socket".as_ref(),
            p.control().as_os_str(),
            "--events-log".as_ref(),
            p.run.join("events.jsonl").as_os_str(),
            "--scope".as_ref(),
            root.as_os_str(),
        ],
    );
    let pinned = ext
        .g
        .wait_line(
            "gatehouse-extension: pinned slow-path dependency helper",
            Duration::from_secs(30),
        )
        .expect("the helper is pinned at start-up");
    assert!(
        pinned.contains(&format!("sha256={}", sha256(&p.helper))),
        "the pin records the helper's digest: {pinned}"
    );
    assert!(
        ext.g
            .wait_line("gatehouse-extension: fanotify on", Duration::from_secs(30))
            .is_some(),
        "extension status line"
    );
    assert!(
        tests::wait_until(Duration::from_secs(15), || helper_connected(&p)),
        "the extension reaches the first helper"
    );
    assert!(
        runs(&p.other),
        "an allowed binary runs while the helper hashes it; events: {}",
        events(&p)
    );
    assert!(!runs(&p.blocked), "the SHA-256 rule blocks");

    // Helper down: execs fail closed.
    helper.kill();
    assert!(
        tests::wait_until(Duration::from_secs(10), || !helper_connected(&p)),
        "the extension sees the helper gone"
    );
    let denied_before = counter(&p, "fallbacks.helper_unavailable");
    assert!(
        !runs(&p.fresh),
        "with the helper down, even an allowed binary is denied"
    );
    assert!(counter(&p, "fallbacks.helper_unavailable") > denied_before);
    let hits_before = counter(&p, "trusted.hits.helper");

    // Restart from the pinned executable: allowed on the fast path, helper back.
    let mut helper = start_helper(&p);
    assert!(
        helper_comes_up(&p, &mut helper),
        "the helper restarts while the helper is down (its exec was denied if it exited: {:?})",
        helper.g.child
    );
    assert_eq!(
        counter(&p, "trusted.hits.helper"),
        hits_before + 1,
        "the restart was allowed as a slow-path dependency"
    );
    assert!(
        runs(&p.fresh),
        "with the helper back, the allowed binary runs again"
    );

    // A modified helper is no longer the pinned file: the normal policy, which fails closed
    // with the helper down.
    helper.kill();
    assert!(
        tests::wait_until(Duration::from_secs(10), || !helper_connected(&p)),
        "the extension sees the helper gone again"
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p.helper)
        .and_then(|mut f| f.write_all(b"\0"))
        .expect("append a byte to the helper copy");
    let hits = counter(&p, "trusted.hits.helper");
    let denied_before = counter(&p, "fallbacks.helper_unavailable");
    let mut changed = start_helper(&p);
    let st = changed.g.wait_exit(Duration::from_secs(15));
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(126),
        "`timeout` cannot run the modified helper (exec denied)"
    );
    assert!(!p.sock().exists(), "the modified helper never ran");
    assert_eq!(
        counter(&p, "trusted.hits.helper"),
        hits,
        "not a pinned file any more"
    );
    assert!(
        counter(&p, "fallbacks.helper_unavailable") > denied_before,
        "the modified helper got the policy's fallback"
    );

    // Clean stop: SIGTERM to the extension itself (not `timeout`), which answers everything
    // pending and removes its marks.
    let ext_pid = ext_pid(ext.pgid);
    let _ = nix::sys::signal::kill(ext_pid, Signal::SIGTERM);
    let mut ext = ext;
    assert!(
        ext.g
            .wait_line("gatehouse-extension: stopped", Duration::from_secs(20))
            .is_some(),
        "clean stop"
    );
    ext.kill();
    drop(changed);
}

/// The events log so far, for failure messages.
fn events(p: &Paths) -> String {
    std::fs::read_to_string(p.run.join("events.jsonl")).unwrap_or_default()
}

/// The extension's pid: `timeout`'s only child in its group.
fn ext_pid(pgid: Pid) -> Pid {
    let children =
        std::fs::read_to_string(format!("/proc/{pgid}/task/{pgid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .map_or(pgid, Pid::from_raw)
}
