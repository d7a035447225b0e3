//! The real `gatehouse-helper` under hostile or heavy use: peers with the wrong uid or an
//! unexpected executable are refused, malformed and oversized frames close only their own
//! connection, 1,000 pipelined requests over several connections complete with a fixed thread
//! count, and SIGTERM stops it cleanly.
#![cfg(target_os = "linux")]

mod helper_support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use helper_support::*;
use protocol::{HelperRequest, HelperResponse};
use tests::{binary, have_command, is_root, skip};

const BUDGET: Duration = Duration::from_secs(30);

/// `gatehouse-helper --probe SOCKET` (a CLI-role ping), optionally under `setpriv` as nobody.
fn probe(helper: &Helper, as_nobody: bool) -> (bool, String) {
    probe_with(&binary("gatehouse-helper"), helper, as_nobody)
}

/// `EXE --probe SOCKET`, with EXE a helper binary (perhaps a copy elsewhere).
fn probe_with(exe: &std::path::Path, helper: &Helper, as_nobody: bool) -> (bool, String) {
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(exe);
        c
    } else {
        Command::new(exe)
    };
    let out = cmd
        .arg("--probe")
        .arg(&helper.socket)
        .output()
        .expect("running the probe");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Issue 14: an administrator can check the helper directly. The helper accepts its own
/// executable's `--probe` and `gatehouse helper ping --direct` (the CLI beside it) with no
/// extension running; any other executable, even a copy of the helper elsewhere, is refused.
#[test]
fn own_probe_and_direct_ping_are_accepted_other_executables_refused() {
    let helper = Helper::start(&[]);
    let (ok, text) = probe(&helper, false);
    assert!(
        ok && text.contains("pong"),
        "the helper's own probe: {text}"
    );
    let out = Command::new(binary("gatehouse"))
        .args(["helper", "ping", "--direct", "--helper-socket"])
        .arg(&helper.socket)
        .output()
        .expect("gatehouse helper ping --direct");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(&format!("pid {}", helper.pid())), "{said}");
    assert_eq!(helper.stats()["connections_refused"], 0);
    // The same bytes at another path are another executable: not an allowed peer.
    let copy = helper.dir.path().join("copied-helper");
    std::fs::copy(binary("gatehouse-helper"), &copy).unwrap();
    let (ok, text) = probe_with(&copy, &helper, false);
    assert!(!ok, "a copy elsewhere was accepted: {text}");
    assert!(text.contains("is not allowed"), "{text}");
    assert_eq!(helper.stats()["connections_refused"], 1);
    // Nothing listening: the CLI says the helper is not running.
    let out = Command::new(binary("gatehouse"))
        .args(["helper", "ping", "--direct", "--helper-socket"])
        .arg(helper.dir.path().join("nothing.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("helper is not running"));
}

#[test]
fn non_root_uid_is_refused() {
    if !is_root() {
        skip(
            "non_root_uid_is_refused",
            "switching to uid 65534 needs root",
        );
        return;
    }
    if !have_command("setpriv") {
        skip("non_root_uid_is_refused", "needs setpriv (util-linux)");
        return;
    }
    let helper_bin = binary("gatehouse-helper");
    let helper = Helper::start(&["--allowed-exe", helper_bin.to_str().unwrap()]);
    // Open the filesystem permissions so nobody can reach connect(); the helper's own uid
    // check is what must refuse it.
    for dir in [helper.dir.path(), helper.socket.parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&helper.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, text) = probe(&helper, true);
    assert!(!ok, "uid 65534 was accepted: {text}");
    assert!(text.contains("uid 65534"), "{text}");
    assert_eq!(helper.stats()["connections_refused"], 1);
    // Control: the same executable as root is accepted.
    let (ok, text) = probe(&helper, false);
    assert!(ok, "{text}");
}

/// Complete the handshake on a raw stream (as the extension), then hand it back for raw bytes.
fn raw_connection(helper: &Helper) -> UnixStream {
    let client = helper.client();
    client.stream().try_clone().unwrap()
}

/// True when the helper closed the connection (EOF or reset) within the timeout.
fn closed_by_peer(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_)) && !matches!(s.read(&mut buf), Ok(n) if n > 0)
}

#[test]
fn malformed_and_oversized_frames_close_only_their_connection() {
    let helper = Helper::start(&[]);
    let mut good = helper.client();
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "undecodable body",
            [3u32.to_le_bytes().to_vec(), vec![0xff; 3]].concat(),
            "malformed_frames",
        ),
        (
            "oversized length",
            u32::MAX.to_le_bytes().to_vec(),
            "oversized_frames",
        ),
        (
            "just over the limit",
            (protocol::HELPER_MAX_FRAME + 1).to_le_bytes().to_vec(),
            "oversized_frames",
        ),
    ];
    // Trailing bytes after a valid request also make the body malformed.
    let mut body = protocol::codec::encode(&protocol::Request {
        id: 9,
        budget_us: 1,
        body: HelperRequest::Ping,
    })
    .unwrap();
    body.push(0);
    let len = u32::try_from(body.len()).unwrap();
    cases.push((
        "trailing bytes",
        [len.to_le_bytes().to_vec(), body].concat(),
        "malformed_frames",
    ));

    let mut expected: HashMap<&str, u64> = HashMap::new();
    for (name, bytes, counter) in cases {
        let mut bad = raw_connection(&helper);
        bad.write_all(&bytes).unwrap();
        assert!(closed_by_peer(&mut bad), "{name}: connection left open");
        *expected.entry(counter).or_default() += 1;
        // The other connection is unaffected.
        let resp = call(&mut good, HelperRequest::Ping, BUDGET, None);
        assert!(
            matches!(resp, HelperResponse::Pong { .. }),
            "{name}: {resp:?}"
        );
    }
    // Garbage before the handshake is a handshake failure, also isolated.
    let mut junk = UnixStream::connect(&helper.socket).unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(closed_by_peer(&mut junk), "pre-handshake garbage left open");

    let stats = helper.stats();
    for (counter, n) in expected {
        assert_eq!(stats[counter], n, "{counter}: {stats:?}");
    }
    assert_eq!(stats["handshake_failures"], 1, "{stats:?}");
    assert!(matches!(
        call(&mut good, HelperRequest::Ping, BUDGET, None),
        HelperResponse::Pong { .. }
    ));
}

#[test]
fn thousand_pipelined_requests_with_bounded_threads() {
    const WORKERS: usize = 4;
    const CONNECTIONS: usize = 4;
    const PER_CONNECTION: usize = 250;
    const WINDOW: usize = 32;
    // A one-entry cache so most requests really hash.
    let helper = Helper::start(&["--cache-entries", "1"]);
    let files: Vec<(std::path::PathBuf, String)> = (0..8u8)
        .map(|i| {
            let p = helper.dir.path().join(format!("f{i}"));
            std::fs::write(&p, vec![i; 64 * 1024]).unwrap();
            let sum = sha256sum(&p);
            (p, sum)
        })
        .collect();
    let files = Arc::new(files);
    let idle_threads = helper.threads();

    let done = Arc::new(AtomicBool::new(false));
    let max_threads = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (done, max_threads, pid) = (done.clone(), max_threads.clone(), helper.pid());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let n = std::fs::read_dir(format!("/proc/{pid}/task"))
                    .map(|d| d.count())
                    .unwrap_or(0);
                max_threads.fetch_max(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let mut client = helper.client();
            let files = files.clone();
            std::thread::spawn(move || {
                let mut expected: HashMap<u64, String> = HashMap::new();
                let mut sent = 0;
                let mut answered = 0;
                while answered < PER_CONNECTION {
                    // Keep WINDOW requests in flight, answers arriving in any order.
                    while sent < PER_CONNECTION && expected.len() < WINDOW {
                        let (path, sum) = &files[(sent + c) % files.len()];
                        let f = std::fs::File::open(path).unwrap();
                        let id = client
                            .send(analyze_file(path, SHA), BUDGET, Some(f.as_fd()))
                            .unwrap();
                        expected.insert(id, sum.clone());
                        sent += 1;
                    }
                    let resp = client.recv().expect("answer");
                    let want = expected.remove(&resp.id).expect("answer to an id we sent");
                    match resp.body {
                        HelperResponse::Analysis { facts, .. } => {
                            assert_eq!(facts.sha256.unwrap().to_hex(), want);
                        }
                        other => panic!("request {}: {other:?}", resp.id),
                    }
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let total: usize = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .sum();
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    assert_eq!(total, CONNECTIONS * PER_CONNECTION);

    // main + signal thread + the package-index builder (one at a time, gone once built) +
    // workers + (reader, writer) per connection; one spare for the stats connection that may
    // overlap the sampling.
    let bound = 3 + WORKERS + 2 * (CONNECTIONS + 1);
    let peak = max_threads.load(Ordering::SeqCst);
    eprintln!("helper threads: idle {idle_threads}, peak {peak}, bound {bound}");
    assert!(peak <= bound, "peak {peak} threads > bound {bound}");
    let stats = helper.stats();
    assert_eq!(stats["requests_analyze"], total as u64, "{stats:?}");
    assert_eq!(stats["busy"], 0, "{stats:?}");
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket() {
    let mut helper = Helper::start(&[]);
    let _client = helper.client();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(helper.pid()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = helper
        .process
        .wait_timeout(Duration::from_secs(10))
        .expect("helper did not exit within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!helper.socket.exists(), "socket left behind");
}
