//! Supervision from outside the process: sd_notify readiness and watchdog heartbeats for a
//! service manager (systemd `Type=notify` with `WatchdogSec=`, or `gatehouse run`), SIGHUP
//! policy reloads, dying with a supervising parent, and status lines that never block.
//!
//! Why outside: a stopped extension (SIGSTOP, a debugger, a livelock) stops its in-process
//! liveness guard with it, and every opener of a marked file waits as long as it is stopped.
//! The heartbeat thread sends `WATCHDOG=1` only while the delivery thread is making progress,
//! so a supervisor that misses heartbeats for the watchdog interval kills the process and the
//! kernel allows everything pending. The heartbeat runs on its own thread: the delivery thread
//! never makes this system call (invariant `delivery-never-blocks`).
//!
//! The protocol is a few lines on a non-blocking `AF_UNIX` datagram socket rather than a
//! crate: sends must never block (a stopped supervisor must not stall our shutdown), and the
//! address may be in the abstract namespace (`@name`), both of which the `sd-notify` crate's
//! blocking, path-only `connect` does not do.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr, sendto, socket};

use super::fanotify::Groups;
use super::liveness::{Progress, kernel_has_events};

/// Environment variable naming the supervising parent's pid (`gatehouse run`, `gatehouse
/// demo`): the child sets `PR_SET_PDEATHSIG` so it dies with that parent.
pub const PARENT_ENV: &str = "GATEHOUSE_PARENT_PID";

/// How often the heartbeat thread looks again after a look found the delivery loop behind.
const RETRY: Duration = Duration::from_millis(10);
/// Longest sleep between looks while healthy, so a stop request is seen promptly.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// A datagram socket to the service manager's `NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct Notifier {
    fd: OwnedFd,
    addr: UnixAddr,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; `None` when no service manager asked for notifications.
    pub fn from_env() -> Option<std::io::Result<Notifier>> {
        let v = std::env::var_os("NOTIFY_SOCKET")?;
        (!v.is_empty()).then(|| Notifier::at(&v))
    }

    /// A socket path, or `@name` for the abstract namespace (as systemd documents).
    pub fn at(target: &OsStr) -> std::io::Result<Notifier> {
        let bytes = target.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => UnixAddr::new_abstract(name)?,
            None => UnixAddr::new(Path::new(target))?,
        };
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        Ok(Notifier { fd, addr })
    }

    /// Send one notification (`READY=1`, `WATCHDOG=1`, ...; several separated by newlines).
    /// Never blocks: a supervisor whose queue is full misses this one.
    pub fn send(&self, state: &str) -> std::io::Result<()> {
        sendto(
            std::os::fd::AsRawFd::as_raw_fd(&self.fd),
            state.as_bytes(),
            &self.addr,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        )?;
        Ok(())
    }
}

/// The watchdog interval the supervisor asked for, from `WATCHDOG_USEC` and `WATCHDOG_PID`
/// (sd_watchdog_enabled(3) semantics: a `WATCHDOG_PID` naming another process means the
/// setting is not ours; `0` or garbage means no watchdog).
pub fn watchdog_setting(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(p) = pid
        && p.trim().parse::<u32>().ok() != Some(me)
    {
        return None;
    }
    Some(Duration::from_micros(usec))
}

/// [`watchdog_setting`] from this process's environment.
pub fn watchdog_from_env() -> Option<Duration> {
    let get = |k: &str| std::env::var(k).ok();
    watchdog_setting(
        get("WATCHDOG_USEC").as_deref(),
        get("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )
}

/// The heartbeat period for a watchdog interval: half of it, as sd_watchdog_enabled(3)
/// recommends, so one late beat is not yet a miss.
pub fn heartbeat_period(watchdog: Duration) -> Duration {
    (watchdog / 2).max(Duration::from_millis(1))
}

/// One look at the delivery loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    /// Permission events the delivery thread has read so far.
    pub received: u64,
    /// Whether the kernel holds events the delivery thread has not read.
    pub kernel_queued: bool,
}

/// Is the delivery loop making progress, judging from the previous look and this one? It is
/// when nothing waits for it in the kernel, or when it has read something since. Events read
/// but not yet answered are the core's watchdog's business (answered by their deadline), not
/// the delivery thread's, so they do not stop the heartbeat: a slow helper must not get a
/// healthy extension killed.
pub fn delivery_progressing(prev: Option<Look>, now: Look) -> bool {
    !now.kernel_queued || prev.is_some_and(|p| p.received != now.received)
}

/// The heartbeat thread; dropping it stops the thread.
#[derive(Debug)]
pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    /// `WATCHDOG=1` sent / looks that found the delivery loop behind (and so sent nothing).
    pub counters: Arc<HeartbeatCounters>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the heartbeat thread did.
#[derive(Debug, Default)]
pub struct HeartbeatCounters {
    pub sent: AtomicU64,
    pub withheld: AtomicU64,
}

impl Heartbeat {
    /// Beat every `period` while [`delivery_progressing`] holds for `groups` and `progress`.
    pub fn start(
        notifier: Arc<Notifier>,
        groups: Arc<Groups>,
        progress: Arc<Progress>,
        period: Duration,
    ) -> std::io::Result<Heartbeat> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(HeartbeatCounters::default());
        let (stop2, counters2) = (Arc::clone(&stop), Arc::clone(&counters));
        let thread = std::thread::Builder::new()
            .name("gh-heartbeat".into())
            .spawn(move || {
                let look = || Look {
                    received: progress.received.load(Ordering::Acquire),
                    kernel_queued: kernel_has_events(&groups),
                };
                let mut prev = None;
                let mut due = Instant::now();
                while !stop2.load(Ordering::Acquire) {
                    let now = Instant::now();
                    let l = look();
                    let mut sleep = due.saturating_duration_since(now).min(MAX_SLEEP);
                    if now >= due {
                        if delivery_progressing(prev, l) {
                            let _ = notifier.send("WATCHDOG=1");
                            counters2.sent.fetch_add(1, Ordering::Relaxed);
                            due = now + period;
                            sleep = period.min(MAX_SLEEP);
                        } else {
                            counters2.withheld.fetch_add(1, Ordering::Relaxed);
                            sleep = RETRY;
                        }
                    }
                    prev = Some(l);
                    std::thread::sleep(sleep);
                }
            })?;
        Ok(Heartbeat {
            stop,
            counters,
            thread: Some(thread),
        })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `MONOTONIC_USEC=` for a `RELOADING=1` notification (systemd 253+ requires it).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid, exclusive pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// SIGHUP: reload the policy file through `load` (the core's policy load: validated, swapped,
/// caches cleared, marks rebuilt without dropping coverage). A missing or invalid file changes
/// nothing. Tells the supervisor `RELOADING=1` ... `READY=1` around it.
pub fn reload(
    policy_path: Option<&Path>,
    notifier: Option<&Notifier>,
    load: impl FnOnce(&str, &str) -> Result<u64, policy::PolicyError>,
) {
    if let Some(n) = notifier {
        let _ = n.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\n",
            monotonic_usec()
        ));
    }
    match policy_path {
        None => print_line(
            "gatehouse-extension: SIGHUP: no --policy file; the embedded policy stays".into(),
        ),
        // Bounded, regular files only: a FIFO or /dev/zero named as the policy must not hang or
        // exhaust the signal thread.
        Some(p) => match protocol::bounded::read_text(p, protocol::bounded::POLICY_MAX_BYTES) {
            Err(e) => eprintln!("gatehouse-extension: SIGHUP: {e}; the current policy stays"),
            Ok(text) => match load(&p.display().to_string(), &text) {
                Ok(v) => print_line(format!(
                    "gatehouse-extension: SIGHUP: policy {} reloaded as version {v}",
                    p.display()
                )),
                Err(e) => eprintln!(
                    "gatehouse-extension: SIGHUP: policy file {} is invalid: {e}; the current policy stays (check it with `gatehouse policy check`)",
                    p.display()
                ),
            },
        },
    }
    if let Some(n) = notifier {
        let _ = n.send("READY=1");
    }
}

/// When started by `gatehouse run` or `demo` ([`PARENT_ENV`] set to its pid), die with it:
/// `PR_SET_PDEATHSIG(SIGKILL)`, then exit at once if it is already gone (the race before the
/// prctl). SIGKILL rather than a clean stop: with the supervisor gone nothing would kill a
/// stopped or stuck extension, and closing the group releases every pending event.
pub fn die_with_parent() -> std::io::Result<()> {
    let Some(want) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
    else {
        return Ok(());
    };
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    if nix::unistd::getppid().as_raw() != want {
        eprintln!("gatehouse-extension: the supervising parent (pid {want}) is gone; exiting");
        std::process::exit(1);
    }
    Ok(())
}

/// Print one status line on stdout without ever blocking or panicking the caller: the write
/// happens on a short-lived thread, waited for at most 1 s (a full pipe whose reader stopped
/// must not keep us from answering SIGTERM), and a closed stdout (EPIPE) is ignored.
pub fn print_line(line: String) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    let spawned = std::thread::Builder::new()
        .name("gh-stdout".into())
        .spawn(move || {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
            let _ = tx.send(());
        });
    if spawned.is_ok() {
        let _ = rx.recv_timeout(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_setting_follows_sd_watchdog_enabled() {
        let me = 4242;
        let cases: &[(Option<&str>, Option<&str>, Option<Duration>)] = &[
            (None, None, None),
            (Some("2000000"), None, Some(Duration::from_secs(2))),
            (
                Some("500000"),
                Some("4242"),
                Some(Duration::from_millis(500)),
            ),
            (Some("500000"), Some("1"), None),
            (Some("500000"), Some("x"), None),
            (Some("0"), None, None),
            (Some("-5"), None, None),
            (Some("abc"), None, None),
        ];
        for (usec, pid, want) in cases {
            assert_eq!(watchdog_setting(*usec, *pid, me), *want, "{usec:?} {pid:?}");
        }
    }

    #[test]
    fn heartbeat_only_while_delivery_progresses() {
        let l = |received, kernel_queued| Look {
            received,
            kernel_queued,
        };
        let cases = [
            // Idle: nothing queued, beat (first look too).
            (None, l(0, false), true),
            (Some(l(5, false)), l(5, false), true),
            // Queued and read since the previous look: progressing.
            (Some(l(5, true)), l(9, true), true),
            // Queued and nothing read since: stuck (or not yet looked twice).
            (Some(l(5, true)), l(5, true), false),
            (Some(l(5, false)), l(5, true), false),
            (None, l(5, true), false),
        ];
        for (prev, now, want) in cases {
            assert_eq!(delivery_progressing(prev, now), want, "{prev:?} -> {now:?}");
        }
    }

    #[test]
    fn notifications_arrive_as_datagrams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let n = Notifier::at(path.as_os_str()).unwrap();
        n.send("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }

    #[test]
    fn heartbeat_period_is_half_the_watchdog() {
        assert_eq!(
            heartbeat_period(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            heartbeat_period(Duration::from_micros(1)),
            Duration::from_millis(1)
        );
    }
}
