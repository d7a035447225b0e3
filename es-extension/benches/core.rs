//! Core latency: `deliver()` on the fast path (decided on the delivery thread, including while
//! every slow-path worker is stuck on a helper that never reads), a verdict-cache hit, and
//! event-to-answer through a fake helper over a real Unix socket.
#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{ALLOWED, Behaviour, FakeHelper, test_config, test_policy};
use divan::Bencher;
use es_extension::backend::Delivery;
use es_extension::core::Core;
use es_extension::test_backend::{CountingResponder, TestControl, events};
use model::Event;

/// Every delivery's deadline.
const DEADLINE: Duration = Duration::from_secs(3600);

fn main() {
    divan::main();
}

struct Rig {
    core: Core<CountingResponder>,
    answered: Arc<AtomicU64>,
    next_ino: AtomicU64,
    _helper: Option<FakeHelper>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new(helper: Option<Behaviour>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sock");
        let helper = helper.map(|b| FakeHelper::start(&path, b));
        let mut cfg = test_config(helper.as_ref().map(|h| h.path.as_path()));
        cfg.helper_write_timeout = Duration::from_secs(3600);
        cfg.queue_capacity = 16;
        let core = Core::start(cfg, test_policy(), Arc::new(TestControl::default())).unwrap();
        if helper.is_some() {
            while !core.helper_connected() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Rig {
            core,
            answered: Arc::new(AtomicU64::new(0)),
            next_ino: AtomicU64::new(1),
            _helper: helper,
            _dir: dir,
        }
    }

    fn delivery(&self, event: Event) -> Delivery<CountingResponder> {
        let now = Instant::now();
        Delivery {
            event,
            // An hour: the watchdog never answers during a bench, however busy the machine, so
            // `event_to_answer_via_helper` can assert that no fallback was given.
            deadline: now + DEADLINE,
            received: now,
            file: None,
            responder: CountingResponder {
                counter: Arc::clone(&self.answered),
            },
        }
    }

    fn ino(&self) -> u64 {
        self.next_ino.fetch_add(1, Ordering::Relaxed)
    }

    /// Deliver and spin until the answer arrives (from whichever thread gives it).
    fn round_trip(&self, d: Delivery<CountingResponder>) {
        let before = self.answered.load(Ordering::Acquire);
        self.core.deliver(d);
        while self.answered.load(Ordering::Acquire) == before {
            std::hint::spin_loop();
        }
    }
}

fn open_event(ino: u64) -> Event {
    events::open(3_000_000, "/usr/bin/cat", "/srv/data/file", ino)
}

fn exec_event(ino: u64) -> Event {
    events::exec(3_000_000, "/usr/local/bin/tool", ino)
}

/// An open decided on the delivery thread (mute check, cache miss, policy).
#[divan::bench]
fn fast_path_deliver(b: Bencher<'_, '_>) {
    let rig = Rig::new(None);
    b.with_inputs(|| rig.delivery(open_event(rig.ino())))
        .bench_local_values(|d| rig.core.deliver(d));
}

/// The same, starting with both workers blocked writing to a helper that never reads and the
/// slow-path queue full. The set-up tops the queue up until it stays full across a pause in
/// which free workers would have drained it in microseconds: workers still writing take items
/// while the socket buffer has room, and only blocked ones leave the queue alone. Nothing is
/// asserted about the queue afterwards (a worker that was not yet blocked may take one more);
/// the measured opens never touch it. The connection's write timeout is an hour, so the
/// workers stay stuck for the measurement; `tests/reliability.rs`
/// (`fast_path_keeps_answering_while_every_worker_is_stuck`) proves the independence itself.
#[divan::bench]
fn fast_path_deliver_workers_stuck(b: Bencher<'_, '_>) {
    let rig = Rig::new(Some(Behaviour::StallNoRead));
    let long = format!("/opt/{}/tool", "x".repeat(3000));
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        while rig.core.queue_depth() < 16 {
            rig.core
                .deliver(rig.delivery(events::exec(3_000_000, &long, rig.ino())));
        }
        std::thread::sleep(Duration::from_millis(50));
        if rig.core.queue_depth() == 16 {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "the workers kept draining the queue for a minute into a helper that never reads"
        );
    }
    b.with_inputs(|| rig.delivery(open_event(rig.ino())))
        .bench_local_values(|d| rig.core.deliver(d));
}

/// An exec answered from the verdict cache.
#[divan::bench]
fn cache_hit_deliver(b: Bencher<'_, '_>) {
    let rig = Rig::new(Some(Behaviour::Answer {
        sha256: ALLOWED,
        delay: Duration::ZERO,
    }));
    rig.round_trip(rig.delivery(exec_event(1)));
    while rig.core.metrics().helper_decided.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    b.with_inputs(|| rig.delivery(exec_event(1)))
        .bench_local_values(|d| rig.core.deliver(d));
    assert!(rig.core.metrics().cache_hits.load(Ordering::Relaxed) > 0);
}

/// Event to answer for an exec that needs the helper: queue, worker, Unix socket round trip,
/// policy with the facts, answer.
#[divan::bench(sample_size = 20, sample_count = 200)]
fn event_to_answer_via_helper(b: Bencher<'_, '_>) {
    let rig = Rig::new(Some(Behaviour::Answer {
        sha256: ALLOWED,
        delay: Duration::ZERO,
    }));
    b.with_inputs(|| rig.delivery(exec_event(rig.ino() + 1_000_000)))
        .bench_local_values(|d| rig.round_trip(d));
    assert_eq!(
        rig.core
            .metrics()
            .fallbacks
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>(),
        0
    );
}
