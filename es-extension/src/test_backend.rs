//! A deterministic backend with no kernel, for tests and benchmarks: it builds deliveries for
//! scripted events with chosen deadlines and records every answer with the time it arrived, so
//! a test can check "exactly one answer per event, none after its deadline".
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use model::{AccessFlags, CodeSigning, Event, EventBody, FileIdentity, FileRef, MuteSpec, Process};

use crate::backend::{Answer, BackendError, Delivery, KernelControl, Responder};

/// One answer as the test backend received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub id: u64,
    pub answer: Answer,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct Log {
    answers: Vec<Recorded>,
    count_by_id: HashMap<u64, u32>,
}

/// Records answers; shared by every responder of one [`TestBackend`].
#[derive(Debug, Default)]
pub struct Recorder {
    log: Mutex<Log>,
    changed: Condvar,
}

/// Answers one scripted event into the recorder.
#[derive(Debug)]
pub struct TestResponder {
    id: u64,
    recorder: Arc<Recorder>,
}

impl Responder for TestResponder {
    fn respond(self, answer: Answer) -> Result<(), BackendError> {
        let at = Instant::now();
        let mut log = self.recorder.log.lock().unwrap_or_else(|e| e.into_inner());
        *log.count_by_id.entry(self.id).or_default() += 1;
        log.answers.push(Recorded {
            id: self.id,
            answer,
            at,
        });
        drop(log);
        self.recorder.changed.notify_all();
        Ok(())
    }

    fn describe(&self) -> String {
        format!("test event {}", self.id)
    }
}

/// A responder that only counts (benchmarks: no lock on the answer path).
#[derive(Debug)]
pub struct CountingResponder {
    pub counter: Arc<AtomicU64>,
}

impl Responder for CountingResponder {
    fn respond(self, _answer: Answer) -> Result<(), BackendError> {
        self.counter.fetch_add(1, Ordering::Release);
        Ok(())
    }

    fn describe(&self) -> String {
        "counting responder".to_owned()
    }
}

/// What a test sent: the id and the deadline each answer must beat.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub id: u64,
    pub deadline: Instant,
}

/// The outcome of [`TestBackend::verify`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verification {
    pub sent: usize,
    pub answered: usize,
    pub unanswered: Vec<u64>,
    pub answered_twice: Vec<u64>,
    pub late: Vec<(u64, Duration)>,
    pub unknown: Vec<u64>,
}

impl Verification {
    pub fn is_clean(&self) -> bool {
        self.answered == self.sent
            && self.unanswered.is_empty()
            && self.answered_twice.is_empty()
            && self.late.is_empty()
            && self.unknown.is_empty()
    }
}

/// The scripted backend.
#[derive(Debug, Default)]
pub struct TestBackend {
    recorder: Arc<Recorder>,
    next_id: AtomicU64,
    sent: Mutex<Vec<Sent>>,
}

impl TestBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A delivery for `event` that the kernel would stop waiting for after `budget`.
    pub fn delivery(&self, event: Event, budget: Duration) -> (Sent, Delivery<TestResponder>) {
        let now = Instant::now();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sent = Sent {
            id,
            deadline: now + budget,
        };
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sent);
        (
            sent,
            Delivery {
                event,
                deadline: sent.deadline,
                received: now,
                file: None,
                responder: TestResponder {
                    id,
                    recorder: Arc::clone(&self.recorder),
                },
            },
        )
    }

    pub fn answers(&self) -> Vec<Recorded> {
        self.recorder
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .answers
            .clone()
    }

    /// How many answers event `id` got so far (cheap; no copy of the log).
    pub fn answer_count(&self, id: u64) -> u32 {
        let log = self.recorder.log.lock().unwrap_or_else(|e| e.into_inner());
        log.count_by_id.get(&id).copied().unwrap_or(0)
    }

    pub fn answer_for(&self, id: u64) -> Option<Recorded> {
        self.answers().into_iter().find(|r| r.id == id)
    }

    /// Wait until at least `n` answers were recorded, or `timeout`. Returns the count.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let end = Instant::now() + timeout;
        let mut log = self.recorder.log.lock().unwrap_or_else(|e| e.into_inner());
        while log.answers.len() < n {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            log = self
                .recorder
                .changed
                .wait_timeout(log, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        log.answers.len()
    }

    /// Check every sent event: answered exactly once, not after its deadline.
    pub fn verify(&self) -> Verification {
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let answers = self.answers();
        let mut by_id: HashMap<u64, Vec<Recorded>> = HashMap::new();
        for a in answers {
            by_id.entry(a.id).or_default().push(a);
        }
        let mut v = Verification {
            sent: sent.len(),
            ..Verification::default()
        };
        for s in &sent {
            match by_id.remove(&s.id) {
                None => v.unanswered.push(s.id),
                Some(list) => {
                    v.answered += 1;
                    if list.len() > 1 {
                        v.answered_twice.push(s.id);
                    }
                    if let Some(first) = list.first()
                        && first.at > s.deadline
                    {
                        v.late.push((s.id, first.at - s.deadline));
                    }
                }
            }
        }
        v.unknown = by_id.into_keys().collect();
        v
    }
}

/// A [`KernelControl`] that records its calls, and can be told to fail cache clears.
#[derive(Debug, Default)]
pub struct TestControl {
    pub calls: Mutex<Vec<String>>,
    /// The next this-many `clear_cache` calls fail (as a throttled ES call does).
    pub fail_clears: AtomicU64,
    /// `clear_cache` calls that failed; reported as the backend counter `clear_cache_failed`.
    pub clears_failed: AtomicU64,
}

impl TestControl {
    /// Make the next `n` cache clears fail.
    pub fn fail_next_clears(&self, n: u64) {
        self.fail_clears.store(n, Ordering::Release);
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn note(&self, s: String) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }
}

impl KernelControl for TestControl {
    fn mute_path(&self, spec: &MuteSpec) -> Result<(), BackendError> {
        self.note(format!(
            "mute {:?} {} prefix={}",
            spec.scope, spec.path, spec.prefix
        ));
        Ok(())
    }
    fn unmute_path(&self, spec: &MuteSpec) -> Result<(), BackendError> {
        self.note(format!(
            "unmute {:?} {} prefix={}",
            spec.scope, spec.path, spec.prefix
        ));
        Ok(())
    }
    fn clear_cache(&self) -> Result<(), BackendError> {
        self.note("clear_cache".to_owned());
        let failing = self
            .fail_clears
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            self.clears_failed.fetch_add(1, Ordering::Relaxed);
            return Err(BackendError::Control {
                call: "clear_cache",
                detail: "throttled (test)".to_owned(),
            });
        }
        Ok(())
    }

    fn counters(&self) -> Vec<(String, u64)> {
        vec![(
            "clear_cache_failed".to_owned(),
            self.clears_failed.load(Ordering::Relaxed),
        )]
    }
}

/// Scripted events, Linux-shaped (unsigned, file identities from fstat).
pub mod events {
    use super::*;

    pub fn process(pid: u32, exe: &str) -> Process {
        Process {
            pid,
            pid_version: None,
            ppid: Some(1),
            uid: 1000,
            gid: 1000,
            executable: FileRef::new(exe),
            signing: CodeSigning::unsigned(),
            audit_token: None,
        }
    }

    /// A file identity distinct per `ino`, so verdict-cache keys differ per file.
    pub fn identity(ino: u64) -> FileIdentity {
        FileIdentity {
            dev: 42,
            ino,
            size: 4096,
            mtime_ns: 1_700_000_000_000_000_000,
            ctime_ns: 1_700_000_000_000_000_000,
        }
    }

    /// `pid` executes `path` (inode `ino`).
    pub fn exec(pid: u32, path: &str, ino: u64) -> Event {
        let mut target = process(pid, path);
        target.executable.identity = Some(identity(ino));
        Event {
            process: process(pid, "/bin/sh"),
            body: EventBody::Exec {
                target: Box::new(target),
            },
        }
    }

    /// `pid` (running `exe`) opens `path` for reading.
    pub fn open(pid: u32, exe: &str, path: &str, ino: u64) -> Event {
        Event {
            process: process(pid, exe),
            body: EventBody::Open {
                file: FileRef {
                    path: path.to_owned(),
                    identity: Some(identity(ino)),
                },
                access: Some(AccessFlags::READ),
            },
        }
    }
}
