//! The control channel over a real Unix socket: status, stats, policy show/load (a bad file
//! changes nothing), mutes (mirrored in-process and pushed to the kernel), events tail and
//! helper ping; a fixed set of handlers that silent or idle clients hold only briefly, a full
//! server that refuses at once and recovers, and concurrent policy loads that never interleave.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use es_extension::core::Core;
use es_extension::test_backend::{TestResponder, events};
use model::{MuteScope, MuteSpec, Verdict};
use protocol::{CONTROL_MAX_FRAME, ControlRequest, ControlResponse, Role};

fn ask(path: &Path, req: &ControlRequest) -> ControlResponse {
    let mut s = UnixStream::connect(path).expect("connect to the control socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    protocol::handshake::client(&mut s, Role::Cli, "control-test").expect("handshake");
    protocol::frame::write_frame(&mut s, req, CONTROL_MAX_FRAME).unwrap();
    protocol::frame::read_frame(&mut s, CONTROL_MAX_FRAME).expect("a response")
}

#[test]
fn control_requests_table() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run/control.sock");
    let helper = FakeHelper::start(
        &dir.path().join("h.sock"),
        Behaviour::Answer {
            sha256: ALLOWED,
            delay: Duration::ZERO,
        },
    );
    let mut cfg = test_config(Some(&helper.path));
    cfg.control_socket = Some(sock.clone());
    let rig = start(cfg);
    wait_connected(&rig.core, true);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket must be root-only");

    // One exec through the helper and one fallback, so stats and events have content.
    let (_, d) = rig.backend.delivery(
        events::exec(3_000_000, "/usr/local/bin/tool", 77),
        Duration::from_secs(2),
    );
    rig.core.deliver(d);
    settle(&rig.core, 1);

    match ask(&sock, &ControlRequest::Status) {
        ControlResponse::Status(s) => {
            assert_eq!(s.pid, std::process::id());
            assert_eq!(s.backend, "test");
            assert_eq!(s.mode, "enforce");
            assert_eq!(s.policy_version, 1);
            assert_eq!(s.policy_origin, "test-policy.toml");
            assert!(s.helper_connected);
        }
        other => panic!("status: {other:?}"),
    }
    match ask(&sock, &ControlRequest::Stats) {
        ControlResponse::Stats(s) => {
            let get = |n: &str| s.counters.iter().find(|c| c.0 == n).map(|c| c.1);
            assert_eq!(get("events.exec"), Some(1));
            assert_eq!(get("helper_decided"), Some(1));
            assert_eq!(s.queue_capacity, 1024);
            let names: Vec<_> = s.latencies.iter().map(|l| l.name.as_str()).collect();
            assert_eq!(names, ["fast_path", "helper_round_trip", "event_to_answer"]);
            assert_eq!(s.latencies[1].count, 1);
        }
        other => panic!("stats: {other:?}"),
    }
    match ask(&sock, &ControlRequest::PolicyShow) {
        ControlResponse::Policy { version, text, .. } => {
            assert_eq!(version, 1);
            assert_eq!(text, test_policy_toml("enforce"));
        }
        other => panic!("policy show: {other:?}"),
    }
    // A bad policy changes nothing.
    let bad = ControlRequest::PolicyLoad {
        origin: "bad.toml".into(),
        text: "version = 1\nmode = \"sideways\"\n".into(),
    };
    match ask(&sock, &bad) {
        ControlResponse::Error { message } => {
            assert!(message.contains("bad.toml"), "{message}");
            assert!(message.contains("unchanged"), "{message}");
        }
        other => panic!("bad load: {other:?}"),
    }
    assert_eq!(rig.core.policy().version, 1);
    assert!(!rig.control.calls().contains(&"clear_cache".to_owned()));
    // A good one swaps, clears the kernel cache, and mirrors its mutes.
    let good = format!(
        "{}\n[mute]\nprocesses = [{{ path = \"/usr/sbin/backupd\", prefix = false }}]\n",
        test_policy_toml("monitor")
    );
    match ask(
        &sock,
        &ControlRequest::PolicyLoad {
            origin: "good.toml".into(),
            text: good,
        },
    ) {
        ControlResponse::PolicyLoaded { version } => assert_eq!(version, 2),
        other => panic!("good load: {other:?}"),
    }
    assert_eq!(rig.core.policy().policy.origin(), "good.toml");
    let calls = rig.control.calls();
    assert!(calls.contains(&"clear_cache".to_owned()), "{calls:?}");
    assert!(
        calls.contains(&"mute Process /usr/sbin/backupd prefix=false".to_owned()),
        "{calls:?}"
    );

    // Runtime mutes: added, listed, honoured on the delivery path, removed.
    let spec = MuteSpec {
        scope: MuteScope::Target,
        path: "/srv/cache/".into(),
        prefix: true,
    };
    assert_eq!(
        ask(&sock, &ControlRequest::MuteAdd(spec.clone())),
        ControlResponse::Ok
    );
    match ask(&sock, &ControlRequest::MuteList) {
        ControlResponse::Mutes(list) => {
            assert!(list.contains(&spec), "{list:?}");
            assert_eq!(list.len(), 2, "{list:?}");
        }
        other => panic!("mute list: {other:?}"),
    }
    let muted_before = counter(&rig.core, "muted");
    let (s, d) = rig.backend.delivery(
        events::open(3_000_000, "/usr/bin/cat", "/srv/cache/x", 5),
        Duration::from_secs(1),
    );
    rig.core.deliver(d);
    assert_eq!(
        rig.backend.answer_for(s.id).unwrap().answer.verdict,
        Verdict::Allow
    );
    assert_eq!(counter(&rig.core, "muted"), muted_before + 1);
    assert_eq!(
        ask(&sock, &ControlRequest::MuteRemove(spec.clone())),
        ControlResponse::Ok
    );
    assert!(matches!(
        ask(&sock, &ControlRequest::MuteRemove(spec.clone())),
        ControlResponse::Error { .. }
    ));
    assert!(
        rig.control
            .calls()
            .contains(&"unmute Target /srv/cache/ prefix=true".to_owned())
    );

    match ask(&sock, &ControlRequest::HelperPing) {
        ControlResponse::HelperPong {
            connected,
            round_trip_us,
            detail,
        } => {
            assert!(connected);
            assert!(round_trip_us.is_some());
            assert!(detail.contains("fake-helper"), "{detail}");
        }
        other => panic!("ping: {other:?}"),
    }

    // Events tail: a fallback is notable.
    drop(helper);
    wait_connected(&rig.core, false);
    let (_, d) = rig.backend.delivery(
        events::exec(3_000_000, "/usr/local/bin/tool", 78),
        Duration::from_secs(2),
    );
    rig.core.deliver(d);
    let end = std::time::Instant::now() + Duration::from_secs(5);
    let lines = loop {
        match ask(&sock, &ControlRequest::EventsTail { max: 10 }) {
            ControlResponse::Events(l) if !l.is_empty() => break l,
            ControlResponse::Events(_) => {}
            other => panic!("events tail: {other:?}"),
        }
        assert!(std::time::Instant::now() < end, "no event reached the tail");
        std::thread::sleep(Duration::from_millis(20));
    };
    let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last["why"], "helper_unavailable");
    match ask(&sock, &ControlRequest::HelperPing) {
        ControlResponse::HelperPong {
            connected,
            round_trip_us,
            ..
        } => {
            assert!(!connected);
            assert_eq!(round_trip_us, None);
        }
        other => panic!("ping without helper: {other:?}"),
    }
    rig.core.shutdown();
    assert!(!sock.exists(), "the control socket is removed on shutdown");
}

#[test]
fn wrong_role_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let mut cfg = test_config(None);
    cfg.control_socket = Some(sock.clone());
    let _rig = start(cfg);
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let err = protocol::handshake::client(&mut s, Role::Helper, "intruder").unwrap_err();
    assert!(err.to_string().contains("may not use this socket"), "{err}");
}

/// A connection that never sends its hello, and the peer's end of it kept open.
fn silent(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect to the control socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// True once the extension has closed `s` (EOF or reset; anything sent first is skipped). The
/// socket's read timeout bounds the wait; a timeout counts as still open.
fn closed_by_server(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn wait_for(core: &Core<TestResponder>, name: &str, want: u64) {
    let end = Instant::now() + Duration::from_secs(10);
    while counter(core, name) != want {
        assert!(
            Instant::now() < end,
            "{name} is {}, not {want}",
            counter(core, name)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Two silent clients on the default two handlers: a third client's `status` is still
/// answered while they are connected, because a peer that sends no hello holds a handler only
/// for the handshake deadline.
#[test]
fn silent_clients_do_not_lock_out_a_status() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let mut cfg = test_config(None);
    cfg.control_socket = Some(sock.clone());
    assert_eq!(cfg.control_handlers, 2, "the default this test is about");
    let rig = start(cfg);
    let mut quiet = [silent(&sock), silent(&sock)];
    // Both handlers hold a silent client before the status arrives, so it has to queue.
    wait_for(&rig.core, "control_handlers_busy", 2);
    match ask(&sock, &ControlRequest::Status) {
        ControlResponse::Status(s) => assert_eq!(s.pid, std::process::id()),
        other => panic!("status: {other:?}"),
    }
    assert!(
        counter(&rig.core, "control_handshake_timeouts") >= 1,
        "the status could only be served once a silent client was dropped"
    );
    for (i, q) in quiet.iter_mut().enumerate() {
        assert!(closed_by_server(q), "silent client {i} was never dropped");
    }
    wait_for(&rig.core, "control_handshake_timeouts", 2);
    assert_eq!(counter(&rig.core, "control_refused_busy"), 0);
}

/// With every handler holding a silent client and the backlog full, a further connection is
/// refused at once and counted; once the silent clients go away, clients are served again.
#[test]
fn a_full_control_server_refuses_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let mut cfg = test_config(None);
    cfg.control_socket = Some(sock.clone());
    cfg.control_handlers = 2;
    cfg.control_backlog = 1;
    // Long enough that the silent clients hold their handlers for the whole test.
    cfg.control_handshake_timeout = Duration::from_secs(60);
    let rig = start(cfg);
    let held = [silent(&sock), silent(&sock)];
    wait_for(&rig.core, "control_handlers_busy", 2);
    let queued = silent(&sock);
    wait_for(&rig.core, "control_queued", 1);

    let mut extra = UnixStream::connect(&sock).expect("the kernel still accepts the connect");
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match protocol::handshake::client(&mut extra, Role::Cli, "control-test") {
        Err(protocol::ProtocolError::Rejected(reason)) => {
            assert!(reason.contains("busy"), "{reason}");
        }
        // The refusal may also surface as the closed socket.
        Err(_) => {}
        Ok(agent) => panic!("a full server accepted a session with {agent}"),
    }
    wait_for(&rig.core, "control_refused_busy", 1);
    assert_eq!(counter(&rig.core, "control_handlers_busy"), 2);
    assert_eq!(counter(&rig.core, "control_handshake_timeouts"), 0);

    drop(held);
    drop(queued);
    wait_for(&rig.core, "control_handlers_busy", 0);
    wait_for(&rig.core, "control_queued", 0);
    match ask(&sock, &ControlRequest::Status) {
        ControlResponse::Status(s) => assert_eq!(s.pid, std::process::id()),
        other => panic!("status after recovery: {other:?}"),
    }
    assert_eq!(counter(&rig.core, "control_refused_busy"), 1);
}

/// Each way of holding a handler without doing anything is cut off by a deadline and counted.
#[test]
fn handshake_and_idle_deadlines_table() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let mut cfg = test_config(None);
    cfg.control_socket = Some(sock.clone());
    cfg.control_handshake_timeout = Duration::from_millis(300);
    cfg.control_idle_timeout = Duration::from_millis(300);
    let rig = start(cfg);
    let hello = protocol::frame::encode_frame(
        &protocol::Hello {
            magic: protocol::MAGIC,
            version: protocol::PROTOCOL_VERSION,
            role: Role::Cli,
            agent: "control-test".into(),
        },
        1024,
    )
    .unwrap();
    type Act = Box<dyn Fn(&mut UnixStream)>;
    let cases: Vec<(&str, Act, &str)> = vec![
        (
            "says nothing",
            Box::new(|_| {}),
            "control_handshake_timeouts",
        ),
        (
            // Each byte arrives well inside a per-read timeout; only a deadline stops this.
            "trickles its hello a byte at a time",
            Box::new(move |s| {
                for b in &hello {
                    if s.write_all(&[*b]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }),
            "control_handshake_timeouts",
        ),
        (
            "handshakes, then goes idle",
            Box::new(|s| {
                protocol::handshake::client(s, Role::Cli, "control-test").unwrap();
            }),
            "control_idle_closed",
        ),
        (
            "asks once, then goes idle",
            Box::new(|s| {
                protocol::handshake::client(s, Role::Cli, "control-test").unwrap();
                protocol::frame::write_frame(s, &ControlRequest::Status, CONTROL_MAX_FRAME)
                    .unwrap();
                let r: ControlResponse = protocol::frame::read_frame(s, CONTROL_MAX_FRAME).unwrap();
                assert!(matches!(r, ControlResponse::Status(_)), "{r:?}");
            }),
            "control_idle_closed",
        ),
    ];
    for (name, act, count) in cases {
        let before = counter(&rig.core, count);
        let mut s = silent(&sock);
        act(&mut s);
        assert!(closed_by_server(&mut s), "{name}: never closed");
        wait_for(&rig.core, count, before + 1);
        assert!(
            matches!(
                ask(&sock, &ControlRequest::Status),
                ControlResponse::Status(_)
            ),
            "{name}: not served afterwards"
        );
    }
}

/// Two `policy load`s at once on two handlers: both succeed, the version rises by exactly two
/// per round, and each load's kernel work (mute diff, then cache clear) is one uninterrupted
/// block that starts from the previous load's mutes.
#[test]
fn concurrent_policy_loads_are_serialized() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let mut cfg = test_config(None);
    cfg.control_socket = Some(sock.clone());
    let rig = start(cfg);
    let baseline = rig.control.calls().len();
    const ROUNDS: u64 = 10;
    let policy = |tag: &str| {
        format!(
            "{}\n[mute]\nprocesses = [{{ path = \"/opt/{tag}\", prefix = false }}]\n",
            test_policy_toml("enforce")
        )
    };
    for round in 0..ROUNDS {
        let start_version = rig.core.policy_version();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let loads: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|side| {
                let (sock, barrier) = (sock.clone(), std::sync::Arc::clone(&barrier));
                let tag = format!("{side}{round}");
                let text = policy(&tag);
                std::thread::spawn(move || {
                    let mut s = UnixStream::connect(&sock).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    protocol::handshake::client(&mut s, Role::Cli, "control-test").unwrap();
                    let req = ControlRequest::PolicyLoad {
                        origin: format!("{tag}.toml"),
                        text,
                    };
                    barrier.wait();
                    protocol::frame::write_frame(&mut s, &req, CONTROL_MAX_FRAME).unwrap();
                    let r: ControlResponse =
                        protocol::frame::read_frame(&mut s, CONTROL_MAX_FRAME).unwrap();
                    match r {
                        ControlResponse::PolicyLoaded { version } => (tag, version),
                        other => panic!("load {tag}: {other:?}"),
                    }
                })
            })
            .collect();
        let mut got: Vec<(String, u64)> = loads.into_iter().map(|t| t.join().unwrap()).collect();
        got.sort_by_key(|g| g.1);
        assert_eq!(
            got.iter().map(|g| g.1).collect::<Vec<_>>(),
            [start_version + 1, start_version + 2],
            "round {round}: {got:?}"
        );
        let snap = rig.core.policy();
        assert_eq!(snap.version, start_version + 2);
        assert_eq!(snap.policy.origin(), format!("{}.toml", got[1].0));
    }

    // Replay the kernel calls: blocks of [unmute previous, mute own, clear_cache], in version
    // order. Interleaved loads would both diff from the same `before` and break the chain.
    let calls = rig.control.calls()[baseline..].to_vec();
    let mut rest = calls.as_slice();
    let mut previous: Option<String> = None;
    let mut loads = 0;
    while !rest.is_empty() {
        if let Some(p) = &previous {
            assert_eq!(
                rest[0],
                format!("unmute Process /opt/{p} prefix=false"),
                "load {loads} does not start from the previous load's mutes: {calls:#?}"
            );
            rest = &rest[1..];
        }
        let own = rest
            .first()
            .and_then(|c| c.strip_prefix("mute Process /opt/"))
            .and_then(|r| r.strip_suffix(" prefix=false"))
            .unwrap_or_else(|| panic!("load {loads}: no mute of its own: {calls:#?}"));
        assert_eq!(
            rest.get(1).map(String::as_str),
            Some("clear_cache"),
            "load {loads}: {calls:#?}"
        );
        previous = Some(own.to_owned());
        rest = &rest[2..];
        loads += 1;
    }
    assert_eq!(loads, 2 * ROUNDS, "{calls:#?}");
    let current = rig.core.policy();
    assert_eq!(current.version, 1 + 2 * ROUNDS);
    assert_eq!(
        current.policy.origin(),
        format!("{}.toml", previous.unwrap())
    );
}
