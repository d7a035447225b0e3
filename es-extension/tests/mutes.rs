//! Runtime mutes over the control socket: validated (absolute, non-empty, no mute of the whole
//! filesystem), bounded, and matched on the delivery thread by literal and by prefix with a cost
//! that does not grow with the number of mutes; `measure_4000_adds` (ignored) prints how long
//! 4,000 adds take, for the figures in the report.

mod common;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use es_extension::test_backend::events;
use model::{MuteScope, MuteSpec};
use protocol::{CONTROL_MAX_FRAME, ControlRequest, ControlResponse, Role};

/// One session for many requests, as `gatehouse mute add` in a loop would be, minus connects.
struct Session(UnixStream);

impl Session {
    fn open(path: &Path) -> Session {
        let mut s = UnixStream::connect(path).expect("connect to the control socket");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        protocol::handshake::client(&mut s, Role::Cli, "mutes-test").expect("handshake");
        Session(s)
    }

    fn ask(&mut self, req: &ControlRequest) -> ControlResponse {
        protocol::frame::write_frame(&mut self.0, req, CONTROL_MAX_FRAME).unwrap();
        protocol::frame::read_frame(&mut self.0, CONTROL_MAX_FRAME).expect("a response")
    }
}

fn spec(scope: MuteScope, path: &str, prefix: bool) -> MuteSpec {
    MuteSpec {
        scope,
        path: path.to_owned(),
        prefix,
    }
}

fn rig_with_control() -> (tempfile::TempDir, Rig, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let mut cfg = test_config(None);
    cfg.control_socket = Some(sock.clone());
    (dir, start(cfg), sock)
}

#[test]
#[ignore = "a measurement, not a check: run with --ignored --nocapture"]
fn measure_4000_adds() {
    let (_dir, rig, sock) = rig_with_control();
    let mut s = Session::open(&sock);
    let t = Instant::now();
    for i in 0..4000 {
        let path = format!("/opt/muted/{i:05}/bin/tool");
        let r = s.ask(&ControlRequest::MuteAdd(spec(
            MuteScope::Process,
            &path,
            i % 2 == 0,
        )));
        assert!(matches!(r, ControlResponse::Ok), "add {i}: {r:?}");
    }
    let took = t.elapsed();
    println!("4000 runtime mute adds over one control session: {took:?}");
    assert_eq!(rig.core.mutes().all().len(), 4000);
}

/// Validation and the bound over the real control socket: refused requests name the problem,
/// change nothing, and the session stays usable.
#[test]
fn runtime_mute_validation_table() {
    let (_dir, rig, sock) = rig_with_control();
    let mut s = Session::open(&sock);
    let t = MuteScope::Target;
    let cases = [
        (spec(t, "", false), Some("needs a path")),
        (spec(t, "", true), Some("needs a path")),
        (spec(t, "/", true), Some("would mute every path")),
        (
            spec(MuteScope::Process, "/", true),
            Some("would mute every path"),
        ),
        (spec(t, "relative/file", false), Some("not absolute")),
        (spec(t, "/x\0y", false), Some("NUL")),
        (
            spec(t, &format!("/{}", "a".repeat(5000)), false),
            Some("limit is 4096"),
        ),
        (spec(t, "/srv/data/", true), None),
        (spec(t, "/srv/data/", true), None),
    ];
    for (m, refused) in &cases {
        match (s.ask(&ControlRequest::MuteAdd(m.clone())), refused) {
            (ControlResponse::Ok, None) => {}
            (ControlResponse::Error { message }, Some(want)) => {
                assert!(message.contains(want), "{m:?}: {message}");
            }
            (other, _) => panic!("{m:?}: want refused={refused:?}, got {other:?}"),
        }
    }
    assert_eq!(rig.core.mutes().all(), vec![spec(t, "/srv/data/", true)]);
    // The kernel was told once about the one mute that took effect, and of nothing refused.
    let pushed: Vec<String> = rig
        .control
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("mute "))
        .collect();
    assert_eq!(pushed, ["mute Target /srv/data/ prefix=true"]);
}

/// Past the bound a new mute is refused with a clear message; removing one makes room again.
#[test]
fn runtime_mutes_are_bounded() {
    let (_dir, rig, sock) = rig_with_control();
    let mut s = Session::open(&sock);
    let max = es_extension::core::mutes::MAX_RUNTIME_MUTES;
    for i in 0..max {
        let r = s.ask(&ControlRequest::MuteAdd(spec(
            MuteScope::Target,
            &format!("/m/{i}"),
            false,
        )));
        assert!(matches!(r, ControlResponse::Ok), "add {i}: {r:?}");
    }
    let extra = spec(MuteScope::Target, "/m/extra", false);
    match s.ask(&ControlRequest::MuteAdd(extra.clone())) {
        ControlResponse::Error { message } => {
            assert!(
                message.contains("runtime mutes are already in force"),
                "{message}"
            );
        }
        other => panic!("add past the bound: {other:?}"),
    }
    let first = spec(MuteScope::Target, "/m/0", false);
    assert!(matches!(
        s.ask(&ControlRequest::MuteRemove(first)),
        ControlResponse::Ok
    ));
    assert!(matches!(
        s.ask(&ControlRequest::MuteAdd(extra)),
        ControlResponse::Ok
    ));
    assert_eq!(rig.core.mutes().len(), max);
}

/// Thousands of mutes: the delivery path matches literals and prefixes exactly (a near miss is
/// not muted), a policy load keeps runtime mutes, and every event is answered once.
#[test]
fn many_mutes_match_on_delivery() {
    let (_dir, rig, sock) = rig_with_control();
    let mut s = Session::open(&sock);
    for i in 0..2000 {
        let (path, prefix) = if i % 2 == 0 {
            (format!("/opt/p{i:05}/"), true)
        } else {
            (format!("/opt/l{i:05}/bin/tool"), false)
        };
        let r = s.ask(&ControlRequest::MuteAdd(spec(
            MuteScope::Target,
            &path,
            prefix,
        )));
        assert!(matches!(r, ControlResponse::Ok), "add {i}: {r:?}");
    }
    let cases = [
        ("/opt/p00000/bin/x", true),
        ("/opt/p01998/deep/er/x", true),
        ("/opt/l00001/bin/tool", true),
        ("/opt/l00001/bin/tool2", false),
        ("/opt/p00001/bin/x", false),
        ("/opt/p0000", false),
        ("/usr/local/bin/tool", false),
    ];
    let check = |label: &str| {
        for (i, (exe, muted)) in cases.iter().enumerate() {
            let before = counter(&rig.core, "muted");
            let (_, d) = rig.backend.delivery(
                events::exec(9_000_000 + i as u32, exe, 7),
                Duration::from_secs(2),
            );
            rig.core.deliver(d);
            let after = counter(&rig.core, "muted");
            assert_eq!(after - before == 1, *muted, "{label}: {exe}");
        }
    };
    check("after adds");
    match s.ask(&ControlRequest::PolicyLoad {
        origin: "again.toml".into(),
        text: test_policy_toml("enforce"),
    }) {
        ControlResponse::PolicyLoaded { .. } => {}
        other => panic!("policy load: {other:?}"),
    }
    check("after a policy load");
    settle(&rig.core, 2 * cases.len() as u64);
    assert_clean(&rig.backend);
}
