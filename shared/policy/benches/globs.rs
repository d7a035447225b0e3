//! decide() latency for opens with glob watch paths at the policy's bound (256 globs, the
//! worst case: every glob shares the literal head `/Users/`, so none is skipped by the head
//! check) and with a few globs, for a path one glob matches, a path under the head that none
//! matches, and an unwatched path.

use std::fmt::Write as _;
use std::hint::black_box;

use model::{AccessFlags, CodeSigning, Event, EventBody, Facts, FileRef, Process};
use policy::{Os, Policy};

fn main() {
    divan::main();
}

fn policy(globs: usize) -> Policy {
    let mut t = String::from("version = 1\nmode = \"enforce\"\n");
    for i in 0..globs {
        let _ = write!(
            t,
            "[[watch]]\nname = \"g{i}\"\naudit_only = false\n\
             paths = [{{ path = \"/Users/*/Library/App{i}/*.db\" }}]\n"
        );
    }
    Policy::parse_for("bench.toml", &t, Os::Linux).expect("bench policy parses")
}

fn open(path: &str) -> Event {
    Event {
        process: Process {
            pid: 1,
            pid_version: None,
            ppid: None,
            uid: 501,
            gid: 20,
            executable: FileRef::new("/usr/bin/vim"),
            signing: CodeSigning::unsigned(),
            audit_token: None,
        },
        body: EventBody::Open {
            file: FileRef::new(path),
            access: Some(AccessFlags {
                read: true,
                write: true,
                append: false,
                truncate: false,
            }),
        },
    }
}

const PATHS: [&str; 3] = [
    "/Users/alice/Library/App200/cookies.db",
    "/Users/alice/Library/Other/cookies.db",
    "/var/tmp/x",
];

#[divan::bench(args = [8, 256], consts = [0, 1, 2], sample_count = 1000, sample_size = 64)]
fn decide_glob<const P: usize>(bencher: divan::Bencher<'_, '_>, globs: usize) {
    let p = policy(globs);
    let ev = open(PATHS[P]);
    bencher.bench_local(|| black_box(p.decide(black_box(&ev), black_box(&Facts::NONE))));
}
