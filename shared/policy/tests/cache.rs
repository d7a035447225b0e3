//! The verdict cache: keys, expiry of denies, bounds, clearing, and concurrent readers.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use model::{
    Cacheability, Decision, EventKind, FileIdentity, FileRef, Reason, RuleRef, SigningStatus::*,
    Verdict,
};
use policy::{CacheKey, DENY_TTL, VerdictCache};

fn ident(ino: u64) -> FileIdentity {
    FileIdentity {
        dev: 1,
        ino,
        size: 10,
        mtime_ns: 5,
        ctime_ns: 6,
    }
}

fn rule() -> Reason {
    Reason::Rule {
        rule: RuleRef::new("r"),
    }
}

#[test]
fn key_for_table() {
    let mut with_id = exec("/x", sig(Production, None, None, Some("aa"), 0, false));
    if let model::EventBody::Exec { target } = &mut with_id.body {
        target.executable.identity = Some(ident(7));
    }
    let enforced = exec(
        "/x",
        sig(Production, None, None, Some("aa"), ENFORCED, false),
    );
    let mut opened = open(shell(), "/etc/x", READ);
    if let model::EventBody::Open { file, .. } = &mut opened.body {
        *file = FileRef {
            path: "/etc/x".into(),
            identity: Some(ident(9)),
        };
    }
    let cases = [
        (
            enforced,
            Some(CacheKey::CdHash(
                EventKind::Exec,
                hex("aa", 20).parse().unwrap(),
            )),
        ),
        (with_id, Some(CacheKey::File(EventKind::Exec, ident(7)))),
        (exec("/x", sig(Unsigned, None, None, None, 0, false)), None),
        (opened, Some(CacheKey::File(EventKind::Open, ident(9)))),
        (file_event(shell(), "create", "/tmp/x", ""), None),
    ];
    for (ev, want) in cases {
        assert_eq!(VerdictCache::key_for(&ev), want, "{ev:?}");
    }
}

#[test]
fn insert_get_expire_clear() {
    let c = VerdictCache::with_capacity(64);
    let t0 = Instant::now();
    let allow = Decision::allow(rule(), Cacheability::Kernel);
    let deny = Decision::deny(rule(), Cacheability::Identity);
    let never = Decision::allow(rule(), Cacheability::Never);
    let (ka, kd, kn) = (
        CacheKey::File(EventKind::Exec, ident(1)),
        CacheKey::File(EventKind::Exec, ident(2)),
        CacheKey::File(EventKind::Exec, ident(3)),
    );
    c.insert(ka, &allow, t0);
    c.insert(kd, &deny, t0);
    c.insert(kn, &never, t0);
    assert_eq!(c.len(), 2, "never-cacheable is not stored");
    let hit = c.get(&ka, t0).unwrap();
    assert_eq!(
        (hit.verdict, hit.reason, hit.cacheable),
        (Verdict::Allow, Reason::Cached, Cacheability::Kernel)
    );
    assert_eq!(
        c.get(&kd, t0 + Duration::from_millis(100)).unwrap().verdict,
        Verdict::Deny
    );
    assert!(c.get(&kd, t0 + DENY_TTL).is_none(), "denies expire");
    assert!(
        c.get(&ka, t0 + Duration::from_secs(3600)).is_some(),
        "allows do not"
    );
    assert!(c.get(&kn, t0).is_none());
    // Same identity, other kind: a different key.
    assert!(
        c.get(&CacheKey::File(EventKind::Open, ident(1)), t0)
            .is_none()
    );
    c.clear();
    assert!(c.is_empty() && c.get(&ka, t0).is_none());
}

#[test]
fn bounded_by_capacity() {
    let c = VerdictCache::with_capacity(100);
    let t0 = Instant::now();
    let allow = Decision::allow(rule(), Cacheability::Kernel);
    for i in 0..10_000 {
        c.insert(CacheKey::File(EventKind::Open, ident(i)), &allow, t0);
    }
    assert!(c.len() <= 100, "{}", c.len());
    assert_eq!(c.capacity(), 100);
    // The most recent insert is always findable.
    assert!(
        c.get(&CacheKey::File(EventKind::Open, ident(9_999)), t0)
            .is_some()
    );
}

#[test]
fn readers_run_while_a_writer_inserts_and_clears() {
    let c = Arc::new(VerdictCache::with_capacity(1024));
    let t0 = Instant::now();
    let allow = Decision::allow(rule(), Cacheability::Kernel);
    let writer = {
        let c = Arc::clone(&c);
        std::thread::spawn(move || {
            for round in 0..50u64 {
                for i in 0..500 {
                    c.insert(
                        CacheKey::File(EventKind::Open, ident(round * 1000 + i)),
                        &allow,
                        t0,
                    );
                }
                c.clear();
            }
        })
    };
    while !writer.is_finished() {
        for i in 0..500 {
            if let Some(d) = c.get(&CacheKey::File(EventKind::Open, ident(i)), t0) {
                assert_eq!((d.verdict, d.reason), (Verdict::Allow, Reason::Cached));
            }
        }
    }
    writer.join().unwrap();
    assert!(
        c.is_empty(),
        "the writer's last act was a clear: {}",
        c.len()
    );
}

#[test]
fn store_versions_and_bad_reload_changes_nothing() {
    let store = policy::PolicyStore::new(policy::Policy::embedded_default());
    assert_eq!(store.load().version, 1);
    let next = policy::Policy::parse("a.toml", "version = 1\nmode = \"enforce\"\n").unwrap();
    assert_eq!(store.replace(next), 2);
    // A reload is parse-then-replace: a bad file fails at parse and the store keeps version 2.
    assert!(policy::Policy::parse("b.toml", "version = 1\nmode = \"lockdown\"\n").is_err());
    let snap = store.load();
    assert_eq!((snap.version, snap.policy.origin()), (2, "a.toml"));
    assert_eq!(snap.policy.mode(), policy::Mode::Enforce);
}
