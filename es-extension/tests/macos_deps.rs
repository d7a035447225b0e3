//! The macOS slow-path dependencies (`slow-path-never-gates-itself`): with a SHA-256 rule in
//! force (a block: every exec then needs its hash, platform binaries included) and the helper down, Endpoint Security's core still allows the launch of the system
//! daemons the helper waits on, recognised by the kernel's platform flag, enforced CDHash and
//! signing id; anything else gets the policy's fallback. Runs on Linux with the test backend.

mod common;

use std::time::Duration;

use common::*;
use es_extension::core::CoreConfig;
use es_extension::test_backend::events;
use model::{CdHash, CodeSigning, SigningStatus, Verdict, cs_flags};

const SHA_RULE: &str = r#"
version = 1
mode = "enforce"
[defaults]
fallback = "deny"
helper_unavailable = "deny"
package_trust = false
[[exec]]
name = "known-bad"
sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
action = "block"
"#;

fn platform(signing_id: &str, flags: u32) -> CodeSigning {
    CodeSigning {
        status: SigningStatus::Production,
        team_id: None,
        signing_id: Some(signing_id.into()),
        cdhash: Some(CdHash([5; 20])),
        flags,
        is_platform_binary: true,
    }
}

fn config(base: CoreConfig) -> CoreConfig {
    CoreConfig {
        headroom_min: Duration::from_millis(100),
        headroom_max: Duration::from_millis(500),
        backend_name: "test".into(),
        ..base
    }
}

#[test]
fn system_daemons_launch_while_the_helper_is_down() {
    let enforced = cs_flags::CS_VALID | cs_flags::CS_KILL | cs_flags::CS_HARD;
    // (case, backend config is Endpoint Security, signature, verdict)
    let cases = [
        (
            "trustd",
            true,
            platform("com.apple.trustd", enforced),
            Verdict::Allow,
        ),
        (
            "syspolicyd",
            true,
            platform("com.apple.syspolicyd", enforced),
            Verdict::Allow,
        ),
        (
            "xpcproxy",
            true,
            platform("com.apple.xpc.proxy", enforced),
            Verdict::Allow,
        ),
        (
            "trustd, CDHash not enforced",
            true,
            platform("com.apple.trustd", cs_flags::CS_VALID),
            Verdict::Deny,
        ),
        (
            "another platform binary",
            true,
            platform("com.apple.Safari", enforced),
            Verdict::Deny,
        ),
        (
            "fanotify has no macOS pins",
            false,
            platform("com.apple.trustd", enforced),
            Verdict::Deny,
        ),
    ];
    for (i, (name, es, signing, want)) in cases.into_iter().enumerate() {
        let base = if es {
            CoreConfig::endpoint_security()
        } else {
            CoreConfig::fanotify()
        };
        let rig = start(config(base));
        rig.core
            .load_policy("sha.toml", SHA_RULE)
            .expect("valid policy");
        let pid = 7_000_000 + i as u32;
        let mut event = events::exec(pid, "/private/tmp/anywhere", u64::from(pid));
        if let model::EventBody::Exec { target } = &mut event.body {
            target.signing = signing;
        }
        let (sent, d) = rig.backend.delivery(event, Duration::from_secs(5));
        rig.core.deliver(d);
        settle(&rig.core, 1);
        let got = rig
            .backend
            .answer_for(sent.id)
            .expect("answered")
            .answer
            .verdict;
        assert_eq!(got, want, "{name}");
        let hits = counter(&rig.core, "trusted.hits.system");
        assert_eq!(hits, u64::from(want == Verdict::Allow), "{name}");
        assert_clean(&rig.backend);
    }
}
