//! The control channel over a real Unix socket: status, stats, policy show/load (a bad file
//! changes nothing), mutes (mirrored in-process and pushed to the kernel), events tail and
//! helper ping.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use es_extension::test_backend::events;
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
