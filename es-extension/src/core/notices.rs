//! Block notices for the person blocked (macOS: the host app's notification, Santa's block
//! notification): a bounded window of recent blocks and a bounded set of waiting agents, each
//! answered once, when a block it may see arrives or when it has waited long enough.
//!
//! Platform-neutral and I/O-free: the events-log writer thread pushes (never the delivery
//! thread), a transport (macOS: the extension's XPC listener) registers waiters whose answer
//! is a callback that must not block (an XPC reply is queued by libxpc). Callbacks run outside
//! the lock.
//!
//! Who sees what: an agent runs in a user's session and connects with that user's euid; it is
//! sent the blocks of that user's processes and of root's (a `sudo` in the user's terminal, a
//! system service acting for them), never another user's.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use protocol::{BlockNotice, NoticeBatch};

/// Recent blocks kept for agents that were between two polls.
pub const WINDOW: usize = 64;
/// Agents waiting at once; one more gets an empty answer at once (it polls again later).
pub const MAX_WAITERS: usize = 16;
/// Notices in one answer; the rest are counted in `missed`.
pub const BATCH_MAX: usize = 16;

/// How a waiting agent is answered (once).
pub type Answer = Box<dyn FnOnce(NoticeBatch) + Send>;

struct Waiter {
    after: u64,
    uid: u32,
    since: Instant,
    answer: Answer,
}

#[derive(Default)]
struct Inner {
    window: VecDeque<BlockNotice>,
    /// The last `seq` given out.
    last: u64,
    waiters: Vec<Waiter>,
}

/// The notices and the agents waiting for them.
#[derive(Default)]
pub struct BlockNotices {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for BlockNotices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("BlockNotices")
            .field("window", &g.window.len())
            .field("last", &g.last)
            .field("waiters", &g.waiters.len())
            .finish()
    }
}

/// Whether an agent of user `uid` may see `n`.
fn visible(n: &BlockNotice, uid: u32) -> bool {
    n.uid == uid || n.uid == 0
}

/// What an agent of `uid` is owed after its cursor `after` (already normalized by
/// [`BlockNotices::wait`]): the visible notices (at most [`BATCH_MAX`]), how many it missed
/// (left the window, or beyond the batch), and its next cursor.
fn owed(inner: &Inner, after: u64, uid: u32) -> Option<NoticeBatch> {
    if after >= inner.last {
        return None;
    }
    let oldest = inner.window.front().map_or(inner.last + 1, |n| n.seq);
    // Seqs after the cursor that left the window: unknown owner, counted as missed.
    let mut missed = oldest.saturating_sub(after + 1);
    let mut notices = Vec::new();
    for n in inner
        .window
        .iter()
        .filter(|n| n.seq > after && visible(n, uid))
    {
        if notices.len() == BATCH_MAX {
            // A person reads a handful of notifications; the rest are a count.
            missed += 1;
        } else {
            notices.push(Box::new(n.clone()));
        }
    }
    // The cursor covers everything looked at, other users' blocks included.
    (!notices.is_empty() || missed > 0).then_some(NoticeBatch {
        notices,
        missed,
        next: inner.last,
    })
}

impl BlockNotices {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one block (its `seq` is assigned here) and answers every waiter that may see it.
    pub fn push(&self, mut notice: BlockNotice) {
        let ready = {
            let mut g = self.lock();
            g.last += 1;
            notice.seq = g.last;
            if g.window.len() == WINDOW {
                g.window.pop_front();
            }
            g.window.push_back(notice);
            take_ready(&mut g, |_| false)
        };
        for (w, batch) in ready {
            (w.answer)(batch);
        }
    }

    /// An agent of user `uid` waits for the blocks after `after`. A cursor of 0 (the agent's
    /// start) or past the last block (one from an earlier run of the extension) means "from
    /// now on": the backlog is not replayed. Answered at once when blocks are owed or when
    /// [`MAX_WAITERS`] are already waiting (empty); otherwise when a block it may see
    /// arrives, or empty by [`BlockNotices::expire`].
    pub fn wait(&self, after: u64, uid: u32, now: Instant, answer: Answer) {
        let immediate = {
            let mut g = self.lock();
            let after = if after == 0 || after > g.last {
                g.last
            } else {
                after
            };
            match owed(&g, after, uid) {
                Some(b) => b,
                None if g.waiters.len() >= MAX_WAITERS => NoticeBatch {
                    notices: Vec::new(),
                    missed: 0,
                    next: after,
                },
                None => {
                    g.waiters.push(Waiter {
                        after,
                        uid,
                        since: now,
                        answer,
                    });
                    return;
                }
            }
        };
        answer(immediate);
    }

    /// Answers, empty, every waiter that has waited `max` or longer (the agent then polls
    /// again, well before its own reply timeout). Called on the writer thread's tick.
    pub fn expire(&self, now: Instant, max: Duration) {
        let ready = {
            let mut g = self.lock();
            take_ready(&mut g, |w| now.saturating_duration_since(w.since) >= max)
        };
        for (w, batch) in ready {
            (w.answer)(batch);
        }
    }

    /// Agents waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().waiters.len()
    }
}

/// Removes the waiters that are owed something (or that `expired` says are done, answered
/// empty), with their answers.
fn take_ready(g: &mut Inner, expired: impl Fn(&Waiter) -> bool) -> Vec<(Waiter, NoticeBatch)> {
    let mut ready = Vec::new();
    let mut keep = Vec::with_capacity(g.waiters.len());
    for w in std::mem::take(&mut g.waiters) {
        match owed(g, w.after, w.uid) {
            Some(b) => ready.push((w, b)),
            None if expired(&w) => {
                let b = NoticeBatch {
                    notices: Vec::new(),
                    missed: 0,
                    next: w.after,
                };
                ready.push((w, b));
            }
            None => keep.push(w),
        }
    }
    g.waiters = keep;
    ready
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn notice(uid: u32, target: &str) -> BlockNotice {
        BlockNotice {
            seq: 0,
            time_unix_ms: 1,
            kind: "exec".into(),
            target: target.into(),
            process: "/bin/zsh".into(),
            pid: 7,
            uid,
            rule: Some("r".into()),
            message: None,
        }
    }

    type Got = Arc<Mutex<Vec<NoticeBatch>>>;

    fn answer(got: &Got) -> Answer {
        let got = Arc::clone(got);
        Box::new(move |b| got.lock().unwrap().push(b))
    }

    fn targets(b: &NoticeBatch) -> Vec<&str> {
        b.notices.iter().map(|n| n.target.as_str()).collect()
    }

    /// An agent starts at 0 (from now on), waits, gets its own user's and root's blocks but
    /// never another user's, and its cursor passes over what it may not see.
    #[test]
    fn agents_see_their_users_and_roots_blocks_only() {
        let n = BlockNotices::default();
        let t = Instant::now();
        n.push(notice(501, "/old"));
        let got: Got = Got::default();
        // From now on: the block from before the agent started is not replayed.
        n.wait(0, 501, t, answer(&got));
        assert_eq!(n.waiting(), 1);
        n.push(notice(502, "/other-user"));
        assert!(
            got.lock().unwrap().is_empty(),
            "another user's block wakes no one"
        );
        n.push(notice(0, "/root"));
        let b = got.lock().unwrap().pop().unwrap();
        assert_eq!(targets(&b), ["/root"]);
        assert_eq!((b.missed, b.next), (0, 3));
        assert_eq!(n.waiting(), 0);

        n.push(notice(501, "/mine"));
        n.push(notice(502, "/theirs"));
        n.wait(b.next, 501, t, answer(&got));
        let b = got.lock().unwrap().pop().unwrap();
        assert_eq!(targets(&b), ["/mine"], "owed at once, without waiting");
        assert_eq!(b.next, 5, "the cursor passes the other user's block");
    }

    /// Bounds: what left the window or did not fit a batch is counted in `missed`; waiters
    /// beyond MAX_WAITERS are answered at once; a stale cursor (another run) restarts.
    #[test]
    fn bounded_and_every_loss_counted() {
        let n = BlockNotices::default();
        let t = Instant::now();
        let got: Got = Got::default();
        n.push(notice(501, "/a"));
        let cursor = 1;
        for i in 0..(WINDOW + 10) {
            n.push(notice(501, &format!("/f{i}")));
        }
        n.wait(cursor, 501, t, answer(&got));
        let b = got.lock().unwrap().pop().unwrap();
        assert_eq!(b.notices.len(), BATCH_MAX);
        assert_eq!(
            b.notices.len() as u64 + b.missed,
            (WINDOW + 10) as u64,
            "every block after the cursor is shown or counted"
        );
        assert_eq!(b.next, (WINDOW + 11) as u64);

        for _ in 0..MAX_WAITERS {
            n.wait(b.next, 501, t, answer(&got));
        }
        assert!(got.lock().unwrap().is_empty());
        n.wait(b.next, 501, t, answer(&got));
        let refused = got.lock().unwrap().pop().unwrap();
        assert_eq!(
            (refused.notices.len(), refused.next),
            (0, b.next),
            "full: answered now"
        );
        assert_eq!(n.waiting(), MAX_WAITERS);

        n.wait(10_000, 501, t, answer(&got));
        let stale = got.lock().unwrap().pop().unwrap();
        assert_eq!(
            stale.next, b.next,
            "a cursor from another run restarts at now"
        );
    }

    /// Every waiter is answered exactly once: by a block, or empty once it has waited long
    /// enough, never twice.
    #[test]
    fn waiters_expire_empty_and_are_answered_once() {
        let n = BlockNotices::default();
        let t = Instant::now();
        n.push(notice(501, "/a"));
        let got: Got = Got::default();
        n.wait(1, 501, t, answer(&got));
        n.wait(1, 501, t + Duration::from_secs(10), answer(&got));
        n.expire(t + Duration::from_secs(5), Duration::from_secs(20));
        assert!(got.lock().unwrap().is_empty());
        n.expire(t + Duration::from_secs(20), Duration::from_secs(20));
        assert_eq!(
            got.lock().unwrap().len(),
            1,
            "only the one that waited 20 s"
        );
        assert_eq!(got.lock().unwrap()[0].next, 1);
        n.push(notice(501, "/b"));
        let all = got.lock().unwrap().clone();
        assert_eq!(all.len(), 2);
        assert_eq!(targets(&all[1]), ["/b"]);
        n.expire(t + Duration::from_secs(100), Duration::from_secs(20));
        n.push(notice(501, "/c"));
        assert_eq!(got.lock().unwrap().len(), 2, "no waiter is answered twice");
    }
}
