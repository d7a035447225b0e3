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
