//! Answering one fanotify permission event from any thread: one `write` of a
//! `fanotify_response` on the fd of the group the event came from, an optional evictable inode
//! ignore mark in the exec group (the kernel's exec allow cache, bounded by a budget that the
//! cache keeper (`cache.rs`) replenishes off every hot thread), then the responder lets go of the event fd (it closes
//! when the core's slow-path item, if any, has sent its copy to the helper too).

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use model::Verdict;

use super::fanotify::{Groups, PermKind};
use super::liveness::Progress;
use crate::backend::{Answer, BackendError, Responder, SubjectFd};

/// Backend counters, all lock-free.
#[derive(Debug, Default)]
pub struct Counters {
    pub perm_events: AtomicU64,
    pub exec_events: AtomicU64,
    pub open_events: AtomicU64,
    /// Events from our own pid, allowed on the delivery thread before any conversion.
    pub self_allowed: AtomicU64,
    /// Events from the helper (pidfd-verified), allowed the same way.
    pub helper_allowed: AtomicU64,
    /// `FAN_Q_OVERFLOW` records: the kernel dropped events. A security event.
    pub overflows: AtomicU64,
    /// The write group (transitive allowlisting): `FAN_Q_OVERFLOW` records (close-writes the
    /// kernel dropped, so a compiler's file may go unrecorded) and failed reads.
    pub write_overflows: AtomicU64,
    pub write_read_errors: AtomicU64,
    pub ignore_marks_added: AtomicU64,
    /// Cacheable allows not kernel-cached because the budget was spent (the keeper is then
    /// asked to recount or flush).
    pub ignore_budget_exhausted: AtomicU64,
    /// Cacheable open allows not kernel-cached: open marks are never flushed, so an ignore
    /// mark in the open group could not be cleared on a policy change.
    pub open_not_kernel_cached: AtomicU64,
    pub ignore_mark_errors: AtomicU64,
    pub respond_errors: AtomicU64,
    /// Responders dropped unanswered (a core bug); answered allow by our drop guard.
    pub dropped_unanswered: AtomicU64,
    /// Times the ignore marks were removed (policy change).
    pub cache_clears: AtomicU64,
    /// Reads that returned records, and the most records one read returned.
    pub reads: AtomicU64,
    pub records_max_per_read: AtomicU64,
    /// Failed reads by cause (each retried; the kernel denied the one record it could not
    /// hand over): no descriptor (`EMFILE`/`ENFILE`), no memory, a signal, anything else.
    pub read_fd_exhausted: AtomicU64,
    pub read_nomem: AtomicU64,
    pub read_interrupted: AtomicU64,
    pub read_other_errors: AtomicU64,
    /// Reads held back because the descriptor headroom was spent (records left queued).
    pub fd_headroom_waits: AtomicU64,
    /// Loop turns that backed off (after a failed or held-back read).
    pub read_backoffs: AtomicU64,
    /// How the opener's flags were read (`opener.rs`).
    pub opener: super::opener::OpenerCounters,
}

impl Counters {
    /// Name/value pairs for stats output.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("fanotify.perm_events".into(), g(&self.perm_events)),
            ("fanotify.exec_events".into(), g(&self.exec_events)),
            ("fanotify.open_events".into(), g(&self.open_events)),
            ("fanotify.self_allowed".into(), g(&self.self_allowed)),
            ("fanotify.helper_allowed".into(), g(&self.helper_allowed)),
            ("fanotify.queue_overflows".into(), g(&self.overflows)),
            (
                "fanotify.write_queue_overflows".into(),
                g(&self.write_overflows),
            ),
            (
                "fanotify.write_read_errors".into(),
                g(&self.write_read_errors),
            ),
            (
                "fanotify.ignore_marks_added".into(),
                g(&self.ignore_marks_added),
            ),
            (
                "fanotify.ignore_budget_exhausted".into(),
                g(&self.ignore_budget_exhausted),
            ),
            (
                "fanotify.ignore_mark_errors".into(),
                g(&self.ignore_mark_errors),
            ),
            ("fanotify.respond_errors".into(), g(&self.respond_errors)),
            (
                "fanotify.dropped_unanswered".into(),
                g(&self.dropped_unanswered),
            ),
            ("fanotify.cache_clears".into(), g(&self.cache_clears)),
            (
                "fanotify.open_not_kernel_cached".into(),
                g(&self.open_not_kernel_cached),
            ),
            ("delivery.reads".into(), g(&self.reads)),
            (
                "delivery.records_max_per_read".into(),
                g(&self.records_max_per_read),
            ),
            (
                "delivery.read_fd_exhausted".into(),
                g(&self.read_fd_exhausted),
            ),
            ("delivery.read_nomem".into(), g(&self.read_nomem)),
            (
                "delivery.read_interrupted".into(),
                g(&self.read_interrupted),
            ),
            (
                "delivery.read_other_errors".into(),
                g(&self.read_other_errors),
            ),
            (
                "delivery.fd_headroom_waits".into(),
                g(&self.fd_headroom_waits),
            ),
            ("delivery.read_backoffs".into(), g(&self.read_backoffs)),
            ("opener.flags_read".into(), g(&self.opener.read)),
            ("opener.running".into(), g(&self.opener.running)),
            ("opener.parked".into(), g(&self.opener.parked)),
            ("opener.still_running".into(), g(&self.opener.still_running)),
            ("opener.park_us_max".into(), g(&self.opener.park_us_max)),
            ("opener.flags_skipped".into(), g(&self.opener.skipped)),
        ]
    }
}

/// State every responder shares with the backend.
#[derive(Debug)]
pub struct Shared {
    pub groups: Arc<Groups>,
    pub progress: Arc<Progress>,
    pub counters: Counters,
    /// Ignore marks in the exec group, bounded by `ignore_budget`: reserved before each add,
    /// zeroed by a cache clear, and set to the kernel's own count by the keeper when the budget
    /// runs out (evictable marks go away with their inodes, which nothing tells us about).
    pub ignore_marks: AtomicU64,
    pub ignore_budget: u64,
    /// Wakes the cache keeper when the budget is spent (capacity one: requests coalesce).
    pub keeper: crossbeam_channel::Sender<()>,
    pub keeper_rx: crossbeam_channel::Receiver<()>,
}

impl Shared {
    pub fn new(groups: Arc<Groups>, progress: Arc<Progress>, ignore_budget: u64) -> Shared {
        let (keeper, keeper_rx) = crossbeam_channel::bounded(1);
        Shared {
            groups,
            progress,
            counters: Counters::default(),
            ignore_marks: AtomicU64::new(0),
            ignore_budget,
            keeper,
            keeper_rx,
        }
    }

    /// Reserve one ignore mark from the budget; false when it is spent.
    fn take_ignore_slot(&self) -> bool {
        self.ignore_marks
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.ignore_budget).then_some(n + 1)
            })
            .is_ok()
    }

    /// Answer `fd` now, on the group that delivers `kind`: used by the delivery thread for
    /// muted pids and by the responder.
    pub fn answer(
        &self,
        kind: PermKind,
        fd: BorrowedFd<'_>,
        allow: bool,
    ) -> Result<(), nix::errno::Errno> {
        let r = self.groups.of(kind).respond(fd, allow);
        self.progress.answered.fetch_add(1, Ordering::AcqRel);
        if r.is_err() {
            self.counters.respond_errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

/// Answers one event. Holds a share of the event fd (the same descriptor the core may pass to
/// the helper) from delivery until its response is written, so the fd the kernel matches the
/// response by is always still open; it closes when the last share drops.
#[derive(Debug)]
pub struct FanotifyResponder {
    shared: Arc<Shared>,
    /// `None` once answered.
    fd: Option<SubjectFd>,
    kind: PermKind,
    pid: i32,
}

impl FanotifyResponder {
    pub fn new(shared: Arc<Shared>, fd: SubjectFd, kind: PermKind, pid: i32) -> Self {
        Self {
            shared,
            fd: Some(fd),
            kind,
            pid,
        }
    }
}

impl Responder for FanotifyResponder {
    fn respond(mut self, answer: Answer) -> Result<(), BackendError> {
        let Some(fd) = self.fd.take() else {
            return Ok(());
        };
        let allow = answer.verdict == Verdict::Allow;
        let r = self.shared.answer(self.kind, fd.as_fd(), allow);
        // The kernel cache is added after the answer so the opener is released first; a
        // failure only costs a later event.
        if allow && answer.cache && self.kind == PermKind::Open {
            self.shared
                .counters
                .open_not_kernel_cached
                .fetch_add(1, Ordering::Relaxed);
        } else if allow && answer.cache {
            if self.shared.take_ignore_slot() {
                match self.shared.groups.exec.add_ignore(fd.as_fd(), self.kind) {
                    Ok(()) => {
                        self.shared
                            .counters
                            .ignore_marks_added
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        self.shared.ignore_marks.fetch_sub(1, Ordering::AcqRel);
                        self.shared
                            .counters
                            .ignore_mark_errors
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            } else {
                self.shared
                    .counters
                    .ignore_budget_exhausted
                    .fetch_add(1, Ordering::Relaxed);
                // Never blocks: full means the keeper already has a request.
                let _ = self.shared.keeper.try_send(());
            }
        }
        // Respond first, let go last: this share drops only after the write (and the mark).
        drop(fd);
        r.map_err(|e| BackendError::Respond {
            what: self.describe(),
            source: e.into(),
        })
    }

    fn describe(&self) -> String {
        let kind = match self.kind {
            PermKind::Exec => "exec",
            PermKind::Open => "open",
        };
        format!("fanotify {kind} pid {}", self.pid)
    }
}

impl Drop for FanotifyResponder {
    /// Defence in depth: the core answers every responder, but an event fd closed without an
    /// answer would leave its opener blocked until the group dies. Allow, count, move on.
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            self.shared
                .counters
                .dropped_unanswered
                .fetch_add(1, Ordering::Relaxed);
            let _ = self.shared.answer(self.kind, fd.as_fd(), true);
        }
    }
}
