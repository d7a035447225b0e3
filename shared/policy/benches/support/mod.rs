//! Policies and events shared by the decide() benchmarks: deterministic rule sets of 10 and
//! 10,000 mixed rules, and representative events with the facts they are decided with.

use std::fmt::Write as _;

use model::{
    AccessFlags, CodeSigning, Event, EventBody, Facts, FileRef, Process, Sha256, SigningStatus,
    cs_flags,
};
use policy::Policy;

/// Deterministic pseudo-random hex so both sizes are reproducible.
struct Lcg(u64);

impl Lcg {
    fn hex(&mut self, bytes: usize) -> String {
        let mut s = String::with_capacity(bytes * 2);
        for _ in 0..bytes {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let _ = write!(s, "{:02x}", (self.0 >> 56) as u8);
        }
        s
    }
    fn team(&mut self) -> String {
        self.hex(5).to_ascii_uppercase()
    }
}

/// A policy with `n` rules spread over the kinds; the named hit rules are always present.
pub fn policy(n: usize) -> Policy {
    let mut r = Lcg(42);
    let mut t = String::from(
        "version = 1\nmode = \"enforce\"\n[defaults]\npackage_trust = false\n\
         [[exec]]\nname = \"hit-cdhash\"\naction = \"allow\"\ncdhash = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n\
         [[exec]]\nname = \"hit-team\"\naction = \"allow\"\nteam_id = \"ABCDE12345\"\n",
    );
    let per = n.saturating_sub(2) / 7;
    for i in 0..per {
        let _ = write!(
            t,
            "[[exec]]\nname = \"sha-{i}\"\naction = \"allow\"\nsha256 = \"{}\"\n",
            r.hex(32)
        );
        let _ = write!(
            t,
            "[[exec]]\nname = \"cd-{i}\"\naction = \"block\"\ncdhash = \"{}\"\n",
            r.hex(20)
        );
        let team = r.team();
        let _ = write!(
            t,
            "[[exec]]\nname = \"sid-{i}\"\naction = \"block\"\nsigning_id = \"{team}:com.example.app{i}\"\n"
        );
        let _ = write!(
            t,
            "[[exec]]\nname = \"cert-{i}\"\naction = \"allow\"\ncertificate = \"{}\"\n",
            r.hex(32)
        );
        let _ = write!(
            t,
            "[[exec]]\nname = \"team-{i}\"\naction = \"allow\"\nteam_id = \"{}\"\n",
            r.team()
        );
        let _ = write!(
            t,
            "[[exec_path]]\nname = \"path-{i}\"\naction = \"block\"\nprefix = \"/opt/{}/\"\n",
            r.hex(4)
        );
        let _ = write!(
            t,
            "[[watch]]\nname = \"watch-{i}\"\naudit_only = false\npaths = [{{ path = \"/srv/{}/\", prefix = true }}]\nprocesses = [{{ binary_path = \"/usr/bin/tool{i}\" }}]\n",
            r.hex(4)
        );
    }
    let p = Policy::parse("bench.toml", &t).expect("bench policy is valid");
    assert!(p.rule_count() >= n.min(9), "{} rules", p.rule_count());
    p
}

fn proc(path: &str, signing: CodeSigning) -> Process {
    Process {
        pid: 1,
        pid_version: None,
        ppid: None,
        uid: 0,
        gid: 0,
        executable: FileRef::new(path),
        signing,
        audit_token: None,
    }
}

fn exec(path: &str, signing: CodeSigning) -> Event {
    Event {
        process: proc("/bin/sh", CodeSigning::unsigned()),
        body: EventBody::Exec {
            target: Box::new(proc(path, signing)),
        },
    }
}

pub fn events() -> Vec<(&'static str, Event, Facts)> {
    let enforced = cs_flags::CS_VALID | cs_flags::CS_HARD;
    let team = CodeSigning {
        status: SigningStatus::Production,
        team_id: Some("ABCDE12345".into()),
        signing_id: Some("com.example.tool".into()),
        cdhash: None,
        flags: 0,
        is_platform_binary: false,
    };
    let cd = CodeSigning {
        cdhash: Some("a".repeat(40).parse().unwrap()),
        flags: enforced,
        ..team.clone()
    };
    let hashed = Facts {
        sha256: Some("9".repeat(64).parse::<Sha256>().unwrap()),
        ..Facts::NONE
    };
    let open = |path: &str| Event {
        process: proc("/usr/bin/vim", CodeSigning::unsigned()),
        body: EventBody::Open {
            file: FileRef::new(path),
            access: Some(AccessFlags {
                read: true,
                write: true,
                append: false,
                truncate: false,
            }),
        },
    };
    vec![
        (
            "exec_cdhash_hit",
            exec("/Applications/A.app/a", cd),
            Facts::NONE,
        ),
        (
            "exec_team_hit",
            exec("/Applications/B.app/b", team),
            hashed.clone(),
        ),
        (
            "exec_unsigned_default",
            exec("/usr/local/bin/x", CodeSigning::unsigned()),
            hashed,
        ),
        (
            "exec_needs_hash",
            exec("/usr/local/bin/y", CodeSigning::unsigned()),
            Facts::NONE,
        ),
        ("open_unwatched", open("/home/u/notes.txt"), Facts::NONE),
        ("open_watched", open("/srv/zzzzzzzz/x"), Facts::NONE),
    ]
}

pub const SIZES: [usize; 2] = [10, 10_000];
pub const EVENTS: [&str; 6] = [
    "exec_cdhash_hit",
    "exec_team_hit",
    "exec_unsigned_default",
    "exec_needs_hash",
    "open_unwatched",
    "open_watched",
];
