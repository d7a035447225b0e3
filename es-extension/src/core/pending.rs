//! The answer-once slot: one pending AUTH event that several threads may try to answer (a
//! slow-path worker, the helper reader, the watchdog, shutdown). The first wins through an
//! atomic flag; later attempts do nothing but count. Dropping an unanswered slot answers the
//! policy's fallback, so a bug can never leave the kernel waiting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use model::{Cacheability, Decision, Event, EventBody, FallbackReason, Reason, Verdict};
use policy::Snapshot;

use super::Shared;
use super::eventlog::LogRecord;
use super::metrics::{Metrics, verdict_index};
use crate::backend::{Answer, Responder};

/// The kernel answer for a decision: only allows that depend on the file alone are cached by
/// the kernel.
pub fn kernel_answer(d: &Decision) -> Answer {
    Answer {
        verdict: d.verdict,
        cache: d.verdict == Verdict::Allow && d.cacheable == Cacheability::Kernel,
    }
}

/// Send `decision` through `responder` and account for it: metrics at once, the events log
/// after the answer and only through the non-blocking log channel.
pub(crate) fn respond<R: Responder>(
    shared: &Shared,
    responder: R,
    decision: &Decision,
    event: &Event,
    received: Instant,
    deadline: Instant,
    policy_version: u64,
) {
    let m = &shared.metrics;
    let mut answer = kernel_answer(decision);
    // A kernel-cached allow must not outlive the policy it was decided under. The control
    // thread swaps the policy and then clears the kernel cache; an answer decided under the old
    // policy can reach the kernel after that clear. So: no caching once the policy has moved,
    // and if it moves while we answer, clear again (off this thread). Either the re-check sees
    // the new version and asks for a clear that follows our answer, or it sees the old one and
    // the control thread's own clear follows our answer.
    if answer.cache && shared.store.load().version != policy_version {
        answer.cache = false;
    }
    // Before the allow goes out: the compiler cannot write a file before it is tracked.
    // The incarnation is the new image's (the exec target's audit token, where there is one).
    if decision.verdict == Verdict::Allow
        && let EventBody::Exec { target } = &event.body
        && let Reason::Rule { rule } = &decision.reason
        && shared.store.load().policy.is_compiler_rule(rule)
    {
        shared
            .transitive
            .compiler_exec(m, event.process.pid, target.pid_version, &rule.name);
    }
    let result = responder.respond(answer);
    if let Some(forced) = decision.remount {
        shared.request_remount(event, forced);
    }
    if answer.cache && shared.store.load().version != policy_version {
        Metrics::inc(&m.stale_cache_reclears);
        let _ = shared.clear_retry.try_send(());
    }
    let now = Instant::now();
    if result.is_err() {
        Metrics::inc(&m.respond_errors);
    }
    m.event_to_answer
        .record(now.saturating_duration_since(received));
    let late = now > deadline;
    if late {
        Metrics::inc(&m.deadline_misses);
    }
    if let model::Reason::Fallback { why } = decision.reason {
        m.fallback(why);
    }
    // Last, with Release: a reader that sees the answer counted sees the other counters too.
    m.answers[event.kind().index()][verdict_index(decision.verdict)]
        .fetch_add(1, Ordering::Release);
    if decision.is_notable() {
        shared.log.submit(
            LogRecord {
                event: event.clone(),
                decision: decision.clone(),
                latency: now.saturating_duration_since(received),
                late,
                policy_version,
                at: std::time::SystemTime::now(),
            },
            m,
        );
    }
}

/// One handed-off event waiting for its single answer.
pub struct Slot<R: Responder> {
    answered: AtomicBool,
    /// Taken exactly once, by the thread that won `answered`; nobody else ever locks it, so the
    /// lock is never contended.
    responder: Mutex<Option<R>>,
    pub event: Event,
    pub received: Instant,
    pub deadline: Instant,
    /// The policy in force at arrival: its fallbacks apply to this event.
    pub snapshot: Arc<Snapshot>,
    shared: Arc<Shared>,
}

impl<R: Responder> std::fmt::Debug for Slot<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("kind", &self.event.kind())
            .field("pid", &self.event.process.pid)
            .field("answered", &self.is_answered())
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl<R: Responder> Slot<R> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        responder: R,
        event: Event,
        received: Instant,
        deadline: Instant,
        snapshot: Arc<Snapshot>,
    ) -> Self {
        Self {
            answered: AtomicBool::new(false),
            responder: Mutex::new(Some(responder)),
            event,
            received,
            deadline,
            snapshot,
            shared,
        }
    }

    pub fn is_answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    /// Answer with `decision` if nobody has yet. Returns whether this call answered.
    pub fn answer(&self, decision: &Decision) -> bool {
        if self
            .answered
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            Metrics::inc(&self.shared.metrics.duplicate_answers);
            return false;
        }
        let responder = self
            .responder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(r) = responder {
            respond(
                &self.shared,
                r,
                decision,
                &self.event,
                self.received,
                self.deadline,
                self.snapshot.version,
            );
        }
        true
    }

    /// The fallback decision of the arrival-time policy for `why`.
    pub fn fallback_decision(&self, why: FallbackReason) -> Decision {
        Decision::fallback(self.snapshot.policy.fallback(self.event.kind(), why), why)
    }

    /// Answer the policy's fallback for `why` if nobody has yet.
    pub fn answer_fallback(&self, why: FallbackReason) -> bool {
        self.answer(&self.fallback_decision(why))
    }
}

impl<R: Responder> Drop for Slot<R> {
    fn drop(&mut self) {
        if !*self.answered.get_mut() {
            // Every owner dropped it unanswered: a bug elsewhere, but the kernel still gets
            // its one answer.
            self.answer_fallback(FallbackReason::Dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use model::Reason;

    use super::*;
    use crate::test_backend::{TestBackend, TestResponder, events};

    const DENY_FALLBACK: &str =
        "version = 1\nmode = \"enforce\"\n[defaults]\nfallback = \"deny\"\n";

    fn slot(shared: &Arc<Shared>, backend: &TestBackend) -> Slot<TestResponder> {
        let (_, d) = backend.delivery(events::exec(3_000_000, "/bin/x", 1), Duration::from_secs(5));
        Slot::new(
            Arc::clone(shared),
            d.responder,
            d.event,
            d.received,
            d.deadline,
            shared.store.load(),
        )
    }

    #[test]
    fn racing_answerers_give_exactly_one_answer() {
        let shared = super::super::test_shared(policy::Policy::parse("t", DENY_FALLBACK).unwrap());
        for round in 0..50 {
            let backend = TestBackend::new();
            let s = Arc::new(slot(&shared, &backend));
            let barrier = Arc::new(Barrier::new(8));
            let winners: usize = (0..8)
                .map(|i| {
                    let (s, b) = (Arc::clone(&s), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        b.wait();
                        if i % 2 == 0 {
                            s.answer_fallback(FallbackReason::Deadline)
                        } else {
                            s.answer(&Decision::allow(Reason::Default, Cacheability::Never))
                        }
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| usize::from(t.join().unwrap()))
                .sum();
            assert_eq!(winners, 1, "round {round}");
            drop(s);
            assert_eq!(backend.answers().len(), 1, "round {round}");
        }
        assert_eq!(shared.metrics.duplicate_answers.load(Relaxed), 50 * 7);
    }

    #[test]
    fn drop_table() {
        let shared = super::super::test_shared(policy::Policy::parse("t", DENY_FALLBACK).unwrap());
        // (answer before dropping?, expected verdict of the one answer)
        let cases = [(false, Verdict::Deny), (true, Verdict::Allow)];
        for (answer_first, want) in cases {
            let backend = TestBackend::new();
            let s = slot(&shared, &backend);
            if answer_first {
                assert!(s.answer(&Decision::allow(Reason::Default, Cacheability::Kernel)));
            }
            drop(s);
            let answers = backend.answers();
            assert_eq!(answers.len(), 1, "answer_first={answer_first}");
            assert_eq!(answers[0].answer.verdict, want);
            assert_eq!(
                answers[0].answer.cache, answer_first,
                "only a kernel-cacheable allow is cached"
            );
        }
        assert_eq!(shared.metrics.fallback_count(FallbackReason::Dropped), 1);
    }

    /// A responder that swaps the policy while it answers: the race between a caching answer
    /// and the control thread's load-then-clear, made deterministic.
    struct SwapsPolicy {
        shared: Arc<Shared>,
        swap: bool,
        got: Arc<Mutex<Option<crate::backend::Answer>>>,
    }

    impl Responder for SwapsPolicy {
        fn respond(
            self,
            answer: crate::backend::Answer,
        ) -> Result<(), crate::backend::BackendError> {
            if self.swap {
                self.shared
                    .store
                    .replace(policy::Policy::parse("t", DENY_FALLBACK).unwrap());
            }
            *self.got.lock().unwrap() = Some(answer);
            Ok(())
        }
        fn describe(&self) -> String {
            "swaps-policy".into()
        }
    }

    #[test]
    fn kernel_cached_allows_never_outlive_a_policy_swap() {
        let cacheable = Decision::allow(Reason::Default, Cacheability::Kernel);
        let ev = events::exec(3_000_000, "/bin/x", 1);
        // (decided under the current version?, policy swapped while answering?,
        //  kernel asked to cache?, re-clear requested?)
        let cases = [
            (true, false, true, false),
            (false, false, false, false), // already stale: not cached at all
            (true, true, true, true),     // moved mid-answer: cached, then cleared again
        ];
        for (current, swap, want_cache, want_reclear) in cases {
            let shared =
                super::super::test_shared(policy::Policy::parse("t", DENY_FALLBACK).unwrap());
            let version = shared.store.load().version - u64::from(!current);
            let got = Arc::new(Mutex::new(None));
            let r = SwapsPolicy {
                shared: Arc::clone(&shared),
                swap,
                got: Arc::clone(&got),
            };
            let now = Instant::now();
            respond(
                &shared,
                r,
                &cacheable,
                &ev,
                now,
                now + Duration::from_secs(5),
                version,
            );
            let answer = got.lock().unwrap().expect("answered");
            let case = (current, swap);
            assert_eq!(answer.verdict, Verdict::Allow, "{case:?}");
            assert_eq!(answer.cache, want_cache, "{case:?}");
            assert_eq!(
                shared.metrics.stale_cache_reclears.load(Relaxed),
                u64::from(want_reclear),
                "{case:?}"
            );
        }
    }
}
