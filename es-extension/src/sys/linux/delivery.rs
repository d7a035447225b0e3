//! The fanotify delivery thread: poll both groups, read a batch, answer our own and the
//! helper's events at once, convert the rest and hand each to the sink (the core) on this same
//! thread.
//!
//! This thread never blocks on anything but `poll` on the groups and its wake-up eventfd: the
//! only I/O per event is the procfs reads documented in `convert`.
//!
//! # Descriptors
//! Every permission record read installs a descriptor in our table, and it stays there until
//! the event is answered (and the slow path, if any, has let go of it). A read that cannot
//! install one fails, and the kernel then denies that record itself, so this loop never reads
//! more records than it has descriptors for: before a read it knows the headroom (the soft
//! `RLIMIT_NOFILE` minus the open-descriptor count that `stat("/proc/self/fd")` reports in
//! `st_size`, Linux 6.2+), keeps [`FD_MARGIN`] for the other threads, and re-measures only when
//! the reads since the last measurement could have used it up. With no headroom it leaves the
//! records queued in the kernel, backs off (1 ms, doubling to 50 ms) and counts. A failed read
//! (`EMFILE`, `ENFILE`, `ENOMEM`, `EINTR`, an LSM refusing the kernel's open) is counted and
//! retried the same way; only a broken group (`EBADF`, `EINVAL`) ends the loop.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

use model::{AccessFlags, EventKind};

use super::convert;
use super::fanotify::{META_LEN, PermKind, RawEvent, WriteGroup};
use super::opener::{self, Flags};
use super::responder::{FanotifyResponder, Shared};
use super::selfmute::{Muted, Ours};
use crate::backend::{Delivery, SubjectFd};

/// Where converted events go: the core's delivery entry point (or a test's sink). Called on the
/// delivery thread; must not block.
pub trait Sink {
    fn deliver(&self, delivery: Delivery<FanotifyResponder>);

    /// A close-after-write by process `pid`, with the kernel's descriptor of the file (the
    /// write group, transitive allowlisting). Must not block; dropping `fd` closes it.
    fn written(&self, pid: i32, fd: OwnedFd) {
        let _ = (pid, fd);
    }
}

/// Our per-kind deadline (the kernel never times a permission event out).
pub type DeadlineFn = Box<dyn Fn(EventKind) -> Duration + Send>;

/// Whether the running policy needs an open's access flags (`Policy::open_flags_matter`): a
/// lock-free policy load, so the delivery thread may call it per event.
pub type FlagsMatterFn = Box<dyn Fn() -> bool + Send>;

/// Wakes the delivery thread for shutdown.
#[derive(Debug, Clone)]
pub struct Waker {
    efd: Arc<EventFd>,
    stop: Arc<AtomicBool>,
}

impl Waker {
    pub fn new() -> std::io::Result<Waker> {
        let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Waker {
            efd: Arc::new(efd),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Ask the loop to return after its current batch.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.efd.write(1);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// Test knob: after this many permission events, stop reading (a stalled delivery thread), so
/// the liveness guard can be shown to release blocked openers. `u64::MAX` (the default) = off.
#[derive(Debug)]
pub struct StallKnob(pub AtomicU64);

impl Default for StallKnob {
    fn default() -> Self {
        StallKnob(AtomicU64::new(u64::MAX))
    }
}

/// Everything the delivery loop needs.
pub struct DeliveryLoop<S: Sink> {
    pub shared: Arc<Shared>,
    pub muted: Arc<Muted>,
    pub sink: S,
    pub deadline: DeadlineFn,
    /// Read the opener's flags only when the policy can use them: the `/proc/<tid>/syscall`
    /// read is the largest cost on the delivery thread after the answer itself.
    pub flags_matter: FlagsMatterFn,
    pub waker: Waker,
    pub stall: Arc<StallKnob>,
    /// The close-write notification group (transitive allowlisting), read after the
    /// permission groups in each turn: its events need no answer and no deadline waits on them.
    pub writes: Option<Arc<WriteGroup>>,
}

impl<S: Sink> std::fmt::Debug for DeliveryLoop<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryLoop").finish_non_exhaustive()
    }
}

/// At most this many records per `read`, so one read installs a bounded number of fds.
const BATCH_RECORDS: usize = 64;

/// Descriptors left for the other threads (helper and control sockets, the events log, the
/// follower's directory reads) when sizing a read.
pub const FD_MARGIN: u64 = 32;

/// Most events parked at once waiting for a "running" opener to be readable (`opener.rs`);
/// beyond this an event is delivered with unknown flags (the strict answer).
pub const MAX_PARKED: usize = 1024;

/// Longest an event stays parked, measured from its arrival; also at most a quarter of the
/// open deadline, so the slow path keeps most of its budget.
pub const PARK_MAX: Duration = Duration::from_millis(100);

/// Longest back-off after a failed read or with no descriptor headroom.
const BACKOFF_MAX: Duration = Duration::from_millis(50);

/// Free descriptor slots now: soft `RLIMIT_NOFILE` minus the open count. `None` when either
/// cannot be read (an older kernel reports `st_size` 0 for `/proc/self/fd`; then the read is
/// sized as if there were room and a failure is handled as a failed read).
pub fn fd_headroom() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct through a valid, exclusive pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let soft = lim.rlim_cur;
    let open = nix::sys::stat::stat("/proc/self/fd").ok()?.st_size;
    let open = u64::try_from(open).ok().filter(|n| *n > 0)?;
    Some(soft.saturating_sub(open))
}

/// How many records the next read may take, re-measuring the headroom only when the reads
/// since the last measurement could have used it up.
#[derive(Debug, Default)]
struct Headroom {
    /// Full-size reads still covered by the last measurement.
    reads_left: u64,
}

impl Headroom {
    fn records(&mut self) -> usize {
        if self.reads_left > 0 {
            self.reads_left -= 1;
            return BATCH_RECORDS;
        }
        let Some(free) = fd_headroom() else {
            return BATCH_RECORDS;
        };
        let usable = free.saturating_sub(FD_MARGIN);
        let batch = BATCH_RECORDS as u64;
        // This read takes up to `batch`; the ones after it are covered while usable lasts.
        self.reads_left = (usable / batch).saturating_sub(1);
        usable.min(batch) as usize
    }

    /// A read failed for want of descriptors: measure again next time.
    fn invalidate(&mut self) {
        self.reads_left = 0;
    }
}

/// An open event waiting for its opener's flags.
#[derive(Debug)]
struct Parked {
    pid: i32,
    fd: OwnedFd,
    received: Instant,
}

/// A record ready to be answered or delivered, once the whole turn's flags are read.
#[derive(Debug)]
enum Ready {
    Muted {
        kind: PermKind,
        fd: OwnedFd,
        who: Ours,
    },
    Event {
        kind: PermKind,
        pid: i32,
        fd: OwnedFd,
        received: Instant,
        access: Option<AccessFlags>,
    },
}

impl<S: Sink> DeliveryLoop<S> {
    /// Run until [`Waker::stop`]. Returns an error only if a group itself fails.
    pub fn run(self) -> std::io::Result<()> {
        let mut buf = vec![0u8; BATCH_RECORDS * META_LEN];
        let mut batch = Vec::with_capacity(BATCH_RECORDS);
        let groups = Arc::clone(&self.shared.groups);
        let c = &self.shared.counters;
        let mut headroom = Headroom::default();
        let mut backoff = Duration::ZERO;
        let mut parked: Vec<Parked> = Vec::new();
        let mut ready: Vec<Ready> = Vec::with_capacity(2 * BATCH_RECORDS);
        let park_max = PARK_MAX.min((self.deadline)(EventKind::Open) / 4);
        loop {
            self.shared
                .progress
                .heartbeat
                .fetch_add(1, Ordering::Relaxed);
            if self.waker.stopped() {
                // Parked events are the loop's alone: hand them on (the core answers them
                // during its shutdown) rather than leave their openers to the group's close.
                self.retry_parked(&mut parked, &mut ready, Instant::now(), Duration::ZERO);
                for r in ready.drain(..) {
                    self.finish(r);
                }
                return Ok(());
            }
            let stall_at = self.stall.0.load(Ordering::Relaxed);
            if self.shared.progress.received.load(Ordering::Relaxed) >= stall_at {
                // Deliberately stalled (test knob): sleep without reading.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            if !backoff.is_zero() {
                std::thread::sleep(backoff);
            }
            // Poll, then one read per readable group. Reading until EAGAIN before polling was
            // measured (tests/benches/open_exec.rs, pinned and unpinned) and gave no consistent
            // gain: a serial opener's next event is rarely queued yet, so it adds a failed read.
            // Without a write group the eventfd stands in its slot (polled twice: harmless).
            let writes_fd = match &self.writes {
                Some(w) => w.as_fd(),
                None => self.waker.efd.as_fd(),
            };
            let mut fds = [
                PollFd::new(groups.exec.as_fd(), PollFlags::POLLIN),
                PollFd::new(groups.open.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.waker.efd.as_fd(), PollFlags::POLLIN),
                PollFd::new(writes_fd, PollFlags::POLLIN),
            ];
            // Parked events are looked at again every millisecond; nothing else times this poll.
            let timeout = if parked.is_empty() {
                PollTimeout::NONE
            } else {
                PollTimeout::from(1u8)
            };
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let readable = [0, 1].map(|i| {
                fds[i]
                    .revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLIN))
            });
            let writes_readable = self.writes.is_some()
                && fds[3]
                    .revents()
                    .is_some_and(|r| r.intersects(PollFlags::POLLIN));
            let mut failed = false;
            batch.clear();
            for (group, readable) in groups.both().into_iter().zip(readable) {
                if !readable {
                    continue;
                }
                let max = headroom.records();
                if max == 0 {
                    // The records stay queued in the kernel until descriptors free up.
                    c.fd_headroom_waits.fetch_add(1, Ordering::Relaxed);
                    failed = true;
                    continue;
                }
                let n = match group.read_batch(&mut buf, max, &mut batch) {
                    Ok(n) => n,
                    Err(e @ (Errno::EBADF | Errno::EINVAL)) => return Err(e.into()),
                    Err(e) => {
                        let counter = match e {
                            Errno::EMFILE | Errno::ENFILE => &c.read_fd_exhausted,
                            Errno::ENOMEM => &c.read_nomem,
                            Errno::EINTR => &c.read_interrupted,
                            _ => &c.read_other_errors,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        if matches!(e, Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM) {
                            headroom.invalidate();
                            failed = true;
                        }
                        continue;
                    }
                };
                if n == 0 {
                    continue;
                }
                c.reads.fetch_add(1, Ordering::Relaxed);
                c.records_max_per_read
                    .fetch_max(n as u64, Ordering::Relaxed);
            }
            // First every flag of this turn (parked events, then the new records), and only
            // then any answer: an answer wakes every waiting opener of its group, which would
            // make the next opener's flags unreadable ("running") for a while.
            let now = Instant::now();
            self.retry_parked(&mut parked, &mut ready, now, park_max);
            for ev in batch.drain(..) {
                self.take(ev, &mut parked, &mut ready, now);
            }
            for r in ready.drain(..) {
                self.finish(r);
            }
            // Close-writes last, after every answer of this turn.
            if writes_readable && let Some(w) = &self.writes {
                let max = headroom.records();
                if max > 0 {
                    match w.read_batch(&mut buf, max, &mut batch) {
                        Ok(_) => {}
                        Err(e @ (Errno::EBADF | Errno::EINVAL)) => return Err(e.into()),
                        Err(_) => {
                            c.write_read_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    for ev in batch.drain(..) {
                        match ev {
                            RawEvent::Written { pid, fd } => self.sink.written(pid, fd),
                            RawEvent::Overflow => {
                                c.write_overflows.fetch_add(1, Ordering::Relaxed);
                            }
                            // A permission record cannot come from a notification group.
                            RawEvent::Perm { .. } | RawEvent::Other { .. } => {}
                        }
                    }
                } else {
                    c.fd_headroom_waits.fetch_add(1, Ordering::Relaxed);
                    failed = true;
                }
            }
            backoff = if failed {
                c.read_backoffs.fetch_add(1, Ordering::Relaxed);
                (backoff * 2).clamp(Duration::from_millis(1), BACKOFF_MAX)
            } else {
                Duration::ZERO
            };
        }
    }

    /// Count one record and sort it: muted (answered in [`Self::finish`]), ready with its
    /// flags, or parked while its opener is "running".
    fn take(&self, ev: RawEvent, parked: &mut Vec<Parked>, ready: &mut Vec<Ready>, now: Instant) {
        let c = &self.shared.counters;
        match ev {
            RawEvent::Perm { kind, pid, fd } => {
                self.shared.progress.received.fetch_add(1, Ordering::AcqRel);
                c.perm_events.fetch_add(1, Ordering::Relaxed);
                match kind {
                    PermKind::Exec => c.exec_events.fetch_add(1, Ordering::Relaxed),
                    PermKind::Open => c.open_events.fetch_add(1, Ordering::Relaxed),
                };
                // Ours and the helper's first, before any conversion work.
                if let Some(who) = self.muted.check(pid, kind == PermKind::Open) {
                    ready.push(Ready::Muted { kind, fd, who });
                    return;
                }
                let access = match kind {
                    PermKind::Exec => None,
                    // Unknown flags are decided as possibly modifying, which is every answer
                    // a policy without read exemptions gives anyway.
                    PermKind::Open if !(self.flags_matter)() => {
                        c.opener.skipped.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    PermKind::Open => match opener::read(pid, opener::QUICK_RETRIES, &c.opener) {
                        Flags::Known(a) => a,
                        Flags::Running if parked.len() < MAX_PARKED => {
                            c.opener.parked.fetch_add(1, Ordering::Relaxed);
                            parked.push(Parked {
                                pid,
                                fd,
                                received: now,
                            });
                            return;
                        }
                        Flags::Running => {
                            c.opener.still_running.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                    },
                };
                ready.push(Ready::Event {
                    kind,
                    pid,
                    fd,
                    received: now,
                    access,
                });
            }
            RawEvent::Overflow => {
                c.overflows.fetch_add(1, Ordering::Relaxed);
            }
            // Only the write group reports these, and it is read on its own above.
            RawEvent::Written { .. } | RawEvent::Other { .. } => {}
        }
    }

    /// Look once more at each parked opener; release those readable now or parked too long.
    fn retry_parked(
        &self,
        parked: &mut Vec<Parked>,
        ready: &mut Vec<Ready>,
        now: Instant,
        park_max: Duration,
    ) {
        let c = &self.shared.counters.opener;
        let mut i = 0;
        while i < parked.len() {
            let p = &parked[i];
            let access = match opener::read(p.pid, 0, c) {
                Flags::Known(a) => a,
                Flags::Running if now.duration_since(p.received) < park_max => {
                    i += 1;
                    continue;
                }
                Flags::Running => {
                    c.still_running.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
            let p = parked.swap_remove(i);
            let us = u64::try_from(now.duration_since(p.received).as_micros()).unwrap_or(u64::MAX);
            c.park_us_max.fetch_max(us, Ordering::Relaxed);
            ready.push(Ready::Event {
                kind: PermKind::Open,
                pid: p.pid,
                fd: p.fd,
                received: p.received,
                access,
            });
        }
    }

    /// Answer a muted record, or convert and deliver an event.
    fn finish(&self, r: Ready) {
        let c = &self.shared.counters;
        match r {
            Ready::Muted { kind, fd, who } => {
                let _ = self.shared.answer(kind, fd.as_fd(), true);
                match who {
                    Ours::SelfProcess => &c.self_allowed,
                    Ours::Helper => &c.helper_allowed,
                }
                .fetch_add(1, Ordering::Relaxed);
            }
            Ready::Event {
                kind,
                pid,
                fd,
                received,
                access,
            } => {
                let event = convert::to_event(kind, pid, fd.as_fd(), access);
                // One descriptor, shared (no dup): the responder answers and marks through it,
                // the core passes it to the helper if the event goes to the slow path.
                let fd = SubjectFd::new(fd);
                let deadline = received + (self.deadline)(event.kind());
                let responder =
                    FanotifyResponder::new(Arc::clone(&self.shared), fd.clone(), kind, pid);
                let file = Some(fd);
                self.sink.deliver(Delivery {
                    event,
                    deadline,
                    received,
                    file,
                    responder,
                });
            }
        }
    }
}
