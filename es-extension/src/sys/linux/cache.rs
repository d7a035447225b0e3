//! The keeper of the kernel's exec allow cache (the exec group's evictable inode ignore marks):
//! when the mark budget is spent, it flushes them all, off every hot thread, and the budget
//! starts again, so a long-running agent keeps a working kernel cache instead of switching it
//! off for good once it has seen `ignore_budget` distinct allowed files.
//!
//! Why flush rather than count what is left: the kernel evicts these marks with their inodes
//! without telling us, and the only count it offers is `/proc/self/fdinfo/<group>`, which lists
//! every mark while holding the group's mark lock, the lock a responder's `fanotify_mark` (on the
//! delivery thread too) needs. A flush is one short call, and what it costs is bounded: every
//! file's next exec is decided again (and cached again) once per `ignore_budget` new files.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;

use super::marks;
use super::responder::Shared;

/// The keeper's counters.
#[derive(Debug, Default)]
pub struct KeeperCounters {
    /// Flushes because the budget was spent.
    pub budget_flushes: AtomicU64,
    pub flush_errors: AtomicU64,
}

/// Start the `gh-cache` thread; it returns once `stop` is set (seen within 200 ms).
pub fn spawn(
    shared: Arc<Shared>,
    counters: Arc<KeeperCounters>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("gh-cache".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                match shared.keeper_rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(()) => refill(&shared, &counters),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
}

/// Flush the exec group's ignore marks and give their slots back. Marks reserved after the
/// load below stay counted (they may land after the flush), so the count never under-states.
pub fn refill(shared: &Shared, counters: &KeeperCounters) {
    let before = shared.ignore_marks.load(Ordering::Acquire);
    match marks::clear_cache(&shared.groups) {
        Ok(()) => {
            let _ = shared
                .ignore_marks
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_sub(before))
                });
            counters.budget_flushes.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            counters.flush_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
