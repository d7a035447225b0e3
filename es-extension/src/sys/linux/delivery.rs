//! The fanotify delivery thread: poll, read a batch, answer our own and the helper's events at
//! once, convert the rest and hand each to the sink (the core) on this same thread.
//!
//! This thread never blocks on anything but `poll` on the group and its wake-up eventfd: the
//! only I/O per event is the procfs reads documented in `convert`.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

use model::EventKind;

use super::convert;
use super::fanotify::{PermKind, RawEvent};
use super::responder::{FanotifyResponder, Shared};
use super::selfmute::Muted;
use crate::backend::{Delivery, SubjectFd};

/// Where converted events go: the core's delivery entry point (or a test's sink). Called on the
/// delivery thread; must not block.
pub trait Sink {
    fn deliver(&self, delivery: Delivery<FanotifyResponder>);
}

/// Our per-kind deadline (the kernel never times a permission event out).
pub type DeadlineFn = Box<dyn Fn(EventKind) -> Duration + Send>;

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
    pub waker: Waker,
    pub stall: Arc<StallKnob>,
}

impl<S: Sink> std::fmt::Debug for DeliveryLoop<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryLoop").finish_non_exhaustive()
    }
}

/// At most this many records per `read`, so one read installs a bounded number of fds.
const BATCH_RECORDS: usize = 64;

impl<S: Sink> DeliveryLoop<S> {
    /// Run until [`Waker::stop`]. Returns an error only if the group itself fails.
    pub fn run(self) -> std::io::Result<()> {
        let mut buf =
            vec![0u8; BATCH_RECORDS * std::mem::size_of::<libc::fanotify_event_metadata>()];
        let mut batch = Vec::with_capacity(BATCH_RECORDS);
        let group = Arc::clone(&self.shared.group);
        loop {
            self.shared
                .progress
                .heartbeat
                .fetch_add(1, Ordering::Relaxed);
            if self.waker.stopped() {
                return Ok(());
            }
            let stall_at = self.stall.0.load(Ordering::Relaxed);
            if self.shared.progress.received.load(Ordering::Relaxed) >= stall_at {
                // Deliberately stalled (test knob): sleep without reading.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            // Poll, then one read. Reading until EAGAIN before polling was measured
            // (tests/benches/open_exec.rs, pinned and unpinned) and gave no consistent gain: a
            // serial opener's next event is rarely queued yet, so it adds a failed read.
            let mut fds = [
                PollFd::new(group.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.waker.efd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            batch.clear();
            if group.read_batch(&mut buf, &mut batch)? == 0 {
                continue;
            }
            for ev in batch.drain(..) {
                self.handle(ev);
            }
        }
    }

    fn handle(&self, ev: RawEvent) {
        let c = &self.shared.counters;
        match ev {
            RawEvent::Perm { kind, pid, fd } => {
                let received = Instant::now();
                self.shared.progress.received.fetch_add(1, Ordering::AcqRel);
                c.perm_events.fetch_add(1, Ordering::Relaxed);
                match kind {
                    PermKind::Exec => c.exec_events.fetch_add(1, Ordering::Relaxed),
                    PermKind::Open => c.open_events.fetch_add(1, Ordering::Relaxed),
                };
                // Ours and the helper's first, before any conversion work.
                if let Some(who) = self.muted.check(pid, kind == PermKind::Open) {
                    let _ = self.shared.answer(fd.as_fd(), true);
                    match who {
                        super::selfmute::Ours::SelfProcess => &c.self_allowed,
                        super::selfmute::Ours::Helper => &c.helper_allowed,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let event = convert::to_event(kind, pid, fd.as_fd());
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
            RawEvent::Overflow => {
                c.overflows.fetch_add(1, Ordering::Relaxed);
            }
            RawEvent::Other { .. } => {}
        }
    }
}
