//! Shared helpers for the end-to-end tests in `tests/tests/`: locating the built binaries,
//! root and kernel-feature checks with clear skip reasons, and process cleanup by pid.
//!
//! The API is deliberately small:
//! - [`binary`]: path of a workspace binary (`gatehouse`, `gatehouse-helper`, ...).
//! - [`is_root`], [`have_command`], [`skip`]: checks and the skip message format.
//! - [`ChildGuard`]: a spawned process killed (SIGKILL, by its own pid) and reaped on drop.
//! - [`wait_until`]: poll a condition with a deadline.
//! - [`MountGuard`] (Linux): a filesystem this test mounted, lazily unmounted on drop.
//! - [`run_extension_from_env`] (Linux): a child-process entry running the real backend.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The built binary `name` in this workspace's target directory (the one holding the running
/// test executable, `target/<profile>/deps/`). Panics with what to do when it is missing:
/// cargo does not build other packages' binaries for a test, so `cargo build --workspace --bins`
/// must run first (scripts/ and CI do).
/// Run the real `gatehouse` CLI with `args` and wait for it.
pub fn gatehouse(args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary("gatehouse"))
        .args(args)
        .output()
        .expect("run gatehouse")
}

/// A finished command's stdout then stderr, for assertion messages and text checks.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("locating the running test executable");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` before the end-to-end tests",
        path.display()
    );
    path
}

/// Whether this process runs as root (uid 0).
#[cfg(unix)]
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether `name` is an executable on `PATH`.
pub fn have_command(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
}

/// Print why a test did not run. Tests call it and return early; CI runs as root, where the
/// root-only tests do run.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIP {test}: {reason}");
}

/// Poll `cond` every 10 ms until it is true or `timeout` passes; returns its last value.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process that is killed by its own pid and reaped when the guard drops, so a failing
/// test never leaves it running.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Spawn `cmd`; panics with the program name if it cannot start.
    pub fn spawn(cmd: &mut Command) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        Self { child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Wait up to `timeout` for the process to exit by itself; returns its status if it did.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let end = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                _ => return None,
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill signals exactly this pid (SIGKILL); wait reaps it so the pid is not
            // reused while we still name it.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A filesystem mounted by a test, detached on drop even if the test fails.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
}

#[cfg(target_os = "linux")]
impl MountGuard {
    /// Mount a `size`-limited tmpfs at `target` (root only).
    pub fn tmpfs(target: &std::path::Path, size: &str) -> nix::Result<Self> {
        use nix::mount::{MsFlags, mount};
        let opts = format!("size={size},mode=0755");
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )?;
        Ok(Self {
            target: target.to_owned(),
        })
    }
}

#[cfg(target_os = "linux")]
impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Child-process entry point that runs the real Linux backend and core
/// (`es_extension::sys::linux::run`, what `gatehouse-extension` runs) in this process, scoped to
/// the scratch filesystem the parent mounted. Configured from the environment: `GH_SCRATCH`
/// (scope), `GH_POLICY`, `GH_EVENTS_LOG`, and optionally `GH_HELPER_SOCK`. Stops cleanly when
/// stdin reaches EOF (the parent closes it), and the parent's kill guard covers the rest.
#[cfg(target_os = "linux")]
pub fn run_extension_from_env() {
    use nix::sys::signal::Signal;
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let scratch = PathBuf::from(env("GH_SCRATCH"));
    let text = std::fs::read_to_string(env("GH_POLICY")).expect("policy file");
    let policy = policy::Policy::parse(&env("GH_POLICY"), &text).expect("valid policy");
    let mut config = es_extension::core::CoreConfig::fanotify();
    config.helper_socket = std::env::var_os("GH_HELPER_SOCK").map(PathBuf::from);
    config.events_log = Some(PathBuf::from(env("GH_EVENTS_LOG")));
    let opts = es_extension::sys::linux::LinuxOptions {
        scope: vec![scratch],
        ..Default::default()
    };
    // Stop on stdin EOF with a SIGTERM directed at this thread, which `run` turns into a
    // sigwait: a process-directed one could land on a thread of the test harness that does not
    // block it, and kill the process instead of stopping it cleanly.
    let me = nix::sys::pthread::pthread_self();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        let _ = nix::sys::pthread::pthread_kill(me, Signal::SIGTERM);
    });
    es_extension::sys::linux::run(config, policy, opts).expect("gatehouse backend");
}
