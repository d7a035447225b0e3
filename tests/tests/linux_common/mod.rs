//! Private helpers for the Linux fanotify tests: skip reasons, a scratch tmpfs that is always
//! unmounted, and child-process guards that always SIGKILL and reap.
//!
//! Safety rules (docs/DESIGN.md "Testing fanotify safely"): only a tmpfs this test mounted itself is
//! ever marked; every process holding a fanotify group is a child with a hard kill timer (the
//! guard's Drop, the child's own `alarm`, and `PR_SET_PDEATHSIG`).
#![allow(
    dead_code,
    reason = "each test file uses a different subset of these helpers"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (fanotify permission events need CAP_SYS_ADMIN)".into());
    }
    if let Err(e) = es_extension::sys::linux::fanotify::probe() {
        return Some(format!("fanotify permission events unavailable: {e}"));
    }
    None
}

/// Print the skip reason and return true when the test must not run.
pub fn skip(test: &str) -> bool {
    match skip_reason() {
        Some(why) => {
            eprintln!("SKIP {test}: {why}");
            true
        }
        None => false,
    }
}

/// A tmpfs mounted on a fresh temp directory; unmounted (lazily, so a busy mount still goes)
/// and removed on drop, whatever happened.
#[derive(Debug)]
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    pub path: PathBuf,
}

impl Scratch {
    pub fn mount() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-test-")
            .tempdir()
            .expect("create scratch mount point");
        let path = dir.path().to_owned();
        nix::mount::mount(
            Some("gatehouse-test"),
            &path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("size=64m,mode=0755"),
        )
        .expect("mount scratch tmpfs");
        Scratch {
            dir: Some(dir),
            path,
        }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, MntFlags::MNT_DETACH);
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}

/// A child process that is SIGKILLed and reaped when dropped, and whose stdout lines arrive on
/// a channel so the parent can wait for them with a timeout.
#[derive(Debug)]
pub struct Guarded {
    pub child: Option<Child>,
    pub lines: mpsc::Receiver<String>,
    pub name: String,
}

impl Guarded {
    /// Spawn `cmd` with piped stdout (and stdin, so the parent can close it to ask for a clean
    /// stop).
    pub fn spawn(name: &str, mut cmd: Command) -> Guarded {
        cmd.stdout(Stdio::piped()).stdin(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Guarded {
            child: Some(child),
            lines: rx,
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    /// Wait for a stdout line containing `prefix`; returns the line from `prefix` on (libtest
    /// prints `test name ... ` without a newline before a child's first line).
    pub fn wait_line(&self, prefix: &str, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(i) = l.find(prefix) {
                        return Some(l[i..].to_owned());
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Close the child's stdin (the children here treat that as "stop cleanly").
    pub fn close_stdin(&mut self) {
        if let Some(c) = self.child.as_mut() {
            drop(c.stdin.take());
        }
    }

    /// Wait up to `timeout` for exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        wait_timeout(c, timeout)
    }

    pub fn signal(&self, sig: Signal) {
        if let Some(c) = self.child.as_ref() {
            let _ = kill(Pid::from_raw(c.id() as i32), sig);
        }
    }

    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
        c.wait().ok()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// `try_wait` in a loop until `timeout`.
pub fn wait_timeout(c: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lower-case SHA-256 of a file from `sha256sum`: an independent implementation, so a policy
/// rule written with it checks the helper's hashing too.
pub fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

/// A child of the test process only: dies with SIGKILL if the test thread dies, and by alarm
/// after `secs` whatever happens.
pub fn arm_child_timers(secs: u32) {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    nix::unistd::alarm::set(secs);
}

/// Re-run this test binary as a child executing the ignored test `entry` with `mode`.
pub fn child_command(entry: &str, mode: &str, scratch: &Path) -> Command {
    let exe = std::env::current_exe().expect("current test binary");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--ignored",
        "--exact",
        entry,
        "--nocapture",
        "--test-threads=1",
    ])
    .env("GH_CHILD_MODE", mode)
    .env("GH_SCRATCH", scratch);
    cmd
}

/// A shell command run as an "opener" process (never the test process itself: an opener can
/// block until the group is released).
pub fn opener(script: &str) -> Child {
    Command::new("/bin/sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn opener")
}

/// A process guard for openers: SIGKILL and reap on drop.
#[derive(Debug)]
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_timeout(self.0.as_mut()?, timeout)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An enforce-mode policy with one watch item named `name` guarding opens of `secret` against
/// every process but a nonexistent trusted reader (fallbacks allow), plus `extra` TOML.
pub fn watch_policy(name: &str, secret: &Path, audit_only: bool, extra: &str) -> String {
    format!(
        r#"version = 1
mode = "enforce"

[defaults]
fallback = "allow"
helper_unavailable = "allow"
deadline_ms = 2000

[[watch]]
name = "{name}"
paths = [{{ path = "{}" }}]
operations = ["open"]
audit_only = {audit_only}
processes = [{{ binary_path = "/nonexistent/trusted-reader" }}]
{extra}"#,
        secret.display()
    )
}

/// Hard limit, in seconds, on any agent process group a test starts.
pub const HARD_KILL_SECS: &str = "120";

/// `timeout -s KILL 120 gatehouse ARGS` (a `gatehouse run`, `demo`, `events tail --follow`) in
/// its own process group, SIGKILLed as a group by its own pgid on drop, so the helper and
/// extension it started go with it.
pub struct Group {
    /// The `timeout` leader, for waiting on its output lines.
    pub g: Guarded,
    /// The group's id (its leader's pid), for finding what it spawned.
    pub pgid: Pid,
}

impl Group {
    /// `name` labels the child in logs and failures.
    pub fn spawn(name: &str, args: &[&std::ffi::OsStr]) -> Group {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("timeout");
        cmd.args(["-s", "KILL", HARD_KILL_SECS])
            .arg(tests::binary("gatehouse"))
            .args(args)
            .stderr(Stdio::inherit())
            .process_group(0);
        let g = Guarded::spawn(name, cmd);
        let pgid = Pid::from_raw(g.pid());
        Group { g, pgid }
    }

    /// Ctrl-C as a terminal sends it: SIGINT to the whole foreground group.
    pub fn interrupt(&self) {
        let _ = nix::sys::signal::killpg(self.pgid, Signal::SIGINT);
    }

    /// Waits (30 s at most) for the extension to report its fanotify group on one filesystem;
    /// fails the test otherwise.
    pub fn wait_extension_up(&self) {
        assert!(
            self.g
                .wait_line(
                    "gatehouse-extension: fanotify on 1 filesystem",
                    Duration::from_secs(30)
                )
                .is_some(),
            "the extension came up"
        );
    }

    /// SIGKILL the whole group (no clean stop: what is persisted must not depend on one) and
    /// reap the leader.
    pub fn kill(mut self) {
        let _ = nix::sys::signal::killpg(self.pgid, Signal::SIGKILL);
        let _ = self.g.wait_exit(Duration::from_secs(10));
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(self.pgid, Signal::SIGKILL);
    }
}

/// One `gatehouse ARGS` under a 30 s kill timer, its output echoed for the test log.
pub fn gatehouse(args: &[&str]) -> std::process::Output {
    let out = Command::new("timeout")
        .args(["-s", "KILL", "30"])
        .arg(tests::binary("gatehouse"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run gatehouse");
    eprintln!(
        "$ gatehouse {} -> {:?}\n{}{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
