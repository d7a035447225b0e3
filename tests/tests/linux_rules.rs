//! Local rules end to end on Linux, as root: `gatehouse run` (helper + extension) on a scratch
//! tmpfs, then `gatehouse rule add --file SCRIPT --action block` makes the running extension
//! deny the script's execution at once (hot-loaded over the control socket, policy version +1),
//! `gatehouse rule remove` allows it again, and a static allow of the same hash in the policy
//! file outranks a local block (Santa's StaticRules before its database:
//! Source/santad/DataLayer/SNTRuleTable.mm `ruleForIdentifiers:`).
//!
//! Safety (docs/DESIGN.md "Testing fanotify safely"): `--scope` is a tmpfs mounted here, the
//! policy watches no paths, and the agent runs as `timeout -s KILL <secs> gatehouse run ...` in
//! its own process group, SIGKILLed as a group by its own pgid on drop.
#![cfg(target_os = "linux")]

mod linux_common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use linux_common::{Group, Scratch, gatehouse, skip};

fn version(sock: &str) -> u64 {
    let o = gatehouse(&["status", "--json", "--control-socket", sock]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status JSON");
    v["policy_version"].as_u64().expect("policy_version")
}

fn runs(script: &Path) -> bool {
    Command::new(script)
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn local_rules_hot_load_into_the_running_extension() {
    if skip("local_rules_hot_load_into_the_running_extension") {
        return;
    }
    let scratch = Scratch::mount();
    let runtime = tempfile::Builder::new()
        .prefix("gatehouse-rules-run-")
        .tempdir()
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let script = scratch.join("tool.sh");
    std::fs::write(&script, b"#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let other = scratch.join("other.sh");
    std::fs::write(&other, b"#!/bin/sh\n# another file\nexit 0\n").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = files.path().join("policy.toml");
    // A static allow of `other.sh`'s hash: a local block of it must lose.
    std::fs::write(
        &policy,
        format!(
            "version = 1\nmode = \"monitor\"\n[defaults]\npackage_trust = false\n\
             [[exec]]\nname = \"static-other\"\naction = \"allow\"\nsha256 = \"{}\"\n",
            linux_common::sha256(&other)
        ),
    )
    .unwrap();
    let rules = files.path().join("local-rules.toml");
    let rules_s = rules.to_str().unwrap();

    let agent = Group::spawn(
        "gatehouse-run",
        &[
            "run".as_ref(),
            "--policy".as_ref(),
            policy.as_os_str(),
            "--scope".as_ref(),
            scratch.path.as_os_str(),
            "--runtime-dir".as_ref(),
            runtime.path().as_os_str(),
        ],
    );
    agent.wait_extension_up();
    let sock = runtime.path().join("control.sock");
    let sock_s = sock.to_str().unwrap();
    assert!(tests::wait_until(Duration::from_secs(10), || sock.exists()));
    assert!(
        tests::wait_until(Duration::from_secs(15), || {
            let o = gatehouse(&["status", "--json", "--control-socket", sock_s]);
            serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .is_ok_and(|v| v["helper_connected"] == true)
        }),
        "helper connected"
    );
    assert!(
        runs(&script),
        "monitor mode allows the script before any rule"
    );
    let v0 = version(sock_s);

    // Block both scripts locally: hot-loaded, one version step per load.
    for s in [&script, &other] {
        let o = gatehouse(&[
            "rule",
            "add",
            "--action",
            "block",
            "--file",
            s.to_str().unwrap(),
            "--rules-file",
            rules_s,
            "--control-socket",
            sock_s,
        ]);
        assert!(o.status.success(), "{o:?}");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("the extension loaded the local rules"),
            "{o:?}"
        );
    }
    assert_eq!(version(sock_s), v0 + 2);
    assert!(!runs(&script), "the local block applies at once");
    assert!(runs(&other), "the static allow outranks the local block");

    // Removing the rule allows the script again.
    let o = gatehouse(&[
        "rule",
        "remove",
        &format!("sha256:{}", linux_common::sha256(&script)),
        "--rules-file",
        rules_s,
        "--control-socket",
        sock_s,
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(version(sock_s), v0 + 3);
    assert!(runs(&script), "allowed again once the local block is gone");

    // A bad file sent for loading changes nothing.
    std::fs::write(&rules, "version = 1\nmode = \"enforce\"\n").unwrap();
    let o = gatehouse(&[
        "rule",
        "reload",
        "--rules-file",
        rules_s,
        "--control-socket",
        sock_s,
    ]);
    assert!(!o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown field `mode`"),
        "{o:?}"
    );
    assert_eq!(version(sock_s), v0 + 3);
    drop(agent);
}
