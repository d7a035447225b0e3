//! Shared test fixtures: a fake analysis helper (a real Unix-socket server speaking the
//! protocol, with configurable misbehaviour), the test policy, and core start-up helpers.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these fixtures"
)]

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use es_extension::core::{Core, CoreConfig};
use es_extension::test_backend::{TestBackend, TestControl, TestResponder};
use model::{Facts, Sha256};
use protocol::{HELPER_MAX_FRAME, HelperRequest, HelperResponse, Request, Response, Role};

/// The SHA-256 the test policy allows.
pub const ALLOWED: Sha256 = Sha256([0xaa; 32]);
/// The SHA-256 the test policy blocks.
pub const BLOCKED: Sha256 = Sha256([0xbb; 32]);

/// Enforce mode: exec of an unknown binary needs its hash (slow path); opens with no watch
/// items are decided on the fast path. Fallbacks deny, so they are told apart from the helper's
/// decisions (allow for [`ALLOWED`]).
pub fn test_policy_toml(mode: &str) -> String {
    format!(
        r#"version = 1
mode = "{mode}"

[defaults]
fallback = "deny"
helper_unavailable = "deny"
deadline_ms = 2000

[[exec]]
name = "allow-tool"
action = "allow"
sha256 = "{ALLOWED}"

[[exec]]
name = "block-evil"
action = "block"
sha256 = "{BLOCKED}"
"#
    )
}

pub fn test_policy() -> policy::Policy {
    policy::Policy::parse("test-policy.toml", &test_policy_toml("enforce"))
        .expect("the test policy is valid")
}

/// How the fake helper behaves on each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer every Analyze with `sha256` after `delay` (pipelined, in order).
    Answer { sha256: Sha256, delay: Duration },
    /// Read requests and never answer.
    Stall,
    /// Complete the handshake, then never read again: the extension's writes block once the
    /// socket buffer is full.
    StallNoRead,
    /// Read `after` requests, then close the connection with them unanswered.
    DieAfter { after: u64 },
    /// Answer each request with a frame of junk bytes.
    Garbage,
    /// Answer each request with a well-formed but wrong message (a Pong to an Analyze).
    WrongAnswer,
}

/// A fake helper: a Unix-socket server on `path` in its own threads.
pub struct FakeHelper {
    pub path: PathBuf,
    behaviour: Arc<Mutex<Behaviour>>,
    stop: Arc<AtomicBool>,
    /// Analyze requests received (pings not counted).
    pub requests: Arc<AtomicU64>,
    pub connections: Arc<AtomicU64>,
    /// Analyze requests that arrived with `fd_attached` and exactly one readable descriptor.
    pub fds_received: Arc<AtomicU64>,
    streams: Arc<Mutex<Vec<UnixStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl FakeHelper {
    pub fn start(path: &Path, behaviour: Behaviour) -> FakeHelper {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind fake helper socket");
        listener.set_nonblocking(true).unwrap();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let fds_received = Arc::new(AtomicU64::new(0));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (behaviour, stop, requests, connections, streams, fds) = (
                Arc::clone(&behaviour),
                Arc::clone(&stop),
                Arc::clone(&requests),
                Arc::clone(&connections),
                Arc::clone(&streams),
                Arc::clone(&fds_received),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(false).unwrap();
                            connections.fetch_add(1, Ordering::Relaxed);
                            streams.lock().unwrap().push(s.try_clone().unwrap());
                            let b = *behaviour.lock().unwrap();
                            let (requests, stop, fds) =
                                (Arc::clone(&requests), Arc::clone(&stop), Arc::clone(&fds));
                            std::thread::spawn(move || serve(s, b, &requests, &stop, &fds));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        FakeHelper {
            path: path.to_owned(),
            behaviour,
            stop,
            requests,
            connections,
            fds_received,
            streams,
            accept: Some(accept),
        }
    }

    /// How connections made from now on behave.
    pub fn set_behaviour(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    /// Kill the helper: close every connection and the listener, like a SIGKILL would.
    pub fn kill(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for FakeHelper {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(s: UnixStream, b: Behaviour, requests: &AtomicU64, stop: &AtomicBool, fds: &AtomicU64) {
    let mut hs = s.try_clone().unwrap();
    if protocol::handshake::server(&mut hs, &[Role::Extension], "fake-helper").is_err() {
        return;
    }
    // Answers go out from a second thread so that a delay never stops us reading (pipelining).
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, u64, HelperResponse)>();
    let writer = {
        let w = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for (due, id, body) in rx {
                let left = due.saturating_duration_since(Instant::now());
                std::thread::sleep(left);
                let resp = Response { id, body };
                if protocol::unix::send_frame(&w, &resp, &[], HELPER_MAX_FRAME).is_err() {
                    break;
                }
            }
        })
    };
    if b == Behaviour::StallNoRead {
        while !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        let Ok((req, got_fds)) =
            protocol::unix::recv_frame::<Request<HelperRequest>>(&s, HELPER_MAX_FRAME)
        else {
            break;
        };
        n += 1;
        // Analysis requests only: the extension's connect-time Ping is not work.
        if matches!(req.body, HelperRequest::Analyze { .. }) {
            requests.fetch_add(1, Ordering::Relaxed);
        }
        if let HelperRequest::Analyze {
            fd_attached: true, ..
        } = req.body
            && got_fds.len() == 1
        {
            let mut f = std::fs::File::from(got_fds.into_iter().next().unwrap());
            let mut buf = String::new();
            use std::io::{Read, Seek};
            if f.rewind().is_ok() && f.read_to_string(&mut buf).is_ok() && buf == "subject" {
                fds.fetch_add(1, Ordering::Relaxed);
            }
        }
        let pong = || HelperResponse::Pong {
            agent: "fake-helper".into(),
            pid: std::process::id(),
            uptime_ms: 1,
        };
        let now = Instant::now();
        match (b, &req.body) {
            (_, HelperRequest::Ping)
                if !matches!(
                    b,
                    Behaviour::Stall | Behaviour::StallNoRead | Behaviour::Garbage
                ) =>
            {
                let _ = tx.send((now, req.id, pong()));
            }
            (Behaviour::Answer { sha256, delay }, _) => {
                let facts = Facts {
                    sha256: Some(sha256),
                    ..Facts::NONE
                };
                let body = HelperResponse::Analysis {
                    facts,
                    errors: vec![],
                };
                let _ = tx.send((now + delay, req.id, body));
            }
            (Behaviour::Stall | Behaviour::StallNoRead, _) => {}
            (Behaviour::DieAfter { after }, _) => {
                if n >= after {
                    break;
                }
            }
            (Behaviour::Garbage, _) => {
                let mut junk = vec![7u8, 0, 0, 0];
                junk.extend_from_slice(&[0xff, 0xfe, 0x00, 0x13, 0x37, 0x42, 0x99]);
                use std::io::Write;
                let _ = (&s).write_all(&junk);
            }
            (Behaviour::WrongAnswer, _) => {
                let _ = tx.send((now, req.id, pong()));
            }
        }
    }
    drop(tx);
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
}

/// A core config for tests: Linux-like headroom, no sockets unless given.
pub fn test_config(helper: Option<&Path>) -> CoreConfig {
    CoreConfig {
        helper_socket: helper.map(Path::to_owned),
        headroom_min: Duration::from_millis(100),
        headroom_max: Duration::from_millis(500),
        reconnect_backoff_max: Duration::from_millis(200),
        backend_name: "test".into(),
        ..CoreConfig::fanotify()
    }
}

pub struct Rig {
    pub core: Core<TestResponder>,
    pub backend: TestBackend,
    pub control: Arc<TestControl>,
}

pub fn start(config: CoreConfig) -> Rig {
    let control = Arc::new(TestControl::default());
    let core = Core::start(config, test_policy(), control.clone()).expect("core starts");
    Rig {
        core,
        backend: TestBackend::new(),
        control,
    }
}

/// Wait (bounded) until the core reports the helper connected.
pub fn wait_connected(core: &Core<TestResponder>, want: bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while core.helper_connected() != want {
        assert!(Instant::now() < end, "helper connected never became {want}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn counter(core: &Core<TestResponder>, name: &str) -> u64 {
    core.stats()
        .counters
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no counter {name}"))
        .1
}

/// Wait (bounded) until counter `name` reaches `want` (counters bumped just after an answer
/// may trail [`settle`]), then check it did not overshoot.
pub fn wait_counter(core: &Core<TestResponder>, name: &str, want: u64) {
    let end = Instant::now() + Duration::from_secs(10);
    while counter(core, name) < want {
        assert!(
            Instant::now() < end,
            "counter {name} stayed at {} (want {want})",
            counter(core, name)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(counter(core, name), want, "counter {name}");
}

/// Wait (bounded) until the core has accounted for `n` answers, so counters read after this
/// are complete (the backend records an answer just before the core counts it).
pub fn settle(core: &Core<TestResponder>, n: u64) {
    let end = Instant::now() + Duration::from_secs(10);
    while core.metrics().answers_total() < n {
        assert!(Instant::now() < end, "the core never counted {n} answers");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Assert the backend saw exactly one answer per event, none late, and say which otherwise.
pub fn assert_clean(backend: &TestBackend) {
    let v = backend.verify();
    assert!(v.answered > 0 || v.sent == 0);
    assert!(
        v.is_clean(),
        "sent {} answered {}; unanswered {:?}; answered twice {:?}; late {:?}; unknown {:?}",
        v.sent,
        v.answered,
        &v.unanswered[..v.unanswered.len().min(10)],
        &v.answered_twice[..v.answered_twice.len().min(10)],
        &v.late[..v.late.len().min(10)],
        &v.unknown[..v.unknown.len().min(10)],
    );
}
