//! The real binaries end to end on Linux, as root: `gatehouse run` (helper + extension) on a
//! scratch tmpfs, driven by the real `gatehouse` CLI over its control socket (status, stats,
//! policy show/load, mutes, events tail, helper ping), a non-root `gatehouse run` refused
//! with a clear message, and `gatehouse demo` running to completion and cleaning up: its frozen
//! and restarted helper, its summary, and plain output (no escape codes, no child log lines
//! unless `--verbose`).
//!
//! Safety (docs/DESIGN.md "Testing fanotify safely"): `--scope` is always a tmpfs mounted here. The
//! agent runs as `timeout -s KILL <secs> gatehouse ...` in its own process group, so the hard
//! kill timer and the drop guard (SIGKILL to the whole group, by its own pgid) both reach the
//! extension and the helper that `gatehouse run` spawns, not only `gatehouse run` itself.
#![cfg(target_os = "linux")]

mod linux_common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use linux_common::{Group, HARD_KILL_SECS, Scratch, skip};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

fn gatehouse(args: &[&std::ffi::OsStr]) -> Output {
    let mut c = Command::new("timeout");
    c.args(["-s", "KILL", "30"])
        .arg(tests::binary("gatehouse"))
        .args(args)
        .stdin(Stdio::null());
    c.output().expect("run gatehouse")
}

/// `gatehouse <args> --control-socket <sock>`.
fn ctl(sock: &Path, args: &[&str]) -> Output {
    let mut v: Vec<&std::ffi::OsStr> = args.iter().map(|a| std::ffi::OsStr::new(*a)).collect();
    v.push("--control-socket".as_ref());
    v.push(sock.as_os_str());
    let out = gatehouse(&v);
    eprintln!(
        "$ gatehouse {} -> {:?}\n{}{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "command failed: {o:?}");
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {o:?}"))
}

fn status(sock: &Path) -> serde_json::Value {
    json(&ctl(sock, &["status", "--json"]))
}

/// The watch rule's message: every deny record must carry it.
const MESSAGE: &str = "cli-secret is off limits: ask the security team";

fn policy_text(secret: &Path, extra: &str) -> String {
    let extra = format!("message = \"{MESSAGE}\"\n{extra}");
    linux_common::watch_policy("cli-secret", secret, false, &extra)
}

fn mounted(needle: &str) -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| m.contains(needle))
}

#[test]
fn gatehouse_run_driven_by_the_cli() {
    if skip("gatehouse_run_driven_by_the_cli") {
        return;
    }
    let scratch = Scratch::mount();
    let runtime = tempfile::Builder::new()
        .prefix("gatehouse-cli-run-")
        .tempdir()
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let secret = scratch.join("secret.txt");
    std::fs::write(&secret, b"secret\n").unwrap();
    let policy = files.path().join("policy.toml");
    std::fs::write(&policy, policy_text(&secret, "")).unwrap();

    // Never the machine's own /etc/gatehouse/mutes.toml: this test adds and removes mutes.
    let mutes_file = files.path().join("mutes.toml");
    let agent = Group::spawn(
        "gatehouse-run",
        &[
            "run".as_ref(),
            "--policy".as_ref(),
            policy.as_os_str(),
            "--scope".as_ref(),
            scratch.path.as_os_str(),
            "--runtime-dir".as_ref(),
            runtime.path().as_os_str(),
            "--mutes-file".as_ref(),
            mutes_file.as_os_str(),
        ],
    );
    assert!(
        agent
            .g
            .wait_line(
                "gatehouse-extension: fanotify on 1 filesystem",
                Duration::from_secs(30)
            )
            .is_some(),
        "the extension came up with exactly the scratch filesystem in scope"
    );
    let sock = runtime.path().join("control.sock");
    assert!(
        tests::wait_until(Duration::from_secs(10), || sock.exists()),
        "control socket {}",
        sock.display()
    );

    // status: connected to the helper (lazily, with backoff), enforce mode, version 1.
    assert!(
        tests::wait_until(
            Duration::from_secs(15),
            || status(&sock)["helper_connected"] == true
        ),
        "helper connected"
    );
    let st = status(&sock);
    assert_eq!(
        st["mode"].as_str().map(str::to_lowercase).as_deref(),
        Some("enforce"),
        "{st}"
    );
    assert_eq!(st["policy_version"], 1, "{st}");
    assert_eq!(st["policy_origin"], policy.display().to_string(), "{st}");
    // The helper circuit breaker, appended to the status JSON and shown in the human form.
    assert_eq!(st["helper_breaker_open"], false, "{st}");
    assert_eq!(st["helper_breaker_opens"], 0, "{st}");
    let human = stdout(&ctl(&sock, &["status"]));
    assert!(
        human.contains("breaker:      closed (opened 0 times)"),
        "{human}"
    );

    // A deny caused here: an unlisted process opens the protected file.
    let cat = Command::new("/bin/cat")
        .arg(&secret)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!cat.status.success(), "unlisted open denied");
    assert!(
        String::from_utf8_lossy(&cat.stderr).contains("not permitted"),
        "EPERM: {cat:?}"
    );

    // stats: counters present; the backend's own once the core merges them.
    let stats = json(&ctl(&sock, &["stats", "--json"]));
    let counters: Vec<(String, u64)> =
        serde_json::from_value(stats["counters"].clone()).expect("counters as (name, value)");
    assert!(!counters.is_empty(), "{stats}");
    let backend: Vec<&(String, u64)> = counters
        .iter()
        .filter(|(k, _)| k.starts_with("backend."))
        .collect();
    if backend.is_empty() {
        eprintln!("note: no backend.* counters in stats yet (the core does not merge them)");
    } else {
        let get = |k: &str| {
            backend
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("{k} missing: {backend:?}"))
        };
        assert!(get("backend.fanotify.open_events") >= 1, "{backend:?}");
        assert_eq!(get("backend.fanotify.queue_overflows"), 0);
        assert_eq!(get("backend.marks.files"), 1);
        assert_eq!(get("backend.liveness.pending"), 0);
    }
    let human = ctl(&sock, &["stats"]);
    assert!(human.status.success());

    // policy show: the text we loaded, version 1.
    let shown = ctl(&sock, &["policy", "show"]);
    assert!(shown.status.success());
    let text = stdout(&shown);
    assert!(text.contains("# policy version 1"), "{text}");
    assert!(text.contains("cli-secret"), "{text}");

    // policy load of a bad file: exit 1, nothing changes.
    let bad = files.path().join("bad.toml");
    std::fs::write(
        &bad,
        "version = 1\nmode = \"enforce\"\n[[exec]]\nname = \"x\"\naction = \"maybe\"\n",
    )
    .unwrap();
    let out = ctl(&sock, &["policy", "load", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "bad policy refused");
    assert_eq!(
        status(&sock)["policy_version"],
        1,
        "bad load changed nothing"
    );
    let cat = Command::new("/bin/cat").arg(&secret).output().unwrap();
    assert!(!cat.status.success(), "still enforced after a bad load");

    // policy load of a good file: version 2, and its new rule is in force.
    let good = files.path().join("good.toml");
    std::fs::write(&good, policy_text(&secret, "# reloaded by the CLI test\n")).unwrap();
    let out = ctl(&sock, &["policy", "load", good.to_str().unwrap()]);
    assert!(out.status.success(), "good policy loaded");
    assert!(stdout(&out).contains("policy version 2"), "{out:?}");
    let st = status(&sock);
    assert_eq!(st["policy_version"], 2, "{st}");
    let cat = Command::new("/bin/cat").arg(&secret).output().unwrap();
    assert!(!cat.status.success(), "still enforced after the reload");

    // mutes: add, list, rm.
    let muted = "/opt/gatehouse-cli-test/";
    assert!(
        ctl(&sock, &["mute", "add", muted, "--prefix"])
            .status
            .success()
    );
    let list = json(&ctl(&sock, &["mute", "list", "--json"]));
    assert!(
        list.as_array()
            .is_some_and(|l| l.iter().any(|m| m["path"] == muted && m["prefix"] == true)),
        "{list}"
    );
    assert!(stdout(&ctl(&sock, &["mute", "list"])).contains(muted));
    assert!(
        ctl(&sock, &["mute", "rm", muted, "--prefix"])
            .status
            .success()
    );
    let list = json(&ctl(&sock, &["mute", "list", "--json"]));
    assert!(
        !list
            .as_array()
            .is_some_and(|l| l.iter().any(|m| m["path"] == muted)),
        "{list}"
    );

    // events tail: the denies caused above are logged.
    let secret_s = secret.display().to_string();
    assert!(
        tests::wait_until(Duration::from_secs(5), || {
            let out = ctl(&sock, &["events", "tail", "--json", "-n", "50"]);
            stdout(&out).lines().any(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                    v["verdict"] == "deny"
                        && v["kind"] == "open"
                        && v.pointer("/event/file/path") == Some(&secret_s.clone().into())
                })
            })
        }),
        "a deny of {secret_s} in `events tail --json`"
    );
    let human = stdout(&ctl(&sock, &["events", "tail"]));
    assert!(
        human.contains("deny") && human.contains("cli-secret"),
        "{human}"
    );
    // Each record says when (RFC 3339), where (host, machine id) and the rule's message; the
    // human line shows the time, the target and the message.
    let records: Vec<serde_json::Value> =
        stdout(&ctl(&sock, &["events", "tail", "--json", "-n", "50"]))
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v["kind"] == "open")
            .collect();
    let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    for v in &records {
        let t = v["time"].as_str().unwrap_or("");
        assert!(
            t.len() == 24 && t.as_bytes()[10] == b'T' && t.ends_with('Z'),
            "RFC 3339 time: {v}"
        );
        assert!(v["host"].as_str().is_some_and(|h| !h.is_empty()), "{v}");
        assert_eq!(v["machine_id"], machine_id.trim(), "{v}");
        assert_eq!(v["message"], MESSAGE, "{v}");
    }
    assert!(!records.is_empty());
    let line = human.lines().find(|l| l.contains(&secret_s)).unwrap_or("");
    assert!(
        line.contains(MESSAGE) && line.contains("T") && line.contains("deny"),
        "human line with time, target and message: {human}"
    );

    // The block message reaches the blocked process's controlling terminal: `script` gives
    // the shell a pseudo-terminal and copies what reaches it to stdout. The shell itself opens
    // the secret (a builtin's redirection, no child) and stays a while: the message is written
    // by the events-log writer after the answer, to a process that still exists (best effort:
    // one that has already exited has no terminal left to find).
    if tests::have_command("script") {
        let out = Command::new("script")
            .args([
                "-qec",
                &format!("/bin/sh -c 'read x < {secret_s}; sleep 3'"),
                "/dev/null",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("gatehouse: blocked: {MESSAGE}")),
            "block message on the terminal: {out:?}"
        );
    } else {
        tests::skip("block message on the terminal", "needs script (util-linux)");
    }

    // --follow from a cursor: every deny caused while following is printed, none skipped.
    // The follower starts with the whole in-memory window (well under its 1000 lines here),
    // so it must print the denies logged before it started plus every one of the burst,
    // whenever its first poll happened.
    let count_denies = |text: &str| text.lines().filter(|l| l.contains(&secret_s)).count();
    let before = count_denies(&stdout(&ctl(
        &sock,
        &["events", "tail", "--json", "-n", "1000"],
    )));
    let follower = Group::spawn(
        "events-follow",
        &[
            "events".as_ref(),
            "tail".as_ref(),
            "--follow".as_ref(),
            "--json".as_ref(),
            "-n".as_ref(),
            "1000".as_ref(),
            "--control-socket".as_ref(),
            sock.as_os_str(),
        ],
    );
    const BURST: usize = 40;
    for _ in 0..BURST {
        let _ = Command::new("/bin/cat").arg(&secret).output().unwrap();
    }
    let mut seen = 0;
    while seen < before + BURST {
        match follower.g.wait_line(&secret_s, Duration::from_secs(20)) {
            Some(_) => seen += 1,
            None => break,
        }
    }
    assert_eq!(seen, before + BURST, "every deny followed, none skipped");
    drop(follower);

    // helper ping through the extension.
    let out = ctl(&sock, &["helper", "ping"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("helper answered"), "{out:?}");

    // metrics: the Prometheus text format, atomically into a textfile-collector file.
    let prom = files.path().join("gatehouse.prom");
    let out = ctl(&sock, &["metrics", "--output", prom.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains("# TYPE gatehouse_answers_deny_total counter")
            && text.contains("gatehouse_latency_seconds{"),
        "{text}"
    );
    let denies = text
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_answers_deny_total "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(denies.is_some_and(|n| n >= 1), "{text}");

    // Ctrl-C: both stop cleanly, nothing pending, nothing left.
    let (ext_pid, helper_pid) = pids_of_group(agent.pgid);
    agent.interrupt();
    assert!(
        agent
            .g
            .wait_line("gatehouse: stopped", Duration::from_secs(30))
            .is_some(),
        "gatehouse run reported a clean stop"
    );
    let mut agent = agent;
    let st = agent
        .g
        .wait_exit(Duration::from_secs(20))
        .expect("gatehouse run exited");
    eprintln!("gatehouse run exit: {st:?}");
    for pid in [ext_pid, helper_pid].into_iter().flatten() {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "pid {pid} still running after the stop"
        );
    }
}

/// The extension's and helper's pids in `pgid`, from procfs (for the after-stop check).
fn pids_of_group(pgid: Pid) -> (Option<i32>, Option<i32>) {
    let (mut ext, mut helper) = (None, None);
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let pgrp: Option<i32> = rest.split_whitespace().nth(2).and_then(|p| p.parse().ok());
        if pgrp != Some(pgid.as_raw()) {
            continue;
        }
        let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
        match exe.file_name().and_then(|n| n.to_str()) {
            Some("gatehouse-extension") => ext = Some(pid),
            Some("gatehouse-helper") => helper = Some(pid),
            _ => {}
        }
    }
    (ext, helper)
}

#[test]
fn gatehouse_run_as_non_root_is_refused_clearly() {
    if !tests::is_root() {
        // Already non-root: the plain command shows the same refusal.
        tests::skip(
            "gatehouse_run_as_non_root_is_refused_clearly",
            "needs root to drop to uid 65534 with setpriv",
        );
        return;
    }
    if !tests::have_command("setpriv") {
        tests::skip(
            "gatehouse_run_as_non_root_is_refused_clearly",
            "setpriv not installed",
        );
        return;
    }
    let runtime = tempfile::tempdir().unwrap();
    let scope = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .args([
            "-s",
            "KILL",
            "30",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(tests::binary("gatehouse"))
        .arg("run")
        .arg("--scope")
        .arg(scope.path())
        .arg("--runtime-dir")
        .arg(runtime.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("needs root"), "clear message: {text}");
    assert!(
        std::fs::read_dir(runtime.path()).unwrap().next().is_none(),
        "nothing started: {text}"
    );
}

/// `gatehouse demo [args]` to the end, its stdout and stderr pipes (not a terminal), in a
/// process group of its own under a hard kill timer; the group is SIGKILLed on the way out
/// whatever happened.
fn run_demo(args: &[&str]) -> Output {
    struct KillGroup(Option<Pid>);
    impl Drop for KillGroup {
        fn drop(&mut self) {
            if let Some(g) = self.0 {
                let _ = killpg(g, Signal::SIGKILL);
            }
        }
    }
    let child = Command::new("timeout")
        .args(["-s", "KILL", HARD_KILL_SECS])
        .arg(tests::binary("gatehouse"))
        .arg("demo")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn gatehouse demo");
    let _group = KillGroup(Some(Pid::from_raw(child.id() as i32)));
    let out = child.wait_with_output().expect("gatehouse demo's output");
    eprintln!(
        "$ gatehouse demo {} -> {:?}\n{}\n--- stderr ---\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The number after `key` in `line` (`"extension pid 42: ..."`, `"extension pid "` -> 42).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The one line of `text` that contains `needle`.
fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    let found: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(found.len(), 1, "one line with {needle:?} in\n{text}");
    found[0]
}

#[test]
fn gatehouse_demo_shows_the_frozen_helper_scenario_in_plain_output_and_cleans_up() {
    if skip("gatehouse_demo_shows_the_frozen_helper_scenario_in_plain_output_and_cleans_up") {
        return;
    }
    let out = run_demo(&[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "demo exit: {:?}\n{text}", out.status);
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.contains("every step behaved as expected")
                && l.contains("scratch tmpfs unmounted")),
        "{text}"
    );
    // An expected refusal reads as expected, never as a failure.
    assert!(text.contains("refused, as expected"), "{text}");
    assert!(
        !text.contains("UNEXPECTED") && !text.contains("FAILED"),
        "{text}"
    );

    // Plain text on a pipe, and only the narrative: the children's own lines (the extension's
    // start-up lines, the helper's tracing) are kept back without --verbose, and nothing at
    // all reaches stderr when the demo succeeds.
    assert!(
        !out.stdout.contains(&0x1b) && !out.stderr.contains(&0x1b),
        "no escape codes"
    );
    assert!(
        out.stderr.is_empty(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for l in text.lines() {
        assert!(
            !l.starts_with("gatehouse-extension:")
                && !l.contains("[helper]")
                && !l.contains("[extension]")
                && !l.contains(" INFO ")
                && !l.contains(" WARN "),
            "a child's log line in the narrative: {l}"
        );
    }

    // Step 5: every exec sent at the stopped helper was answered with the fallback, and the
    // extension counted no answer past its deadline.
    let verdict = line_with(&text, "execs answered with the policy's fallback");
    let answered = number_after(verdict, "-> ").expect("N of M");
    let sent = number_after(verdict, &format!("{answered} of ")).expect("M");
    assert!(sent > 0 && answered == sent, "{verdict}");
    assert!(verdict.contains("deadline misses: 0"), "{verdict}");
    let per_exec = text
        .lines()
        .filter(|l| l.trim_start().starts_with("bin/true-") && l.contains("by the fallback"))
        .count() as u64;
    assert_eq!(
        per_exec, sent,
        "one line per exec at the frozen helper\n{text}"
    );

    // Step 6: the helper is a new process, the extension the same one, and the helper decides
    // again.
    let pids = line_with(&text, "gatehouse demo: helper pid ");
    let ext_before = number_after(pids, "extension pid ").expect("extension pid at start");
    let helper_before = number_after(pids, "helper pid ").expect("helper pid at start");
    let ext_after = number_after(
        line_with(&text, "the same process, never restarted"),
        "extension pid ",
    )
    .expect("extension pid after the helper's restart");
    assert_eq!(ext_before, ext_after, "the extension was not restarted");
    // The helper killed is the one the demo started.
    line_with(&text, &format!("  helper pid {helper_before} killed"));
    let helper_after = number_after(
        line_with(&text, "helper restarted by the supervisor: pid "),
        "pid ",
    )
    .expect("new helper pid");
    assert_ne!(helper_after, helper_before, "a new helper process");
    line_with(&text, "decided by the helper again");

    // The closing summary: every field, deadline misses 0, the frozen step's fallbacks in it.
    let summary = &text[text.find("\nsummary").expect("a summary")..];
    let row = |k: &str| -> String {
        summary
            .lines()
            .find(|l| l.starts_with(&format!("  {k} ")))
            .unwrap_or_else(|| panic!("summary row {k:?} in\n{summary}"))
            .to_owned()
    };
    for k in [
        "events",
        "fast path",
        "analysed",
        "latency p50",
        "latency p99",
    ] {
        row(k);
    }
    // `  deadline misses         0  answers later than ...`: the number after the key.
    let value = |k: &str| -> Option<u64> {
        row(k)
            .strip_prefix(&format!("  {k}"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    assert_eq!(value("deadline misses"), Some(0), "{summary}");
    assert!(value("fallbacks").is_some_and(|f| f >= sent), "{summary}");

    let dir = PathBuf::from(
        line_with(&text, "gatehouse demo: scratch tmpfs at ")
            .strip_prefix("gatehouse demo: scratch tmpfs at ")
            .and_then(|r| r.split(" (").next())
            .expect("the scratch directory"),
    );
    assert!(
        !mounted(&dir.display().to_string()),
        "demo tmpfs {} still mounted",
        dir.display()
    );
    assert!(!dir.exists(), "demo directory {} removed", dir.display());
}

#[test]
fn gatehouse_demo_verbose_shows_the_childrens_own_lines_tagged_and_plain() {
    if skip("gatehouse_demo_verbose_shows_the_childrens_own_lines_tagged_and_plain") {
        return;
    }
    let out = run_demo(&["--verbose"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo exit: {:?}\n{text}", out.status);
    assert!(
        !out.stdout.contains(&0x1b) && !out.stderr.contains(&0x1b),
        "no escape codes, the helper's tracing included"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("  [extension] gatehouse-extension: fanotify on ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("  [helper] ") && l.contains("helper listening")),
        "{text}"
    );
}

/// `gatehouse run` on `scratch` with `policy`, its runtime mutes in `mutes_file`, up and
/// connected to its helper; returns the group and the control socket.
fn start_agent(
    scratch: &Scratch,
    policy: &Path,
    runtime: &Path,
    mutes_file: &Path,
) -> (Group, PathBuf) {
    let agent = Group::spawn(
        "gatehouse-run",
        &[
            "run".as_ref(),
            "--policy".as_ref(),
            policy.as_os_str(),
            "--scope".as_ref(),
            scratch.path.as_os_str(),
            "--runtime-dir".as_ref(),
            runtime.as_os_str(),
            "--mutes-file".as_ref(),
            mutes_file.as_os_str(),
        ],
    );
    assert!(
        agent
            .g
            .wait_line(
                "gatehouse-extension: fanotify on 1 filesystem",
                Duration::from_secs(30)
            )
            .is_some(),
        "the extension came up"
    );
    let sock = runtime.join("control.sock");
    assert!(tests::wait_until(Duration::from_secs(10), || sock.exists()));
    assert!(
        tests::wait_until(Duration::from_secs(15), || ctl(
            &sock,
            &["status", "--json"]
        )
        .status
        .success()),
        "control socket answers"
    );
    (agent, sock)
}

/// Stop a `gatehouse run` group as Ctrl-C would, and wait until it has exited.
fn stop_agent(mut agent: Group) {
    agent.interrupt();
    assert!(
        agent.g.wait_exit(Duration::from_secs(20)).is_some(),
        "gatehouse run stopped on SIGINT"
    );
}

fn cat_allowed(secret: &Path) -> bool {
    Command::new("/bin/cat")
        .arg(secret)
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .status
        .success()
}

/// Runtime mutes are kept in the mutes file and restored by the next extension, and a removed
/// one stays removed; `status` shows the policy's content hash (the same across restarts),
/// rule counts, scope, marks and mutes.
#[test]
fn runtime_mutes_survive_restarts_and_status_and_doctor_tell_the_state() {
    if skip("runtime_mutes_survive_restarts_and_status_and_doctor_tell_the_state") {
        return;
    }
    let scratch = Scratch::mount();
    let runtime = tempfile::Builder::new()
        .prefix("gatehouse-cli-mutes-")
        .tempdir()
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let secret = scratch.join("secret.txt");
    std::fs::write(&secret, b"secret\n").unwrap();
    let policy = files.path().join("policy.toml");
    std::fs::write(&policy, policy_text(&secret, "")).unwrap();
    let mutes_file = files.path().join("state").join("mutes.toml");
    let secret_s = secret.to_str().unwrap();

    let (agent, sock) = start_agent(&scratch, &policy, runtime.path(), &mutes_file);
    assert!(
        !cat_allowed(&secret),
        "the watch rule denies an unlisted reader"
    );
    let first = status(&sock);
    let hash = first["policy_sha256"]
        .as_str()
        .expect("a content hash")
        .to_owned();
    assert_eq!(hash, linux_common::sha256(&policy), "{first}");
    assert_eq!(first["rules"][0]["tier"], "static", "{first}");
    assert_eq!(first["rules"][0]["kind"], "watch", "{first}");
    assert_eq!(
        first["scopes"][0],
        scratch.path.to_str().unwrap(),
        "{first}"
    );
    assert_eq!(first["marks"]["filesystems"], 1, "{first}");
    assert_eq!(first["mutes_runtime"], 0, "{first}");
    assert_eq!(first["mutes_file"], mutes_file.to_str().unwrap(), "{first}");
    let human = stdout(&ctl(&sock, &["status"]));
    for want in [
        format!("sha256 {hash}"),
        "rules:        static: 1 watch; local: none".to_owned(),
        "marks:        1 filesystems".to_owned(),
        "mutes:        0 from the policy, 0 runtime (kept in".to_owned(),
    ] {
        assert!(human.contains(&want), "{want:?} not in:\n{human}");
    }

    // doctor: everything in order against this agent's own files.
    let local_rules = files.path().join("local-rules.toml");
    let helper_sock = runtime.path().join("helper.sock");
    let events_log = runtime.path().join("events.jsonl");
    let transitive_file = files.path().join("transitive.json");
    let doctor = |extra: &[&str]| {
        let mut args: Vec<std::ffi::OsString> = vec!["doctor".into()];
        for (flag, v) in [
            ("--control-socket", sock.as_os_str()),
            ("--helper-socket", helper_sock.as_os_str()),
            ("--policy", policy.as_os_str()),
            ("--local-rules", local_rules.as_os_str()),
            ("--mutes-file", mutes_file.as_os_str()),
            ("--transitive-file", transitive_file.as_os_str()),
            ("--events-log", events_log.as_os_str()),
            ("--scope", scratch.path.as_os_str()),
        ] {
            args.push(flag.into());
            args.push(v.to_owned());
        }
        args.extend(extra.iter().map(Into::into));
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        gatehouse(&refs)
    };
    let level = |o: &Output, check: &str| -> String {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("doctor --json");
        v.as_array()
            .and_then(|a| a.iter().find(|f| f["check"] == check))
            .map(|f| f["level"].as_str().unwrap_or("").to_owned())
            .unwrap_or_else(|| panic!("no {check} in {v}"))
    };
    let out = doctor(&["--json"]);
    assert!(out.status.success(), "{}", stdout(&out));
    for check in [
        "root",
        "fanotify",
        "extension",
        "control socket",
        "helper",
        "helper link",
        "policy",
        "policy file",
        "policy in force",
        "disk space",
    ] {
        assert_eq!(level(&out, check), "ok", "{check}: {}", stdout(&out));
    }
    let human = stdout(&doctor(&[]));
    assert!(human.contains("0 warnings, 0 failures"), "{human}");

    assert!(
        ctl(&sock, &["mute", "add", secret_s, "--target"])
            .status
            .success()
    );
    assert!(cat_allowed(&secret), "the target mute applies at once");
    let saved = std::fs::read_to_string(&mutes_file).expect("the mutes file was written");
    assert!(saved.contains(secret_s), "{saved}");
    stop_agent(agent);

    // A new extension restores the mute before its first event.
    let (agent, sock) = start_agent(&scratch, &policy, runtime.path(), &mutes_file);
    let second = status(&sock);
    assert_eq!(
        second["policy_sha256"],
        hash.as_str(),
        "same file, same hash: {second}"
    );
    assert_eq!(second["mutes_runtime"], 1, "{second}");
    let list = json(&ctl(&sock, &["mute", "list", "--json"]));
    assert!(
        list.as_array().is_some_and(|l| l
            .iter()
            .any(|m| m["path"] == secret_s && m["scope"] == "target")),
        "{list}"
    );
    assert!(cat_allowed(&secret), "the restored mute applies");
    assert!(
        ctl(&sock, &["mute", "rm", secret_s, "--target"])
            .status
            .success()
    );
    assert!(
        !cat_allowed(&secret),
        "removed: the watch rule decides again"
    );
    stop_agent(agent);

    // ... and stays removed.
    let (agent, sock) = start_agent(&scratch, &policy, runtime.path(), &mutes_file);
    assert_eq!(status(&sock)["mutes_runtime"], 0);
    assert!(!cat_allowed(&secret), "a removed mute does not come back");

    // doctor notices a policy file edited since it was loaded, and one others may write.
    std::fs::write(&policy, policy_text(&secret, "# edited\n")).unwrap();
    let out = doctor(&["--json"]);
    assert_eq!(level(&out, "policy in force"), "warn", "{}", stdout(&out));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = doctor(&["--json"]);
    assert_eq!(level(&out, "policy file"), "fail", "{}", stdout(&out));
    assert_eq!(out.status.code(), Some(1), "a failure exits 1");
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).unwrap();
    stop_agent(agent);

    // With the agent stopped: the extension and the helper are reported down, with the fix.
    let out = doctor(&[]);
    assert_eq!(out.status.code(), Some(1));
    let human = stdout(&out);
    assert!(
        human.contains("FAIL  extension          the extension is not running"),
        "{human}"
    );
    assert!(human.contains("FAIL  helper"), "{human}");
}
