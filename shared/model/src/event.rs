//! The AUTH events Gatehouse authorizes, and the process and file identities they carry.

use serde::{Deserialize, Serialize};

use crate::digest::CdHash;

/// Code-signing flag bits as `es_process_t.codesigning_flags` reports them (`<kern/cs_blobs.h>`).
/// Only the bits the policy reads are named.
pub mod cs_flags {
    /// The code signature is valid.
    pub const CS_VALID: u32 = 0x0000_0001;
    /// The kernel refuses to map invalid pages (hard).
    pub const CS_HARD: u32 = 0x0000_0100;
    /// The kernel kills the process if it becomes invalid.
    pub const CS_KILL: u32 = 0x0000_0200;
    /// Signed ad hoc (no certificate chain).
    pub const CS_ADHOC: u32 = 0x0000_0002;
    /// A platform binary (part of the OS).
    pub const CS_PLATFORM_BINARY: u32 = 0x0400_0000;
}

/// What kind of signature a binary carries. On Linux every file is [`SigningStatus::Unsigned`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SigningStatus {
    /// Signed with a production (Developer ID, App Store or Apple) certificate.
    Production,
    /// Signed with a development certificate.
    Development,
    /// Signed ad hoc: a CDHash but no certificate.
    AdHoc,
    /// No signature.
    Unsigned,
    /// A signature that does not validate.
    Invalid,
}

/// The code-signing facts the kernel reported for a process image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeSigning {
    pub status: SigningStatus,
    #[serde(default)]
    pub team_id: Option<String>,
    #[serde(default)]
    pub signing_id: Option<String>,
    #[serde(default)]
    pub cdhash: Option<CdHash>,
    /// Raw `codesigning_flags`; 0 where the platform has none.
    #[serde(default)]
    pub flags: u32,
    #[serde(default)]
    pub is_platform_binary: bool,
}

impl CodeSigning {
    /// Linux and unsigned files: no signature data at all.
    pub fn unsigned() -> Self {
        Self {
            status: SigningStatus::Unsigned,
            team_id: None,
            signing_id: None,
            cdhash: None,
            flags: 0,
            is_platform_binary: false,
        }
    }

    /// The CDHash counts only when the kernel enforces it: `CS_VALID` and (`CS_HARD` or
    /// `CS_KILL`). Otherwise pages could be swapped after the check.
    pub fn cdhash_enforced(&self) -> bool {
        use cs_flags::*;
        self.flags & CS_VALID != 0 && self.flags & (CS_HARD | CS_KILL) != 0
    }

    /// The CDHash if the kernel vouches for it.
    pub fn trusted_cdhash(&self) -> Option<CdHash> {
        self.cdhash.filter(|_| self.cdhash_enforced())
    }
}

/// The identity of a file object as `fstat` on the kernel's own fd reports it. Together these
/// change whenever the contents can have changed, so they key caches where no CDHash exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

#[cfg(unix)]
impl From<&std::fs::Metadata> for FileIdentity {
    /// The identity in `fstat` data that the caller already holds (a conversion, no I/O).
    fn from(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }
}

/// A file an event names: its path (for path rules and display) and, where the kernel gave us a
/// handle, its identity. Paths that are not UTF-8 are converted lossily at the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub path: String,
    #[serde(default)]
    pub identity: Option<FileIdentity>,
}

impl FileRef {
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            identity: None,
        }
    }
}

/// A process as the kernel described it in the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// macOS `pidversion` from the audit token; distinguishes pid reuse. None on Linux.
    #[serde(default)]
    pub pid_version: Option<u32>,
    #[serde(default)]
    pub ppid: Option<u32>,
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    pub executable: FileRef,
    pub signing: CodeSigning,
    /// macOS: the kernel's audit token for this process incarnation (`es_process_t.audit_token`).
    /// It is what the helper hands the Security framework to find the running code, so a
    /// certificate read for a file-access rule is the running image's, never the path's.
    /// None on Linux.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_token: Option<AuditToken>,
}

/// A macOS `audit_token_t`: eight words the kernel stamps on a process incarnation. Only the
/// kernel makes one (an ES message, an XPC connection, `task_info`); a process cannot forge the
/// token another process's message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct AuditToken(pub [u32; 8]);

impl AuditToken {
    /// `audit_token_to_pid`.
    pub fn pid(&self) -> u32 {
        self.0[5]
    }
    /// `audit_token_to_euid`.
    pub fn euid(&self) -> u32 {
        self.0[1]
    }
    /// `audit_token_to_egid`.
    pub fn egid(&self) -> u32 {
        self.0[2]
    }
    /// `audit_token_to_pidversion`: bumped by every exec, so (pid, pidversion) is one image.
    pub fn pidversion(&self) -> u32 {
        self.0[7]
    }

    /// A token with the given pid and pid version (simulator and tests; ids 0).
    pub fn for_pid(pid: u32, pidversion: u32) -> Self {
        let mut t = [0u32; 8];
        t[5] = pid;
        t[7] = pidversion;
        Self(t)
    }
}

/// Open access flags, where the platform reports them (ES: `fflag`). Linux permission events
/// carry no open flags (docs/DESIGN.md 6), so there the backend sends `None` in [`EventBody::Open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct AccessFlags {
    #[serde(default)]
    pub read: bool,
    #[serde(default)]
    pub write: bool,
    #[serde(default)]
    pub append: bool,
    #[serde(default)]
    pub truncate: bool,
}

impl AccessFlags {
    pub const READ: Self = Self {
        read: true,
        write: false,
        append: false,
        truncate: false,
    };

    /// True when the open can change the file (write, append or truncate).
    pub fn modifies(&self) -> bool {
        self.write || self.append || self.truncate
    }
}

/// Where a volume lives, as ES message version 8 reports it (`es_mount_disposition_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountDisposition {
    External,
    Internal,
    Network,
    Virtual,
    Nullfs,
    Unknown,
}

/// Platform-neutral mount flags (MNT_* on macOS, MS_* on Linux). Unknown keys are refused so
/// a policy's `remount_flags = { readonly = true }` typo is an error, not a silent no-op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountFlags {
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub noexec: bool,
    #[serde(default)]
    pub nosuid: bool,
    #[serde(default)]
    pub nodev: bool,
}

impl MountFlags {
    /// True when every flag set in `required` is also set here.
    pub fn contains(&self, required: &MountFlags) -> bool {
        (!required.read_only || self.read_only)
            && (!required.noexec || self.noexec)
            && (!required.nosuid || self.nosuid)
            && (!required.nodev || self.nodev)
    }

    /// The union of both flag sets.
    pub fn union(&self, other: &MountFlags) -> MountFlags {
        MountFlags {
            read_only: self.read_only || other.read_only,
            noexec: self.noexec || other.noexec,
            nosuid: self.nosuid || other.nosuid,
            nodev: self.nodev || other.nodev,
        }
    }
}

/// A mount or remount request (ES: the event's `statfs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountInfo {
    /// `f_mntfromname`: the device (`/dev/disk4s1`) or remote source (`//host/share`).
    pub source: String,
    /// `f_mntonname`.
    pub mount_point: String,
    /// `f_fstypename`.
    pub fs_type: String,
    #[serde(default)]
    pub flags: MountFlags,
    pub disposition: MountDisposition,
    /// macOS: the raw `f_flags` of the `statfs` (`MNT_*` bits), kept so that a forced remount
    /// keeps the volume's other options (nobrowse, noowners, async, journaled), as Santa's
    /// does. 0 where the platform has none.
    #[serde(default)]
    pub os_flags: u32,
}

/// The kinds of AUTH event, for per-kind defaults, counters and subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Exec,
    Open,
    Mount,
    Remount,
    Rename,
    Unlink,
    Truncate,
    Link,
    Create,
    /// macOS: `clonefile(2)` (ES AUTH_CLONE).
    Clone,
    /// macOS 12+: `copyfile(3)` (ES AUTH_COPYFILE).
    Copyfile,
    /// macOS: `exchangedata(2)` (ES AUTH_EXCHANGEDATA).
    Exchangedata,
}

impl EventKind {
    pub const ALL: [EventKind; 12] = [
        EventKind::Exec,
        EventKind::Open,
        EventKind::Mount,
        EventKind::Remount,
        EventKind::Rename,
        EventKind::Unlink,
        EventKind::Truncate,
        EventKind::Link,
        EventKind::Create,
        EventKind::Clone,
        EventKind::Copyfile,
        EventKind::Exchangedata,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Exec => "exec",
            EventKind::Open => "open",
            EventKind::Mount => "mount",
            EventKind::Remount => "remount",
            EventKind::Rename => "rename",
            EventKind::Unlink => "unlink",
            EventKind::Truncate => "truncate",
            EventKind::Link => "link",
            EventKind::Create => "create",
            EventKind::Clone => "clone",
            EventKind::Copyfile => "copyfile",
            EventKind::Exchangedata => "exchangedata",
        }
    }

    /// Dense index for per-kind counter arrays.
    pub fn index(&self) -> usize {
        *self as usize
    }
}

/// What the event asks to do. Paths of targets that do not exist yet are plain strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// A new image: `target` is the process after exec (ES `event.target()`), whose executable
    /// and signing data are the ones to decide on. [`Event::process`] is the caller.
    Exec {
        target: Box<Process>,
    },
    /// `access: None` means the platform did not say (Linux): treat as possibly modifying.
    Open {
        file: FileRef,
        #[serde(default)]
        access: Option<AccessFlags>,
    },
    Mount {
        mount: MountInfo,
    },
    Remount {
        mount: MountInfo,
    },
    Rename {
        source: FileRef,
        destination: String,
    },
    Unlink {
        file: FileRef,
    },
    Truncate {
        file: FileRef,
    },
    Link {
        source: FileRef,
        destination: String,
    },
    Create {
        destination: String,
    },
    /// A copy-on-write clone of `source` to the new path `destination`.
    Clone {
        source: FileRef,
        destination: String,
    },
    /// A copy of `source` to `destination` (an existing file, or a new path).
    Copyfile {
        source: FileRef,
        destination: String,
    },
    /// The contents of two files swapped.
    Exchangedata {
        file1: FileRef,
        file2: FileRef,
    },
}

/// One AUTH event, owned and platform-neutral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The process that asked (for exec: the caller; the new image is in the body).
    pub process: Process,
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match &self.body {
            EventBody::Exec { .. } => EventKind::Exec,
            EventBody::Open { .. } => EventKind::Open,
            EventBody::Mount { .. } => EventKind::Mount,
            EventBody::Remount { .. } => EventKind::Remount,
            EventBody::Rename { .. } => EventKind::Rename,
            EventBody::Unlink { .. } => EventKind::Unlink,
            EventBody::Truncate { .. } => EventKind::Truncate,
            EventBody::Link { .. } => EventKind::Link,
            EventBody::Create { .. } => EventKind::Create,
            EventBody::Clone { .. } => EventKind::Clone,
            EventBody::Copyfile { .. } => EventKind::Copyfile,
            EventBody::Exchangedata { .. } => EventKind::Exchangedata,
        }
    }

    /// The file whose identity an answer depends on, if the event has one (exec: the new
    /// image; open/unlink/truncate: the file; rename/link: the source).
    pub fn subject_file(&self) -> Option<&FileRef> {
        match &self.body {
            EventBody::Exec { target } => Some(&target.executable),
            EventBody::Open { file, .. }
            | EventBody::Unlink { file }
            | EventBody::Truncate { file } => Some(file),
            EventBody::Rename { source, .. }
            | EventBody::Link { source, .. }
            | EventBody::Clone { source, .. }
            | EventBody::Copyfile { source, .. } => Some(source),
            EventBody::Exchangedata { file1, .. } => Some(file1),
            EventBody::Mount { .. } | EventBody::Remount { .. } | EventBody::Create { .. } => None,
        }
    }

    /// Every path the event touches, for file-access rules and target mutes (several targets:
    /// any deny wins). Borrowed and allocation-free, because the delivery thread calls it.
    pub fn target_paths(&self) -> TargetPaths<'_> {
        let (paths, len) = match &self.body {
            EventBody::Exec { target } => ([target.executable.path.as_str(), ""], 1),
            EventBody::Open { file, .. }
            | EventBody::Unlink { file }
            | EventBody::Truncate { file } => ([file.path.as_str(), ""], 1),
            EventBody::Rename {
                source,
                destination,
            }
            | EventBody::Link {
                source,
                destination,
            }
            | EventBody::Clone {
                source,
                destination,
            }
            | EventBody::Copyfile {
                source,
                destination,
            } => ([source.path.as_str(), destination.as_str()], 2),
            EventBody::Exchangedata { file1, file2 } => {
                ([file1.path.as_str(), file2.path.as_str()], 2)
            }
            EventBody::Create { destination } => ([destination.as_str(), ""], 1),
            EventBody::Mount { mount } | EventBody::Remount { mount } => {
                ([mount.mount_point.as_str(), ""], 1)
            }
        };
        TargetPaths { paths, len }
    }

    /// How the event uses its `i`th target path ([`Event::target_paths`]), where that is
    /// known: an open's flags (ES), and read-only for the source of a clone or copy, which is
    /// only read (Santa's `PathTargets` marks exactly these readable). `None`: possibly
    /// modifying (every other target, and opens on Linux).
    pub fn target_access(&self, i: usize) -> Option<AccessFlags> {
        match &self.body {
            EventBody::Open { access, .. } => *access,
            EventBody::Clone { .. } | EventBody::Copyfile { .. } if i == 0 => {
                Some(AccessFlags::READ)
            }
            _ => None,
        }
    }
}

/// The one or two paths an event touches; derefs to a slice.
#[derive(Debug, Clone, Copy)]
pub struct TargetPaths<'a> {
    paths: [&'a str; 2],
    len: usize,
}

impl<'a> std::ops::Deref for TargetPaths<'a> {
    type Target = [&'a str];
    fn deref(&self) -> &[&'a str] {
        &self.paths[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cs_flags::*;

    #[test]
    fn cdhash_enforced_table() {
        let cases = [
            (0, false),
            (CS_VALID, false),
            (CS_HARD | CS_KILL, false),
            (CS_VALID | CS_HARD, true),
            (CS_VALID | CS_KILL, true),
            (CS_VALID | CS_HARD | CS_KILL | CS_PLATFORM_BINARY, true),
        ];
        for (flags, want) in cases {
            let cs = CodeSigning {
                flags,
                cdhash: Some(CdHash([1; 20])),
                ..CodeSigning::unsigned()
            };
            assert_eq!(cs.cdhash_enforced(), want, "flags {flags:#x}");
            assert_eq!(cs.trusted_cdhash().is_some(), want, "flags {flags:#x}");
        }
    }

    #[test]
    fn mount_flags_contains_table() {
        let ro = MountFlags {
            read_only: true,
            ..Default::default()
        };
        let ro_noexec = MountFlags {
            read_only: true,
            noexec: true,
            ..Default::default()
        };
        let cases = [
            (MountFlags::default(), MountFlags::default(), true),
            (ro, MountFlags::default(), true),
            (MountFlags::default(), ro, false),
            (ro_noexec, ro, true),
            (ro, ro_noexec, false),
        ];
        for (have, need, want) in cases {
            assert_eq!(have.contains(&need), want, "{have:?} ⊇ {need:?}");
        }
        assert_eq!(
            ro.union(&MountFlags {
                noexec: true,
                ..Default::default()
            }),
            ro_noexec
        );
    }

    #[test]
    fn event_json_shape_is_stable() {
        let json = r#"{
            "process": {"pid": 10, "uid": 501, "executable": {"path": "/bin/zsh"},
                        "signing": {"status": "unsigned"}},
            "kind": "exec",
            "target": {"pid": 10, "uid": 501, "executable": {"path": "/usr/bin/curl"},
                       "signing": {"status": "production", "team_id": "ABCDE12345",
                                   "signing_id": "com.example.curl", "flags": 769}}
        }"#;
        let ev: Event = serde_json::from_str(json).unwrap();
        assert_eq!(ev.kind(), EventKind::Exec);
        assert_eq!(ev.subject_file().unwrap().path, "/usr/bin/curl");
        let back: Event = serde_json::from_str(&serde_json::to_string(&ev).unwrap()).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn target_paths_table() {
        let p = Process {
            pid: 1,
            pid_version: None,
            ppid: None,
            uid: 0,
            gid: 0,
            executable: FileRef::new("/bin/mv"),
            signing: CodeSigning::unsigned(),
            audit_token: None,
        };
        let read = Some(AccessFlags::READ);
        // (body, targets, each target's access): Santa's `FAAPolicyProcessor::PathTargets`
        // reads only a clone's and a copy's source (and an open's file).
        type Case = (EventBody, Vec<&'static str>, Vec<Option<AccessFlags>>);
        let cases: Vec<Case> = vec![
            (
                EventBody::Unlink {
                    file: FileRef::new("/a"),
                },
                vec!["/a"],
                vec![None],
            ),
            (
                EventBody::Rename {
                    source: FileRef::new("/a"),
                    destination: "/b".into(),
                },
                vec!["/a", "/b"],
                vec![None, None],
            ),
            (
                EventBody::Create {
                    destination: "/c".into(),
                },
                vec!["/c"],
                vec![None],
            ),
            (
                EventBody::Clone {
                    source: FileRef::new("/a"),
                    destination: "/b".into(),
                },
                vec!["/a", "/b"],
                vec![read, None],
            ),
            (
                EventBody::Copyfile {
                    source: FileRef::new("/a"),
                    destination: "/b".into(),
                },
                vec!["/a", "/b"],
                vec![read, None],
            ),
            (
                EventBody::Exchangedata {
                    file1: FileRef::new("/a"),
                    file2: FileRef::new("/b"),
                },
                vec!["/a", "/b"],
                vec![None, None],
            ),
        ];
        for (body, want, access) in cases {
            let ev = Event {
                process: p.clone(),
                body,
            };
            assert_eq!(*ev.target_paths(), *want);
            let got: Vec<_> = (0..want.len()).map(|i| ev.target_access(i)).collect();
            assert_eq!(got, access, "{:?}", ev.kind());
        }
    }
}
