//! End to end on Linux, as root: the fanotify backend wired into the real core
//! (`es_extension::sys::linux::run`, the function `gatehouse-extension` calls) with the real
//! `gatehouse-helper`, on a scratch tmpfs: denied and allowed execs, a protected file, the
//! kernel ignore-mark cache (and its invalidation by a modification), and helper SIGSTOP,
//! kill and restart.
//!
//! The extension runs in a child process (this binary re-run on the ignored `e2e_child`) with
//! a hard kill timer; the parent asks it to stop cleanly by closing its stdin (the child then
//! sends SIGTERM to the thread waiting in `sigwait`).
#![cfg(target_os = "linux")]

mod linux_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use linux_common::*;

const ENTRY: &str = "e2e_child";

#[test]
#[ignore = "child-process entry point for the e2e tests; run by them, not directly"]
fn e2e_child() {
    arm_child_timers(120);
    tests::run_extension_from_env();
}

fn helper_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("gatehouse-helper");
    assert!(
        p.is_file(),
        "{} missing: run `cargo build -p analysis-helper` first",
        p.display()
    );
    p
}

fn start_helper(sock: &Path) -> Guarded {
    let _ = std::fs::remove_file(sock);
    let mut cmd = Command::new(helper_bin());
    // The "extension" here is this test binary (re-run as a child): let it in.
    cmd.arg("--socket")
        .arg(sock)
        .arg("--allowed-exe")
        .arg(std::env::current_exe().unwrap())
        .stderr(Stdio::inherit());
    let g = Guarded::spawn("helper", cmd);
    let end = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sock.exists(), "helper socket {} appeared", sock.display());
    g
}

/// Run `path args` as a separate process, with a timeout, returning (success, stderr).
fn exec(path: &Path, args: &[&Path]) -> (bool, String) {
    let mut c = ChildGuard(Some(
        Command::new(path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", path.display())),
    ));
    let st = c.wait(Duration::from_secs(30)).expect("process finished");
    let mut err = String::new();
    if let Some(mut e) = c.0.as_mut().and_then(|c| c.stderr.take()) {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (st.success(), err)
}

/// Spawn-level failure: exec denied by the kernel shows as EPERM from `Command::spawn`.
fn exec_errno(path: &Path) -> Option<i32> {
    match Command::new(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(mut c) => {
            let _ = wait_timeout(&mut c, Duration::from_secs(30));
            let _ = c.kill();
            let _ = c.wait();
            None
        }
        Err(e) => e.raw_os_error(),
    }
}

struct Setup {
    scratch: Scratch,
    run: PathBuf,
    blocked: PathBuf,
    allowed: PathBuf,
    reader: PathBuf,
    secret: PathBuf,
    policy: PathBuf,
}

fn setup(deadline_ms: u32) -> Setup {
    let scratch = Scratch::mount();
    let bin = scratch.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let run = scratch.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let (blocked, allowed, reader) = (bin.join("blocked"), bin.join("allowed"), bin.join("reader"));
    std::fs::copy("/bin/echo", &blocked).unwrap();
    std::fs::copy("/bin/true", &allowed).unwrap();
    std::fs::copy("/bin/cat", &reader).unwrap();
    let secret = scratch.join("secret.txt");
    std::fs::write(&secret, "secret\n").unwrap();
    let policy = run.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"version = 1
mode = "enforce"

[defaults]
fallback = "allow"
helper_unavailable = "allow"
deadline_ms = {deadline_ms}

[defaults.kind.exec]
fallback = "deny"
helper_unavailable = "deny"
deadline_ms = {deadline_ms}

[[exec]]
name = "block-blocked"
action = "block"
sha256 = "{b}"

[[exec]]
name = "allow-allowed"
action = "allow"
sha256 = "{a}"

[[exec]]
name = "allow-reader"
action = "allow"
sha256 = "{r}"

[[watch]]
name = "secret"
paths = [{{ path = "{s}" }}]
operations = ["open"]
audit_only = false
processes = [{{ binary_path = "{rp}" }}]
"#,
            b = sha256(&blocked),
            a = sha256(&allowed),
            r = sha256(&reader),
            s = secret.display(),
            rp = reader.display(),
        ),
    )
    .unwrap();
    Setup {
        scratch,
        run,
        blocked,
        allowed,
        reader,
        secret,
        policy,
    }
}

fn start_extension(s: &Setup) -> Guarded {
    let mut cmd = child_command(ENTRY, "extension", &s.scratch.path);
    cmd.env("GH_POLICY", &s.policy)
        .env("GH_HELPER_SOCK", s.run.join("helper.sock"))
        .env("GH_EVENTS_LOG", s.run.join("events.jsonl"))
        .stderr(Stdio::inherit());
    let g = Guarded::spawn("extension", cmd);
    assert!(
        g.wait_line("gatehouse-extension: fanotify on", Duration::from_secs(20))
            .is_some(),
        "extension status line"
    );
    g
}

/// Stop cleanly; returns the extension's final counters line.
fn stop_extension(mut g: Guarded) -> String {
    g.close_stdin();
    let line = g
        .wait_line("gatehouse-extension: stopped", Duration::from_secs(20))
        .expect("clean stop line");
    let st = g
        .wait_exit(Duration::from_secs(20))
        .expect("extension exited");
    assert!(st.success(), "extension exit {st:?}");
    line
}

fn counter(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn exec_and_open_decisions_and_kernel_cache() {
    if skip("exec_and_open_decisions_and_kernel_cache") {
        return;
    }
    let s = setup(3000);
    let _helper = start_helper(&s.run.join("helper.sock"));
    std::thread::sleep(Duration::from_millis(300));
    let ext = start_extension(&s);
    // Give the core a moment to connect to the helper (start-up never waits for it).
    std::thread::sleep(Duration::from_millis(500));

    // Denied exec: EPERM at execve.
    assert_eq!(exec_errno(&s.blocked), Some(libc::EPERM), "blocked binary");
    // Allowed by SHA-256: first exec through the helper, then from the kernel ignore mark.
    for i in 0..5 {
        assert_eq!(exec_errno(&s.allowed), None, "allowed binary, run {i}");
    }
    // Modify (same bytes rewritten: a modification clears the ignore mark, the hash still
    // matches), then it is decided again.
    let bytes = std::fs::read(&s.allowed).unwrap();
    std::fs::write(&s.allowed, &bytes).unwrap();
    assert_eq!(exec_errno(&s.allowed), None, "allowed binary after rewrite");
    assert_eq!(exec_errno(&s.allowed), None, "allowed binary, cached again");

    // Protected file: unlisted process denied, listed one allowed.
    let (ok, err) = exec(Path::new("/bin/cat"), &[&s.secret]);
    assert!(!ok, "unlisted /bin/cat must not read the secret");
    assert!(err.contains("not permitted"), "EPERM expected: {err}");
    let (ok, err) = exec(&s.reader, &[&s.secret]);
    assert!(ok, "listed reader opens the secret: {err}");

    let line = stop_extension(ext);
    // blocked 1 + allowed (1 first + 1 after the rewrite) + reader 1 = 4 exec events; the
    // other 5 execs of `allowed` never reached us (kernel ignore mark).
    assert_eq!(counter(&line, "fanotify.exec_events"), 4, "{line}");
    assert!(counter(&line, "fanotify.ignore_marks_added") >= 2, "{line}");
    assert_eq!(counter(&line, "fanotify.queue_overflows"), 0, "{line}");
    assert_eq!(counter(&line, "pending"), 0, "{line}");
    // No watch item exempts reads, so how an open opens its file cannot matter: the
    // `/proc/<tid>/syscall` read is skipped (issue 15: the largest delivery cost after the
    // answer itself).
    assert_eq!(counter(&line, "opener.flags_read"), 0, "{line}");
    assert!(counter(&line, "opener.flags_skipped") >= 2, "{line}");
}

#[test]
fn helper_stopped_gets_fallback_and_restart_recovers() {
    if skip("helper_stopped_gets_fallback_and_restart_recovers") {
        return;
    }
    let s = setup(1000);
    let sock = s.run.join("helper.sock");
    let mut helper = start_helper(&sock);
    std::thread::sleep(Duration::from_millis(300));
    let ext = start_extension(&s);
    std::thread::sleep(Duration::from_millis(500));

    // SIGSTOP: the first exec of an allowed-by-hash binary needs the helper; the watchdog
    // answers the exec fallback (deny) before our 1 s deadline.
    helper.signal(nix::sys::signal::Signal::SIGSTOP);
    let t = Instant::now();
    assert_eq!(exec_errno(&s.allowed), Some(libc::EPERM), "fallback deny");
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "answered within the deadline: {took:?}"
    );

    // Kill it and start a new one on the same socket: recovered without restarting us.
    helper.kill();
    let _helper2 = start_helper(&sock);
    let end = Instant::now() + Duration::from_secs(15);
    let mut recovered = false;
    while Instant::now() < end {
        if exec_errno(&s.allowed).is_none() {
            recovered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(recovered, "exec allowed again through the restarted helper");
    let line = stop_extension(ext);
    assert_eq!(counter(&line, "pending"), 0, "{line}");
}

/// Append a watch rule guarding the directory `dir` (prefix) against every opener but this
/// test binary (so the test itself can create files there) to the setup's policy.
fn guard_dir_for_self(s: &Setup, dir: &Path) {
    let mut text = std::fs::read_to_string(&s.policy).unwrap();
    text.push_str(&format!(
        "\n[[watch]]\nname = \"guarded-dir\"\npaths = [{{ path = \"{}/\", prefix = true }}]\noperations = [\"open\"]\naudit_only = false\nprocesses = [{{ binary_path = \"{}\" }}]\n",
        dir.display(),
        std::env::current_exe().unwrap().display()
    ));
    std::fs::write(&s.policy, text).unwrap();
}

/// `/bin/cat path` until the kernel refuses it (EPERM) or `within` passes; the time it took.
fn denied_within(path: &Path, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < within {
        let (ok, err) = exec(Path::new("/bin/cat"), &[path]);
        if !ok && err.contains("not permitted") {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn new_subdirectories_of_a_protected_directory_are_followed() {
    if skip("new_subdirectories_of_a_protected_directory_are_followed") {
        return;
    }
    let s = setup(3000);
    let guarded = s.scratch.join("guarded");
    std::fs::create_dir_all(guarded.join("old")).unwrap();
    std::fs::write(guarded.join("old/file.txt"), b"old\n").unwrap();
    guard_dir_for_self(&s, &guarded);
    let _helper = start_helper(&s.run.join("helper.sock"));
    let ext = start_extension(&s);

    // Marked at start-up: an existing subdirectory.
    assert!(
        denied_within(&guarded.join("old/file.txt"), Duration::from_secs(2)).is_some(),
        "an existing subdirectory is guarded"
    );
    // Created after start: a subdirectory, and a tree made in one go (`mkdir -p`), each with a
    // file written by this (listed) test process.
    let new = guarded.join("new");
    std::fs::create_dir(&new).unwrap();
    std::fs::write(new.join("file.txt"), b"new\n").unwrap();
    let deep = guarded.join("p/q/r");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("file.txt"), b"deep\n").unwrap();
    for f in [new.join("file.txt"), deep.join("file.txt")] {
        let took = denied_within(&f, Duration::from_secs(5));
        eprintln!("unlisted open of {} denied after {took:?}", f.display());
        assert!(took.is_some(), "{} must be guarded", f.display());
        // The listed process (this test) still reads it.
        assert!(std::fs::read(&f).is_ok(), "listed opener allowed");
    }
    // A directory outside the protected one is not marked.
    let outside = s.scratch.join("elsewhere/sub");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("f.txt"), b"x").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (ok, err) = exec(Path::new("/bin/cat"), &[&outside.join("f.txt")]);
    assert!(ok, "unprotected directory stays open: {err}");

    let line = stop_extension(ext);
    // new, p, p/q, p/q/r (the deeper ones by the scan of `p` or by their own events).
    assert_eq!(counter(&line, "follow.subdir_marks_added"), 4, "{line}");
    assert_eq!(counter(&line, "follow.subdir_mark_errors"), 0, "{line}");
    assert_eq!(counter(&line, "pending"), 0, "{line}");
}

/// The open mode is visible (`/proc/<tid>/syscall`): under a watch item with
/// `allow_read_access`, an unlisted process may read a protected file and execute a protected
/// binary (the kernel raises an open permission event for exec opens too), but not append to,
/// truncate or overwrite it. A watch item without `allow_read_access` still denies reads.
#[test]
fn open_mode_is_visible_reads_and_execs_pass_writes_do_not() {
    if skip("open_mode_is_visible_reads_and_execs_pass_writes_do_not") {
        return;
    }
    let s = setup(3000);
    let guarded = s.scratch.join("guarded");
    std::fs::create_dir_all(&guarded).unwrap();
    let notes = guarded.join("notes.txt");
    std::fs::write(&notes, "notes\n").unwrap();
    let tool = guarded.join("tool");
    std::fs::copy("/bin/true", &tool).unwrap();
    // Monitor mode, so the unknown `tool` may run; watch decisions do not depend on the mode.
    std::fs::write(
        &s.policy,
        format!(
            r#"version = 1
mode = "monitor"

[[watch]]
name = "guarded"
paths = [{{ path = "{g}/", prefix = true }}]
operations = ["open"]
allow_read_access = true
audit_only = false
processes = [{{ binary_path = "/nonexistent/only-this-may-write" }}]

[[watch]]
name = "secret"
paths = [{{ path = "{secret}" }}]
operations = ["open"]
audit_only = false
processes = [{{ binary_path = "{reader}" }}]
"#,
            g = guarded.display(),
            secret = s.secret.display(),
            reader = s.reader.display(),
        ),
    )
    .unwrap();
    let ext = start_extension(&s);
    let sh = |script: &str| {
        let script = std::ffi::OsString::from(script);
        exec(Path::new("/bin/sh"), &[Path::new("-c"), Path::new(&script)])
    };
    let n = notes.display();
    // (what, shell command, may succeed)
    let cases = [
        (
            "read by an unlisted process",
            format!("cat {n} >/dev/null"),
            true,
        ),
        (
            "exec of a protected binary",
            format!("{}", tool.display()),
            true,
        ),
        ("append", format!("echo x >> {n}"), false),
        ("truncate", format!(": > {n}"), false),
        ("read-write open", format!("exec 3<> {n}"), false),
        (
            "read of the secret (no allow_read_access)",
            format!("cat {} >/dev/null", s.secret.display()),
            false,
        ),
    ];
    for (what, cmd, ok) in &cases {
        let (succeeded, err) = sh(cmd);
        assert_eq!(succeeded, *ok, "{what}: `{cmd}`: {err}");
        if !ok {
            assert!(
                err.contains("not permitted"),
                "{what}: EPERM expected: {err}"
            );
        }
    }
    assert_eq!(
        std::fs::read_to_string(&notes).unwrap(),
        "notes\n",
        "nothing was written"
    );
    let line = stop_extension(ext);
    assert_eq!(counter(&line, "pending"), 0, "{line}");
}

/// Issue 13, Santa's scope rule on Linux: in enforce mode an unknown ELF binary gets the mode
/// default (deny), while a script no rule names is allowed by scope ("Not a Mach-O" in
/// Santa), the helper having read its first bytes through the event's descriptor; the
/// script's interpreter is decided as its own exec. The exec counter shows both were decided.
#[test]
fn scripts_are_out_of_scope_unknown_binaries_are_not() {
    if skip("scripts_are_out_of_scope_unknown_binaries_are_not") {
        return;
    }
    let s = setup(3000);
    let bin = s.scratch.join("bin");
    let unknown = bin.join("unknown");
    std::fs::copy("/bin/ls", &unknown).unwrap();
    let script = bin.join("hello.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let _helper = start_helper(&s.run.join("helper.sock"));
    std::thread::sleep(Duration::from_millis(300));
    let ext = start_extension(&s);
    std::thread::sleep(Duration::from_millis(500));

    assert_eq!(
        exec_errno(&unknown),
        Some(libc::EPERM),
        "unknown ELF: mode default"
    );
    let (ok, err) = exec(&script, &[]);
    assert!(ok, "a script is out of scope: {err}");

    let line = stop_extension(ext);
    assert_eq!(counter(&line, "fanotify.exec_events"), 2, "{line}");
    assert_eq!(counter(&line, "pending"), 0, "{line}");
    let log = std::fs::read_to_string(s.run.join("events.jsonl")).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("unknown") && l.contains("\"deny\"")),
        "the deny is logged: {log}"
    );
}
