//! Transitive allowlisting in the platform-neutral core, with the test backend: an exec that a
//! compiler rule allows tracks the process (only when the backend can pin it), a close-write
//! from a tracked compiler is hashed through the descriptor handed over and becomes a
//! transitive allow, anything else is closed and counted; the compiler exec is never
//! kernel-cached; `rule transitive list` and `clear` over the control socket, and the store
//! file written atomically and read back by the next core.

mod common;

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use es_extension::core::transitive::{ProcessPin, TransitiveBackend};
use es_extension::test_backend::{TestBackend, TestControl, events};
use model::{CodeSigning, EventBody, SigningStatus};
use protocol::{CONTROL_MAX_FRAME, ControlRequest, ControlResponse, Role};
use sha2::Digest;

const POLICY: &str = r#"
version = 1
mode = "enforce"

[defaults]
package_trust = false
transitive_rules = true

[[exec]]
name = "cc"
action = "allow"
compiler = true
signing_id = "platform:com.apple.ld"
"#;

/// A pin whose process never exits during the test (the grace path needs time, which these
/// tests do not measure).
struct Alive(Arc<AtomicBool>);

impl ProcessPin for Alive {
    fn exited(&self) -> bool {
        !self.0.load(Ordering::Relaxed)
    }
}

/// Pins every pid except `unpinnable` (a process the backend cannot pin, e.g. gone already).
fn backend(unpinnable: u32) -> TransitiveBackend {
    TransitiveBackend {
        pin: Arc::new(move |pid, _incarnation| {
            (pid != unpinnable)
                .then(|| Box::new(Alive(Arc::new(AtomicBool::new(true)))) as Box<dyn ProcessPin>)
        }),
        path_of: Arc::new(|_f: &File| "/from/path_of".to_owned()),
    }
}

fn compiler_exec(pid: u32, ino: u64) -> model::Event {
    let mut e = events::exec(pid, "/usr/bin/ld", ino);
    if let EventBody::Exec { target } = &mut e.body {
        target.signing = CodeSigning {
            status: SigningStatus::Production,
            team_id: None,
            signing_id: Some("com.apple.ld".into()),
            cdhash: None,
            flags: 0,
            is_platform_binary: true,
        };
    }
    e
}

fn policy() -> policy::Policy {
    policy::Policy::parse_for("transitive.toml", POLICY, policy::Os::Macos).unwrap()
}

fn start_core(
    file: Option<&Path>,
    control: Option<&Path>,
) -> (
    es_extension::core::Core<es_extension::test_backend::TestResponder>,
    TestBackend,
) {
    let config = es_extension::core::CoreConfig {
        transitive_backend: Some(backend(777)),
        transitive_file: file.map(Path::to_owned),
        control_socket: control.map(Path::to_owned),
        local_rules: None,
        ..test_config(None)
    };
    let core = es_extension::core::Core::start(config, policy(), Arc::new(TestControl::default()))
        .expect("core starts");
    (core, TestBackend::new())
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "never: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A minimal little-endian ELF executable header (`ET_EXEC`) followed by `body`: an executable
/// image to the recorder, which records nothing else.
fn elf(body: &[u8]) -> Vec<u8> {
    let mut v = b"\x7fELF\x02\x01\x01".to_vec();
    v.resize(16, 0);
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(body);
    v
}

fn temp_file(dir: &Path, name: &str, bytes: &[u8]) -> (File, [u8; 32]) {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    (File::open(&p).unwrap(), sha2::Sha256::digest(bytes).into())
}

#[test]
fn compiler_writes_become_transitive_allows_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let store_file = dir.path().join("transitive.json");
    let (core, backend) = start_core(Some(&store_file), None);
    let store = core.transitive_store();

    // (exec'ing pid, tracked afterwards): 777 cannot be pinned, so it is not tracked.
    let execs: &[(u32, bool)] = &[(100, true), (777, false)];
    for (i, (pid, tracked)) in execs.iter().enumerate() {
        let (sent, d) =
            backend.delivery(compiler_exec(*pid, 10 + i as u64), Duration::from_secs(5));
        core.deliver(d);
        let a = backend
            .answer_for(sent.id)
            .expect("answered on the fast path")
            .answer;
        assert_eq!(a.verdict, model::Verdict::Allow, "pid {pid}");
        assert!(
            !a.cache,
            "a compiler's exec is never kernel-cached (pid {pid})"
        );
        // Tracked before the answer went out: the compiler cannot write first.
        let (f, _) = temp_file(dir.path(), &format!("probe{pid}"), b"");
        let handed = counter(&core, "transitive_writes_handed_off");
        core.file_written(*pid, f, None);
        assert_eq!(
            counter(&core, "transitive_writes_handed_off") - handed,
            u64::from(*tracked),
            "pid {pid}"
        );
    }
    settle(&core, 2);
    assert_eq!(counter(&core, "transitive_compilers_tracked"), 1);
    assert_eq!(counter(&core, "transitive_compilers_untracked"), 1);
    assert!(core.compilers_tracked());

    // (writer pid, contents, recorded?): only a compiler's executable images are recorded, as
    // Santa's compiler controller records only `isExecutable` files.
    let writes: &[(u32, Vec<u8>, bool)] = &[
        (100, elf(b"compiled output"), true),
        (100, b"an object file, or any data".to_vec(), false),
        (200, elf(b"written by a non-compiler"), false),
        (777, elf(b"written by an unpinnable compiler"), false),
    ];
    for (n, (pid, bytes, _)) in writes.iter().enumerate() {
        let (f, _) = temp_file(dir.path(), &format!("w{n}"), bytes);
        core.file_written(*pid, f, Some(format!("/out/w{n}")));
    }
    assert_eq!(counter(&core, "transitive_writes_seen"), 2 + 4);
    assert_eq!(counter(&core, "transitive_writes_handed_off"), 1 + 2);
    // The empty probe file and the data file are not executable images: skipped, counted.
    wait_until("the compiler's files are handled", || {
        store.len() == 1 && counter(&core, "transitive_not_executable") == 2
    });
    for (pid, bytes, recorded) in writes {
        let want: [u8; 32] = sha2::Sha256::digest(bytes).into();
        assert_eq!(store.contains(&want), *recorded, "writer {pid}");
    }
    let list = store.list();
    let e = &list[0];
    assert_eq!(e.compiler_rule, "cc");
    assert_eq!(e.path, "/out/w0");
    wait_counter(&core, "transitive_added", 1);
    wait_until("the store file is written", || {
        std::fs::read_to_string(&store_file).is_ok_and(|t| t.contains(&e.sha256.to_hex()))
    });
    assert_clean(&backend);
    core.shutdown();

    // The next core reads the file back.
    let (core, _) = start_core(Some(&store_file), None);
    assert_eq!(core.transitive_store().list(), store.list());
    core.shutdown();
}

struct Session(UnixStream);

impl Session {
    fn open(path: &Path) -> Session {
        let mut s = UnixStream::connect(path).expect("connect to the control socket");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        protocol::handshake::client(&mut s, Role::Cli, "transitive-test").expect("handshake");
        Session(s)
    }

    fn ask(&mut self, req: &ControlRequest) -> ControlResponse {
        protocol::frame::write_frame(&mut self.0, req, CONTROL_MAX_FRAME).unwrap();
        protocol::frame::read_frame(&mut self.0, CONTROL_MAX_FRAME).expect("a response")
    }
}

#[test]
fn list_and_clear_over_the_control_socket() {
    let dir = tempfile::tempdir().unwrap();
    let store_file = dir.path().join("transitive.json");
    let sock = dir.path().join("control.sock");
    let (core, backend) = start_core(Some(&store_file), Some(&sock));
    let (_, d) = backend.delivery(compiler_exec(100, 1), Duration::from_secs(5));
    core.deliver(d);
    settle(&core, 1);
    let (f, hash) = temp_file(dir.path(), "out", &elf(b"output"));
    core.file_written(100, f, None);
    let store = core.transitive_store();
    wait_until("recorded", || store.len() == 1);
    wait_until("the store file is written", || store_file.exists());

    let mut s = Session::open(&sock);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    match s.ask(&ControlRequest::TransitiveList) {
        ControlResponse::TransitiveList(v) => {
            assert_eq!(v.len(), 1);
            assert_eq!(v[0].sha256, hex);
            assert_eq!(v[0].compiler_rule, "cc");
            // No path given: the backend's path_of names it.
            assert_eq!(v[0].path, "/from/path_of");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.ask(&ControlRequest::TransitiveClear),
        ControlResponse::TransitiveCleared { removed: 1 }
    );
    assert!(store.is_empty());
    assert_eq!(
        s.ask(&ControlRequest::TransitiveList),
        ControlResponse::TransitiveList(vec![])
    );
    let saved = std::fs::read_to_string(&store_file).unwrap();
    assert!(!saved.contains(&hex), "clear rewrote the file: {saved}");
    drop(s);
    core.shutdown();
}
