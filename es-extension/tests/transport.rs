//! The core through a custom, in-process [`HelperTransport`] (no sockets): what the macOS XPC
//! transport relies on. Answers decide events, a lost connection fails what is in flight and
//! makes later analyses fall back inline, a request the transport gives up on falls back at
//! once, and replies that come after the watchdog never answer twice (but still fill the
//! verdict cache).

mod common;

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use crossbeam_channel::{Receiver, Sender};
use es_extension::core::{
    Core, CoreConfig, CoreError, HelperEndpoint, HelperTransport, LinkSink, TransportError,
};
use es_extension::test_backend::{Sent, TestControl, events};
use model::{Facts, FallbackReason, Sha256, Verdict};
use protocol::{HelperRequest, HelperResponse, Request, Response};

const HELPER_PID: u32 = 4242;

/// What the transport does with each request it is handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answer from the transport's thread with this SHA-256.
    Answer(Sha256),
    /// Keep it; the test releases it later.
    Hold,
    /// Report it failed (as an XPC timeout or error is).
    Fail,
}

enum Cmd {
    Request(Request<HelperRequest>),
    Disconnect,
    Connect,
    Raw(Response<HelperResponse>),
}

/// An in-process "helper": requests go over a channel to the transport's own thread (the
/// core's helper thread, inside `run`), which answers them asynchronously.
struct InProcess {
    connected: AtomicBool,
    pid: AtomicU32,
    mode: Mutex<Mode>,
    held: Mutex<Vec<Request<HelperRequest>>>,
    tx: Sender<Cmd>,
    rx: Receiver<Cmd>,
}

impl InProcess {
    fn new(mode: Mode) -> Arc<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Arc::new(Self {
            connected: AtomicBool::new(false),
            pid: AtomicU32::new(0),
            mode: Mutex::new(mode),
            held: Mutex::new(Vec::new()),
            tx,
            rx,
        })
    }

    fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    /// Answer every held request with `sha256`.
    fn release(&self, sha256: Sha256) {
        for req in self.held.lock().unwrap().drain(..) {
            self.tx.send(Cmd::Raw(analysis(req.id, sha256))).unwrap();
        }
    }

    fn wait_held(&self, n: usize) {
        let end = Instant::now() + Duration::from_secs(10);
        while self.held() < n {
            assert!(Instant::now() < end, "only {} requests held", self.held());
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn analysis(id: u64, sha256: Sha256) -> Response<HelperResponse> {
    Response {
        id,
        body: HelperResponse::Analysis {
            facts: Facts {
                sha256: Some(sha256),
                ..Facts::NONE
            },
            errors: vec![],
        },
    }
}

impl HelperTransport for InProcess {
    fn describe(&self) -> String {
        "in-process test transport".to_owned()
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    fn peer_pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::Acquire)).filter(|p| *p != 0)
    }

    fn run(&self, sink: LinkSink, stop: &Receiver<()>) {
        let up = |sink: &LinkSink| {
            self.pid.store(HELPER_PID, Ordering::Release);
            self.connected.store(true, Ordering::Release);
            sink.connected();
        };
        up(&sink);
        loop {
            crossbeam_channel::select! {
                recv(self.rx) -> cmd => match cmd {
                    Ok(Cmd::Request(req)) => match *self.mode.lock().unwrap() {
                        Mode::Answer(sha) => sink.response(analysis(req.id, sha)),
                        Mode::Hold => self.held.lock().unwrap().push(req),
                        Mode::Fail => sink.failed(req.id, FallbackReason::HelperError),
                    },
                    Ok(Cmd::Raw(resp)) => sink.response(resp),
                    Ok(Cmd::Disconnect) => {
                        self.connected.store(false, Ordering::Release);
                        self.pid.store(0, Ordering::Release);
                        sink.disconnected(FallbackReason::HelperUnavailable);
                    }
                    Ok(Cmd::Connect) => up(&sink),
                    Err(_) => return,
                },
                recv(stop) -> _ => return,
            }
        }
    }

    fn send(
        &self,
        req: &Request<HelperRequest>,
        _fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), TransportError> {
        if !self.connected() {
            return Err(TransportError::NotConnected);
        }
        self.tx
            .send(Cmd::Request(req.clone()))
            .map_err(|e| TransportError::Send(e.to_string()))
    }

    fn close(&self) {
        self.connected.store(false, Ordering::Release);
    }
}

fn rig(t: &Arc<InProcess>) -> Rig {
    let endpoint = HelperEndpoint::Custom(Arc::clone(t) as Arc<dyn HelperTransport>);
    let rig = start(test_config(None).with_helper(endpoint));
    wait_connected(&rig.core, true);
    rig
}

fn execs(rig: &Rig, from: u64, n: u64, budget: Duration) -> Vec<Sent> {
    (from..from + n)
        .map(|i| {
            let (s, d) = rig.backend.delivery(
                events::exec(3_000_000 + i as u32, "/usr/local/bin/tool", 1_000_000 + i),
                budget,
            );
            rig.core.deliver(d);
            s
        })
        .collect()
}

fn verdict(rig: &Rig, s: &Sent) -> Verdict {
    rig.backend
        .answer_for(s.id)
        .expect("answered")
        .answer
        .verdict
}

#[test]
fn answers_come_back_through_the_trait() {
    let t = InProcess::new(Mode::Answer(ALLOWED));
    let rig = rig(&t);
    assert_eq!(rig.core.helper_pid(), Some(HELPER_PID));
    let sent = execs(&rig, 0, 30, Duration::from_secs(2));
    assert_eq!(rig.backend.wait_for(30, Duration::from_secs(10)), 30);
    settle(&rig.core, 30);
    assert_clean(&rig.backend);
    for s in &sent {
        // Allowed by the hash rule: a fallback would have denied.
        assert_eq!(verdict(&rig, s), Verdict::Allow, "event {}", s.id);
    }
    wait_counter(&rig.core, "helper_decided", 30);
    assert_eq!(counter(&rig.core, "fallbacks"), 0);
    assert_eq!(counter(&rig.core, "helper_connects"), 1);
    // BLOCKED is denied by its rule, not a fallback.
    t.set_mode(Mode::Answer(BLOCKED));
    let sent = execs(&rig, 100, 5, Duration::from_secs(2));
    assert_eq!(rig.backend.wait_for(35, Duration::from_secs(10)), 35);
    settle(&rig.core, 35);
    for s in &sent {
        assert_eq!(verdict(&rig, s), Verdict::Deny);
    }
    wait_counter(&rig.core, "helper_decided", 35);
    assert_eq!(counter(&rig.core, "fallbacks"), 0);
    rig.core.shutdown();
    assert_clean(&rig.backend);
}

#[test]
fn disconnect_fails_in_flight_and_later_analyses_fall_back_inline() {
    let t = InProcess::new(Mode::Hold);
    let rig = rig(&t);
    let held = execs(&rig, 0, 10, Duration::from_secs(5));
    t.wait_held(10);
    assert_eq!(
        rig.backend.answers().len(),
        0,
        "nothing answered while held"
    );

    t.tx.send(Cmd::Disconnect).unwrap();
    // Failed at once, long before the watchdog (about 4.5 s away).
    assert_eq!(rig.backend.wait_for(10, Duration::from_secs(2)), 10);
    wait_connected(&rig.core, false);
    assert_eq!(rig.core.helper_pid(), None);
    for s in &held {
        assert_eq!(verdict(&rig, s), Verdict::Deny);
    }
    settle(&rig.core, 10);
    assert_eq!(counter(&rig.core, "fallbacks.helper_unavailable"), 10);
    assert_eq!(counter(&rig.core, "helper_disconnects"), 1);

    // While down: answered on the delivery thread, before deliver() returns.
    for s in execs(&rig, 100, 5, Duration::from_secs(5)) {
        assert_eq!(rig.backend.answer_count(s.id), 1, "answered inline");
        assert_eq!(verdict(&rig, &s), Verdict::Deny);
    }
    assert_eq!(counter(&rig.core, "fallbacks.helper_unavailable"), 15);

    // Back up: analyses reach the helper again.
    t.set_mode(Mode::Answer(ALLOWED));
    t.tx.send(Cmd::Connect).unwrap();
    wait_connected(&rig.core, true);
    assert_eq!(rig.core.helper_pid(), Some(HELPER_PID));
    let again = execs(&rig, 200, 5, Duration::from_secs(5));
    assert_eq!(rig.backend.wait_for(20, Duration::from_secs(10)), 20);
    for s in &again {
        assert_eq!(verdict(&rig, s), Verdict::Allow);
    }
    settle(&rig.core, 20);
    assert_clean(&rig.backend);
    assert_eq!(counter(&rig.core, "helper_connects"), 2);
}

#[test]
fn a_request_the_transport_gives_up_on_falls_back_at_once() {
    let t = InProcess::new(Mode::Fail);
    let rig = rig(&t);
    let sent = execs(&rig, 0, 8, Duration::from_secs(5));
    assert_eq!(rig.backend.wait_for(8, Duration::from_secs(2)), 8);
    for s in &sent {
        assert_eq!(verdict(&rig, s), Verdict::Deny);
    }
    settle(&rig.core, 8);
    assert_clean(&rig.backend);
    assert_eq!(counter(&rig.core, "fallbacks.helper_error"), 8);
    assert!(
        rig.core.helper_connected(),
        "one failed request is not a lost connection"
    );
}

#[test]
fn late_replies_never_answer_twice_but_fill_the_cache() {
    let t = InProcess::new(Mode::Hold);
    let rig = rig(&t);
    // 300 ms budget: the watchdog answers at about 200 ms (100 ms headroom).
    let sent = execs(&rig, 0, 5, Duration::from_millis(300));
    t.wait_held(5);
    assert_eq!(rig.backend.wait_for(5, Duration::from_secs(5)), 5);
    settle(&rig.core, 5);
    assert_eq!(counter(&rig.core, "fallbacks.deadline"), 5);

    // The replies come now, too late to answer.
    t.release(ALLOWED);
    // And one for an id the core never sent.
    t.tx.send(Cmd::Raw(analysis(u64::MAX, ALLOWED))).unwrap();
    wait_counter(&rig.core, "late_helper_answers", 5);
    wait_counter(&rig.core, "helper_unmatched", 1);
    for s in &sent {
        assert_eq!(rig.backend.answer_count(s.id), 1, "event {}", s.id);
        assert_eq!(verdict(&rig, s), Verdict::Deny, "the fallback stands");
    }

    // The late verdicts were cached: the same executables now pass on the delivery thread.
    let hits_before = counter(&rig.core, "cache_hits");
    for s in execs(&rig, 0, 5, Duration::from_secs(2)) {
        assert_eq!(rig.backend.answer_count(s.id), 1, "answered inline");
        assert_eq!(verdict(&rig, &s), Verdict::Allow);
    }
    assert_eq!(counter(&rig.core, "cache_hits"), hits_before + 5);
    assert_eq!(t.held(), 0, "no new analysis was sent");
    settle(&rig.core, 10);
    assert_clean(&rig.backend);
}

#[test]
fn a_socket_and_a_transport_together_are_refused() {
    let t = InProcess::new(Mode::Hold);
    let config = CoreConfig {
        helper_socket: Some("/nonexistent/h.sock".into()),
        helper_transport: Some(t as Arc<dyn HelperTransport>),
        ..test_config(None)
    };
    let err = Core::<es_extension::test_backend::TestResponder>::start(
        config,
        test_policy(),
        Arc::new(TestControl::default()),
    )
    .expect_err("both endpoints set");
    assert!(matches!(err, CoreError::Config(_)), "{err}");
}
