//! Every policy in the repository's examples/ directory is accepted.

use std::path::Path;

mod common;

use common::*;
use policy::Policy;

#[test]
fn every_example_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("examples/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let origin = path.display().to_string();
            if let Err(e) = Policy::parse(&origin, &text) {
                panic!("{e}");
            }
            seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    seen.sort();
    for required in [
        "developer-laptop.toml",
        "kiosk.toml",
        "server-packaged-only.toml",
    ] {
        assert!(
            seen.iter().any(|s| s == required),
            "{required} missing from {seen:?}"
        );
    }
}

#[test]
fn embedded_default_parses() {
    Policy::parse("default.toml", policy::EMBEDDED_DEFAULT_TOML).unwrap();
}

/// The kiosk example's mount rules decide as their names say, with the helper's facts as
/// Santa's scope gives them (an external Thunderbolt disk is removable media: neither internal
/// nor a disk image, SNTEndpointSecurityDeviceManager.mm `shouldOperateOnDiskWithProperties:`).
#[test]
fn kiosk_mount_rules() {
    use model::{MountDisposition as D, MountFlags, VolumeBus};
    let text = include_str!("../../../examples/kiosk.toml");
    let p = Policy::parse_for("kiosk.toml", text, defaults::Os::Macos).unwrap();
    let none = MountFlags::default();
    #[rustfmt::skip]
    let cases = [
        ("external thunderbolt disk", mount("/dev/disk4s1", "apfs", D::External, none), facts_volume(true, false, VolumeBus::Thunderbolt), "deny:no-external-thunderbolt"),
        ("usb stick", mount("/dev/disk5s1", "msdos", D::External, none), facts_volume(true, false, VolumeBus::Usb), "deny:removable-read-only"),
        ("corp share", mount("//kiosk@files.corp.example/x", "smbfs", D::Network, none), model::Facts::NONE, "allow:corp-file-server"),
        ("other share", mount("//nas.home/x", "smbfs", D::Network, none), model::Facts::NONE, "deny:no-other-network-mounts"),
    ];
    for (what, ev, facts, want) in cases {
        assert_eq!(summary(&p.decide(&ev, &facts)), want, "{what}");
    }
}
