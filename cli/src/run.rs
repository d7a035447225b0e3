//! `gatehouse run` and `gatehouse demo`: the Linux agent in the foreground, supervised.
//!
//! `run` is a supervisor that is not the extension. It starts `gatehouse-helper` first and
//! `gatehouse-extension` second (the extension's fanotify group is close-on-exec, and only this
//! process ever spawns the helper, so the helper never inherits the group, restarts included).
//! It gives the extension a `NOTIFY_SOCKET` of its own and `WATCHDOG_USEC`, SIGKILLs an
//! extension that misses its watchdog (the kernel then allows everything pending, so a
//! SIGSTOPped extension holds openers for at most the watchdog interval) and restarts a dead
//! extension or helper with bounded backoff. SIGHUP is forwarded to the extension (a policy
//! reload); Ctrl-C/SIGTERM stop the extension (which answers every pending event, removes its
//! marks and closes its group) and then the helper.
//!
//! `demo` starts the same pair on a scratch tmpfs it mounts in a private mount namespace, with a
//! policy that blocks one binary by SHA-256 and protects one file, and runs a short tour: a block,
//! an allow, a protected file, then the scenario the product exists for. The helper is SIGSTOPped
//! while execs that need it keep arriving (each answered with the policy's fallback by the
//! extension's watchdog, then at once when the breaker opens), SIGKILLed and restarted while the
//! extension keeps running, and analysis works again. It ends with a short summary from the
//! extension's counters and cleans everything up. The children's own log lines stay out of the
//! narrative unless `--verbose` asks for them (they are shown on stderr if the demo fails).
//!
//! Dying with the parent: children get `GATEHOUSE_PARENT_PID` and set `PR_SET_PDEATHSIG`
//! (SIGKILL) themselves, so a SIGKILLed or crashed CLI leaves no helper or extension behind.
//! The death signal follows the thread that forked, so every child is spawned from the main
//! thread, which lives as long as the process. The demo's mount lives in a mount namespace of
//! its own, which the kernel tears down (mount included) when the last process in it dies.
//!
//! Output never blocks or panics: every line goes through a bounded queue to one printer
//! thread; a closed stdout (EPIPE, e.g. `| head`) is noted, `demo` then winds down early and
//! cleans up, and `run` keeps supervising (its protection must not end with a pager).

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
    /// Watchdog interval: an extension that sends no heartbeat for this long (stopped, stuck)
    /// is killed, which releases every opener it holds, and restarted. It beats at half this
    /// interval. 0 disables the watchdog.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub watchdog_ms: u64,
    /// The runtime mutes file the extension restores at start and rewrites on every
    /// `gatehouse mute add|remove`.
    #[arg(long, value_name = "PATH", default_value = defaults::Os::HOST.mutes_file())]
    pub mutes_file: PathBuf,
    /// The transitive allows file the extension restores at start and rewrites as compiler
    /// processes' files are allowed and on `gatehouse rule transitive clear`.
    #[arg(long, value_name = "PATH", default_value = defaults::Os::HOST.transitive_file())]
    pub transitive_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Also show the helper's and the extension's own log lines, inline and tagged (without
    /// it they are kept back, and shown on stderr only if the demo fails).
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
    use std::io::{BufRead, BufReader, IoSliceMut, Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
    use std::sync::{Arc, OnceLock};
    use std::time::{Duration, Instant};

    use anyhow::{Context, bail};
    use nix::sys::signal::{SigSet, Signal, kill};
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg};
    use nix::unistd::Pid;
    use sha2::Digest;

    use super::{DemoArgs, RunArgs};

    /// What the children read to die with us (see the module docs).
    const PARENT_ENV: &str = "GATEHOUSE_PARENT_PID";
    /// Lines waiting for the printer; more are dropped (and counted) rather than block.
    const OUT_QUEUE: usize = 1024;
    /// How often the supervisor looks at its children and the notify socket.
    const TICK: Duration = Duration::from_millis(20);
    /// Before its first heartbeat the extension gets this long (start-up, marks).
    const START_GRACE: Duration = Duration::from_secs(15);
    /// After `STOPPING=1` the extension gets this long to finish a clean stop.
    const STOP_GRACE: Duration = Duration::from_secs(15);
    /// Restart backoff: doubles from MIN up to MAX; back to MIN after RESET of uptime.
    const BACKOFF_MIN: Duration = Duration::from_millis(100);
    const BACKOFF_MAX: Duration = Duration::from_secs(5);
    const BACKOFF_RESET: Duration = Duration::from_secs(30);
    /// Give up after this many extension starts in a row that never became ready.
    const MAX_FAILED_STARTS: u32 = 5;

    // ---- Output ---------------------------------------------------------------------------

    enum Line {
        Text(String),
        Flush(SyncSender<()>),
    }

    struct Printer {
        tx: SyncSender<Line>,
        dropped: AtomicU64,
        gone: Arc<AtomicBool>,
    }

    static OUT: OnceLock<Printer> = OnceLock::new();

    fn printer() -> &'static Printer {
        OUT.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Line>(OUT_QUEUE);
            let gone = Arc::new(AtomicBool::new(false));
            let g = Arc::clone(&gone);
            // If the thread cannot start, lines are dropped: output is never worth failing.
            let _ = std::thread::Builder::new()
                .name("stdout".into())
                .spawn(move || print_loop(&rx, &g));
            Printer {
                tx,
                dropped: AtomicU64::new(0),
                gone,
            }
        })
    }

    fn print_loop(rx: &Receiver<Line>, gone: &AtomicBool) {
        let mut out = std::io::stdout();
        for line in rx {
            match line {
                Line::Text(t) => {
                    if !gone.load(Ordering::Acquire)
                        && writeln!(out, "{t}").and_then(|()| out.flush()).is_err()
                    {
                        gone.store(true, Ordering::Release);
                    }
                }
                Line::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Print one line on stdout without blocking; dropped (and counted) when the printer is
    /// behind, silently discarded once stdout is closed.
    fn say(text: impl Into<String>) {
        let p = printer();
        if let Err(TrySendError::Full(_)) = p.tx.try_send(Line::Text(text.into())) {
            p.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether stdout was found closed (EPIPE).
    fn stdout_gone() -> bool {
        printer().gone.load(Ordering::Acquire)
    }

    /// Wait up to `limit` for the lines queued so far to be written.
    fn flush_output(limit: Duration) {
        let p = printer();
        let dropped = p.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            eprintln!("gatehouse: {dropped} output line(s) dropped: stdout was not keeping up");
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let end = Instant::now() + limit;
        let mut msg = Line::Flush(tx);
        loop {
            match p.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < end => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = rx.recv_timeout(end.saturating_duration_since(Instant::now()));
    }

    /// Lines of the children's own output `gatehouse demo` keeps for a failure report.
    const CAPTURE_LINES: usize = 400;

    /// Where a child's own output (its stdout and stderr) goes.
    #[derive(Clone)]
    enum ChildOutput {
        /// `run`: stdout through the printer, stderr inherited (the service's own log).
        Forward,
        /// `demo --verbose`: both through the printer, each line tagged with the child's name,
        /// so they interleave with the narrative in the order they happened.
        Tagged,
        /// `demo`: both kept in memory (the last [`CAPTURE_LINES`]) and shown on stderr only
        /// when the demo fails, so the narrative reads on its own.
        Capture(Arc<Capture>),
    }

    /// The children's output kept by `gatehouse demo` (see [`ChildOutput::Capture`]).
    #[derive(Default)]
    struct Capture {
        lines: std::sync::Mutex<std::collections::VecDeque<String>>,
        dropped: AtomicU64,
    }

    impl Capture {
        fn push(&self, line: String) {
            let mut l = self
                .lines
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if l.len() >= CAPTURE_LINES {
                l.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            l.push_back(line);
        }

        /// Write what was kept to stderr (best effort: a closed stderr is ignored).
        fn dump(&self) {
            let lines = std::mem::take(
                &mut *self
                    .lines
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if lines.is_empty() {
                return;
            }
            let mut err = std::io::stderr().lock();
            let dropped = self.dropped.load(Ordering::Relaxed);
            let _ = writeln!(
                err,
                "gatehouse demo: the helper's and the extension's own log lines{}:",
                if dropped > 0 {
                    format!(" (the last {CAPTURE_LINES}; {dropped} earlier ones not kept)")
                } else {
                    String::new()
                }
            );
            for l in lines {
                let _ = writeln!(err, "  {l}");
            }
        }
    }

    /// Read a child's output line by line on a thread of its own and send it where `to` says
    /// (through [`say`], so the child never writes to a closed or stalled stdout of ours).
    /// Ends at the child's EOF.
    fn pump(out: impl Read + Send + 'static, tag: &'static str, to: ChildOutput) {
        let _ = std::thread::Builder::new()
            .name("child-output".into())
            .spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    match &to {
                        ChildOutput::Forward => say(line),
                        ChildOutput::Tagged => say(format!("  [{tag}] {line}")),
                        ChildOutput::Capture(c) => c.push(format!("[{tag}] {line}")),
                    }
                }
            });
    }

    // ---- Children -------------------------------------------------------------------------

    fn require_root(what: &str) -> Option<ExitCode> {
        if nix::unistd::geteuid().is_root() {
            return None;
        }
        say(format!(
            "gatehouse {what}: needs root (fanotify permission events need CAP_SYS_ADMIN); run it with sudo"
        ));
        flush_output(Duration::from_secs(1));
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
        started: Instant,
    }

    impl Proc {
        /// Spawn `cmd` as a supervised child. Main thread only (see the module docs).
        fn spawn(
            name: &'static str,
            mut cmd: Command,
            output: &ChildOutput,
        ) -> anyhow::Result<Proc> {
            cmd.env(PARENT_ENV, std::process::id().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped());
            if !matches!(output, ChildOutput::Forward) {
                cmd.stderr(Stdio::piped());
            }
            let mut child = cmd
                .spawn()
                .with_context(|| format!("starting {:?}", cmd.get_program()))?;
            let tag = name.strip_prefix("gatehouse-").unwrap_or(name);
            if let Some(out) = child.stdout.take() {
                pump(out, tag, output.clone());
            }
            if let Some(err) = child.stderr.take() {
                pump(err, tag, output.clone());
            }
            Ok(Proc {
                name,
                child: Some(child),
                started: Instant::now(),
            })
        }

        fn pid(&self) -> Option<Pid> {
            self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
        }

        /// The exit status, once it has exited (reaped).
        fn exited(&mut self) -> Option<ExitStatus> {
            let st = self.child.as_mut()?.try_wait().ok().flatten()?;
            self.child = None;
            Some(st)
        }

        fn signal(&self, sig: Signal) {
            if let Some(pid) = self.pid() {
                let _ = kill(pid, sig);
            }
        }

        /// SIGKILL and reap at once.
        fn kill_now(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        fn stop(&mut self, grace: Duration) {
            let Some(mut c) = self.child.take() else {
                return;
            };
            let pid = Pid::from_raw(c.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            // A stopped process cannot act on SIGTERM.
            let _ = kill(pid, Signal::SIGCONT);
            let end = Instant::now() + grace;
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            say(format!(
                "gatehouse: {} did not stop within {grace:?}; killing it",
                self.name
            ));
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    impl Drop for Proc {
        fn drop(&mut self) {
            self.stop(Duration::from_secs(10));
        }
    }

    /// How to start the pair (kept for restarts).
    struct Spec {
        helper_bin: PathBuf,
        ext_bin: PathBuf,
        policy: Option<PathBuf>,
        scope: Vec<PathBuf>,
        helper_socket: PathBuf,
        control_socket: PathBuf,
        notify_socket: PathBuf,
        events_log: PathBuf,
        watchdog: Option<Duration>,
        /// `gatehouse run`'s `--mutes-file`; the demo keeps its own in its scratch directory.
        mutes_file: PathBuf,
        /// Where the children's own output goes.
        output: ChildOutput,
        /// `gatehouse run`'s `--transitive-file`; the demo keeps its own likewise.
        transitive_file: PathBuf,
    }

    impl Spec {
        fn new(
            policy: Option<&Path>,
            runtime: &Path,
            scope: &[PathBuf],
            events_log: PathBuf,
            watchdog: Option<Duration>,
        ) -> anyhow::Result<Spec> {
            let helper_bin = sibling("gatehouse-helper")?;
            let ext_bin = sibling("gatehouse-extension")?;
            std::fs::create_dir_all(runtime)
                .with_context(|| format!("creating runtime directory {}", runtime.display()))?;
            std::fs::set_permissions(runtime, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .with_context(|| format!("securing {}", runtime.display()))?;
            Ok(Spec {
                helper_bin,
                ext_bin,
                policy: policy.map(Path::to_owned),
                scope: scope.to_vec(),
                helper_socket: runtime.join("helper.sock"),
                control_socket: runtime.join("control.sock"),
                notify_socket: runtime.join("extension.notify"),
                events_log,
                watchdog,
                mutes_file: runtime.join("mutes.toml"),
                output: ChildOutput::Forward,
                transitive_file: runtime.join("transitive.json"),
            })
        }

        fn helper(&self) -> anyhow::Result<Proc> {
            let mut cmd = Command::new(&self.helper_bin);
            cmd.arg("--socket").arg(&self.helper_socket);
            // Ours to supervise, not a service manager's.
            for k in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
                cmd.env_remove(k);
            }
            Proc::spawn("gatehouse-helper", cmd, &self.output)
        }

        fn extension(&self) -> anyhow::Result<Proc> {
            let mut cmd = Command::new(&self.ext_bin);
            if let Some(p) = &self.policy {
                cmd.arg("--policy").arg(p);
            }
            cmd.arg("--helper-socket")
                .arg(&self.helper_socket)
                .arg("--control-socket")
                .arg(&self.control_socket)
                .arg("--events-log")
                .arg(&self.events_log)
                .arg("--mutes-file")
                .arg(&self.mutes_file)
                .arg("--transitive-file")
                .arg(&self.transitive_file);
            for path in &self.scope {
                cmd.arg("--scope").arg(path);
            }
            // WATCHDOG_PID is left unset (the child's pid is not known before the spawn), which
            // sd_watchdog_enabled(3) reads as "this process".
            cmd.env("NOTIFY_SOCKET", &self.notify_socket)
                .env_remove("WATCHDOG_PID");
            match self.watchdog {
                Some(w) => cmd.env("WATCHDOG_USEC", w.as_micros().to_string()),
                None => cmd.env_remove("WATCHDOG_USEC"),
            };
            Proc::spawn("gatehouse-extension", cmd, &self.output)
        }
    }

    // ---- Notifications --------------------------------------------------------------------

    /// The datagram socket the extension's sd_notify messages arrive on. Each datagram carries
    /// the sender's kernel credentials (`SO_PASSCRED`): only the extension's own pid counts, as
    /// with systemd's `NotifyAccess=main`.
    struct NotifySocket {
        sock: UnixDatagram,
        path: PathBuf,
    }

    impl NotifySocket {
        fn bind(path: &Path) -> anyhow::Result<NotifySocket> {
            let _ = std::fs::remove_file(path);
            let sock = UnixDatagram::bind(path)
                .with_context(|| format!("binding the notify socket {}", path.display()))?;
            sock.set_nonblocking(true)
                .context("making the notify socket non-blocking")?;
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true)
                .context("SO_PASSCRED on the notify socket")?;
            Ok(NotifySocket {
                sock,
                path: path.to_owned(),
            })
        }

        /// Wait up to `timeout` for datagrams; returns each as (sender pid, text).
        fn recv(&self, timeout: Duration) -> Vec<(Option<i32>, String)> {
            use std::os::fd::AsFd;
            let mut fds = [nix::poll::PollFd::new(
                self.sock.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
            if !matches!(nix::poll::poll(&mut fds, ms), Ok(n) if n > 0) {
                return Vec::new();
            }
            let mut got = Vec::new();
            // Bounded per call: a flood cannot keep the supervisor from its other duties.
            for _ in 0..64 {
                let mut buf = [0u8; 4096];
                let mut iov = [IoSliceMut::new(&mut buf)];
                let mut cmsg = nix::cmsg_space!(UnixCredentials);
                let Ok(msg) = recvmsg::<()>(
                    self.sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT,
                ) else {
                    break;
                };
                let pid = msg.cmsgs().ok().and_then(|mut c| {
                    c.find_map(|m| match m {
                        ControlMessageOwned::ScmCredentials(cr) => Some(cr.pid()),
                        _ => None,
                    })
                });
                let len = msg.bytes;
                got.push((pid, String::from_utf8_lossy(&buf[..len]).into_owned()));
            }
            got
        }
    }

    impl Drop for NotifySocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// What one notification asks of the supervisor.
    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
    struct Notice {
        ready: bool,
        watchdog: bool,
        stopping: bool,
        reloading: bool,
    }

    /// sd_notify(3): newline-separated `KEY=VALUE` assignments.
    fn parse_notice(text: &str) -> Notice {
        let mut n = Notice::default();
        for l in text.lines() {
            match l.trim() {
                "READY=1" => n.ready = true,
                "WATCHDOG=1" => n.watchdog = true,
                "STOPPING=1" => n.stopping = true,
                "RELOADING=1" => n.reloading = true,
                _ => {}
            }
        }
        n
    }

    /// Next restart delay: doubling from [`BACKOFF_MIN`] up to [`BACKOFF_MAX`], back to the
    /// minimum when the process had been up for [`BACKOFF_RESET`].
    fn next_backoff(prev: Option<Duration>, uptime: Duration) -> Duration {
        match prev {
            Some(p) if uptime < BACKOFF_RESET => (p * 2).min(BACKOFF_MAX),
            _ => BACKOFF_MIN,
        }
    }

    // ---- Signals --------------------------------------------------------------------------

    #[derive(Default)]
    struct Signals {
        stop: AtomicBool,
        hups: AtomicU64,
    }

    /// Block the stop and reload signals here (before any thread) and take them on a thread:
    /// SIGINT/SIGTERM set `stop`, SIGHUP counts a reload request.
    fn signals() -> anyhow::Result<Arc<Signals>> {
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(s);
        }
        set.thread_block()
            .context("blocking SIGINT/SIGTERM/SIGHUP")?;
        let flags = Arc::new(Signals::default());
        let f = Arc::clone(&flags);
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                while let Ok(sig) = set.wait() {
                    if sig == Signal::SIGHUP {
                        f.hups.fetch_add(1, Ordering::AcqRel);
                    } else {
                        f.stop.store(true, Ordering::Release);
                        return;
                    }
                }
            })
            .context("starting the signal thread")?;
        Ok(flags)
    }

    // ---- Events tail ----------------------------------------------------------------------

    /// Prints one line per deny, fallback or would-deny, from the extension's in-memory tail
    /// (over the control socket, never by opening the events log: see `EventFollower`), on its
    /// own thread: a stopped extension must not hold up the supervisor.
    fn spawn_tail(control_socket: &Path, stop: Arc<AtomicBool>) {
        let mut f = crate::control::EventFollower::new(control_socket, 1000);
        let _ = std::thread::Builder::new()
            .name("events-tail".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    // Best effort: until the extension's control socket is up, nothing to print.
                    for line in f.poll().unwrap_or_default() {
                        if let Some(s) = summarize(&line) {
                            say(s);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
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

    // ---- run ------------------------------------------------------------------------------

    /// The supervised extension: its process and what its notifications told us.
    struct Extension {
        proc: Proc,
        ready: bool,
        /// Kill it if no heartbeat arrives by then.
        deadline: Instant,
    }

    fn describe(st: ExitStatus) -> String {
        use std::os::unix::process::ExitStatusExt;
        match (st.code(), st.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!(
                "signal {}",
                Signal::try_from(s).map_or_else(|_| s.to_string(), |s| s.as_str().to_owned())
            ),
            _ => format!("{st:?}"),
        }
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
        let sig = signals()?;
        let watchdog = (a.watchdog_ms > 0).then(|| Duration::from_millis(a.watchdog_ms));
        let spec = Spec {
            mutes_file: a.mutes_file.clone(),
            transitive_file: a.transitive_file.clone(),
            ..Spec::new(
                a.policy.as_deref(),
                &a.runtime_dir,
                &a.scope,
                a.runtime_dir.join("events.jsonl"),
                watchdog,
            )?
        };
        let notify = NotifySocket::bind(&spec.notify_socket)?;
        let code = supervise(&spec, &notify, &sig, watchdog);
        say("gatehouse: stopped");
        flush_output(Duration::from_secs(1));
        code
    }

    fn supervise(
        spec: &Spec,
        notify: &NotifySocket,
        sig: &Signals,
        watchdog: Option<Duration>,
    ) -> anyhow::Result<ExitCode> {
        // The helper first: it must never exist after (and so never inherit) the group.
        let mut helper = Some(spec.helper()?);
        let mut ext = Some(Extension {
            proc: spec.extension()?,
            ready: false,
            deadline: Instant::now() + START_GRACE,
        });
        say(format!(
            "gatehouse: helper pid {}, extension pid {}; control socket {}; watchdog {}; Ctrl-C stops both, SIGHUP reloads the policy",
            helper.as_ref().and_then(Proc::pid).map_or(0, Pid::as_raw),
            ext.as_ref()
                .and_then(|e| e.proc.pid())
                .map_or(0, Pid::as_raw),
            spec.control_socket.display(),
            watchdog.map_or_else(|| "off".to_owned(), |w| format!("{w:?}")),
        ));
        let tail_stop = Arc::new(AtomicBool::new(false));
        spawn_tail(&spec.control_socket, Arc::clone(&tail_stop));

        let (mut ext_backoff, mut helper_backoff) = (None, None);
        let (mut ext_restart_at, mut helper_restart_at) = (None::<Instant>, None::<Instant>);
        let mut failed_starts = 0u32;
        let mut hups_seen = 0u64;
        let result = loop {
            // Notifications double as the tick's sleep.
            let ext_pid = ext.as_ref().and_then(|e| e.proc.pid()).map(Pid::as_raw);
            for (from, text) in notify.recv(TICK) {
                let (Some(e), true) = (ext.as_mut(), from.is_some() && from == ext_pid) else {
                    continue;
                };
                let n = parse_notice(&text);
                let now = Instant::now();
                if n.ready && !e.ready {
                    e.ready = true;
                    failed_starts = 0;
                }
                if let (true, Some(w)) = (n.ready || n.watchdog, watchdog) {
                    e.deadline = now + w;
                }
                if n.stopping {
                    e.deadline = now + STOP_GRACE;
                }
            }
            if sig.stop.load(Ordering::Acquire) {
                break Ok(ExitCode::SUCCESS);
            }
            let hups = sig.hups.load(Ordering::Acquire);
            if hups != hups_seen {
                hups_seen = hups;
                match &ext {
                    Some(e) => {
                        say("gatehouse: SIGHUP: asking the extension to reload its policy");
                        e.proc.signal(Signal::SIGHUP);
                    }
                    None => say("gatehouse: SIGHUP: no extension running to reload"),
                }
            }
            let now = Instant::now();

            // The extension: dead, or alive but silent past its watchdog.
            if let Some(e) = ext.as_mut() {
                let gone = e
                    .proc
                    .exited()
                    .map(|st| format!("exited ({})", describe(st)));
                let gone = gone.or_else(|| {
                    (watchdog.is_some() && now >= e.deadline).then(|| {
                        e.proc.kill_now();
                        "missed its watchdog (no heartbeat in time: stopped or stuck); killed it, which released every event it held".to_owned()
                    })
                });
                if let Some(why) = gone {
                    if !e.ready {
                        failed_starts += 1;
                    }
                    let uptime = e.proc.started.elapsed();
                    ext = None;
                    if failed_starts >= MAX_FAILED_STARTS {
                        break Err(anyhow::anyhow!(
                            "the extension {why}, and failed to start {failed_starts} times in a row; giving up (see its errors above)"
                        ));
                    }
                    let delay = next_backoff(ext_backoff, uptime);
                    ext_backoff = Some(delay);
                    ext_restart_at = Some(now + delay);
                    say(format!(
                        "gatehouse: the extension {why}; restarting it in {delay:?}"
                    ));
                }
            }
            if ext.is_none() && ext_restart_at.is_some_and(|t| now >= t) {
                ext_restart_at = None;
                match spec.extension() {
                    Ok(p) => {
                        say(format!(
                            "gatehouse: extension restarted, extension pid {}",
                            p.pid().map_or(0, Pid::as_raw)
                        ));
                        ext = Some(Extension {
                            proc: p,
                            ready: false,
                            deadline: now + START_GRACE,
                        });
                    }
                    Err(e) => break Err(e),
                }
            }

            // The helper: the extension degrades (fallbacks) without it.
            if let Some(h) = helper.as_mut()
                && let Some(st) = h.exited()
            {
                let delay = next_backoff(helper_backoff, h.started.elapsed());
                helper_backoff = Some(delay);
                helper_restart_at = Some(now + delay);
                helper = None;
                say(format!(
                    "gatehouse: the helper exited ({}); restarting it in {delay:?}",
                    describe(st)
                ));
            }
            if helper.is_none() && helper_restart_at.is_some_and(|t| now >= t) {
                helper_restart_at = None;
                match spec.helper() {
                    Ok(p) => {
                        say(format!(
                            "gatehouse: helper restarted, helper pid {}",
                            p.pid().map_or(0, Pid::as_raw)
                        ));
                        helper = Some(p);
                    }
                    Err(e) => break Err(e),
                }
            }
        };
        tail_stop.store(true, Ordering::Release);
        // The extension first: it answers what it holds before the helper goes.
        if let Some(mut e) = ext {
            e.proc.stop(Duration::from_secs(10));
        }
        if let Some(mut h) = helper {
            h.stop(Duration::from_secs(5));
        }
        result
    }

    // ---- demo -----------------------------------------------------------------------------

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

    /// Move this process into a mount namespace of its own whose mounts do not propagate back,
    /// so the demo's tmpfs disappears with the process tree even after a SIGKILL. Must run
    /// before any thread exists: namespaces belong to the calling thread.
    fn private_mount_namespace() -> anyhow::Result<()> {
        use nix::mount::MsFlags;
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .context("making / private in the demo's mount namespace")?;
        Ok(())
    }

    /// Remove the empty mount points a SIGKILLed demo left in `tmp` (its mount died with its
    /// namespace; the directory, on the shared filesystem, stays). `remove_dir` only removes
    /// an empty directory, and only for a demo pid that is no longer running.
    fn sweep_stale_demo_dirs(tmp: &Path) {
        let Ok(entries) = std::fs::read_dir(tmp) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("gatehouse-demo-"))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }

    fn sha256_file(p: &Path) -> anyhow::Result<String> {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        Ok(model::Sha256(sha2::Sha256::digest(&bytes).into()).to_hex())
    }

    /// Run one demo step. A kernel refusal of the exec itself (EPERM from `execve`) is an
    /// `Err` carrying that `io::Error`. `expect_refusal`: the step shows a block, so a refusal
    /// is reported as expected and a success as unexpected (and the other way round).
    fn step(
        what: &str,
        cmd: &mut Command,
        expect_refusal: bool,
    ) -> std::io::Result<std::process::Output> {
        let verdict = |refused: bool| match (refused, expect_refusal) {
            (true, true) => "refused, as expected",
            (false, false) => "ok, as expected",
            (true, false) => "UNEXPECTED refusal",
            (false, true) => "UNEXPECTED success",
        };
        let out = match cmd.stdin(Stdio::null()).output() {
            Ok(o) => o,
            Err(e) => {
                say(format!("  $ {what}\n    -> {}: {e}", verdict(true)));
                return Err(e);
            }
        };
        let err = String::from_utf8_lossy(&out.stderr);
        let text = String::from_utf8_lossy(&out.stdout);
        let detail = format!("{}{}", text.trim(), err.trim());
        say(format!(
            "  $ {what}\n    -> {}{}{detail}",
            verdict(!out.status.success()),
            if detail.is_empty() { "" } else { ": " }
        ));
        Ok(out)
    }

    /// The demo policy's deadline for permission events: long enough for a cold helper's
    /// first analysis on a busy machine (it builds its package index then).
    const DEMO_DEADLINE_MS: u64 = 2000;

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
deadline_ms = {deadline_ms}

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
            reader = reader.display(),
            deadline_ms = DEMO_DEADLINE_MS,
        )
    }

    /// Execs sent at the frozen helper: enough for the breaker to open (three helper timeouts
    /// in a row, the extension's default) and for a few to be answered at once after it did.
    const FROZEN_EXECS: u32 = 6;
    /// The demo's wait for the extension to count an answer it gave (it counts just after
    /// answering, so an exec can return first) or to reach a restarted helper.
    const COUNT_WAIT: Duration = Duration::from_secs(3);
    const RECONNECT_WAIT: Duration = Duration::from_secs(10);

    /// How a demo run ended.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        Passed,
        Failed,
        /// A signal or a closed stdout stopped it before the end.
        Stopped,
    }

    pub fn demo(a: DemoArgs) -> anyhow::Result<ExitCode> {
        if let Some(code) = require_root("demo") {
            return Ok(code);
        }
        // Before any thread (the printer's included).
        private_mount_namespace()?;
        let capture = Arc::new(Capture::default());
        let output = if a.verbose {
            ChildOutput::Tagged
        } else {
            ChildOutput::Capture(Arc::clone(&capture))
        };
        let outcome = demo_in_namespace(output);
        flush_output(Duration::from_secs(1));
        // The children's own lines explain a failure; on success they are noise.
        if matches!(outcome, Err(_) | Ok(Outcome::Failed)) {
            capture.dump();
        }
        Ok(match outcome? {
            Outcome::Passed => ExitCode::SUCCESS,
            Outcome::Failed | Outcome::Stopped => ExitCode::FAILURE,
        })
    }

    /// A duration for people: `840 us`, `3.2 ms`, `1.60 s`.
    fn human_us(us: u64) -> String {
        match us {
            0..1_000 => format!("{us} us"),
            1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
            _ => format!("{:.2} s", us as f64 / 1e6),
        }
    }

    fn human(d: Duration) -> String {
        human_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    /// What the tour's steps share.
    struct Tour<'a> {
        bin: &'a Path,
        control: &'a Path,
        /// Copies of /bin/true made so far (`true-1`, `true-2`, ...).
        copies: std::cell::Cell<u32>,
    }

    /// One exec and what the extension's counters say decided it.
    struct Exec {
        name: String,
        allowed: bool,
        took: Duration,
        /// The counters across the exec, once the extension counted its answer.
        delta: Option<Delta>,
    }

    /// The extension's counters before and after something.
    struct Delta {
        before: protocol::StatsReport,
        after: protocol::StatsReport,
    }

    impl Delta {
        /// How much counter `n` went up.
        fn get(&self, n: &str) -> u64 {
            crate::control::counter(&self.after, n)
                .saturating_sub(crate::control::counter(&self.before, n))
        }
    }

    impl Tour<'_> {
        /// A new copy of /bin/true: a new inode, so no kernel or verdict-cache entry covers
        /// it, and only the helper (which hashes it for the SHA-256 allow rule) can decide it.
        fn fresh_true(&self) -> anyhow::Result<PathBuf> {
            let n = self.copies.get() + 1;
            self.copies.set(n);
            let p = self.bin.join(format!("true-{n}"));
            std::fs::copy("/bin/true", &p)
                .with_context(|| format!("copying /bin/true to {}", p.display()))?;
            Ok(p)
        }

        fn stats(&self) -> Option<protocol::StatsReport> {
            crate::control::fetch_stats(self.control).ok()
        }

        /// The counters once the extension has counted `n` answers more than in `before`
        /// (bounded by [`COUNT_WAIT`]; `None` if it never did).
        fn stats_after(
            &self,
            before: &protocol::StatsReport,
            n: u64,
        ) -> Option<protocol::StatsReport> {
            let want = crate::control::counter(before, "answers") + n;
            let end = Instant::now() + COUNT_WAIT;
            loop {
                let s = self.stats()?;
                if crate::control::counter(&s, "answers") >= want {
                    return Some(s);
                }
                if Instant::now() >= end {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }

        /// Exec a fresh copy of /bin/true, timed from here (fork to exit), and read what
        /// decided it from the extension's counters.
        fn exec_fresh(&self) -> anyhow::Result<Exec> {
            let p = self.fresh_true()?;
            let before = self
                .stats()
                .context("reading the extension's counters over its control socket")?;
            let t = Instant::now();
            let st = Command::new(&p)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let took = t.elapsed();
            let delta = self
                .stats_after(&before, 1)
                .map(|after| Delta { before, after });
            Ok(Exec {
                name: format!(
                    "bin/{}",
                    p.file_name().unwrap_or_default().to_string_lossy()
                ),
                allowed: matches!(st, Ok(s) if s.success()),
                took,
                delta,
            })
        }
    }

    /// SIGCONT for a helper the demo stopped, on every way out of the step (an error, Ctrl-C,
    /// a closed stdout), unless the step killed it first.
    struct Resume(Option<Pid>);

    impl Drop for Resume {
        fn drop(&mut self) {
            if let Some(pid) = self.0.take() {
                let _ = kill(pid, Signal::SIGCONT);
            }
        }
    }

    /// Steps 5 and 6: the field report's scenario. The helper is stopped while execs that need
    /// it keep arriving (each answered by the watchdog with the policy's fallback, then at once
    /// once the breaker opens), then killed and restarted while the extension keeps running,
    /// and analysis works again.
    fn freeze_and_restart(
        tour: &Tour<'_>,
        spec: &Spec,
        helper: &mut Proc,
        extension: &mut Proc,
        halted: &dyn Fn() -> bool,
    ) -> bool {
        say("\n5. the helper freezes (SIGSTOP) while execs that need it keep arriving:");
        let (Some(helper_pid), Some(ext_pid)) = (helper.pid(), extension.pid()) else {
            say("    -> UNEXPECTED: the helper or the extension is not running");
            return false;
        };
        let Some(start) = tour.stats() else {
            say("    -> UNEXPECTED: the extension's control socket does not answer");
            return false;
        };
        if kill(helper_pid, Signal::SIGSTOP).is_err() {
            say(format!(
                "    -> UNEXPECTED: could not stop the helper (pid {helper_pid})"
            ));
            return false;
        }
        let mut resume = Resume(Some(helper_pid));
        say(format!(
            "  helper pid {helper_pid} stopped; each exec is a new copy of /bin/true that only the helper can decide (SHA-256 rule)"
        ));
        let (mut fell_back, mut slowest, mut sent) = (0u32, Duration::ZERO, 0u32);
        for _ in 0..FROZEN_EXECS {
            if halted() {
                return false;
            }
            let e = match tour.exec_fresh() {
                Ok(e) => e,
                Err(err) => {
                    say(format!("    -> UNEXPECTED: {err:#}"));
                    return false;
                }
            };
            sent += 1;
            slowest = slowest.max(e.took);
            let how = match &e.delta {
                Some(d) if d.get("fallbacks.deadline") > 0 => {
                    fell_back += 1;
                    "by the fallback: no answer from the helper, the watchdog answered before the deadline"
                }
                Some(d) if d.get("fallbacks.helper_unavailable") > 0 => {
                    fell_back += 1;
                    "by the fallback at once: the breaker is open (the helper kept timing out)"
                }
                Some(d) if d.get("helper_decided") > 0 => {
                    "UNEXPECTED: decided by the stopped helper"
                }
                Some(_) => "UNEXPECTED: not by a fallback",
                None => "UNEXPECTED: the extension did not count an answer",
            };
            say(format!(
                "  {:<10} {} after {:>7}, {how}",
                e.name,
                if e.allowed { "allowed" } else { "REFUSED" },
                human(e.took)
            ));
        }
        let end = tour.stats();
        let since = |n: &str| {
            end.as_ref().map(|s| {
                crate::control::counter(s, n).saturating_sub(crate::control::counter(&start, n))
            })
        };
        let misses = since("deadline_misses");
        let timeouts = since("fallbacks.deadline").unwrap_or(0);
        let breaker_open = end
            .as_ref()
            .is_some_and(|s| crate::control::counter(s, "helper_breaker_open") != 0);
        say(format!(
            "    -> {fell_back} of {sent} execs answered with the policy's fallback (allow); slowest {} against the {} deadline; deadline misses: {}",
            human(slowest),
            format_args!("{} s", DEMO_DEADLINE_MS as f64 / 1000.0),
            misses.map_or_else(|| "unknown".to_owned(), |m| m.to_string())
        ));
        if breaker_open {
            say(format!(
                "       the breaker opened after {timeouts} timeouts in a row, so the execs after them did not wait"
            ));
        }
        let mut ok = sent > 0 && fell_back == sent && misses == Some(0);

        if halted() {
            return false;
        }
        say("\n6. the helper is killed (SIGKILL) and restarted; the extension is not:");
        // Killed while stopped: SIGKILL needs no SIGCONT. Disarmed first, since the pid is
        // free for reuse once reaped.
        resume.0 = None;
        let killed = Instant::now();
        helper.kill_now();
        say(format!("  helper pid {helper_pid} killed"));
        // What `gatehouse run` does for a dead helper: start it again, leave the extension be.
        match spec.helper() {
            Ok(p) => *helper = p,
            Err(e) => {
                say(format!("    -> UNEXPECTED: restarting the helper: {e:#}"));
                return false;
            }
        }
        let new_pid = helper.pid().map_or(0, Pid::as_raw);
        say(format!(
            "  helper restarted by the supervisor: pid {new_pid}"
        ));
        let mut reached = false;
        while !reached && killed.elapsed() < RECONNECT_WAIT && !halted() {
            reached = crate::control::helper_pong(tour.control)
                .is_some_and(|p| i64::from(p.pid) == i64::from(new_pid));
            if !reached {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let status = crate::control::fetch_status(tour.control).ok();
        let same = extension.exited().is_none()
            && status
                .as_ref()
                .is_some_and(|s| i64::from(s.pid) == i64::from(ext_pid.as_raw()));
        say(format!(
            "  extension pid {}: {}",
            status.as_ref().map_or(0, |s| s.pid),
            if same {
                "the same process, never restarted"
            } else {
                "UNEXPECTED: not the extension the demo started"
            }
        ));
        if reached {
            say(format!(
                "  the extension reached the new helper {} after the kill (it reconnects on its own)",
                human(killed.elapsed())
            ));
        } else {
            say(format!(
                "    -> UNEXPECTED: the extension did not reach helper pid {new_pid} within {RECONNECT_WAIT:?}"
            ));
        }
        ok &= same && reached;
        if halted() {
            return false;
        }
        match tour.exec_fresh() {
            Ok(e) => {
                let analysed = e
                    .delta
                    .as_ref()
                    .is_some_and(|d| d.get("helper_decided") == 1 && d.get("fallbacks") == 0);
                say(format!(
                    "  {:<10} {} after {:>7}, {}",
                    e.name,
                    if e.allowed { "allowed" } else { "REFUSED" },
                    human(e.took),
                    if analysed {
                        "decided by the helper again (SHA-256 allow rule), no fallback"
                    } else {
                        "UNEXPECTED: not decided by the helper"
                    }
                ));
                ok &= analysed && e.allowed;
            }
            Err(err) => {
                say(format!("    -> UNEXPECTED: {err:#}"));
                ok = false;
            }
        }
        ok
    }

    /// Step 7: the notable records: each deny on a line, the fallbacks counted by reason.
    fn events_step(control: &Path) {
        say("\n7. the events log (as `gatehouse events tail` shows it):");
        let mut f = crate::control::EventFollower::new(control, 1000);
        let mut fallbacks = std::collections::BTreeMap::<String, u64>::new();
        for line in f.poll().unwrap_or_default() {
            let v: Option<serde_json::Value> = serde_json::from_str(&line).ok();
            if let Some(why) = v
                .as_ref()
                .filter(|v| v["reason"] == "fallback")
                .map(|v| v["why"].as_str().unwrap_or("?").to_owned())
            {
                *fallbacks.entry(why).or_default() += 1;
            } else if let Some(s) = summarize(&line) {
                say(s);
            }
        }
        if !fallbacks.is_empty() {
            let total: u64 = fallbacks.values().sum();
            let by: Vec<String> = fallbacks
                .iter()
                .map(|(w, n)| format!("{n} {}", w.replace('_', " ")))
                .collect();
            say(format!(
                "{:>10} {total} fallback records from step 5 ({})",
                "+",
                by.join(", ")
            ));
        }
    }

    /// The closing summary, from the extension's own counters and latency histogram.
    fn summary(s: &protocol::StatsReport) {
        let c = |n: &str| crate::control::counter(s, n);
        let row = |k: &str, v: String, note: String| {
            say(format!("  {k:<16} {v:>8}  {note}").trim_end().to_owned());
        };
        say("\nsummary (the extension's own counters; `gatehouse stats` shows them all):");
        row(
            "events",
            c("events").to_string(),
            format!(
                "allowed {}, denied {}",
                c("answers.allow"),
                c("answers.deny")
            ),
        );
        row(
            "fast path",
            (c("fast_path_decided") + c("cache_hits") + c("muted")).to_string(),
            "decided by the policy on the delivery thread".into(),
        );
        row(
            "analysed",
            c("analysed").to_string(),
            format!(
                "handed to the helper; {} answered by it in time",
                c("helper_decided")
            ),
        );
        let by: Vec<String> = s
            .counters
            .iter()
            .filter_map(|(n, v)| {
                let why = n.strip_prefix("fallbacks.")?;
                (*v > 0).then(|| format!("{v} {}", why.replace('_', " ")))
            })
            .collect();
        row("fallbacks", c("fallbacks").to_string(), by.join(", "));
        row(
            "deadline misses",
            c("deadline_misses").to_string(),
            "answers later than the policy's deadline".into(),
        );
        if let Some(l) = s.latencies.iter().find(|l| l.name == "event_to_answer") {
            row(
                "latency p50",
                human_us(l.p50_us),
                format!("event to answer, all {} events", l.count),
            );
            // Reported at the lower bound of its histogram bucket.
            row(
                "latency p99",
                human_us(l.p99_us),
                "(histogram buckets: up to 6% low)".into(),
            );
        }
    }

    fn demo_in_namespace(output: ChildOutput) -> anyhow::Result<Outcome> {
        let verbose = matches!(output, ChildOutput::Tagged);
        let sig = signals()?;
        let halted = || sig.stop.load(Ordering::Acquire) || stdout_gone();
        let tmp = std::env::temp_dir();
        sweep_stale_demo_dirs(&tmp);
        let dir = tmp.join(format!("gatehouse-demo-{}", std::process::id()));
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
        say(format!(
            "gatehouse demo: scratch tmpfs at {} (private mount namespace: visible to the demo's processes only)",
            dir.display()
        ));

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
        say(format!(
            "gatehouse demo: policy blocks {} by SHA-256 and lets only {} open {}; when the helper cannot answer in time, execs get the fallback: allow",
            blocked.display(),
            reader.display(),
            secret.display()
        ));

        let runtime = dir.join("run");
        let spec = Spec {
            output,
            ..Spec::new(
                Some(&policy_path),
                &runtime,
                std::slice::from_ref(&dir),
                runtime.join("events.jsonl"),
                None,
            )?
        };
        let notify = NotifySocket::bind(&spec.notify_socket)?;
        // Dropped in reverse order on an early return: the extension stops before the helper.
        let mut helper = spec.helper()?;
        let mut extension = spec.extension()?;
        // READY=1: the extension is up and its marks are in place.
        let ext_pid = extension.pid().map(Pid::as_raw);
        let end = Instant::now() + Duration::from_secs(15);
        let mut ready = false;
        while !ready && Instant::now() < end && !halted() {
            if extension.exited().is_some() {
                bail!("the extension exited during start-up (see its log lines)");
            }
            ready = notify
                .recv(TICK)
                .iter()
                .any(|(from, t)| *from == ext_pid && parse_notice(t).ready);
        }
        if !ready && !halted() {
            bail!("the extension did not become ready within 15 s");
        }
        say(format!(
            "gatehouse demo: helper pid {}, extension pid {}{}",
            helper.pid().map_or(0, Pid::as_raw),
            ext_pid.unwrap_or(0),
            if verbose {
                "; their own log lines are tagged [helper] and [extension]"
            } else {
                " (their own log lines: gatehouse demo --verbose)"
            }
        ));

        // The steps show decisions the helper makes: wait (bounded) until the extension has
        // reached it, so a slow start on a busy machine does not turn the first step into the
        // helper_unavailable fallback.
        let connected =
            || crate::control::fetch_status(&spec.control_socket).is_ok_and(|s| s.helper_connected);
        let end = Instant::now() + Duration::from_secs(10);
        while !connected() && Instant::now() < end && !halted() {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !connected() {
            say(
                "gatehouse demo: the extension has not reached the helper within 10 s; the steps below may show fallbacks",
            );
        }
        let tour = Tour {
            bin: &bin,
            control: &spec.control_socket,
            copies: std::cell::Cell::new(0),
        };
        let mut ok = true;
        let steps: [&dyn Fn() -> bool; 4] = [
            &|| {
                say("\n1. exec of the blocked binary (expect EPERM):");
                match &step(
                    &format!("{} hello", blocked.display()),
                    Command::new(&blocked).arg("hello"),
                    true,
                ) {
                    Ok(o) => !o.status.success(),
                    Err(e) => e.raw_os_error() == Some(nix::errno::Errno::EPERM as i32),
                }
            },
            &|| {
                say("\n2. exec of an allowed binary (expect success):");
                let o = step(
                    &allowed.display().to_string(),
                    &mut Command::new(&allowed),
                    false,
                );
                matches!(&o, Ok(o) if o.status.success())
            },
            &|| {
                say("\n3. open of the protected file by an unlisted process (expect EPERM):");
                let o = step(
                    &format!("/bin/cat {}", secret.display()),
                    Command::new("/bin/cat").arg(&secret),
                    true,
                );
                matches!(&o, Ok(o) if !o.status.success())
            },
            &|| {
                say("\n4. open of the protected file by the allowed process (expect success):");
                let o = step(
                    &format!("{} {}", reader.display(), secret.display()),
                    Command::new(&reader).arg(&secret),
                    false,
                );
                matches!(&o, Ok(o) if o.status.success())
            },
        ];
        for s in steps {
            if halted() {
                break;
            }
            ok &= s();
        }
        if !halted() {
            ok &= freeze_and_restart(&tour, &spec, &mut helper, &mut extension, &halted);
        }
        if !halted() {
            events_step(&spec.control_socket);
            match tour.stats() {
                Some(s) => summary(&s),
                None => {
                    say("\nsummary: UNEXPECTED: the extension's control socket does not answer");
                    ok = false;
                }
            }
        }
        let completed = !halted();
        extension.stop(Duration::from_secs(10));
        helper.stop(Duration::from_secs(5));
        drop(notify);
        drop(scratch);
        if !completed {
            eprintln!(
                "gatehouse demo: stopped early ({}); everything cleaned up, scratch tmpfs unmounted",
                if stdout_gone() {
                    "stdout closed"
                } else {
                    "signal"
                }
            );
            return Ok(Outcome::Stopped);
        }
        say(format!(
            "\ngatehouse demo: {}; scratch tmpfs unmounted",
            if ok {
                "every step behaved as expected"
            } else {
                "SOME STEPS DID NOT BEHAVE AS EXPECTED"
            }
        ));
        Ok(if ok { Outcome::Passed } else { Outcome::Failed })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn notices_follow_sd_notify() {
            let cases = [
                (
                    "READY=1",
                    Notice {
                        ready: true,
                        ..Notice::default()
                    },
                ),
                (
                    "WATCHDOG=1\n",
                    Notice {
                        watchdog: true,
                        ..Notice::default()
                    },
                ),
                (
                    "RELOADING=1\nMONOTONIC_USEC=123\n",
                    Notice {
                        reloading: true,
                        ..Notice::default()
                    },
                ),
                (
                    "STOPPING=1",
                    Notice {
                        stopping: true,
                        ..Notice::default()
                    },
                ),
                ("READY=0\nWATCHDOG=trigger\nSTATUS=x", Notice::default()),
                ("", Notice::default()),
            ];
            for (text, want) in cases {
                assert_eq!(parse_notice(text), want, "{text:?}");
            }
        }

        #[test]
        fn durations_read_in_the_unit_that_fits() {
            let cases = [
                (0, "0 us"),
                (999, "999 us"),
                (1_000, "1.0 ms"),
                (2_449, "2.4 ms"),
                (999_949, "999.9 ms"),
                (1_000_000, "1.00 s"),
                (1_604_000, "1.60 s"),
            ];
            for (us, want) in cases {
                assert_eq!(human_us(us), want, "{us}");
            }
        }

        #[test]
        fn the_capture_keeps_the_last_lines_and_counts_the_rest() {
            let c = Capture::default();
            for i in 0..CAPTURE_LINES + 3 {
                c.push(format!("line {i}"));
            }
            let kept = c.lines.lock().unwrap();
            assert_eq!(kept.len(), CAPTURE_LINES);
            assert_eq!(kept.front().map(String::as_str), Some("line 3"));
            assert_eq!(c.dropped.load(Ordering::Relaxed), 3);
        }

        #[test]
        fn backoff_doubles_to_a_cap_and_resets_after_a_good_run() {
            let s = Duration::from_secs;
            let ms = Duration::from_millis;
            let cases = [
                (None, s(0), BACKOFF_MIN),
                (Some(ms(100)), s(1), ms(200)),
                (Some(ms(3000)), s(1), BACKOFF_MAX),
                (Some(BACKOFF_MAX), s(1), BACKOFF_MAX),
                (Some(BACKOFF_MAX), BACKOFF_RESET, BACKOFF_MIN),
            ];
            for (prev, up, want) in cases {
                assert_eq!(next_backoff(prev, up), want, "{prev:?} after {up:?}");
            }
        }
    }
}
