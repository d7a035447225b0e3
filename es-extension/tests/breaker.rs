//! The helper circuit breaker: a connected helper that stops answering opens it after a few
//! timeouts in a row; while open, events needing analysis are answered the `helper_unavailable`
//! fallback at once, on the delivery thread, and reach no helper; a probe that the recovered
//! helper answers closes it again on the same connection; every event is answered exactly once.

mod common;

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use crossbeam_channel::Receiver;
use es_extension::core::{HelperEndpoint, HelperTransport, LinkSink, TransportError};
use es_extension::test_backend::events;
use model::{Facts, Verdict};
use protocol::{HelperRequest, HelperResponse, Request, Response};

/// A helper that answers every request at once, or (while `stalled`) takes requests and never
/// answers them, like a helper wedged in a slow analysis. One connection for its whole life.
#[derive(Default)]
struct Switchable {
    stalled: AtomicBool,
    connected: AtomicBool,
    connects: AtomicU64,
    analyze: AtomicU64,
    pings: AtomicU64,
    sink: Mutex<Option<LinkSink>>,
    answers: Mutex<Option<crossbeam_channel::Sender<Response<HelperResponse>>>>,
}

impl HelperTransport for Switchable {
    fn describe(&self) -> String {
        "switchable".into()
    }
    fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
    fn peer_pid(&self) -> Option<u32> {
        None
    }
    fn run(&self, sink: LinkSink, stop: &Receiver<()>) {
        // Answers go out from this (the helper) thread, as a socket reader's would.
        let (tx, rx) = crossbeam_channel::unbounded();
        *self.answers.lock().unwrap() = Some(tx);
        *self.sink.lock().unwrap() = Some(sink.clone());
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.connected.store(true, Ordering::Release);
        sink.connected();
        loop {
            crossbeam_channel::select! {
                recv(rx) -> r => match r {
                    Ok(resp) => sink.response(resp),
                    Err(_) => break,
                },
                recv(stop) -> _ => break,
            }
        }
        self.connected.store(false, Ordering::Release);
    }
    fn send(
        &self,
        req: &Request<HelperRequest>,
        _fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), TransportError> {
        let body = match req.body {
            HelperRequest::Ping => {
                self.pings.fetch_add(1, Ordering::Relaxed);
                HelperResponse::Pong {
                    agent: "switchable".into(),
                    pid: 1,
                    uptime_ms: 1,
                }
            }
            _ => {
                self.analyze.fetch_add(1, Ordering::Relaxed);
                HelperResponse::Analysis {
                    facts: Facts {
                        sha256: Some(ALLOWED),
                        ..Facts::NONE
                    },
                    errors: vec![],
                }
            }
        };
        if !self.stalled.load(Ordering::Acquire)
            && let Some(tx) = &*self.answers.lock().unwrap()
        {
            let _ = tx.send(Response { id: req.id, body });
        }
        Ok(())
    }
    fn close(&self) {
        self.connected.store(false, Ordering::Release);
    }
}

const BUDGET: Duration = Duration::from_millis(400);

#[test]
fn stuck_helper_fails_fast_then_recovers_without_reconnect() {
    let helper = Arc::new(Switchable::default());
    let mut cfg = test_config(None).with_helper(HelperEndpoint::Custom(helper.clone()));
    cfg.helper_breaker_threshold = 3;
    cfg.helper_probe_interval = Duration::from_millis(50);
    cfg.helper_probe_timeout = Duration::from_millis(50);
    let rig = start(cfg);
    wait_connected(&rig.core, true);
    let mut pid = 4_000_000;
    let mut exec = |rig: &Rig| {
        pid += 1;
        let (sent, d) = rig.backend.delivery(
            events::exec(pid, "/usr/local/bin/tool", u64::from(pid)),
            BUDGET,
        );
        rig.core.deliver(d);
        sent
    };

    // Healthy: answered by the helper.
    let first = exec(&rig);
    settle(&rig.core, 1);
    assert_eq!(
        rig.backend.answer_for(first.id).unwrap().answer.verdict,
        Verdict::Allow
    );

    // Stuck: three events each wait out the watchdog; then the breaker opens.
    helper.stalled.store(true, Ordering::Release);
    for _ in 0..3 {
        exec(&rig);
    }
    wait_counter(&rig.core, "helper_breaker_opens", 1);
    settle(&rig.core, 4);
    assert_eq!(counter(&rig.core, "fallbacks.deadline"), 3);
    assert_eq!(helper.analyze.load(Ordering::Relaxed), 4);

    // Open: each event is answered before `deliver` returns, with the helper_unavailable
    // fallback (deny in the test policy), and no request reaches the helper.
    for _ in 0..20 {
        let s = exec(&rig);
        let r = rig
            .backend
            .answer_for(s.id)
            .expect("answered on the delivery thread while the breaker is open");
        assert_eq!(r.answer.verdict, Verdict::Deny);
    }
    assert_eq!(counter(&rig.core, "fallbacks.helper_unavailable"), 20);
    assert_eq!(counter(&rig.core, "helper_fast_failed"), 20);
    assert_eq!(helper.analyze.load(Ordering::Relaxed), 4);
    assert!(counter(&rig.core, "helper_breaker_open") == 1 || !rig.core.helper_connected());

    // Recovered: a probe closes the breaker on the same connection.
    helper.stalled.store(false, Ordering::Release);
    let end = Instant::now() + Duration::from_secs(10);
    while counter(&rig.core, "helper_breaker_open") != 0 {
        assert!(Instant::now() < end, "the breaker never closed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(counter(&rig.core, "helper_probes") >= 1);
    assert!(helper.pings.load(Ordering::Relaxed) >= 1);
    let before = counter(&rig.core, "helper_decided");
    let again: Vec<_> = (0..5).map(|_| exec(&rig)).collect();
    settle(&rig.core, 1 + 3 + 20 + 5);
    for s in &again {
        assert_eq!(
            rig.backend.answer_for(s.id).unwrap().answer.verdict,
            Verdict::Allow
        );
    }
    assert_eq!(counter(&rig.core, "helper_decided"), before + 5);
    assert_eq!(helper.connects.load(Ordering::Relaxed), 1, "no reconnect");
    assert_eq!(counter(&rig.core, "helper_breaker_opens"), 1);
    rig.core.shutdown();
    assert_clean(&rig.backend);
}

/// A threshold of 0 turns the breaker off: a stuck helper costs each event its budget, and
/// every event is still answered once, by the watchdog.
#[test]
fn breaker_threshold_zero_never_opens() {
    let helper = Arc::new(Switchable::default());
    helper.stalled.store(true, Ordering::Release);
    let mut cfg = test_config(None).with_helper(HelperEndpoint::Custom(helper.clone()));
    cfg.helper_breaker_threshold = 0;
    cfg.helper_probe_interval = Duration::from_millis(20);
    let rig = start(cfg);
    wait_connected(&rig.core, true);
    for i in 0..6 {
        let (_, d) = rig.backend.delivery(
            events::exec(5_000_000 + i, "/usr/local/bin/tool", 9),
            BUDGET,
        );
        rig.core.deliver(d);
    }
    settle(&rig.core, 6);
    assert_eq!(counter(&rig.core, "fallbacks.deadline"), 6);
    assert_eq!(counter(&rig.core, "helper_breaker_opens"), 0);
    assert_eq!(helper.analyze.load(Ordering::Relaxed), 6);
    rig.core.shutdown();
    assert_clean(&rig.backend);
}
