//! Volume metadata on Linux: which block device backs a mount (the request's `/dev/...` source,
//! else `/proc/self/mountinfo`), then sysfs for removability and bus (the device's sysfs path
//! names the bus it hangs off: `/usb`, `/nvme`, `/mmc`, ...), dm-crypt for encryption, and the
//! udev `/dev/disk/by-uuid` links for the UUID (absent without udev: then no UUID). Only procfs,
//! sysfs, `stat` and `readlink` are used: nothing here opens a device or a file the extension
//! could be asked about.
#![forbid(unsafe_code)]

use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use model::{MountInfo, VolumeBus, VolumeInfo};

use crate::analyzer::{AnalysisError, VolumeInspector};

/// Filesystem types that live on another host.
const NETWORK_FS: [&str; 12] = [
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "afs",
    "9p",
    "glusterfs",
    "fuse.sshfs",
    "fuse.rclone",
    "davfs",
];

/// How many stacked devices (dm over dm over a disk) are followed to find the physical one.
const MAX_STACK: usize = 4;

/// The sysfs-backed [`VolumeInspector`]. Paths are fields so tests can point them elsewhere.
#[derive(Debug, Clone)]
pub struct SysfsVolumes {
    pub mountinfo: PathBuf,
    pub sys: PathBuf,
    pub by_uuid: PathBuf,
}

impl Default for SysfsVolumes {
    fn default() -> Self {
        Self {
            mountinfo: "/proc/self/mountinfo".into(),
            sys: "/sys".into(),
            by_uuid: "/dev/disk/by-uuid".into(),
        }
    }
}

/// One line of mountinfo, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountLine {
    major: u64,
    minor: u64,
    mount_point: String,
    fs_type: String,
}

/// Parse `/proc/<pid>/mountinfo`: `id parent maj:min root mountpoint opts [optional...] - fstype
/// source superopts`. Malformed lines are skipped.
fn parse_mountinfo(text: &str) -> Vec<MountLine> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let (major, minor) = fields.get(2)?.split_once(':')?;
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountLine {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                mount_point: unescape(fields.get(4)?),
                fs_type: (*fields.get(sep + 1)?).to_owned(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(oct) = s.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(oct, 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The bus a device hangs off, from its canonical sysfs path.
fn bus_from_sysfs_path(path: &str) -> VolumeBus {
    if path.contains("/thunderbolt") {
        VolumeBus::Thunderbolt
    } else if path.contains("/usb") {
        VolumeBus::Usb
    } else if path.contains("/mmc") {
        VolumeBus::Sd
    } else if path.contains("/nvme") {
        VolumeBus::Nvme
    } else if path.contains("/ata") {
        VolumeBus::Sata
    } else if path.contains("/devices/virtual/") {
        // loop (disk images), device-mapper without a backing disk, ram and zram.
        VolumeBus::Virtual
    } else {
        VolumeBus::Other
    }
}

/// Where a mount's data lives: its block device (major, minor), if it has one, and the
/// filesystem type mountinfo reports, if it is mounted already.
#[derive(Debug, Default)]
struct Located {
    dev: Option<(u64, u64)>,
    fs_type: Option<String>,
}

impl SysfsVolumes {
    /// Block device numbers and the mounted filesystem type for `mount`, if known.
    fn locate(&self, mount: &MountInfo) -> Result<Located, AnalysisError> {
        let text = std::fs::read_to_string(&self.mountinfo)
            .map_err(|e| AnalysisError::io(format!("reading {}", self.mountinfo.display()), e))?;
        let lines = parse_mountinfo(&text);
        // A mount in progress is not in mountinfo yet: its source device names it.
        if mount.source.starts_with("/dev/")
            && let Ok(m) = std::fs::metadata(&mount.source)
            && m.file_type().is_block_device()
        {
            let (major, minor) = (
                nix::sys::stat::major(m.rdev()),
                nix::sys::stat::minor(m.rdev()),
            );
            let fs = lines
                .iter()
                .rev()
                .find(|l| l.major == major && l.minor == minor)
                .map(|l| l.fs_type.clone());
            return Ok(Located {
                dev: Some((major, minor)),
                fs_type: fs,
            });
        }
        // Otherwise the topmost mount at that mount point (a remount, or a source that is not a
        // device: tmpfs, overlay, network shares).
        let top = lines
            .iter()
            .rev()
            .find(|l| l.mount_point == mount.mount_point);
        Ok(match top {
            Some(l) => Located {
                dev: (l.major != 0).then_some((l.major, l.minor)),
                fs_type: Some(l.fs_type.clone()),
            },
            None => Located::default(),
        })
    }

    /// Removability, bus and encryption of a block device, following stacked devices down.
    fn describe(&self, major: u64, minor: u64) -> (bool, VolumeBus, bool, Option<String>) {
        let link = self.sys.join(format!("dev/block/{major}:{minor}"));
        let Ok(dev) = std::fs::canonicalize(&link) else {
            return (false, VolumeBus::Other, false, None);
        };
        let name = dev.file_name().map(|n| n.to_string_lossy().into_owned());
        let encrypted = read_trim(&dev.join("dm/uuid")).is_some_and(|u| u.starts_with("CRYPT-"));
        let physical = self.physical(&dev, 0);
        let disk = if physical.join("partition").exists() {
            physical
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or(physical.clone())
        } else {
            physical.clone()
        };
        let removable = read_trim(&disk.join("removable")).as_deref() == Some("1");
        let bus = bus_from_sysfs_path(&disk.to_string_lossy());
        (removable, bus, encrypted, name)
    }

    /// The lowest device under a device-mapper/md stack (one `slaves/` entry per level).
    fn physical(&self, dev: &Path, depth: usize) -> PathBuf {
        if depth >= MAX_STACK {
            return dev.to_owned();
        }
        let lower = std::fs::read_dir(dev.join("slaves"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
            .and_then(|e| std::fs::canonicalize(e.path()).ok());
        match lower {
            Some(l) => self.physical(&l, depth + 1),
            None => dev.to_owned(),
        }
    }

    /// The UUID whose `/dev/disk/by-uuid` link points at `/dev/<name>`.
    fn uuid_of(&self, name: &str) -> Option<String> {
        std::fs::read_dir(&self.by_uuid)
            .ok()?
            .flatten()
            .find_map(|e| {
                let target = std::fs::read_link(e.path()).ok()?;
                (target.file_name()?.to_str()? == name)
                    .then(|| e.file_name().to_string_lossy().into_owned())
            })
    }
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

impl VolumeInspector for SysfsVolumes {
    fn volume(&self, mount: &MountInfo, deadline: Instant) -> Result<VolumeInfo, AnalysisError> {
        if Instant::now() >= deadline {
            return Err(AnalysisError::DeadlineExceeded);
        }
        let Located {
            dev,
            fs_type: mounted_fs,
        } = self.locate(mount)?;
        let fs_type =
            mounted_fs.or_else(|| (!mount.fs_type.is_empty()).then(|| mount.fs_type.clone()));
        let network = fs_type.as_deref().is_some_and(|t| NETWORK_FS.contains(&t))
            || mount.source.starts_with("//");
        let info = match dev {
            _ if network => VolumeInfo {
                removable: false,
                bus: VolumeBus::Network,
                encrypted: false,
                uuid: None,
                fs_type,
            },
            Some((major, minor)) => {
                let (removable, bus, encrypted, name) = self.describe(major, minor);
                VolumeInfo {
                    removable,
                    bus,
                    encrypted,
                    uuid: name.and_then(|n| self.uuid_of(&n)),
                    fs_type,
                }
            }
            // No block device: tmpfs, overlay, proc and friends.
            None => VolumeInfo {
                removable: false,
                bus: VolumeBus::Virtual,
                encrypted: false,
                uuid: None,
                fs_type,
            },
        };
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{MountDisposition, MountFlags};
    use std::time::Duration;

    #[test]
    fn mountinfo_table() {
        let text = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
35 22 0:31 / /mnt/with\\040space rw - tmpfs tmpfs rw,size=10k
garbage line
36 22 8:17 / /media/usb rw,nosuid shared:7 master:2 - vfat /dev/sdb1 rw
";
        let got = parse_mountinfo(text);
        let want = [
            (254, 0, "/", "ext4"),
            (0, 31, "/mnt/with space", "tmpfs"),
            (8, 17, "/media/usb", "vfat"),
        ];
        assert_eq!(got.len(), want.len());
        for (l, (ma, mi, mp, fs)) in got.iter().zip(want) {
            assert_eq!(
                (l.major, l.minor, l.mount_point.as_str(), l.fs_type.as_str()),
                (ma, mi, mp, fs)
            );
        }
    }

    #[test]
    fn bus_table() {
        let cases = [
            (
                "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host0/target0:0:0/0:0:0:0/block/sdb",
                VolumeBus::Usb,
            ),
            (
                "/sys/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1",
                VolumeBus::Nvme,
            ),
            (
                "/sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda",
                VolumeBus::Sata,
            ),
            (
                "/sys/devices/platform/soc/mmc0/mmc0:0001/block/mmcblk0",
                VolumeBus::Sd,
            ),
            ("/sys/devices/virtual/block/loop0", VolumeBus::Virtual),
            (
                "/sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda",
                VolumeBus::Other,
            ),
            (
                "/sys/devices/pci0000:00/0000:00:01.0/thunderbolt/domain0/0-1/nvme/nvme1/nvme1n1",
                VolumeBus::Thunderbolt,
            ),
        ];
        for (path, bus) in cases {
            assert_eq!(bus_from_sysfs_path(path), bus, "{path}");
        }
    }

    /// A fake sysfs with a USB disk partition and a by-uuid link, found through mountinfo.
    #[test]
    fn fake_sysfs_usb_partition() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let disk = r.join("devices/pci0000:00/0000:00:14.0/usb2/2-1/host0/block/sdb");
        let part = disk.join("sdb1");
        std::fs::create_dir_all(&part).unwrap();
        std::fs::write(disk.join("removable"), "1\n").unwrap();
        std::fs::write(part.join("partition"), "1\n").unwrap();
        std::fs::create_dir_all(r.join("sys/dev/block")).unwrap();
        std::os::unix::fs::symlink(&part, r.join("sys/dev/block/8:17")).unwrap();
        std::fs::create_dir_all(r.join("by-uuid")).unwrap();
        std::os::unix::fs::symlink("../../sdb1", r.join("by-uuid/ABCD-1234")).unwrap();
        std::os::unix::fs::symlink("../../sda1", r.join("by-uuid/other")).unwrap();
        std::fs::write(
            r.join("mountinfo"),
            "36 22 8:17 / /media/usb rw - vfat /dev/sdb1 rw\n",
        )
        .unwrap();
        let v = SysfsVolumes {
            mountinfo: r.join("mountinfo"),
            sys: r.join("sys"),
            by_uuid: r.join("by-uuid"),
        };
        let mount = MountInfo {
            source: "not-a-device".into(),
            mount_point: "/media/usb".into(),
            fs_type: String::new(),
            flags: MountFlags::default(),
            disposition: MountDisposition::External,
            os_flags: 0,
        };
        let got = v
            .volume(&mount, Instant::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            got,
            VolumeInfo {
                removable: true,
                bus: VolumeBus::Usb,
                encrypted: false,
                uuid: Some("ABCD-1234".into()),
                fs_type: Some("vfat".into()),
            }
        );
        let nfs = MountInfo {
            source: "host:/export".into(),
            mount_point: "/net".into(),
            fs_type: "nfs4".into(),
            ..mount
        };
        let got = v
            .volume(&nfs, Instant::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(got.bus, VolumeBus::Network);
        assert!(matches!(
            v.volume(&nfs, Instant::now()),
            Err(AnalysisError::DeadlineExceeded)
        ));
    }
}
