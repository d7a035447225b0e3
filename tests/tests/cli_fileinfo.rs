//! `gatehouse fileinfo` through the real binary: the SHA-256 of the file, and on Linux the
//! owning package (none for a scratch file; the package for a packaged binary when the host
//! has a dpkg or rpm database).

use std::process::Command;

use tests::binary;

fn fileinfo(path: &std::path::Path) -> serde_json::Value {
    let out = Command::new(binary("gatehouse"))
        .arg("fileinfo")
        .arg(path)
        .arg("--json")
        .output()
        .expect("running gatehouse fileinfo");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

#[test]
fn fileinfo_hashes_and_names_no_package_for_a_scratch_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("abc");
    std::fs::write(&f, b"abc").unwrap();
    let v = fileinfo(&f);
    assert_eq!(
        v["sha256"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(v["size"], 3);
    assert!(v["package"].is_null(), "{v}");
}

#[cfg(target_os = "linux")]
#[test]
fn fileinfo_names_the_package_of_a_packaged_binary() {
    if !std::path::Path::new("/var/lib/dpkg/status").exists() {
        tests::skip(
            "fileinfo_names_the_package_of_a_packaged_binary",
            "no dpkg database on this host",
        );
        return;
    }
    let v = fileinfo(std::path::Path::new("/usr/bin/dpkg"));
    assert_eq!(v["package"], "dpkg", "{v}");
    assert_eq!(v["package_verified"], true, "{v}");
}

#[test]
fn fileinfo_refuses_a_directory_clearly() {
    let out = Command::new(binary("gatehouse"))
        .args(["fileinfo", "/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a regular file"),
        "{out:?}"
    );
}

/// The decision a given policy makes on the file's execution, with the rule and its message;
/// a script is out of scope; a FIFO is refused at once instead of hanging the CLI.
#[test]
fn fileinfo_shows_the_decision_a_policy_makes() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("abc");
    std::fs::write(&f, b"abc").unwrap();
    let script = dir.path().join("run.sh");
    std::fs::write(&script, b"#!/bin/sh\nexit 0\n").unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        "version = 1\nmode = \"enforce\"\n[defaults]\npackage_trust = false\n[[exec]]\n\
         name = \"no-abc\"\naction = \"block\"\nmessage = \"abc is not allowed here\"\n\
         sha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\n",
    )
    .unwrap();
    let run = |path: &std::path::Path| {
        let out = Command::new(binary("gatehouse"))
            .arg("fileinfo")
            .arg(path)
            .arg("--policy")
            .arg(&policy)
            .args(["--os", "linux", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let v = run(&f);
    assert_eq!(v["decision"]["verdict"], "deny", "{v}");
    assert_eq!(v["decision"]["rule"], "no-abc", "{v}");
    assert_eq!(v["decision"]["message"], "abc is not allowed here", "{v}");
    let v = run(&script);
    assert_eq!(v["kind"], "script", "{v}");
    assert_eq!(v["decision"]["verdict"], "allow", "{v}");
    assert!(
        v["decision"]["why"]
            .as_str()
            .unwrap()
            .contains("not a binary"),
        "{v}"
    );
    let fifo = dir.path().join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let out = Command::new("timeout")
        .args(["10", binary("gatehouse").to_str().unwrap(), "fileinfo"])
        .arg(&fifo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "refused, not hung: {out:?}");
}
