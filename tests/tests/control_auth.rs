//! Unauthorized peers on the real `gatehouse-extension`'s control socket are refused, and the
//! extension keeps serving a good client afterwards (docs/DESIGN.md 7: "Unauthorized peers on the
//! helper and control sockets are refused"). Root only (fanotify, and `setpriv` to become uid
//! 65534).
//!
//! Two layers refuse a non-root `gatehouse status`, and the test shows each one separately:
//! 1. the socket's mode (0600, set by the extension): `connect()` fails with EACCES;
//! 2. with the socket opened to everyone (mode 0666, for this test only), the extension's own
//!    check of the kernel's peer credentials: the connection is accepted and then closed before
//!    the handshake, and the extension logs the refusal with the peer's uid.
//!
//! Root clients speaking the wrong role, a wrong magic or version, garbage, oversized or
//! undecodable frames, or nothing at all are refused or dropped, each on its own connection,
//! and a good client (the real CLI and a raw protocol client) is served after each. Silent
//! clients hold a control handler only until the handshake deadline: the CLI is served while
//! two are connected, and a flood of them is partly refused at once (counted in
//! `control_refused_busy`), the rest dropped, after which the CLI is served again.
//!
//! Safety (docs/DESIGN.md "Testing fanotify safely"): `--scope` is a tmpfs mounted here and the
//! policy watches no paths, so nothing else is marked. The extension runs as
//! `timeout -s KILL <secs> gatehouse-extension ...` in its own process group, SIGKILLed as a
//! group by its own pgid on drop; the tmpfs is unmounted by its guard.
#![cfg(target_os = "linux")]

mod linux_common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use linux_common::Scratch;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use protocol::{
    CONTROL_MAX_FRAME, ControlRequest, ControlResponse, Hello, HelloReply, MAGIC, PROTOCOL_VERSION,
    ProtocolError, Role,
};
use tests::{binary, have_command, wait_until};

/// Hard limit on the extension's life, whatever happens to this test.
const HARD_KILL_SECS: &str = "90";
/// Nobody.
const NOBODY: &str = "65534";

/// `timeout -s KILL ... gatehouse-extension ...` in its own process group, SIGKILLed as a
/// group and reaped on drop.
struct Extension {
    child: Option<Child>,
    pgid: Pid,
    log: PathBuf,
    control: PathBuf,
}

impl Extension {
    fn start(runtime: &Path, scope: &Path) -> Extension {
        // The extension is `timeout`'s child: as a subreaper this test inherits it when the
        // group is killed, so the drop guard reaps it too and leaves no zombie behind.
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
        let policy = runtime.join("policy.toml");
        // Monitor mode, allow fallbacks, no watch items: only the scratch tmpfs is marked.
        std::fs::write(
            &policy,
            "version = 1\nmode = \"monitor\"\n[defaults]\nfallback = \"allow\"\n\
             helper_unavailable = \"allow\"\ndeadline_ms = 2000\n",
        )
        .unwrap();
        let log = runtime.join("extension.log");
        let control = runtime.join("control.sock");
        let mut cmd = Command::new("timeout");
        cmd.args(["-s", "KILL", HARD_KILL_SECS])
            .arg(binary("gatehouse-extension"))
            .arg("--policy")
            .arg(&policy)
            // No helper runs: the extension degrades to fallbacks and never waits for it.
            .arg("--helper-socket")
            .arg(runtime.join("helper.sock"))
            .arg("--control-socket")
            .arg(&control)
            .arg("--events-log")
            .arg(runtime.join("events.jsonl"))
            .arg("--scope")
            .arg(scope)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0);
        let child = cmd.spawn().expect("start timeout gatehouse-extension");
        let pgid = Pid::from_raw(child.id() as i32);
        Extension {
            child: Some(child),
            pgid,
            log,
            control,
        }
    }

    /// The extension's stderr, without terminal colour codes.
    fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Extension {
    fn drop(&mut self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        // Reap the rest of the group (the extension), by the group's own id; ECHILD ends it.
        while nix::sys::wait::waitpid(Pid::from_raw(-self.pgid.as_raw()), None).is_ok() {}
    }
}

/// `s` without ANSI escape sequences (`ESC [ ... letter`), which tracing adds to field names.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `gatehouse status --json` against `sock`, as root or (through `setpriv`) as nobody.
fn cli_status(sock: &Path, as_nobody: bool) -> Output {
    let mut c = Command::new("timeout");
    c.args(["-s", "KILL", "30"]);
    if as_nobody {
        c.arg("setpriv").args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ]);
    }
    c.arg(binary("gatehouse"))
        .args(["status", "--json", "--control-socket"])
        .arg(sock)
        .stdin(Stdio::null());
    let out = c.output().expect("run gatehouse status");
    eprintln!(
        "$ {}gatehouse status --json -> {:?}\n{}{}",
        if as_nobody {
            "setpriv (uid 65534) "
        } else {
            ""
        },
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The real CLI, as root, gets a status report from the extension.
fn assert_served(ext: &mut Extension, after: &str) {
    let o = cli_status(&ext.control, false);
    assert!(o.status.success(), "after {after}: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("after {after}: not JSON ({e}): {}", text(&o)));
    assert!(
        v["agent"]
            .as_str()
            .is_some_and(|a| a.starts_with("gatehouse-extension/")),
        "after {after}: {v}"
    );
    assert!(ext.alive(), "the extension exited after {after}");
}

fn connect(sock: &Path) -> UnixStream {
    let s = UnixStream::connect(sock).expect("root connects to the control socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// True when the extension closed the connection (EOF or reset); anything it sent first (a
/// refusal) is read and ignored. The socket's read timeout bounds the wait.
fn closed_by_peer(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

/// True when the extension closed `s` (EOF or reset, after anything it sent first, such as a
/// busy refusal); false when the socket's read timeout passed with the connection still open.
fn dropped(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// `gatehouse stats --json`, as root.
fn cli_stats(sock: &Path) -> serde_json::Value {
    let out = Command::new("timeout")
        .args(["-s", "KILL", "30"])
        .arg(binary("gatehouse"))
        .args(["stats", "--json", "--control-socket"])
        .arg(sock)
        .stdin(Stdio::null())
        .output()
        .expect("run gatehouse stats");
    assert!(out.status.success(), "gatehouse stats: {}", text(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("gatehouse stats: not JSON ({e}): {}", text(&out)))
}

/// A raw protocol client, as root, with the right role: handshake, then one Status request.
fn raw_status(sock: &Path) -> Result<ControlResponse, ProtocolError> {
    let mut s = connect(sock);
    protocol::handshake::client(&mut s, Role::Cli, "control-auth-test")?;
    protocol::frame::write_frame(&mut s, &ControlRequest::Status, CONTROL_MAX_FRAME)?;
    protocol::frame::read_frame(&mut s, CONTROL_MAX_FRAME)
}

/// A hello with the given fields, answered (or not) by the extension.
fn hello(sock: &Path, magic: [u8; 4], version: u16, role: Role) -> Option<HelloReply> {
    let mut s = connect(sock);
    let h = Hello {
        magic,
        version,
        role,
        agent: "control-auth-test".into(),
    };
    protocol::frame::write_frame(&mut s, &h, 1024).unwrap();
    let reply = protocol::frame::read_frame::<_, HelloReply>(&mut s, 1024).ok();
    assert!(
        closed_by_peer(&mut s),
        "refused hello left the connection open"
    );
    reply
}

fn skip(test: &str) -> bool {
    if linux_common::skip(test) {
        return true;
    }
    if !have_command("setpriv") || !have_command("timeout") {
        tests::skip(test, "needs setpriv and timeout (util-linux, coreutils)");
        return true;
    }
    false
}

#[test]
fn unauthorized_control_peers_are_refused() {
    const TEST: &str = "unauthorized_control_peers_are_refused";
    if skip(TEST) {
        return;
    }
    let scratch = Scratch::mount();
    let runtime = tempfile::Builder::new()
        .prefix("gatehouse-control-auth-")
        .tempdir()
        .unwrap();
    // Nobody may traverse the directory, so that the socket's own mode is what decides.
    std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut ext = Extension::start(runtime.path(), &scratch.path);
    assert!(
        wait_until(Duration::from_secs(30), || cli_status(&ext.control, false)
            .status
            .success()),
        "the extension never served its control socket; its log:\n{}",
        ext.log()
    );

    // Layer 1: the socket as the extension made it (0600, owned by root).
    let mode = std::fs::metadata(&ext.control)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "control socket mode");
    let o = cli_status(&ext.control, true);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("cannot connect") && text(&o).contains("Permission denied"),
        "expected connect() to fail with EACCES: {}",
        text(&o)
    );
    assert_served(&mut ext, "a refused connect by uid 65534");

    // Layer 2: world-connectable (this test only), so the extension's peer-uid check decides.
    std::fs::set_permissions(&ext.control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refusals = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("refused control connection from a non-root peer")
                    && l.contains("uid=65534")
            })
            .count()
    };
    assert_eq!(refusals(&ext.log()), 0);
    let o = cli_status(&ext.control, true);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("handshake") && !text(&o).contains("cannot connect"),
        "expected the connection to be accepted, then closed before the handshake: {}",
        text(&o)
    );
    assert!(
        wait_until(Duration::from_secs(5), || refusals(&ext.log()) == 1),
        "the extension did not log the refusal of uid 65534; its log:\n{}",
        ext.log()
    );
    assert_served(&mut ext, "a peer-uid refusal");
    std::fs::set_permissions(&ext.control, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Root clients that do not speak the CLI's protocol.
    for role in [Role::Extension, Role::Helper] {
        let reply = hello(&ext.control, MAGIC, PROTOCOL_VERSION, role);
        assert!(
            matches!(&reply, Some(HelloReply::Rejected { reason, .. }) if reason.contains("may not use this socket")),
            "role {role:?}: {reply:?}"
        );
        assert_served(&mut ext, &format!("a hello with role {role:?}"));
    }
    let reply = hello(&ext.control, *b"EVIL", PROTOCOL_VERSION, Role::Cli);
    assert!(
        matches!(reply, Some(HelloReply::Rejected { .. })),
        "bad magic: {reply:?}"
    );
    assert_served(&mut ext, "a hello with a bad magic");
    let reply = hello(&ext.control, MAGIC, PROTOCOL_VERSION + 1, Role::Cli);
    assert!(
        matches!(reply, Some(HelloReply::Rejected { supported, .. }) if supported == PROTOCOL_VERSION),
        "wrong version: {reply:?}"
    );
    assert_served(&mut ext, "a hello with a wrong version");
    // The real handshake with the wrong role, through the protocol crate's client.
    let mut s = connect(&ext.control);
    let r = protocol::handshake::client(&mut s, Role::Extension, "control-auth-test");
    assert!(
        matches!(&r, Err(ProtocolError::Rejected(reason)) if reason.contains("Extension")),
        "{r:?}"
    );
    drop(s);
    assert_served(&mut ext, "a handshake as the extension role");

    // Garbage before the handshake, and bad frames after a good one.
    let cases: Vec<(&str, bool, Vec<u8>)> = vec![
        (
            "HTTP before the handshake",
            false,
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ),
        ("random bytes before the handshake", false, vec![0xff; 64]),
        (
            "a short frame before the handshake",
            false,
            vec![2, 0, 0, 0, 1],
        ),
        ("an oversized length", true, u32::MAX.to_le_bytes().to_vec()),
        (
            "a frame just over the limit",
            true,
            (CONTROL_MAX_FRAME + 1).to_le_bytes().to_vec(),
        ),
        (
            "an undecodable request",
            true,
            [3u32.to_le_bytes().to_vec(), vec![0xff; 3]].concat(),
        ),
    ];
    for (name, handshake, bytes) in cases {
        let mut s = connect(&ext.control);
        if handshake {
            protocol::handshake::client(&mut s, Role::Cli, "control-auth-test").unwrap();
        }
        s.write_all(&bytes).unwrap();
        if !handshake {
            // Make the end of the garbage visible to a server waiting for more.
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        assert!(closed_by_peer(&mut s), "{name}: connection left open");
        assert_served(&mut ext, name);
        let r = raw_status(&ext.control);
        assert!(
            matches!(r, Ok(ControlResponse::Status(_))),
            "{name}: raw client {r:?}"
        );
    }

    // Root clients that connect and say nothing hold one of the extension's control handlers
    // each, but only until its handshake deadline: a good client is served while two of them
    // are still connected, and the extension drops them.
    let mut silent: Vec<UnixStream> = (0..2).map(|_| connect(&ext.control)).collect();
    assert_served(&mut ext, "two silent clients that are still connected");
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(dropped(s), "silent client {i} was never dropped");
    }
    // A flood of silent clients, far beyond the handlers and their backlog: the excess is
    // refused at once and counted, the rest time out, and then the CLI is served again.
    let mut flood: Vec<UnixStream> = (0..32).map(|_| connect(&ext.control)).collect();
    for (i, s) in flood.iter_mut().enumerate() {
        assert!(dropped(s), "flood client {i} was never dropped");
    }
    assert_served(&mut ext, "a flood of silent clients");
    let stats = cli_stats(&ext.control);
    let count = |name: &str| {
        stats["counters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c[0] == name))
            .and_then(|c| c[1].as_u64())
            .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
    };
    assert!(count("control_refused_busy") >= 1, "{stats}");
    assert!(count("control_handshake_timeouts") >= 2, "{stats}");
    drop(silent);
    drop(flood);

    assert!(ext.alive(), "the extension exited; its log:\n{}", ext.log());
    eprintln!("extension log:\n{}", ext.log());
}
