//! `gatehouse run` and `gatehouse demo`: the Linux agent in the foreground.
//!
//! `run` starts `gatehouse-helper` first and `gatehouse-extension` second (the extension's
//! fanotify group is close-on-exec, and the helper never inherits it anyway because it exists
//! before the group does), prints the extension's status line and live deny/fallback lines
//! from the events log, and on Ctrl-C/SIGTERM stops the extension (which answers every pending
//! event, removes its marks and closes its group) and then the helper.
//!
//! `demo` does the same on a scratch tmpfs it mounts itself, with a policy that blocks one
//! binary by SHA-256 and protects one file, runs a short tour and cleans everything up.

use std::path::PathBuf;
#[cfg(not(target_os = "linux"))]
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy file; the embedded default (monitor mode, self-protection) when omitted.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Runtime directory for the helper and control sockets and, in the foreground, the
    /// events log.
    #[arg(long, default_value = "/run/gatehouse")]
    pub runtime_dir: PathBuf,
    /// Filesystems (any path on each) to authorize execs on; protected paths outside them are
    /// not marked. Repeatable.
    #[arg(long = "scope", default_value = "/")]
    pub scope: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the scratch directory's contents listing in the output (for debugging the demo).
    #[arg(long)]
    pub verbose: bool,
}

#[cfg(not(target_os = "linux"))]
pub fn run(_a: RunArgs) -> anyhow::Result<ExitCode> {
    println!(
        "gatehouse run: Linux only (on macOS the extension runs as a system extension: see `gatehouse extension activate`)"
    );
    Ok(ExitCode::FAILURE)
}

#[cfg(not(target_os = "linux"))]
pub fn demo(_a: DemoArgs) -> anyhow::Result<ExitCode> {
    println!("gatehouse demo: Linux only");
    Ok(ExitCode::FAILURE)
}

#[cfg(target_os = "linux")]
pub use linux::{demo, run};

#[cfg(target_os = "linux")]
mod linux {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitCode, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use anyhow::{Context, bail};
    use nix::sys::signal::{SigSet, Signal, kill};
    use nix::unistd::Pid;
    use sha2::Digest;

    use super::{DemoArgs, RunArgs};

    fn require_root(what: &str) -> Option<ExitCode> {
        if nix::unistd::geteuid().is_root() {
            return None;
        }
        println!(
            "gatehouse {what}: needs root (fanotify permission events need CAP_SYS_ADMIN); run it with sudo"
        );
        Some(ExitCode::FAILURE)
    }

    /// `gatehouse-helper` and `gatehouse-extension` next to this executable.
    fn sibling(name: &str) -> anyhow::Result<PathBuf> {
        let exe = std::env::current_exe().context("locating the gatehouse executable")?;
        let p = exe.with_file_name(name);
        if !p.is_file() {
            bail!(
                "{name} not found next to {} (expected {}); install all three binaries together",
                exe.display(),
                p.display()
            );
        }
        Ok(p)
    }

    /// A child killed (TERM, then KILL after a grace period) and reaped on drop.
    struct Proc {
        name: &'static str,
        child: Option<Child>,
    }

    impl Proc {
        fn alive(&mut self) -> bool {
            self.child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
        }

        fn stop(&mut self, grace: Duration) {
            let Some(mut c) = self.child.take() else {
                return;
            };
            let pid = Pid::from_raw(c.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let end = Instant::now() + grace;
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            println!(
                "gatehouse: {} did not stop within {grace:?}; killing it",
                self.name
            );
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    impl Drop for Proc {
        fn drop(&mut self) {
            self.stop(Duration::from_secs(10));
        }
    }

    /// Everything one foreground agent needs.
    struct Agent {
        // Field order = drop order: the extension stops before the helper.
        extension: Proc,
        helper: Proc,
        control_socket: PathBuf,
    }

    fn start_agent(
        policy: Option<&Path>,
        runtime: &Path,
        scope: &[PathBuf],
        events_log: PathBuf,
    ) -> anyhow::Result<Agent> {
        let helper_bin = sibling("gatehouse-helper")?;
        let ext_bin = sibling("gatehouse-extension")?;
        std::fs::create_dir_all(runtime)
            .with_context(|| format!("creating runtime directory {}", runtime.display()))?;
        std::fs::set_permissions(runtime, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .with_context(|| format!("securing {}", runtime.display()))?;
        let helper_socket = runtime.join("helper.sock");
        let control_socket = runtime.join("control.sock");
        // The helper first: it must never exist after (and so never inherit) the group.
        let helper = Proc {
            name: "gatehouse-helper",
            child: Some(
                Command::new(&helper_bin)
                    .arg("--socket")
                    .arg(&helper_socket)
                    .stdin(Stdio::null())
                    .spawn()
                    .with_context(|| format!("starting {}", helper_bin.display()))?,
            ),
        };
        let mut cmd = Command::new(&ext_bin);
        if let Some(p) = policy {
            cmd.arg("--policy").arg(p);
        }
        cmd.arg("--helper-socket")
            .arg(&helper_socket)
            .arg("--control-socket")
            .arg(&control_socket)
            .arg("--events-log")
            .arg(&events_log);
        for path in scope {
            cmd.arg("--scope").arg(path);
        }
        let extension = Proc {
            name: "gatehouse-extension",
            child: Some(
                cmd.stdin(Stdio::null())
                    .spawn()
                    .with_context(|| format!("starting {}", ext_bin.display()))?,
            ),
        };
        Ok(Agent {
            extension,
            helper,
            control_socket,
        })
    }

    /// Block the stop signals here (before any thread) and wait for them on a thread.
    fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(s);
        }
        set.thread_block().context("blocking SIGINT/SIGTERM")?;
        let flag = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&flag);
        std::thread::spawn(move || {
            if set.wait().is_ok() {
                f.store(true, Ordering::Release);
            }
        });
        Ok(flag)
    }

    /// Prints one line per deny, fallback or would-deny, from the extension's in-memory tail
    /// (over the control socket, never by opening the events log: see `EventFollower`).
    struct Tail(crate::control::EventFollower);

    impl Tail {
        fn new(control_socket: &Path) -> Self {
            Self(crate::control::EventFollower::new(control_socket, 1000))
        }

        /// Best effort: until the extension's control socket is up, there is nothing to print.
        fn poll(&mut self) {
            for line in self.0.poll().unwrap_or_default() {
                if let Some(s) = summarize(&line) {
                    println!("{s}");
                }
            }
        }
    }

    /// `deny exec /tmp/x by /bin/sh (pid 12): rule block-x` from one events-log line.
    fn summarize(line: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let kind = v.get("kind")?.as_str()?;
        let verdict = v.get("verdict")?.as_str()?;
        let reason = v.get("reason").and_then(|r| r.as_str()).unwrap_or("?");
        let detail = match reason {
            "rule" => v
                .pointer("/rule/name")
                .and_then(|r| r.as_str())
                .map(|n| format!("rule {n}"))
                .unwrap_or_else(|| "rule".into()),
            "fallback" => format!(
                "FALLBACK ({})",
                v.get("why").and_then(|w| w.as_str()).unwrap_or("?")
            ),
            other => other.to_owned(),
        };
        let label = if v.get("would_deny").and_then(|w| w.as_bool()) == Some(true) {
            "would-deny"
        } else {
            verdict
        };
        let ev = v.get("event")?;
        let target = ev
            .pointer("/target/executable/path")
            .or_else(|| ev.pointer("/file/path"))
            .and_then(|p| p.as_str())
            .unwrap_or("?");
        let by = ev
            .pointer("/process/executable/path")
            .and_then(|p| p.as_str())
            .unwrap_or("?");
        let pid = ev
            .pointer("/process/pid")
            .and_then(|p| p.as_u64())
            .unwrap_or(0);
        Some(format!(
            "{label:>10} {kind} {target} by {by} (pid {pid}): {detail}"
        ))
    }

    pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
        if let Some(code) = require_root("run") {
            return Ok(code);
        }
        if let Some(p) = &a.policy {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading policy {}", p.display()))?;
            policy::Policy::parse(&p.display().to_string(), &text)
                .map_err(|e| anyhow::anyhow!("invalid policy: {e}"))?;
        }
        let stop = stop_flag()?;
        let events_log = a.runtime_dir.join("events.jsonl");
        let mut agent = start_agent(a.policy.as_deref(), &a.runtime_dir, &a.scope, events_log)?;
        println!(
            "gatehouse: helper pid {}, extension pid {}; control socket {}; Ctrl-C stops both",
            agent.helper.child.as_ref().map_or(0, Child::id),
            agent.extension.child.as_ref().map_or(0, Child::id),
            agent.control_socket.display()
        );
        let mut tail = Tail::new(&agent.control_socket);
        let code = loop {
            std::thread::sleep(Duration::from_millis(100));
            tail.poll();
            if stop.load(Ordering::Acquire) {
                break ExitCode::SUCCESS;
            }
            if !agent.extension.alive() {
                println!("gatehouse: the extension exited; stopping the helper");
                break ExitCode::FAILURE;
            }
            if !agent.helper.alive() {
                // The extension degrades (fallbacks) without it; restart it in place.
                println!("gatehouse: the helper exited; restarting it");
                let sock = a.runtime_dir.join("helper.sock");
                let bin = sibling("gatehouse-helper")?;
                agent.helper.child = Some(
                    Command::new(&bin)
                        .arg("--socket")
                        .arg(&sock)
                        .stdin(Stdio::null())
                        .spawn()
                        .with_context(|| format!("restarting {}", bin.display()))?,
                );
            }
        };
        agent.extension.stop(Duration::from_secs(10));
        agent.helper.stop(Duration::from_secs(5));
        tail.poll();
        println!("gatehouse: stopped");
        Ok(code)
    }

    /// The demo's scratch tmpfs: unmounted and removed on drop.
    struct ScratchMount {
        path: PathBuf,
    }

    impl Drop for ScratchMount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&self.path);
        }
    }

    fn sha256_file(p: &Path) -> anyhow::Result<String> {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        Ok(model::Sha256(sha2::Sha256::digest(&bytes).into()).to_hex())
    }

    /// Run one demo step. A kernel refusal of the exec itself (EPERM from `execve`) is an
    /// `Err` carrying that `io::Error`, printed like any other outcome.
    fn step(what: &str, cmd: &mut Command) -> std::io::Result<std::process::Output> {
        let out = match cmd.stdin(Stdio::null()).output() {
            Ok(o) => o,
            Err(e) => {
                println!("  $ {what}\n    -> refused: {e}");
                return Err(e);
            }
        };
        let err = String::from_utf8_lossy(&out.stderr);
        let text = String::from_utf8_lossy(&out.stdout);
        println!(
            "  $ {what}\n    -> {} {}{}",
            if out.status.success() { "ok" } else { "FAILED" },
            text.trim(),
            err.trim()
        );
        Ok(out)
    }

    fn demo_policy(blocked_sha: &str, allowed: &[String], secret: &Path, reader: &Path) -> String {
        let allow_rules: String = allowed
            .iter()
            .enumerate()
            .map(|(i, sha)| {
                format!("\n[[exec]]\nname = \"demo-allow-{i}\"\naction = \"allow\"\nsha256 = \"{sha}\"\n")
            })
            .collect();
        format!(
            r#"# gatehouse demo policy: enforce mode, marked on the demo's scratch filesystem only.
version = 1
mode = "enforce"

[defaults]
fallback = "allow"
helper_unavailable = "allow"
deadline_ms = 2000

[[exec]]
name = "demo-block-by-sha256"
action = "block"
sha256 = "{blocked_sha}"
message = "blocked by the Gatehouse demo"

[[watch]]
name = "demo-secret"
paths = [{{ path = "{secret}" }}]
operations = ["open"]
audit_only = false
processes = [{{ binary_path = "{reader}" }}]
{allow_rules}"#,
            secret = secret.display(),
            reader = reader.display()
        )
    }

    pub fn demo(a: DemoArgs) -> anyhow::Result<ExitCode> {
        if let Some(code) = require_root("demo") {
            return Ok(code);
        }
        let stop = stop_flag()?;
        let dir = std::env::temp_dir().join(format!("gatehouse-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).context("creating the demo directory")?;
        nix::mount::mount(
            Some("gatehouse-demo"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("size=64m,mode=0755"),
        )
        .context("mounting the demo tmpfs")?;
        let scratch = ScratchMount { path: dir.clone() };
        println!("gatehouse demo: scratch tmpfs at {}", dir.display());

        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin)?;
        let blocked = bin.join("blocked-echo");
        let allowed = bin.join("allowed-true");
        let reader = bin.join("trusted-cat");
        std::fs::copy("/bin/echo", &blocked).context("copying /bin/echo")?;
        std::fs::copy("/bin/true", &allowed).context("copying /bin/true")?;
        std::fs::copy("/bin/cat", &reader).context("copying /bin/cat")?;
        let secret = dir.join("secret.txt");
        std::fs::write(&secret, "the demo's protected secret\n")?;
        let policy_path = dir.join("policy.toml");
        std::fs::write(
            &policy_path,
            demo_policy(
                &sha256_file(&blocked)?,
                &[sha256_file(&allowed)?, sha256_file(&reader)?],
                &secret,
                &reader,
            ),
        )?;
        println!(
            "gatehouse demo: policy blocks {} by SHA-256 and lets only {} open {}",
            blocked.display(),
            reader.display(),
            secret.display()
        );

        let runtime = dir.join("run");
        let mut agent = start_agent(
            Some(&policy_path),
            &runtime,
            std::slice::from_ref(&dir),
            runtime.join("events.jsonl"),
        )?;
        // Wait for the control socket: the extension is up and its marks are in place.
        let end = Instant::now() + Duration::from_secs(15);
        while !agent.control_socket.exists() && Instant::now() < end && agent.extension.alive() {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        if !agent.extension.alive() {
            bail!("the extension exited during start-up (see its output above)");
        }

        let gatehouse = std::env::current_exe()?;
        let mut ok = true;
        if !stop.load(Ordering::Acquire) {
            println!("\n1. exec of the blocked binary (expect EPERM):");
            let o = step(
                &format!("{} hello", blocked.display()),
                Command::new(&blocked).arg("hello"),
            );
            ok &= match &o {
                Ok(o) => !o.status.success(),
                Err(e) => e.raw_os_error() == Some(nix::errno::Errno::EPERM as i32),
            };
            println!("\n2. exec of an allowed binary (expect success):");
            let o = step(&allowed.display().to_string(), &mut Command::new(&allowed));
            ok &= matches!(&o, Ok(o) if o.status.success());
            println!("\n3. open of the protected file by an unlisted process (expect EPERM):");
            let o = step(
                &format!("/bin/cat {}", secret.display()),
                Command::new("/bin/cat").arg(&secret),
            );
            ok &= matches!(&o, Ok(o) if !o.status.success());
            println!("\n4. open of the protected file by the allowed process (expect success):");
            let o = step(
                &format!("{} {}", reader.display(), secret.display()),
                Command::new(&reader).arg(&secret),
            );
            ok &= matches!(&o, Ok(o) if o.status.success());
            println!("\n5. stats:");
            let _ = Command::new(&gatehouse)
                .arg("stats")
                .arg("--control-socket")
                .arg(&agent.control_socket)
                .status();
            println!("\n6. events log:");
            let mut tail = Tail::new(&agent.control_socket);
            tail.poll();
        }
        if a.verbose {
            for e in std::fs::read_dir(&bin)?.flatten() {
                println!("  {}", e.path().display());
            }
        }
        agent.extension.stop(Duration::from_secs(10));
        agent.helper.stop(Duration::from_secs(5));
        drop(agent);
        drop(scratch);
        println!(
            "\ngatehouse demo: {}; scratch tmpfs unmounted",
            if ok {
                "every step behaved as expected"
            } else {
                "SOME STEPS DID NOT BEHAVE AS EXPECTED"
            }
        );
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}
