//! The liveness guard (fapolicyd's "deadman's switch"): a thread outside the delivery path
//! that kills the whole process when permission events stop being answered.
//!
//! Why the whole process: the group dies only when EVERY descriptor of it is closed, and the
//! delivery thread, responders and pending event fds all hold some. Killing the process is the
//! one action that closes them all at once; the kernel then allows everything pending and the
//! service manager (`Restart=on-failure`) starts us again. `SIGKILL` rather than `exit` or
//! `abort`: `exit` runs atexit handlers and flushes stdio, which can wait on a lock the stalled
//! thread holds; `abort` may spend seconds writing a core dump while openers stay blocked.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::fanotify::Groups;

/// Progress counters shared by the delivery thread, the responders and the guard. Plain
/// atomics: the delivery thread never waits on them.
#[derive(Debug, Default)]
pub struct Progress {
    /// Permission events read from the group.
    pub received: AtomicU64,
    /// Permission events answered (by anyone).
    pub answered: AtomicU64,
    /// Bumped by the delivery thread on every loop turn (even an idle one).
    pub heartbeat: AtomicU64,
    /// Times the whole process was not running for [`PROCESS_STALL`] or more (SIGSTOP, CPU
    /// starvation, a suspended machine), seen by the guard as a late tick of its own timer,
    /// and the longest such gap in ms. Every event that arrived meanwhile waited that long.
    pub process_stalls: AtomicU64,
    pub process_stall_max_ms: AtomicU64,
    /// The longest time events waited (read but unanswered, or queued and unread) with no
    /// read and no answer at all, in ms, as the guard saw it at its ticks.
    pub no_progress_max_ms: AtomicU64,
}

impl Progress {
    pub fn pending(&self) -> u64 {
        let r = self.received.load(Ordering::Acquire);
        let a = self.answered.load(Ordering::Acquire);
        r.saturating_sub(a)
    }
}

/// A gap between two of the guard's ticks this much longer than the tick means the process
/// was not running.
pub const PROCESS_STALL: Duration = Duration::from_millis(250);

/// What the guard does when it fires. Production: log to stderr and SIGKILL ourselves.
pub type OnStall = Box<dyn Fn(&str) + Send>;

/// The guard's settings.
#[derive(Debug, Clone, Copy)]
pub struct LivenessConfig {
    /// How long events may wait with no progress at all before the guard fires.
    pub limit: Duration,
    /// How often it looks.
    pub tick: Duration,
}

/// A running guard; dropping it stops the thread.
#[derive(Debug)]
pub struct Liveness {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Kill this process at once, after one unbuffered line on stderr.
pub fn kill_self(reason: &str) {
    // Unlocked raw write: stderr in Rust is unbuffered, but its lock could be held by the
    // stalled thread, so write(2) to fd 2 directly.
    let line = format!(
        "gatehouse-extension: LIVENESS GUARD FIRED: {reason}; exiting so the kernel releases every pending event\n"
    );
    let _ = nix::unistd::write(std::io::stderr().as_fd(), line.as_bytes());
    let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
}

impl Liveness {
    /// Start watching both groups. It is stalled when events wait (read but unanswered, or queued
    /// in the kernel and unread) and neither an answer nor a read has happened for `limit`.
    pub fn start(
        group: Arc<Groups>,
        progress: Arc<Progress>,
        config: LivenessConfig,
        on_stall: OnStall,
    ) -> std::io::Result<Liveness> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        // The guard's clock starts here, not when its thread first runs: on a busy machine the
        // new thread may not be scheduled before the process is stopped, and a stall that began
        // before its first instruction must still be seen as a late first tick.
        let started = Instant::now();
        let thread = std::thread::Builder::new()
            .name("gh-liveness".into())
            .spawn(move || guard_loop(&group, &progress, config, &stop2, on_stall, started))?;
        Ok(Liveness {
            stop,
            thread: Some(thread),
        })
    }
}

fn guard_loop(
    group: &Groups,
    progress: &Progress,
    config: LivenessConfig,
    stop: &AtomicBool,
    on_stall: OnStall,
    started: Instant,
) {
    let mut last_mark = (u64::MAX, u64::MAX);
    let mut last_progress = started;
    let mut last_tick = started;
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(config.tick);
        let now = Instant::now();
        let gap = now.duration_since(last_tick);
        last_tick = now;
        if gap >= config.tick + PROCESS_STALL {
            // Nothing of ours ran (this thread's timer is late by that much): count it, and do
            // not blame the delivery thread for time it could not run; it gets a full limit
            // from now, like after any progress.
            progress.process_stalls.fetch_add(1, Ordering::Relaxed);
            progress
                .process_stall_max_ms
                .fetch_max(millis(gap), Ordering::Relaxed);
            last_progress = now;
        }
        let mark = (
            progress.answered.load(Ordering::Acquire),
            progress.received.load(Ordering::Acquire),
        );
        let waiting = progress.pending() > 0 || kernel_has_events(group);
        if mark != last_mark || !waiting {
            last_mark = mark;
            last_progress = now;
            continue;
        }
        let stalled_for = now.duration_since(last_progress);
        progress
            .no_progress_max_ms
            .fetch_max(millis(stalled_for), Ordering::Relaxed);
        if stalled_for >= config.limit {
            on_stall(&format!(
                "{} event(s) pending, none read or answered for {:?} (limit {:?})",
                progress.pending(),
                stalled_for,
                config.limit
            ));
            last_progress = now;
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Is anything queued in either group that the delivery thread has not read?
pub(super) fn kernel_has_events(groups: &Groups) -> bool {
    let [a, b] = groups.both();
    let mut fds = [
        PollFd::new(a.as_fd(), PollFlags::POLLIN),
        PollFd::new(b.as_fd(), PollFlags::POLLIN),
    ];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

impl Drop for Liveness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
