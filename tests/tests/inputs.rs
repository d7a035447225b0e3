//! Hostile inputs to the real binaries (issue 16 item 9): every file the CLI reads is a regular
//! file read with a size limit, so `/dev/zero`, a FIFO nobody writes, a directory, a socket or
//! an oversized (sparse) file is refused promptly with a message saying what it is; a socket
//! path naming a regular file stops the extension and the helper before they touch it; a
//! policy too large for one control frame loads by path (`ControlRequest::PolicyLoadPath`),
//! read by the extension's control thread under the same rules; and `events tail` prints an
//! executable named with a newline and ESC as escapes, on one line.
//!
//! The CLI table runs as any user. The rest needs root (fanotify) and is skipped otherwise.
//!
//! Safety (docs/DESIGN.md "Testing fanotify safely"): `--scope` is a tmpfs mounted here. Every
//! binary runs as `timeout -s KILL <secs> ...`; the extension in its own process group,
//! SIGKILLed as a group by its own pgid on drop, and reaped (this test is a subreaper).
#![cfg(target_os = "linux")]

mod linux_common;

use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use linux_common::{Scratch, skip};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tests::{binary, wait_until};

/// The CLI's policy size limit (`protocol::bounded::POLICY_MAX_BYTES`).
const POLICY_MAX: u64 = protocol::bounded::POLICY_MAX_BYTES;

/// `timeout -s KILL <secs> <bin> <args>`, stdin closed, output captured.
fn run(secs: u32, bin: &str, args: &[&std::ffi::OsStr]) -> Output {
    Command::new("timeout")
        .args(["-s", "KILL", &secs.to_string()])
        .arg(binary(bin))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run timeout")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

#[test]
fn cli_inputs_are_regular_files_of_bounded_size() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(
        p("ok.toml"),
        "version = 1\nmode = \"monitor\"\n[defaults]\nfallback = \"allow\"\n",
    )
    .unwrap();
    nix::unistd::mkfifo(&p("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let _sock = UnixListener::bind(p("sock")).unwrap();
    std::fs::create_dir(p("dir")).unwrap();
    // Sparse: one byte over the limit costs no disk.
    std::fs::File::create(p("huge.toml"))
        .unwrap()
        .set_len(POLICY_MAX + 1)
        .unwrap();
    std::fs::write(
        p("event.json"),
        r#"{"process":{"pid":10,"uid":0,"executable":{"path":"/bin/sh"},"signing":{"status":"unsigned"}},
            "kind":"exec","target":{"pid":11,"uid":0,"executable":{"path":"/usr/local/bin/tool"},
            "signing":{"status":"unsigned"}}}"#,
    )
    .unwrap();
    let limit = format!("larger than {POLICY_MAX} bytes");
    let path = |n: &str| p(n).into_os_string();
    // (arguments, exit code, text the output must contain)
    let cases: Vec<(Vec<std::ffi::OsString>, i32, String)> = vec![
        (
            vec!["policy".into(), "check".into(), "/dev/zero".into()],
            1,
            "/dev/zero is a character device, not a regular file".into(),
        ),
        (
            vec!["policy".into(), "check".into(), path("fifo")],
            1,
            "is a FIFO (named pipe), not a regular file".into(),
        ),
        (
            vec!["policy".into(), "check".into(), path("dir")],
            1,
            "is a directory, not a regular file".into(),
        ),
        (
            vec!["policy".into(), "check".into(), path("sock")],
            1,
            "is a socket, not a regular file".into(),
        ),
        (
            vec!["policy".into(), "check".into(), path("huge.toml")],
            1,
            limit.clone(),
        ),
        (
            vec!["policy".into(), "check".into(), path("ok.toml")],
            0,
            ": ok (monitor mode".into(),
        ),
        // The other inputs go through the same reader.
        (
            vec![
                "policy".into(),
                "eval".into(),
                path("ok.toml"),
                "--event".into(),
                path("fifo"),
            ],
            1,
            "is a FIFO (named pipe), not a regular file".into(),
        ),
        (
            vec![
                "policy".into(),
                "eval".into(),
                path("ok.toml"),
                "--event".into(),
                path("event.json"),
                "--facts".into(),
                "/dev/zero".into(),
            ],
            1,
            "/dev/zero is a character device".into(),
        ),
        (
            vec![
                "policy".into(),
                "import-santa".into(),
                "--rules".into(),
                path("fifo"),
            ],
            1,
            "is a FIFO (named pipe), not a regular file".into(),
        ),
        (
            vec![
                "policy".into(),
                "import-santa".into(),
                "--file-access".into(),
                path("huge.toml"),
            ],
            1,
            limit.clone(),
        ),
        (
            vec!["policy".into(), "load".into(), "/dev/zero".into()],
            1,
            "/dev/zero is a character device, not a regular file".into(),
        ),
    ];
    for (args, code, want) in cases {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let start = Instant::now();
        // A hang (FIFO) or an out-of-memory read (/dev/zero) would be killed by `timeout`
        // (exit 137) or take seconds.
        let out = run(10, "gatehouse", &args);
        let t = text(&out);
        eprintln!(
            "$ gatehouse {args:?} -> {:?} in {:?}\n{t}",
            out.status.code(),
            start.elapsed()
        );
        assert_eq!(out.status.code(), Some(code), "{args:?}: {t}");
        assert!(t.contains(&want), "{args:?}: {t:?} lacks {want:?}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{args:?} took {:?}",
            start.elapsed()
        );
    }
}

/// The extension, `timeout -s KILL` in its own process group: SIGKILLed as a group and reaped
/// on drop.
struct Extension {
    child: Option<Child>,
    pgid: Pid,
    control: PathBuf,
}

impl Extension {
    fn start(dir: &Path, scope: &Path, policy: &Path, control: &Path, helper: &Path) -> Extension {
        // The extension is `timeout`'s child: as a subreaper this test inherits it when the
        // group is killed, so the drop guard reaps it too.
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
        let mut cmd = Command::new("timeout");
        cmd.args(["-s", "KILL", "120"])
            .arg(binary("gatehouse-extension"))
            .arg("--policy")
            .arg(policy)
            .arg("--helper-socket")
            .arg(helper)
            .arg("--control-socket")
            .arg(control)
            .arg("--events-log")
            .arg(dir.join("events.jsonl"))
            .arg("--scope")
            .arg(scope)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("extension.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("extension.log")).unwrap())
            .process_group(0);
        let child = cmd.spawn().expect("start timeout gatehouse-extension");
        let pgid = Pid::from_raw(child.id() as i32);
        Extension {
            child: Some(child),
            pgid,
            control: control.to_owned(),
        }
    }

    /// Wait until its marks are in place and its control socket listens (its status line on
    /// stdout comes after both).
    fn wait_ready(&self) {
        let dir = self
            .control
            .parent()
            .expect("control socket directory")
            .to_owned();
        let ready = wait_until(Duration::from_secs(30), || {
            std::fs::read_to_string(dir.join("extension.out"))
                .is_ok_and(|o| o.contains("gatehouse-extension: fanotify on 1 filesystem"))
                && self.control.exists()
        });
        assert!(
            ready,
            "the extension came up on the scratch filesystem: {}",
            std::fs::read_to_string(dir.join("extension.log")).unwrap_or_default()
        );
    }

    /// Wait up to `timeout` for it to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        linux_common::wait_timeout(self.child.as_mut()?, timeout)
    }

    fn ctl(&self, args: &[&std::ffi::OsStr]) -> Output {
        let mut v = args.to_vec();
        v.push(os("--control-socket"));
        v.push(self.control.as_os_str());
        let out = run(60, "gatehouse", &v);
        eprintln!(
            "$ gatehouse {args:?} -> {:?}\n{}",
            out.status.code(),
            text(&out)
        );
        out
    }

    fn status(&self) -> serde_json::Value {
        let out = self.ctl(&[os("status"), os("--json")]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }
}

impl Drop for Extension {
    fn drop(&mut self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        while nix::sys::wait::waitpid(Pid::from_raw(-self.pgid.as_raw()), None).is_ok() {}
    }
}

fn policy_text(secret: &Path, extra: &str) -> String {
    linux_common::watch_policy("inputs-secret", secret, false, extra)
}

/// A socket path naming a regular file: the extension (`--control-socket`) and the helper
/// (`--socket`) refuse to start and leave the file as it was. (The extension's
/// `--helper-socket` is only connected to, never created: a regular file there is a missing
/// helper, and the extension degrades; see `policy_too_large_for_a_frame_loads_by_path`.)
#[test]
fn socket_paths_naming_regular_files_are_refused_untouched() {
    if skip("socket_paths_naming_regular_files_are_refused_untouched") {
        return;
    }
    let scratch = Scratch::mount();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, policy_text(&scratch.join("secret"), "")).unwrap();
    let precious = dir.path().join("precious.txt");
    let content = b"an operator's file, mistyped as a socket path\n";
    std::fs::write(&precious, content).unwrap();

    let mut ext = Extension::start(
        dir.path(),
        &scratch.path,
        &policy,
        &precious,
        &dir.path().join("no-helper.sock"),
    );
    let st = ext
        .wait_exit(Duration::from_secs(30))
        .expect("the extension exits by itself");
    let log = std::fs::read_to_string(dir.path().join("extension.log")).unwrap();
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(log.contains("is not a socket"), "{log}");
    assert_eq!(std::fs::read(&precious).unwrap(), content, "file untouched");

    let out = run(
        30,
        "gatehouse-helper",
        &[os("--socket"), precious.as_os_str()],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("is not a socket"), "{t}");
    assert_eq!(std::fs::read(&precious).unwrap(), content, "file untouched");
}

/// A policy of `size` bytes or more: `base` plus comment lines.
fn padded(base: &str, size: usize) -> String {
    let mut s = base.to_owned();
    let line = format!("# {}\n", "padding ".repeat(12));
    while s.len() < size {
        s += &line;
    }
    s
}

#[test]
fn policy_too_large_for_a_frame_loads_by_path() {
    if skip("policy_too_large_for_a_frame_loads_by_path") {
        return;
    }
    let scratch = Scratch::mount();
    let dir = tempfile::tempdir().unwrap();
    let secret = scratch.join("secret.txt");
    std::fs::write(&secret, b"secret\n").unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, policy_text(&secret, "")).unwrap();
    // A regular file where the helper's socket should be: a missing helper (degraded start),
    // and the file is never touched.
    let helper = dir.path().join("helper.sock");
    std::fs::write(&helper, b"not a socket\n").unwrap();
    let ext = Extension::start(
        dir.path(),
        &scratch.path,
        &policy,
        &dir.path().join("control.sock"),
        &helper,
    );
    ext.wait_ready();
    let st = ext.status();
    assert_eq!(st["policy_version"], 1, "{st}");
    assert_eq!(st["helper_connected"], false, "{st}");
    assert_eq!(std::fs::read(&helper).unwrap(), b"not a socket\n");

    // ~3 MiB, by path on request: the extension reads it (origin: the absolute path).
    let big = dir.path().join("big.toml");
    std::fs::write(
        &big,
        padded(&policy_text(&secret, "# big\n"), 3 * 1024 * 1024),
    )
    .unwrap();
    let out = ext.ctl(&[os("policy"), os("load"), os("--by-path"), big.as_os_str()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("by path as policy version 2"),
        "{}",
        text(&out)
    );
    let st = ext.status();
    assert_eq!(st["policy_version"], 2, "{st}");
    assert_eq!(st["policy_origin"], big.display().to_string(), "{st}");
    // Still enforced: an unlisted process is denied the secret.
    let cat = Command::new("/bin/cat").arg(&secret).output().unwrap();
    assert!(!cat.status.success(), "enforced after the load by path");

    // Larger than a control frame (9 MiB): sent by path automatically.
    let huge = dir.path().join("huge.toml");
    std::fs::write(
        &huge,
        padded(
            &policy_text(&secret, "# huge\n"),
            protocol::CONTROL_MAX_FRAME as usize + 1024 * 1024,
        ),
    )
    .unwrap();
    let out = ext.ctl(&[os("policy"), os("load"), huge.as_os_str()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("by path (") && text(&out).contains("as policy version 3"),
        "{}",
        text(&out)
    );
    assert_eq!(ext.status()["policy_version"], 3);
    // Too large to show in one answer: a clear refusal, not a dropped connection.
    let out = ext.ctl(&[os("policy"), os("show")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("read the file it was loaded from"),
        "{}",
        text(&out)
    );

    // The extension's reader refuses what the CLI's does, at once, and nothing changes.
    let fifo = dir.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let sparse = dir.path().join("sparse.toml");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(POLICY_MAX + 1)
        .unwrap();
    let limit = format!("larger than {POLICY_MAX} bytes");
    // Longer than PATH_MAX: refused on its length (it would be echoed in every status).
    let long = PathBuf::from(format!("/{}/p.toml", "d/".repeat(2100)));
    for (file, want) in [
        (fifo.as_path(), "is a FIFO (named pipe), not a regular file"),
        (Path::new("/dev/zero"), "is a character device"),
        (sparse.as_path(), limit.as_str()),
        (long.as_path(), "over the 4096-byte limit"),
    ] {
        let start = Instant::now();
        let out = ext.ctl(&[os("policy"), os("load"), os("--by-path"), file.as_os_str()]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{t}");
        assert!(
            t.contains("the running policy is unchanged") && t.contains(want),
            "{t}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }
    assert_eq!(ext.status()["policy_version"], 3);
}

/// An executable whose name carries a newline, ESC sequences and a C1 CSI opens the protected
/// file; `events tail` shows the deny on one line with every control character escaped.
#[test]
fn events_tail_escapes_a_forged_executable_name() {
    if skip("events_tail_escapes_a_forged_executable_name") {
        return;
    }
    let scratch = Scratch::mount();
    let dir = tempfile::tempdir().unwrap();
    let secret = scratch.join("secret.txt");
    std::fs::write(&secret, b"secret\n").unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, policy_text(&secret, "")).unwrap();
    let ext = Extension::start(
        dir.path(),
        &scratch.path,
        &policy,
        &dir.path().join("control.sock"),
        &dir.path().join("no-helper.sock"),
    );
    ext.wait_ready();

    let forged = "cat\n0 open   allow pid 1 (login): rule trusted\u{1b}[2K\u{9b}1A";
    let bin = dir.path().join(forged);
    std::fs::copy("/bin/cat", &bin).unwrap();
    let out = Command::new(&bin)
        .arg(&secret)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the forged cat is denied");

    let mut human = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            human =
                String::from_utf8_lossy(&ext.ctl(&[os("events"), os("tail")]).stdout).into_owned();
            human.contains("inputs-secret")
        }),
        "the deny is in the tail: {human}"
    );
    let line = human.lines().find(|l| l.contains("inputs-secret")).unwrap();
    assert!(
        line.contains("cat\\n0 open   allow pid 1 (login): rule trusted\\e[2K\\u{9b}1A"),
        "{line:?}"
    );
    assert!(
        !human.chars().any(|c| c.is_control() && c != '\n'),
        "no raw control character: {human:?}"
    );
    assert!(
        !human.lines().any(|l| l.starts_with("0 open")),
        "no forged line: {human:?}"
    );
    let json = ext.ctl(&[os("events"), os("tail"), os("--json")]);
    let json = String::from_utf8_lossy(&json.stdout);
    assert!(
        !json.chars().any(|c| c.is_control() && c != '\n'),
        "--json escapes too: {json:?}"
    );
}
