//! The real `gatehouse-helper` answering analysis requests over its socket: SHA-256 through a
//! passed descriptor (equal to `sha256sum`, without moving the opener's offset), Debian package
//! trust, volume metadata for `/` and for a tmpfs mounted here, and deadlines.
#![cfg(target_os = "linux")]

mod helper_support;

use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use helper_support::*;
use model::{MountDisposition, MountFlags, MountInfo, VolumeBus};
use protocol::{HelperErrorKind, HelperResponse};
use tests::{MountGuard, have_command, is_root, skip};

const BUDGET: Duration = Duration::from_secs(20);

#[test]
fn sha256_through_fd_matches_sha256sum() {
    let helper = Helper::start(&[]);
    let dir = helper.dir.path();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("text", b"hello, gatehouse\n".to_vec()),
        ("multi-chunk", big),
    ];
    let mut files: Vec<std::path::PathBuf> = cases
        .iter()
        .map(|(name, bytes)| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        })
        .collect();
    files.push("/usr/bin/ls".into());
    let mut client = helper.client();
    for path in &files {
        let mut f = std::fs::File::open(path).unwrap();
        // The descriptor shares its offset with the helper's copy: pread must leave it alone.
        f.seek(SeekFrom::Start(1)).unwrap();
        let resp = call(
            &mut client,
            analyze_file(path, SHA),
            BUDGET,
            Some(f.as_fd()),
        );
        let HelperResponse::Analysis { facts, errors } = resp else {
            panic!("{}: {resp:?}", path.display());
        };
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        assert_eq!(
            facts.sha256.unwrap().to_hex(),
            sha256sum(path),
            "{}",
            path.display()
        );
        assert_eq!(
            f.stream_position().unwrap(),
            1,
            "{}: offset moved",
            path.display()
        );
    }
    // Same file again: served from the identity cache.
    let f = std::fs::File::open(&files[1]).unwrap();
    let before = helper.stats()["cache_hits"];
    let _ = call(
        &mut client,
        analyze_file(&files[1], SHA),
        BUDGET,
        Some(f.as_fd()),
    );
    assert_eq!(helper.stats()["cache_hits"], before + 1);
}

#[test]
fn oversized_file_is_refused_by_the_size_cap() {
    let helper = Helper::start(&["--max-file-size", "1000"]);
    let path = helper.dir.path().join("big");
    std::fs::write(&path, vec![1u8; 1001]).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let resp = call(
        &mut helper.client(),
        analyze_file(&path, SHA),
        BUDGET,
        Some(f.as_fd()),
    );
    let HelperResponse::Analysis { facts, errors } = resp else {
        panic!("{resp:?}");
    };
    assert!(facts.sha256.is_none());
    assert_eq!(errors[0].0, HelperErrorKind::Io);
    assert!(errors[0].1.contains("over the 1000-byte"), "{errors:?}");
}

#[test]
fn dpkg_trust_for_ls_and_copies() {
    let owned = Command::new("dpkg").args(["-S", "/usr/bin/ls"]).output();
    if !matches!(owned, Ok(ref o) if o.status.success()) {
        skip(
            "dpkg_trust_for_ls_and_copies",
            "needs a Debian system where dpkg owns /usr/bin/ls",
        );
        return;
    }
    let helper = Helper::start(&[]);
    let copy = helper.dir.path().join("ls");
    std::fs::copy("/usr/bin/ls", &copy).unwrap();
    let modified = helper.dir.path().join("ls-modified");
    let mut bytes = std::fs::read("/usr/bin/ls").unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&modified, &bytes).unwrap();
    let cases: [(&Path, bool, bool); 3] = [
        (Path::new("/usr/bin/ls"), true, true),
        (&copy, false, false),
        (&modified, false, false),
    ];
    let mut client = helper.client();
    for (path, owned, trusted) in cases {
        let f = std::fs::File::open(path).unwrap();
        let resp = call(
            &mut client,
            analyze_file(path, PACKAGE),
            BUDGET,
            Some(f.as_fd()),
        );
        let HelperResponse::Analysis { facts, errors } = resp else {
            panic!("{}: {resp:?}", path.display());
        };
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        let trust = facts.package.unwrap();
        assert_eq!(trust.trusted, trusted, "{}: {trust:?}", path.display());
        assert_eq!(
            trust.package.is_some(),
            owned,
            "{}: {trust:?}",
            path.display()
        );
        if owned {
            assert_eq!(trust.package.as_deref(), Some("coreutils"));
        }
    }
}

fn findmnt(target: &str, column: &str) -> String {
    let out = Command::new("findmnt")
        .args(["-n", "-o", column, target])
        .output()
        .expect("running findmnt");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn mount_request(source: String, mount_point: String) -> MountInfo {
    MountInfo {
        source,
        mount_point,
        fs_type: String::new(),
        flags: MountFlags::default(),
        disposition: MountDisposition::Unknown,
        os_flags: 0,
    }
}

#[test]
fn volume_of_root_filesystem() {
    if !have_command("findmnt") {
        skip(
            "volume_of_root_filesystem",
            "needs findmnt (util-linux) for the expected values",
        );
        return;
    }
    let helper = Helper::start(&[]);
    let source = findmnt("/", "SOURCE");
    let resp = call(
        &mut helper.client(),
        analyze_mount(mount_request(source.clone(), "/".into())),
        BUDGET,
        None,
    );
    let HelperResponse::Analysis { facts, errors } = resp else {
        panic!("{resp:?}");
    };
    assert!(errors.is_empty(), "{errors:?}");
    let v = facts.volume.unwrap();
    assert_eq!(
        v.fs_type.as_deref(),
        Some(findmnt("/", "FSTYPE").as_str()),
        "{v:?}"
    );
    let uuid = findmnt("/", "UUID");
    assert_eq!(v.uuid, (!uuid.is_empty()).then_some(uuid), "{v:?}");
    if let Some(dev) = source.strip_prefix("/dev/") {
        // A block device: removability as sysfs says, and never a network or virtual bus.
        let disk = std::fs::canonicalize(format!("/sys/class/block/{dev}")).unwrap();
        let disk = if disk.join("partition").exists() {
            disk.parent().unwrap().to_owned()
        } else {
            disk
        };
        let removable = std::fs::read_to_string(disk.join("removable")).unwrap_or_default();
        assert_eq!(v.removable, removable.trim() == "1", "{v:?}");
        assert!(!matches!(v.bus, VolumeBus::Network), "{v:?}");
    }
}

#[test]
fn volume_of_a_tmpfs_mounted_here() {
    if !is_root() {
        skip(
            "volume_of_a_tmpfs_mounted_here",
            "mounting a tmpfs needs root",
        );
        return;
    }
    let helper = Helper::start(&[]);
    let target = helper.dir.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    let _mount = MountGuard::tmpfs(&target, "1m").expect("mounting a scratch tmpfs");
    let resp = call(
        &mut helper.client(),
        analyze_mount(mount_request("tmpfs".into(), target.display().to_string())),
        BUDGET,
        None,
    );
    let HelperResponse::Analysis { facts, errors } = resp else {
        panic!("{resp:?}");
    };
    assert!(errors.is_empty(), "{errors:?}");
    let v = facts.volume.unwrap();
    assert_eq!(v.fs_type.as_deref(), Some("tmpfs"));
    assert_eq!(v.bus, VolumeBus::Virtual);
    assert!(!v.removable && !v.encrypted && v.uuid.is_none(), "{v:?}");
}

#[test]
fn spent_and_expiring_budgets_are_deadline_exceeded() {
    let helper = Helper::start(&[]);
    let small = helper.dir.path().join("small");
    std::fs::write(&small, b"x").unwrap();
    // A sparse 512 MiB file: hashing it takes far longer than 2 ms, so the work is abandoned
    // between chunks.
    let large = helper.dir.path().join("large");
    std::fs::File::create(&large)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let mut client = helper.client();
    let cases: [(&Path, Duration); 2] =
        [(&small, Duration::ZERO), (&large, Duration::from_millis(2))];
    for (path, budget) in cases {
        let f = std::fs::File::open(path).unwrap();
        let resp = call(
            &mut client,
            analyze_file(path, SHA),
            budget,
            Some(f.as_fd()),
        );
        assert!(
            matches!(
                resp,
                HelperResponse::Error {
                    kind: HelperErrorKind::DeadlineExceeded,
                    ..
                }
            ),
            "{}: {resp:?}",
            path.display()
        );
    }
    assert!(helper.stats()["timeouts"] >= 2);
    // The connection and the workers are still fine.
    let f = std::fs::File::open(&small).unwrap();
    let resp = call(
        &mut client,
        analyze_file(&small, SHA),
        BUDGET,
        Some(f.as_fd()),
    );
    assert!(
        matches!(resp, HelperResponse::Analysis { ref facts, .. } if facts.sha256.is_some()),
        "{resp:?}"
    );
    let _ = std::io::stderr().flush();
}
