//! Supervision, restarts and orphans with the real binaries, as root, on scratch tmpfs mounts:
//! a SIGSTOPped extension under `gatehouse run` is killed by the supervisor's watchdog and its
//! blocked openers released within the watchdog interval (the figure), then restarted; a killed
//! extension or helper is restarted; SIGHUP reloads the policy without a new extension; a
//! SIGKILLed `gatehouse run`, a `gatehouse demo | head -n 5` and a Ctrl-C while the demo holds its
//! helper stopped leave no process and no mount;
//! a helper whose stdout and stderr are broken pipes stops within 1 s of SIGTERM; the systemd
//! units pass `systemd-analyze verify`.
//!
//! Safety (docs/DESIGN.md "Testing fanotify safely"): `--scope` is always a tmpfs mounted here; each
//! agent runs in its own process group, SIGKILLed as a whole on drop, under `setpriv
//! --pdeathsig KILL` when available (so it dies with the test thread), and `gatehouse run`'s own
//! children die with it. The test process never opens a marked file itself: openers are child
//! processes.
#![cfg(target_os = "linux")]

mod linux_common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use linux_common::{Guarded, Scratch, skip};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// One agent at a time in this file: the SIGSTOP figure must not share two cores with another
/// agent's start-up.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `gatehouse <args>` in a process group of its own, SIGKILLed as a group on drop.
struct Agent {
    g: Guarded,
    pgid: Pid,
}

fn gatehouse_cmd(args: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = if tests::have_command("setpriv") {
        let mut c = Command::new("setpriv");
        c.args(["--pdeathsig", "KILL", "--"])
            .arg(tests::binary("gatehouse"));
        c
    } else {
        Command::new(tests::binary("gatehouse"))
    };
    cmd.args(args).stderr(Stdio::inherit()).process_group(0);
    cmd
}

impl Agent {
    fn spawn(name: &str, args: &[&std::ffi::OsStr]) -> Agent {
        let g = Guarded::spawn(name, gatehouse_cmd(args));
        let pgid = Pid::from_raw(g.pid());
        Agent { g, pgid }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.g.pid())
    }

    /// The number after `key` in the next line containing `prefix`.
    fn wait_pid(&self, prefix: &str, key: &str, timeout: Duration) -> i32 {
        let line = self
            .g
            .wait_line(prefix, timeout)
            .unwrap_or_else(|| panic!("no line {prefix:?} within {timeout:?}"));
        number_after(&line, key).unwrap_or_else(|| panic!("no {key:?} in {line:?}"))
    }

    fn wait_ready(&self) {
        self.g
            .wait_line("gatehouse-extension: fanotify on", Duration::from_secs(30))
            .expect("the extension reported its marks");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
    }
}

fn number_after(line: &str, key: &str) -> Option<i32> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Alive and not a zombie.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

/// Processes (not zombies) in process group `pgid`.
fn group_members(pgid: Pid) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // state ppid pgrp ...
        if f.first() != Some(&"Z") && f.get(2).and_then(|p| p.parse().ok()) == Some(pgid.as_raw()) {
            v.push(pid);
        }
    }
    v
}

fn policy(secret: &Path, audit_only: bool) -> String {
    linux_common::watch_policy("supervise-secret", secret, audit_only, "")
}

/// A scratch tmpfs with a protected file, a policy file and a runtime directory.
struct Setup {
    scratch: Scratch,
    files: tempfile::TempDir,
    secret: PathBuf,
    policy: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let scratch = Scratch::mount();
        let files = tempfile::Builder::new()
            .prefix("gatehouse-supervise-")
            .tempdir()
            .unwrap();
        let secret = scratch.join("secret.txt");
        std::fs::write(&secret, b"secret\n").unwrap();
        let policy_path = files.path().join("policy.toml");
        std::fs::write(&policy_path, policy(&secret, false)).unwrap();
        Setup {
            scratch,
            files,
            secret,
            policy: policy_path,
        }
    }

    fn runtime(&self) -> PathBuf {
        self.files.path().join("run")
    }

    fn run_args(&self, extra: &[&str]) -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = vec![
            "run".into(),
            "--policy".into(),
            self.policy.clone().into(),
            "--scope".into(),
            self.scratch.path.clone().into(),
            "--runtime-dir".into(),
            self.runtime().into(),
        ];
        v.extend(extra.iter().map(Into::into));
        v
    }

    fn control(&self) -> PathBuf {
        self.runtime().join("control.sock")
    }
}

fn os(v: &[std::ffi::OsString]) -> Vec<&std::ffi::OsStr> {
    v.iter().map(|s| s.as_os_str()).collect()
}

/// `cat secret` in a child process, killed on drop; its exit status within `timeout`.
fn cat(secret: &Path, timeout: Duration) -> Option<std::process::ExitStatus> {
    let child = Command::new("/bin/cat")
        .arg(secret)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cat");
    linux_common::ChildGuard(Some(child)).wait(timeout)
}

/// Denied (EPERM): `cat` fails.
fn denied(secret: &Path) -> bool {
    cat(secret, Duration::from_secs(10)).is_some_and(|s| !s.success())
}

fn ctl_json(sock: &Path, args: &[&str]) -> Option<serde_json::Value> {
    let out = Command::new("timeout")
        .args(["-s", "KILL", "20"])
        .arg(tests::binary("gatehouse"))
        .args(args)
        .arg("--control-socket")
        .arg(sock)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

#[test]
fn a_sigstopped_extension_is_killed_by_the_watchdog_and_its_openers_released() {
    if skip("a_sigstopped_extension_is_killed_by_the_watchdog_and_its_openers_released") {
        return;
    }
    let _serial = serial();
    const WATCHDOG: Duration = Duration::from_millis(600);
    // The extension beats at half the watchdog interval.
    let heartbeat = WATCHDOG / 2;
    // Supervisor tick (20 ms), SIGKILL and exit of the extension, the kernel's release and
    // the opener's own exit, on a shared 2-core machine.
    const SLACK: Duration = Duration::from_millis(500);
    let s = Setup::new();
    let args = s.run_args(&["--watchdog-ms", &WATCHDOG.as_millis().to_string()]);
    let agent = Agent::spawn("gatehouse-run", &os(&args));
    let ext = agent.wait_pid(
        "gatehouse: helper pid",
        "extension pid ",
        Duration::from_secs(30),
    );
    agent.wait_ready();
    assert!(denied(&s.secret), "the policy is enforced before the stop");

    kill(Pid::from_raw(ext), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    // Openers started while the extension is stopped, 100 ms apart.
    let mut openers: Vec<(Instant, linux_common::ChildGuard)> = Vec::new();
    for i in 0..4u32 {
        let at = stopped + Duration::from_millis(10 + 100 * u64::from(i));
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let child = Command::new("/bin/cat")
            .arg(&s.secret)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn opener");
        openers.push((Instant::now(), linux_common::ChildGuard(Some(child))));
    }
    let mut waits = Vec::new();
    for (started, g) in &mut openers {
        let st = g.wait(Duration::from_secs(20));
        assert!(st.is_some(), "an opener was still blocked after 20 s");
        waits.push(started.elapsed());
    }
    // Exit times were observed in order, so the first opener's wait includes no lag from the
    // others; the rest are upper bounds (observation lag adds to them, never subtracts).
    let worst = *waits.iter().max().unwrap();
    eprintln!(
        "FIGURE sigstop: watchdog {WATCHDOG:?}, heartbeat {heartbeat:?}: opener waits {waits:?}, worst {worst:?} (bound {:?} = 2 x heartbeat + {SLACK:?})",
        2 * heartbeat + SLACK
    );
    assert!(
        waits[0] >= Duration::from_millis(100),
        "the first opener was held by the stopped extension: {waits:?}"
    );
    assert!(
        worst <= 2 * heartbeat + SLACK,
        "openers waited {worst:?}, more than 2 x {heartbeat:?} + {SLACK:?}"
    );

    let new = agent.wait_pid(
        "gatehouse: extension restarted",
        "extension pid ",
        Duration::from_secs(10),
    );
    assert_ne!(new, ext, "a new extension");
    agent.wait_ready();
    assert!(!running(ext), "the stopped extension is gone");
    assert!(denied(&s.secret), "the restarted extension enforces again");
}

#[test]
fn killed_extension_and_helper_are_restarted_and_sighup_reloads_in_place() {
    if skip("killed_extension_and_helper_are_restarted_and_sighup_reloads_in_place") {
        return;
    }
    let _serial = serial();
    let s = Setup::new();
    let args = s.run_args(&[]);
    let agent = Agent::spawn("gatehouse-run", &os(&args));
    let first = agent
        .g
        .wait_line("gatehouse: helper pid", Duration::from_secs(30))
        .expect("gatehouse run started both");
    let helper = number_after(&first, "helper pid ").unwrap();
    let ext = number_after(&first, "extension pid ").unwrap();
    agent.wait_ready();
    assert!(denied(&s.secret), "enforced at start");

    // The extension dies: restarted, enforcing again.
    kill(Pid::from_raw(ext), Signal::SIGKILL).unwrap();
    let ext2 = agent.wait_pid(
        "gatehouse: extension restarted",
        "extension pid ",
        Duration::from_secs(10),
    );
    assert_ne!(ext2, ext);
    agent.wait_ready();
    assert!(denied(&s.secret), "the restarted extension enforces");

    // The helper dies: restarted, and the extension reaches the new one.
    kill(Pid::from_raw(helper), Signal::SIGKILL).unwrap();
    let helper2 = agent.wait_pid(
        "gatehouse: helper restarted",
        "helper pid ",
        Duration::from_secs(10),
    );
    assert_ne!(helper2, helper);
    assert!(running(helper2), "the new helper runs");
    assert!(
        tests::wait_until(Duration::from_secs(15), || {
            ctl_json(&s.control(), &["status", "--json"])
                .is_some_and(|v| v["helper_connected"] == true)
        }),
        "the extension reconnected to the restarted helper"
    );

    // SIGHUP: the edited file is loaded by the same extension.
    let before = ctl_json(&s.control(), &["status", "--json"]).expect("status");
    std::fs::write(&s.policy, policy(&s.secret, true)).unwrap();
    kill(agent.pid(), Signal::SIGHUP).unwrap();
    agent
        .g
        .wait_line("reloaded as version", Duration::from_secs(10))
        .expect("the extension reported the reload");
    let after = ctl_json(&s.control(), &["status", "--json"]).expect("status");
    eprintln!("status before {before}\nstatus after {after}");
    assert_eq!(after["pid"], serde_json::json!(ext2), "same extension");
    assert_eq!(
        after["policy_version"].as_u64(),
        before["policy_version"].as_u64().map(|v| v + 1),
        "one policy version step"
    );
    assert!(
        cat(&s.secret, Duration::from_secs(10)).is_some_and(|st| st.success()),
        "audit-only after the reload: the open is allowed"
    );
    assert_eq!(
        group_members(agent.pgid).len(),
        3,
        "gatehouse run, one extension and one helper: {:?}",
        group_members(agent.pgid)
    );
}

/// A unit whose `--policy` file is missing must not crash-loop (no agent at all): the extension
/// runs the embedded default (self-protection on), `status` shows it, and SIGHUP loads the file
/// once it is there.
#[test]
fn a_missing_policy_file_runs_the_embedded_default_until_sighup_loads_it() {
    if skip("a_missing_policy_file_runs_the_embedded_default_until_sighup_loads_it") {
        return;
    }
    let _serial = serial();
    let s = Setup::new();
    std::fs::remove_file(&s.policy).unwrap();
    std::fs::create_dir_all(s.runtime()).unwrap();
    let mut cmd = Command::new(tests::binary("gatehouse-extension"));
    cmd.arg("--policy")
        .arg(&s.policy)
        .arg("--scope")
        .arg(&s.scratch.path)
        .arg("--control-socket")
        .arg(s.control())
        .arg("--helper-socket")
        .arg(s.runtime().join("helper.sock"))
        .arg("--events-log")
        .arg(s.runtime().join("events.jsonl"))
        .stderr(Stdio::inherit())
        .process_group(0);
    let g = Guarded::spawn("extension", cmd);
    let agent = Agent {
        pgid: Pid::from_raw(g.pid()),
        g,
    };
    agent.wait_ready();
    let status = || ctl_json(&s.control(), &["status", "--json"]);
    assert!(
        tests::wait_until(Duration::from_secs(10), || status().is_some()),
        "the extension runs and answers status"
    );
    let v = status().unwrap();
    assert_eq!(v["policy_origin"], policy::EMBEDDED_ORIGIN, "{v}");
    assert!(
        !denied(&s.secret),
        "the embedded default does not know the secret"
    );

    std::fs::write(&s.policy, policy(&s.secret, false)).unwrap();
    kill(agent.pid(), Signal::SIGHUP).unwrap();
    agent
        .g
        .wait_line("reloaded as version", Duration::from_secs(10))
        .expect("SIGHUP loaded the file");
    let v = status().unwrap();
    assert_eq!(v["policy_origin"], s.policy.display().to_string(), "{v}");
    assert!(denied(&s.secret), "the file's rule enforces");
}

#[test]
fn a_sigkilled_gatehouse_run_leaves_no_process_and_no_marks() {
    if skip("a_sigkilled_gatehouse_run_leaves_no_process_and_no_marks") {
        return;
    }
    let _serial = serial();
    let s = Setup::new();
    let args = s.run_args(&[]);
    let mut agent = Agent::spawn("gatehouse-run", &os(&args));
    let first = agent
        .g
        .wait_line("gatehouse: helper pid", Duration::from_secs(30))
        .expect("gatehouse run started both");
    let helper = number_after(&first, "helper pid ").unwrap();
    let ext = number_after(&first, "extension pid ").unwrap();
    agent.wait_ready();
    assert!(denied(&s.secret), "enforced");

    agent.g.kill();
    let t = Instant::now();
    let gone = tests::wait_until(Duration::from_secs(3), || {
        !running(ext) && !running(helper) && group_members(agent.pgid).is_empty()
    });
    eprintln!(
        "after SIGKILL of gatehouse run: children gone in {:?}: {gone}",
        t.elapsed()
    );
    assert!(
        gone,
        "orphans left: extension {ext} running {}, helper {helper} running {}, group {:?}",
        running(ext),
        running(helper),
        group_members(agent.pgid)
    );
    assert!(
        cat(&s.secret, Duration::from_secs(5)).is_some_and(|st| st.success()),
        "no listener left: the open goes through"
    );
}

#[test]
fn demo_into_head_leaves_no_process_and_no_mount() {
    if skip("demo_into_head_leaves_no_process_and_no_mount") {
        return;
    }
    let _serial = serial();
    let mut cmd = gatehouse_cmd(&["demo".as_ref()]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn gatehouse demo");
    let pgid = Pid::from_raw(child.id() as i32);
    struct Kill(Pid);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = killpg(self.0, Signal::SIGKILL);
        }
    }
    let _kill = Kill(pgid);
    // `| head -n 5`: read five lines, then close the pipe.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut dir = None;
    for _ in 0..5 {
        let mut l = String::new();
        if out.read_line(&mut l).unwrap_or(0) == 0 {
            break;
        }
        eprintln!("[demo | head] {}", l.trim_end());
        if let Some(rest) = l.strip_prefix("gatehouse demo: scratch tmpfs at ") {
            let p = rest.split(" (").next().unwrap().trim();
            dir = Some(PathBuf::from(p));
            // Mounted in the demo's own mount namespace: never visible here.
            assert!(
                !std::fs::read_to_string("/proc/mounts").unwrap().contains(p),
                "the demo's tmpfs is private to its namespace"
            );
        }
        lines.push(l);
    }
    drop(out);
    let dir = dir.expect("the demo announced its scratch directory");
    let st = linux_common::wait_timeout(&mut child, Duration::from_secs(30));
    eprintln!("demo after its stdout closed: {st:?}");
    assert!(st.is_some(), "the demo ended after its stdout closed");
    assert!(
        tests::wait_until(Duration::from_secs(3), || group_members(pgid).is_empty()),
        "processes left in the demo's group: {:?}",
        group_members(pgid)
    );
    assert!(!dir.exists(), "demo directory {} removed", dir.display());
}

/// The kernel's state letter for `pid` (`T`: stopped by a signal), `None` once it is gone.
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[test]
fn ctrl_c_while_the_demo_holds_its_helper_stopped_leaves_no_process() {
    if skip("ctrl_c_while_the_demo_holds_its_helper_stopped_leaves_no_process") {
        return;
    }
    let _serial = serial();
    let mut demo = Agent::spawn("gatehouse-demo", &["demo".as_ref()]);
    demo.g
        .wait_line("5. the helper freezes", Duration::from_secs(60))
        .expect("the demo reached its freeze step");
    // `helper pid N stopped; ...`: said right after the SIGSTOP, before the first exec.
    let helper = demo.wait_pid("helper pid ", "helper pid ", Duration::from_secs(10));
    // The group stop reaches every thread of the helper shortly after the signal, not at once
    // (a thread busy in a system call stops when it returns).
    assert!(
        tests::wait_until(Duration::from_secs(5), || process_state(helper)
            == Some('T')),
        "the helper is stopped: state {:?}",
        process_state(helper)
    );
    // Ctrl-C as a terminal sends it: the whole foreground group, the stopped helper included
    // (its SIGINT stays pending until the demo's cleanup resumes or kills it).
    let _ = killpg(demo.pgid, Signal::SIGINT);
    let st = demo.g.wait_exit(Duration::from_secs(30));
    assert!(st.is_some(), "the demo ended after Ctrl-C");
    assert!(
        tests::wait_until(Duration::from_secs(3), || group_members(demo.pgid)
            .is_empty()),
        "processes left in the demo's group: {:?}",
        group_members(demo.pgid)
    );
    assert_eq!(process_state(helper), None, "the stopped helper is gone");
}

#[test]
fn a_helper_with_broken_stdout_and_stderr_stops_within_a_second_of_sigterm() {
    if !tests::is_root() {
        tests::skip(
            "a_helper_with_broken_stdout_and_stderr_stops_within_a_second_of_sigterm",
            "needs root (the helper's default peer policy)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("helper.sock");
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    let w2 = w.try_clone().unwrap();
    let child: Child = Command::new(tests::binary("gatehouse-helper"))
        .arg("--socket")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::from(w2))
        .spawn()
        .unwrap();
    let mut g = linux_common::ChildGuard(Some(child));
    let pid = g.0.as_ref().unwrap().id() as i32;
    assert!(
        tests::wait_until(Duration::from_secs(10), || sock.exists()),
        "the helper is listening"
    );
    // It has logged (to the broken stderr) by now; it must still be running.
    std::thread::sleep(Duration::from_millis(200));
    assert!(running(pid), "the helper survived writing to a closed pipe");
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let t = Instant::now();
    let st = g.wait(Duration::from_secs(1));
    eprintln!("helper stopped {:?} after SIGTERM: {st:?}", t.elapsed());
    assert!(
        st.is_some_and(|s| s.success()),
        "clean stop within 1 s: {st:?}"
    );
}

#[test]
fn systemd_units_verify() {
    if !tests::have_command("systemd-analyze") {
        tests::skip("systemd_units_verify", "systemd-analyze not installed");
        return;
    }
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/linux");
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart= binaries exist: point them at the built ones.
    let bin_dir = tests::binary("gatehouse-extension")
        .parent()
        .unwrap()
        .to_owned();
    let mut paths = Vec::new();
    for name in ["gatehouse-extension.service", "gatehouse-helper.service"] {
        let text = std::fs::read_to_string(units.join(name)).unwrap();
        let text = text.replace(
            "/usr/libexec/gatehouse/",
            &format!("{}/", bin_dir.display()),
        );
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        // The units' `Documentation=man:gatehouse(1)` page comes with the packages, which
        // check it themselves (tests/tests/linux_packages.rs).
        .arg("--man=no")
        .args(&paths)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("systemd-analyze verify: {:?}\n{text}", out.status);
    assert!(out.status.success(), "{text}");
    // Unknown keys and bad values are warnings with exit 0: none may name our units.
    assert!(
        !text.contains("gatehouse-"),
        "warnings about the units: {text}"
    );
}
