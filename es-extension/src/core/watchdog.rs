//! The watchdog: one thread with a timer heap that answers the policy's fallback at
//! `deadline - headroom` for every handed-off event the slow path has not answered yet.
//!
//! [`headroom`] and [`slow_path_budget`] are the pure rule (Santa's): headroom is 20% of the
//! time left at arrival, clamped to a per-backend range (ES 1..5 s, Linux e.g. 50..500 ms). The
//! macOS conversion code (`sys/macos/convert.rs`) should call these rather than restate the rule.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use model::FallbackReason;

use super::pending::Slot;
use crate::backend::Responder;

/// Headroom kept between the fallback answer and the kernel's deadline: 20% of `time_left`,
/// clamped to `[min, max]`.
pub fn headroom(time_left: Duration, min: Duration, max: Duration) -> Duration {
    (time_left / 5).clamp(min, max.max(min))
}

/// How long the slow path may take for an event with `time_left` before its deadline: the time
/// left minus the headroom, or zero when the headroom does not fit (then the fallback is given
/// at once, on the delivery thread).
pub fn slow_path_budget(time_left: Duration, min: Duration, max: Duration) -> Duration {
    time_left.saturating_sub(headroom(time_left, min, max))
}

/// One registered event.
struct Entry<R: Responder> {
    fire_at: Instant,
    seq: u64,
    slot: Weak<Slot<R>>,
}

impl<R: Responder> PartialEq for Entry<R> {
    fn eq(&self, o: &Self) -> bool {
        (self.fire_at, self.seq) == (o.fire_at, o.seq)
    }
}
impl<R: Responder> Eq for Entry<R> {}
impl<R: Responder> PartialOrd for Entry<R> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<R: Responder> Ord for Entry<R> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.fire_at, self.seq).cmp(&(o.fire_at, o.seq))
    }
}

/// One registration: when to answer, and the event (weakly: an answered event is freed at once).
pub type Registration<R> = (Instant, Weak<Slot<R>>);

/// The registering side, used on the delivery thread: never blocks.
pub struct WatchdogHandle<R: Responder> {
    tx: Sender<Registration<R>>,
}

impl<R: Responder> std::fmt::Debug for WatchdogHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchdogHandle")
            .field("queued", &self.tx.len())
            .finish()
    }
}

impl<R: Responder> WatchdogHandle<R> {
    /// Register `slot` to be answered at `fire_at`. False when the registration channel is
    /// full: the caller must then answer the fallback itself.
    pub fn register(&self, fire_at: Instant, slot: Weak<Slot<R>>) -> bool {
        match self.tx.try_send((fire_at, slot)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

pub fn channel<R: Responder>(capacity: usize) -> (WatchdogHandle<R>, Receiver<Registration<R>>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (WatchdogHandle { tx }, rx)
}

/// The watchdog thread's body. `prune_at` bounds the heap: beyond it, entries whose event was
/// already answered are dropped. On `stop` it answers every live entry with
/// [`FallbackReason::Shutdown`] and returns.
pub fn run<R: Responder>(rx: Receiver<Registration<R>>, stop: Receiver<()>, prune_at: usize) {
    let mut heap: BinaryHeap<Reverse<Entry<R>>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |heap: &mut BinaryHeap<Reverse<Entry<R>>>, (fire_at, slot)| {
        seq += 1;
        heap.push(Reverse(Entry { fire_at, seq, slot }));
    };
    loop {
        let now = Instant::now();
        while let Some(Reverse(top)) = heap.peek() {
            if top.fire_at > now {
                break;
            }
            let Some(Reverse(e)) = heap.pop() else { break };
            if let Some(slot) = e.slot.upgrade()
                && !slot.is_answered()
            {
                slot.answer_fallback(FallbackReason::Deadline);
            }
        }
        if heap.len() > prune_at {
            heap.retain(|Reverse(e)| e.slot.upgrade().is_some_and(|s| !s.is_answered()));
        }
        if matches!(
            stop.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        ) {
            break;
        }
        let wait = heap
            .peek()
            .map_or(Duration::from_millis(100), |Reverse(e)| {
                e.fire_at.saturating_duration_since(now)
            })
            .min(Duration::from_millis(100));
        match rx.recv_timeout(wait) {
            Ok(reg) => {
                push(&mut heap, reg);
                // Take whatever else is queued without waking up once per event.
                for reg in rx.try_iter().take(4096) {
                    push(&mut heap, reg);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    for reg in rx.try_iter() {
        push(&mut heap, reg);
    }
    for Reverse(e) in heap.into_vec() {
        if let Some(slot) = e.slot.upgrade() {
            slot.answer_fallback(FallbackReason::Shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn headroom_table() {
        // (time left, min, max, headroom, budget)
        let cases = [
            // ES range 1..5 s.
            (MS(60_000), MS(1_000), MS(5_000), MS(5_000), MS(55_000)),
            (MS(10_000), MS(1_000), MS(5_000), MS(2_000), MS(8_000)),
            (MS(5_000), MS(1_000), MS(5_000), MS(1_000), MS(4_000)),
            (MS(2_000), MS(1_000), MS(5_000), MS(1_000), MS(1_000)),
            // Shorter than the minimum headroom: no slow path at all.
            (MS(800), MS(1_000), MS(5_000), MS(1_000), MS(0)),
            (MS(0), MS(1_000), MS(5_000), MS(1_000), MS(0)),
            // Linux range 50..500 ms.
            (MS(5_000), MS(50), MS(500), MS(500), MS(4_500)),
            (MS(1_000), MS(50), MS(500), MS(200), MS(800)),
            (MS(100), MS(50), MS(500), MS(50), MS(50)),
            // A max below the min is read as the min.
            (MS(10_000), MS(300), MS(100), MS(300), MS(9_700)),
        ];
        for (left, min, max, h, b) in cases {
            assert_eq!(headroom(left, min, max), h, "{left:?} {min:?} {max:?}");
            assert_eq!(
                slow_path_budget(left, min, max),
                b,
                "{left:?} {min:?} {max:?}"
            );
        }
    }
}
