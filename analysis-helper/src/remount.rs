//! The mount arguments for a forced remount (a `remount` rule): the volume's own `statfs` flags
//! plus the rule's, as `mount -o` words for DiskArbitration's `DADiskMountWithArguments`. Pure,
//! so the macOS behaviour is table-tested on every OS.
//!
//! Follows Santa's device manager (`Source/santad/EventProviders/SNTEndpointSecurityDeviceManager.mm`,
//! `updatedMountFlags:` and `maskToMountArgs`): the new mode is the event's `f_flags` OR the
//! required flags, APFS drops `MNT_JOURNALED` (`mount_apfs` has no `-j`), and the mode's bits map
//! to words in a fixed order.
#![forbid(unsafe_code)]

use model::{MountFlags, MountInfo};

/// `f_flags` bits of macOS `struct statfs` (`<sys/mount.h>`) that have a mount word.
pub mod mnt {
    pub const MNT_RDONLY: u32 = 0x0000_0001;
    pub const MNT_NOEXEC: u32 = 0x0000_0004;
    pub const MNT_NOSUID: u32 = 0x0000_0008;
    pub const MNT_NODEV: u32 = 0x0000_0010;
    pub const MNT_ASYNC: u32 = 0x0000_0040;
    pub const MNT_DONTBROWSE: u32 = 0x0010_0000;
    pub const MNT_UNKNOWNPERMISSIONS: u32 = 0x0020_0000;
    pub const MNT_JOURNALED: u32 = 0x0080_0000;
}

/// Each bit with its `mount -o` word, in Santa's order.
const WORDS: [(u32, &str); 8] = [
    (mnt::MNT_RDONLY, "rdonly"),
    (mnt::MNT_NOEXEC, "noexec"),
    (mnt::MNT_NOSUID, "nosuid"),
    (mnt::MNT_DONTBROWSE, "nobrowse"),
    (mnt::MNT_UNKNOWNPERMISSIONS, "noowners"),
    (mnt::MNT_NODEV, "nodev"),
    (mnt::MNT_JOURNALED, "-j"),
    (mnt::MNT_ASYNC, "async"),
];

/// The `MNT_*` bits of the model's flags.
pub fn bits(flags: &MountFlags) -> u32 {
    [
        (flags.read_only, mnt::MNT_RDONLY),
        (flags.noexec, mnt::MNT_NOEXEC),
        (flags.nosuid, mnt::MNT_NOSUID),
        (flags.nodev, mnt::MNT_NODEV),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .fold(0, |acc, (_, bit)| acc | bit)
}

/// The words to mount `mount`'s volume with so that it keeps its own options and gains
/// `forced`. The model's four flags count too, for a platform that reports no raw flags.
pub fn mount_arguments(mount: &MountInfo, forced: &MountFlags) -> Vec<&'static str> {
    let mut mode = mount.os_flags | bits(&mount.flags) | bits(forced);
    if mount.fs_type == "apfs" {
        mode &= !mnt::MNT_JOURNALED;
    }
    WORDS
        .iter()
        .filter(|(bit, _)| mode & bit != 0)
        .map(|(_, word)| *word)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::MountDisposition;

    fn flags(read_only: bool, noexec: bool, nosuid: bool, nodev: bool) -> MountFlags {
        MountFlags {
            read_only,
            noexec,
            nosuid,
            nodev,
        }
    }

    fn mount(fs_type: &str, os_flags: u32, model: MountFlags) -> MountInfo {
        MountInfo {
            source: "/dev/disk4s1".into(),
            mount_point: "/Volumes/USB".into(),
            fs_type: fs_type.into(),
            flags: model,
            disposition: MountDisposition::External,
            os_flags,
        }
    }

    /// Santa's `updatedMountFlags:` + `maskToMountArgs` (SNTEndpointSecurityDeviceManager.mm):
    /// the event's flags OR the required ones, APFS without `-j`, words in that file's order.
    #[test]
    fn mount_arguments_table() {
        let none = MountFlags::default();
        let ro_noexec = flags(true, true, false, false);
        let cases: Vec<(&str, MountInfo, MountFlags, Vec<&str>)> = vec![
            (
                "read-write volume, rule forces rdonly+noexec",
                mount("msdos", 0, none),
                ro_noexec,
                vec!["rdonly", "noexec"],
            ),
            (
                "the volume's nosuid and nobrowse are kept",
                mount("msdos", mnt::MNT_NOSUID | mnt::MNT_DONTBROWSE, none),
                ro_noexec,
                vec!["rdonly", "noexec", "nosuid", "nobrowse"],
            ),
            (
                "a flag both have appears once",
                mount("exfat", mnt::MNT_RDONLY, none),
                ro_noexec,
                vec!["rdonly", "noexec"],
            ),
            (
                "journaled HFS+ keeps -j",
                mount("hfs", mnt::MNT_JOURNALED, none),
                flags(true, false, false, false),
                vec!["rdonly", "-j"],
            ),
            (
                "APFS drops -j: mount_apfs has no such option",
                mount(
                    "apfs",
                    mnt::MNT_JOURNALED | mnt::MNT_UNKNOWNPERMISSIONS,
                    none,
                ),
                flags(true, false, false, false),
                vec!["rdonly", "noowners"],
            ),
            (
                "bits without a word (MNT_LOCAL, MNT_QUARANTINE) are not passed",
                mount("msdos", 0x0000_1000 | 0x0000_0400 | mnt::MNT_ASYNC, none),
                flags(false, false, false, true),
                vec!["nodev", "async"],
            ),
            (
                "no raw flags (another platform): the model's flags count",
                mount("vfat", 0, flags(false, false, true, false)),
                flags(true, false, false, false),
                vec!["rdonly", "nosuid"],
            ),
            (
                "every word in Santa's order",
                mount("hfs", u32::MAX, none),
                none,
                vec![
                    "rdonly", "noexec", "nosuid", "nobrowse", "noowners", "nodev", "-j", "async",
                ],
            ),
        ];
        for (what, m, forced, want) in cases {
            assert_eq!(mount_arguments(&m, &forced), want, "{what}");
        }
    }

    #[test]
    fn bits_table() {
        let cases = [
            (MountFlags::default(), 0),
            (flags(true, false, false, false), mnt::MNT_RDONLY),
            (
                flags(true, true, true, true),
                mnt::MNT_RDONLY | mnt::MNT_NOEXEC | mnt::MNT_NOSUID | mnt::MNT_NODEV,
            ),
        ];
        for (f, want) in cases {
            assert_eq!(bits(&f), want, "{f:?}");
        }
    }
}
