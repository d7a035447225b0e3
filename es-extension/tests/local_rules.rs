//! The local rules tier in the core: loaded at start (a missing or bad file never stops the
//! start), replaced by `load_local_rules` (a bad file changes nothing), kept across policy
//! loads, and always ranked below the policy file's rules.

mod common;

use common::*;
use model::{Facts, Outcome, Reason};

/// A local block of one SHA-256 the test policy does not name, and a local allow of the hash
/// the test policy blocks (which must lose to the policy file's block).
fn local_toml(sha: &str) -> String {
    format!(
        "version = 1\n[[exec]]\nname = \"local-block\"\naction = \"block\"\nsha256 = \"{sha}\"\n\
         [[exec]]\naction = \"allow\"\nsha256 = \"{BLOCKED}\"\n"
    )
}

const CC: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
const DD: &str = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";

/// The rule that decides an exec whose file hashes to `sha`.
fn rule_for(rig: &Rig, sha: &str) -> String {
    let ev = model::Event {
        process: model::Process {
            pid: 1,
            pid_version: None,
            ppid: None,
            uid: 0,
            gid: 0,
            executable: model::FileRef::new("/bin/sh"),
            signing: model::CodeSigning::unsigned(),
            audit_token: None,
        },
        body: model::EventBody::Exec {
            target: Box::new(model::Process {
                pid: 2,
                pid_version: None,
                ppid: Some(1),
                uid: 0,
                gid: 0,
                executable: model::FileRef::new("/tmp/x"),
                signing: model::CodeSigning::unsigned(),
                audit_token: None,
            }),
        },
    };
    let facts = Facts {
        sha256: Some(sha.parse().unwrap()),
        ..Facts::NONE
    };
    match rig.core.policy().policy.decide(&ev, &facts) {
        Outcome::Decided(d) => match d.reason {
            Reason::Rule { rule } => rule.name,
            other => format!("{other:?}"),
        },
        Outcome::Analyze(_) => "analyze".into(),
    }
}

fn start_with(local: Option<&std::path::Path>) -> Rig {
    start(es_extension::core::CoreConfig {
        local_rules: local.map(std::path::Path::to_owned),
        ..test_config(None)
    })
}

#[test]
fn local_rules_load_at_start_below_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("local-rules.toml");
    std::fs::write(&path, local_toml(CC)).unwrap();
    let rig = start_with(Some(&path));
    assert_eq!(rule_for(&rig, CC), "local:local-block");
    // The policy file's block outranks the local allow of the same hash.
    assert_eq!(rule_for(&rig, &BLOCKED.to_string()), "block-evil");
}

#[test]
fn a_missing_or_bad_local_file_never_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.toml");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "version = 1\n[[exec]]\naction = \"allow\"\nsha256 = \"12\"\n",
    )
    .unwrap();
    // A directory: not a regular file, refused by the bounded reader.
    let not_regular = dir.path().to_owned();
    for path in [&missing, &bad, &not_regular] {
        let rig = start_with(Some(path));
        assert!(
            rig.core.policy().policy.local_rules().is_none(),
            "{}",
            path.display()
        );
        assert_eq!(rule_for(&rig, &BLOCKED.to_string()), "block-evil");
    }
}

#[test]
fn local_rules_reload_and_survive_policy_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("local-rules.toml");
    std::fs::write(&path, local_toml(CC)).unwrap();
    let rig = start_with(Some(&path));
    let v0 = rig.core.policy().version;
    // Hot reload with a changed file.
    std::fs::write(&path, local_toml(DD)).unwrap();
    let v1 = rig.core.load_local_rules(&path).unwrap();
    assert_eq!(v1, v0 + 1);
    assert_eq!(rule_for(&rig, DD), "local:local-block");
    assert_ne!(rule_for(&rig, CC), "local:local-block");
    // A bad file changes nothing.
    std::fs::write(&path, "version = 1\nmode = \"enforce\"\n").unwrap();
    let e = rig.core.load_local_rules(&path).unwrap_err();
    assert!(e.contains("unknown field `mode`"), "{e}");
    assert!(
        rig.core
            .load_local_rules(std::path::Path::new("rel.toml"))
            .is_err()
    );
    assert_eq!(rig.core.policy().version, v1);
    assert_eq!(rule_for(&rig, DD), "local:local-block");
    // A policy load keeps the local tier.
    rig.core
        .load_policy("reload.toml", &test_policy_toml("monitor"))
        .unwrap();
    assert_eq!(rule_for(&rig, DD), "local:local-block");
    // A removed file removes the local tier.
    std::fs::remove_file(&path).unwrap();
    rig.core.load_local_rules(&path).unwrap();
    assert!(rig.core.policy().policy.local_rules().is_none());
}
