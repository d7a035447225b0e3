//! The slow path's own dependencies, pinned when the extension starts and allowed on the fast
//! path (architecture invariant `slow-path-never-gates-itself`).
//!
//! When execs fail closed and Gatehouse's binaries are in scope, restarting the helper is an
//! exec that would need the helper's hash check: it would be denied for as long as the helper
//! is down, which is for ever. So the executables the slow path depends on (the helper, the
//! extension, the CLI that launches them, and the ELF interpreter each names) are identified
//! once at start-up, before any kernel event exists, and an exec of exactly that file is
//! allowed at once with [`Reason::SlowPathDependency`], never waiting on the helper.
//!
//! The set is small and fixed ([`MAX_TRUSTED`] entries, built once, never changed while
//! running), so the delivery thread's lookup is a scan of a boxed slice: no lock, no I/O, no
//! allocation. A pin names one file version: on Linux the `fstat` identity of the file opened at
//! start (device, inode, size, mtime and ctime; any write changes ctime), with its SHA-256
//! recorded for audit; on macOS the kernel-enforced CDHash and signing id. A file changed since
//! start no longer matches and goes through the normal policy.
//!
//! On macOS the set is built from the defaults crate ([`TrustedSet::macos`]): the system daemons
//! the helper's Security, DiskArbitration and directory calls wait on (trustd, syspolicyd, amfid,
//! launchd, xpcproxy, ...), which launchd starts on demand, so with a SHA-256 rule their launch
//! would otherwise wait for the helper that waits for them (docs/FIELD-REPORT.md). They are
//! recognised by the kernel's platform-binary flag, an enforced CDHash and their signing id
//! ([`Pin::Platform`]), never by path; Gatehouse's own helper, extension and CLI by signing id and
//! team id with an enforced CDHash ([`Pin::Signed`]), because launchd starts the helper through
//! xpcproxy (not muted) and a CDHash changes with every release.
//!
//! Deviation, by design: the interpreter (`/lib64/ld-linux-x86-64.so.2`) is pinned too, because
//! the kernel raises an exec permission event for the interpreter of every dynamically linked
//! program, ours included. Its pinned version is therefore allowed for every exec on the
//! machine, and a policy rule that targets the interpreter itself (for example one blocking
//! `ld.so` run directly) does not apply to that version.

#![forbid(unsafe_code)]

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use model::{CdHash, Event, EventBody, FileIdentity, Process, Sha256, SigningStatus};

/// Most pins: on Linux three binaries and their interpreters; on macOS the system daemons of
/// `defaults::MACOS_SLOW_PATH_DEPENDENCIES` and our three signing ids, with room to spare.
pub const MAX_TRUSTED: usize = 48;

/// What a pinned file is to Gatehouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Extension,
    Helper,
    Cli,
    /// The ELF interpreter (`PT_INTERP`) one of the binaries above names.
    Interpreter,
    /// A macOS system daemon the slow path waits on (`defaults::MACOS_SLOW_PATH_DEPENDENCIES`).
    System,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Extension => "extension",
            Role::Helper => "helper",
            Role::Cli => "cli",
            Role::Interpreter => "interpreter",
            Role::System => "system",
        }
    }
}

/// How a pinned file is recognised in an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// The file as `fstat` saw it at start-up (Linux), and the SHA-256 of its contents then.
    /// Matching compares the identity only: the digest is what the audit trail shows.
    File {
        identity: FileIdentity,
        sha256: Sha256,
    },
    /// A code signature the kernel enforces (macOS): the CDHash of the image and its signing
    /// identifier. Matches only when the event's CDHash is kernel-enforced.
    CodeSigning {
        signing_id: String,
        team_id: Option<String>,
        cdhash: CdHash,
    },
    /// A platform binary (macOS) with this signing id, whatever its CDHash (it changes with
    /// every OS update), as long as the kernel enforces that CDHash: the platform flag and the
    /// signing id are then the kernel's word, not a path's.
    Platform { signing_id: String },
    /// Code signed by `team_id` with this signing id (a Developer ID binary: not a platform
    /// binary), any CDHash the kernel enforces: our own binaries across releases.
    Signed { signing_id: String, team_id: String },
}

impl Pin {
    fn matches(&self, image: &Process) -> bool {
        match self {
            Pin::File { identity, .. } => image.executable.identity.as_ref() == Some(identity),
            Pin::CodeSigning {
                signing_id,
                team_id,
                cdhash,
            } => {
                image.signing.trusted_cdhash().as_ref() == Some(cdhash)
                    && image.signing.signing_id.as_ref() == Some(signing_id)
                    && image.signing.team_id == *team_id
            }
            Pin::Platform { signing_id } => {
                policy::kernel_platform_signing_id(&image.signing) == Some(signing_id.as_str())
            }
            Pin::Signed {
                signing_id,
                team_id,
            } => {
                let cs = &image.signing;
                !cs.is_platform_binary
                    && cs.status == SigningStatus::Production
                    && cs.cdhash_enforced()
                    && cs.signing_id.as_ref() == Some(signing_id)
                    && cs.team_id.as_ref() == Some(team_id)
            }
        }
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pin::File {
                identity: i,
                sha256,
            } => write!(
                f,
                "sha256={sha256} dev={} ino={} size={} mtime_ns={} ctime_ns={}",
                i.dev, i.ino, i.size, i.mtime_ns, i.ctime_ns
            ),
            Pin::CodeSigning {
                signing_id,
                team_id,
                cdhash,
            } => write!(
                f,
                "cdhash={cdhash} signing_id={signing_id} team_id={}",
                team_id.as_deref().unwrap_or("-")
            ),
            Pin::Platform { signing_id } => {
                write!(f, "platform signing_id={signing_id} cdhash=enforced")
            }
            Pin::Signed {
                signing_id,
                team_id,
            } => write!(
                f,
                "signing_id={signing_id} team_id={team_id} cdhash=enforced"
            ),
        }
    }
}

/// One file the slow path depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub role: Role,
    /// Where it was found at start-up (display only: matching never looks at paths).
    pub path: String,
    pub pin: Pin,
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.role.as_str(), self.path, self.pin)
    }
}

#[derive(Debug)]
struct Entry {
    dep: Dependency,
    hits: AtomicU64,
}

/// A set that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustedError {
    #[error(
        "{count} slow-path dependencies to pin, at most {MAX_TRUSTED} are allowed; pin only Gatehouse's own binaries and their interpreters"
    )]
    TooMany { count: usize },
}

/// The fixed set of pinned dependencies. Built once before the kernel sends events.
#[derive(Debug, Default)]
pub struct TrustedSet {
    entries: Box<[Entry]>,
}

impl TrustedSet {
    /// The set of `deps`. A pin listed twice (two binaries naming one interpreter) is kept
    /// once, under its first role.
    pub fn new(deps: impl IntoIterator<Item = Dependency>) -> Result<Self, TrustedError> {
        let mut entries: Vec<Entry> = Vec::new();
        for dep in deps {
            if entries.iter().any(|e| e.dep.pin == dep.pin) {
                continue;
            }
            entries.push(Entry {
                dep,
                hits: AtomicU64::new(0),
            });
        }
        if entries.len() > MAX_TRUSTED {
            return Err(TrustedError::TooMany {
                count: entries.len(),
            });
        }
        Ok(Self {
            entries: entries.into_boxed_slice(),
        })
    }

    /// The macOS set: every system daemon of `defaults::MACOS_SLOW_PATH_DEPENDENCIES` by
    /// platform signing id, and, when the build knows its team (`defaults::TEAM_ID`), the
    /// helper, the extension and the CLI by signing id and team. Pure: built on any OS.
    pub fn macos(team_id: Option<&str>) -> Result<Self, TrustedError> {
        use defaults::macos as ids;
        let system = defaults::MACOS_SLOW_PATH_DEPENDENCIES
            .iter()
            .map(|d| Dependency {
                role: Role::System,
                path: d.path.to_owned(),
                pin: Pin::Platform {
                    signing_id: d.signing_id.to_owned(),
                },
            });
        let paths = defaults::Os::Macos.paths();
        let own = team_id.into_iter().flat_map(|team| {
            [
                (
                    Role::Helper,
                    ids::HELPER_SIGNING_ID,
                    paths.helper_executable,
                ),
                (Role::Extension, ids::EXTENSION_ID, None),
                (Role::Cli, ids::CLI_SIGNING_ID, Some(paths.cli_executable)),
            ]
            .map(|(role, signing_id, path)| Dependency {
                role,
                path: path.unwrap_or("(system extension)").to_owned(),
                pin: Pin::Signed {
                    signing_id: signing_id.to_owned(),
                    team_id: team.to_owned(),
                },
            })
        });
        Self::new(system.chain(own))
    }

    /// No pins: every event goes through the policy (tests, and a backend that has none).
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pinned dependency `event` executes, if any, counting the hit. Only exec events
    /// match: they are the ones that can lock the slow path out (a pinned binary's launch).
    /// Called on the delivery thread: a scan of at most [`MAX_TRUSTED`] entries, no I/O.
    pub fn matching(&self, event: &Event) -> Option<&Dependency> {
        let EventBody::Exec { target } = &event.body else {
            return None;
        };
        let e = self.entries.iter().find(|e| e.dep.pin.matches(target))?;
        e.hits.fetch_add(1, Ordering::Relaxed);
        Some(&e.dep)
    }

    /// Every pinned dependency and how many execs it has allowed, for status and logs.
    pub fn entries(&self) -> impl Iterator<Item = (&Dependency, u64)> {
        self.entries
            .iter()
            .map(|e| (&e.dep, e.hits.load(Ordering::Relaxed)))
    }

    /// Stats counters: the set's size and hits per role (summed over a role's entries).
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut out = vec![("trusted.pinned".to_owned(), self.len() as u64)];
        for role in [
            Role::Extension,
            Role::Helper,
            Role::Cli,
            Role::Interpreter,
            Role::System,
        ] {
            let hits = self
                .entries()
                .filter(|(d, _)| d.role == role)
                .map(|(_, h)| h)
                .sum();
            out.push((format!("trusted.hits.{}", role.as_str()), hits));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use model::{CodeSigning, FileRef, SigningStatus, cs_flags};

    use super::*;

    fn id(ino: u64) -> FileIdentity {
        FileIdentity {
            dev: 8,
            ino,
            size: 1000,
            mtime_ns: 1_700_000_000_000_000_000,
            ctime_ns: 1_700_000_000_000_000_001,
        }
    }

    fn file_dep(role: Role, ino: u64) -> Dependency {
        Dependency {
            role,
            path: format!("/bin/{}", role.as_str()),
            pin: Pin::File {
                identity: id(ino),
                sha256: Sha256([ino as u8; 32]),
            },
        }
    }

    fn signed(cdhash: u8, flags: u32, signing_id: &str) -> CodeSigning {
        CodeSigning {
            status: SigningStatus::Production,
            team_id: Some("TEAM".into()),
            signing_id: Some(signing_id.into()),
            cdhash: Some(CdHash([cdhash; 20])),
            flags,
            is_platform_binary: false,
        }
    }

    fn process(identity: Option<FileIdentity>, signing: CodeSigning) -> Process {
        Process {
            pid: 42,
            pid_version: None,
            ppid: None,
            uid: 0,
            gid: 0,
            executable: FileRef {
                path: "/scratch/whatever".into(),
                identity,
            },
            signing,
            audit_token: None,
        }
    }

    fn exec(identity: Option<FileIdentity>, signing: CodeSigning) -> Event {
        Event {
            process: process(None, CodeSigning::unsigned()),
            body: EventBody::Exec {
                target: Box::new(process(identity, signing)),
            },
        }
    }

    fn set() -> TrustedSet {
        TrustedSet::new([
            file_dep(Role::Helper, 1),
            file_dep(Role::Interpreter, 2),
            Dependency {
                role: Role::Extension,
                path: "/Library/SystemExtensions/x".into(),
                pin: Pin::CodeSigning {
                    signing_id: "dev.gatehouse.extension".into(),
                    team_id: Some("TEAM".into()),
                    cdhash: CdHash([7; 20]),
                },
            },
        ])
        .unwrap()
    }

    #[test]
    fn which_events_match() {
        let enforced = cs_flags::CS_VALID | cs_flags::CS_HARD;
        let unsigned = CodeSigning::unsigned;
        let changed = |f: fn(&mut FileIdentity)| {
            let mut i = id(1);
            f(&mut i);
            Some(i)
        };
        let cases: Vec<(&str, Event, Option<Role>)> = vec![
            (
                "pinned helper",
                exec(Some(id(1)), unsigned()),
                Some(Role::Helper),
            ),
            (
                "pinned interpreter",
                exec(Some(id(2)), unsigned()),
                Some(Role::Interpreter),
            ),
            ("other inode", exec(Some(id(3)), unsigned()), None),
            ("no identity", exec(None, unsigned()), None),
            (
                "appended to",
                exec(changed(|i| i.size += 1), unsigned()),
                None,
            ),
            (
                "rewritten in place",
                exec(changed(|i| i.mtime_ns += 1), unsigned()),
                None,
            ),
            (
                "touched metadata",
                exec(changed(|i| i.ctime_ns += 1), unsigned()),
                None,
            ),
            (
                "other device",
                exec(changed(|i| i.dev += 1), unsigned()),
                None,
            ),
            (
                "enforced cdhash",
                exec(None, signed(7, enforced, "dev.gatehouse.extension")),
                Some(Role::Extension),
            ),
            (
                "cdhash not enforced",
                exec(
                    None,
                    signed(7, cs_flags::CS_VALID, "dev.gatehouse.extension"),
                ),
                None,
            ),
            (
                "other signing id",
                exec(None, signed(7, enforced, "dev.other")),
                None,
            ),
            (
                "other cdhash",
                exec(None, signed(8, enforced, "dev.gatehouse.extension")),
                None,
            ),
            (
                "open of the pinned file",
                Event {
                    process: process(None, unsigned()),
                    body: EventBody::Open {
                        file: FileRef {
                            path: "/bin/helper".into(),
                            identity: Some(id(1)),
                        },
                        access: None,
                    },
                },
                None,
            ),
        ];
        let s = set();
        for (name, event, want) in cases {
            assert_eq!(s.matching(&event).map(|d| d.role), want, "{name}");
        }
    }

    #[test]
    fn hits_are_counted_per_role() {
        let s = set();
        for _ in 0..3 {
            s.matching(&exec(Some(id(1)), CodeSigning::unsigned()));
        }
        s.matching(&exec(Some(id(2)), CodeSigning::unsigned()));
        s.matching(&exec(Some(id(9)), CodeSigning::unsigned()));
        let c = s.counters();
        let get = |k: &str| c.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        assert_eq!(get("trusted.pinned"), Some(3));
        assert_eq!(get("trusted.hits.helper"), Some(3));
        assert_eq!(get("trusted.hits.interpreter"), Some(1));
        assert_eq!(get("trusted.hits.cli"), Some(0));
    }

    #[test]
    fn bounded_and_deduplicated() {
        // Three binaries naming one interpreter pin it once.
        let s = TrustedSet::new([
            file_dep(Role::Helper, 1),
            file_dep(Role::Interpreter, 2),
            file_dep(Role::Interpreter, 2),
            file_dep(Role::Interpreter, 2),
        ])
        .unwrap();
        assert_eq!(s.len(), 2);
        let too_many = (0..=MAX_TRUSTED as u64).map(|i| file_dep(Role::Cli, i));
        assert_eq!(
            TrustedSet::new(too_many).unwrap_err(),
            TrustedError::TooMany {
                count: MAX_TRUSTED + 1
            }
        );
        assert!(TrustedSet::empty().is_empty());
    }

    fn platform(signing_id: &str, flags: u32) -> CodeSigning {
        CodeSigning {
            status: SigningStatus::Production,
            team_id: None,
            signing_id: Some(signing_id.into()),
            cdhash: Some(CdHash([3; 20])),
            flags,
            is_platform_binary: true,
        }
    }

    #[test]
    fn macos_set_matches_by_kernel_identity() {
        let enforced = cs_flags::CS_VALID | cs_flags::CS_KILL | cs_flags::CS_HARD;
        let s = TrustedSet::macos(Some("ABCDE12345")).unwrap();
        let ours = |sid: &str, team: &str, flags: u32| CodeSigning {
            status: SigningStatus::Production,
            team_id: Some(team.into()),
            signing_id: Some(sid.into()),
            cdhash: Some(CdHash([9; 20])),
            flags,
            is_platform_binary: false,
        };
        let not_platform = CodeSigning {
            is_platform_binary: false,
            ..platform("com.apple.trustd", enforced)
        };
        let invalid = CodeSigning {
            status: SigningStatus::Invalid,
            ..platform("com.apple.trustd", enforced)
        };
        let cases: Vec<(&str, CodeSigning, Option<Role>)> = vec![
            (
                "trustd",
                platform("com.apple.trustd", enforced),
                Some(Role::System),
            ),
            (
                "xpcproxy",
                platform("com.apple.xpc.proxy", enforced),
                Some(Role::System),
            ),
            (
                "amfid",
                platform("com.apple.MobileFileIntegrity", enforced),
                Some(Role::System),
            ),
            (
                "launchd",
                platform("com.apple.xpc.launchd", enforced),
                Some(Role::System),
            ),
            (
                "other platform binary",
                platform("com.apple.Safari", enforced),
                None,
            ),
            (
                "trustd, CDHash not enforced",
                platform("com.apple.trustd", cs_flags::CS_VALID),
                None,
            ),
            (
                "trustd, not valid",
                platform("com.apple.trustd", cs_flags::CS_KILL),
                None,
            ),
            ("trustd's id, not a platform binary", not_platform, None),
            ("trustd, invalid signature", invalid, None),
            (
                "our helper",
                ours("dev.gatehouse.helper", "ABCDE12345", enforced),
                Some(Role::Helper),
            ),
            (
                "our extension",
                ours("dev.gatehouse.extension", "ABCDE12345", enforced),
                Some(Role::Extension),
            ),
            (
                "our CLI",
                ours("dev.gatehouse.cli", "ABCDE12345", enforced),
                Some(Role::Cli),
            ),
            (
                "helper id, other team",
                ours("dev.gatehouse.helper", "ZZZZZ99999", enforced),
                None,
            ),
            (
                "helper, CDHash not enforced",
                ours("dev.gatehouse.helper", "ABCDE12345", cs_flags::CS_VALID),
                None,
            ),
            ("unsigned", CodeSigning::unsigned(), None),
        ];
        for (name, signing, want) in cases {
            // Paths never matter: every case runs from a scratch path.
            assert_eq!(
                s.matching(&exec(None, signing)).map(|d| d.role),
                want,
                "{name}"
            );
        }
        let c = s.counters();
        let get = |k: &str| c.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        assert_eq!(get("trusted.hits.system"), Some(4));
        assert_eq!(
            get("trusted.pinned"),
            Some(defaults::MACOS_SLOW_PATH_DEPENDENCIES.len() as u64 + 3)
        );
    }

    #[test]
    fn macos_set_without_a_team_pins_only_the_system() {
        let s = TrustedSet::macos(None).unwrap();
        assert_eq!(s.len(), defaults::MACOS_SLOW_PATH_DEPENDENCIES.len());
        assert!(s.entries().all(|(d, _)| d.role == Role::System));
        let enforced = cs_flags::CS_VALID | cs_flags::CS_HARD;
        let helper = CodeSigning {
            status: SigningStatus::Production,
            team_id: Some("ABCDE12345".into()),
            signing_id: Some("dev.gatehouse.helper".into()),
            cdhash: Some(CdHash([9; 20])),
            flags: enforced,
            is_platform_binary: false,
        };
        assert!(s.matching(&exec(None, helper)).is_none());
    }

    #[test]
    fn display_names_the_digest() {
        let d = file_dep(Role::Helper, 1);
        let text = d.to_string();
        assert!(text.starts_with("helper /bin/helper sha256=0101"), "{text}");
        assert!(text.contains("ino=1 size=1000"), "{text}");
    }
}
