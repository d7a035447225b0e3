//! One ES message as owned plain data (what `ffi::read` copies out of an `es_message_t` on the
//! delivery queue, and what the simulator builds), and its conversion into a `model::Event`:
//! message data only (the kernel's code-signing fields and `stat`s), never a path re-opened.
#![forbid(unsafe_code)]

use model::{Event, EventBody, EventKind, FileRef, Process};

use super::api::AuditToken;
use super::convert::{self, RawSigning, RawStat, RawStatfs};

/// An `es_file_t`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EsFile {
    pub path: String,
    /// `path_truncated`: ES cut the path (longer than it copies); it names a different file.
    pub path_truncated: bool,
    pub stat: RawStat,
}

impl EsFile {
    pub fn new(path: &str) -> Self {
        Self {
            path: path.to_owned(),
            ..Self::default()
        }
    }
}

/// An `es_process_t`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EsProcess {
    pub token: AuditToken,
    pub ppid: u32,
    pub executable: EsFile,
    pub codesigning_flags: u32,
    pub is_platform_binary: bool,
    pub team_id: String,
    pub signing_id: String,
    pub cdhash: [u8; 20],
}

/// The `statfs` of an AUTH_MOUNT / AUTH_REMOUNT, fields already cut at their NUL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EsMount {
    pub mntfromname: String,
    pub mntonname: String,
    pub fstypename: String,
    pub f_flags: u32,
    /// `disposition` (message version 8+).
    pub disposition: Option<u32>,
}

/// Where a rename or create goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EsDestination {
    Existing(EsFile),
    New { directory: EsFile, filename: String },
}

impl EsDestination {
    pub fn path(&self) -> String {
        match self {
            Self::Existing(f) => f.path.clone(),
            Self::New {
                directory,
                filename,
            } => convert::join_path(&directory.path, filename),
        }
    }

    fn truncated(&self) -> bool {
        match self {
            Self::Existing(f) | Self::New { directory: f, .. } => f.path_truncated,
        }
    }
}

/// The event-specific part of an AUTH message we subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EsBody {
    Exec {
        target: Box<EsProcess>,
    },
    Open {
        file: EsFile,
        fflag: i32,
    },
    Mount(EsMount),
    Remount(EsMount),
    Rename {
        source: EsFile,
        destination: EsDestination,
    },
    Unlink {
        file: EsFile,
    },
    Truncate {
        file: EsFile,
    },
    Link {
        source: EsFile,
        target_dir: EsFile,
        target_filename: String,
    },
    Create {
        destination: EsDestination,
    },
    /// `es_event_clone_t`: the new file is `target_name` in `target_dir`.
    Clone {
        source: EsFile,
        target_dir: EsFile,
        target_name: String,
    },
    /// `es_event_copyfile_t`: onto `target_file` when it exists, else a new path.
    Copyfile {
        source: EsFile,
        destination: EsDestination,
    },
    /// `es_event_exchangedata_t`.
    Exchangedata {
        file1: EsFile,
        file2: EsFile,
    },
}

impl EsBody {
    pub fn kind(&self) -> EventKind {
        match self {
            Self::Exec { .. } => EventKind::Exec,
            Self::Open { .. } => EventKind::Open,
            Self::Mount(_) => EventKind::Mount,
            Self::Remount(_) => EventKind::Remount,
            Self::Rename { .. } => EventKind::Rename,
            Self::Unlink { .. } => EventKind::Unlink,
            Self::Truncate { .. } => EventKind::Truncate,
            Self::Link { .. } => EventKind::Link,
            Self::Create { .. } => EventKind::Create,
            Self::Clone { .. } => EventKind::Clone,
            Self::Copyfile { .. } => EventKind::Copyfile,
            Self::Exchangedata { .. } => EventKind::Exchangedata,
        }
    }

    /// The paths ES calls this event's targets (for target-path muting), as it reports them.
    pub fn targets(&self) -> Vec<String> {
        match self {
            Self::Exec { target } => vec![target.executable.path.clone()],
            Self::Open { file, .. } | Self::Unlink { file } | Self::Truncate { file } => {
                vec![file.path.clone()]
            }
            Self::Mount(m) | Self::Remount(m) => vec![m.mntonname.clone()],
            Self::Rename {
                source,
                destination,
            } => vec![source.path.clone(), destination.path()],
            Self::Link {
                source,
                target_dir,
                target_filename,
            } => vec![
                source.path.clone(),
                convert::join_path(&target_dir.path, target_filename),
            ],
            Self::Create { destination } => vec![destination.path()],
            Self::Clone {
                source,
                target_dir,
                target_name,
            } => vec![
                source.path.clone(),
                convert::join_path(&target_dir.path, target_name),
            ],
            Self::Copyfile {
                source,
                destination,
            } => vec![source.path.clone(), destination.path()],
            Self::Exchangedata { file1, file2 } => vec![file1.path.clone(), file2.path.clone()],
        }
    }
}

/// The event-specific part of a NOTIFY message the recorder client takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EsNotifyBody {
    /// `es_event_close_t`: `modified` is ES's "the file was written while open".
    Close { modified: bool, target: EsFile },
    /// `es_event_rename_t` (after the rename).
    Rename {
        source: EsFile,
        destination: EsDestination,
    },
    /// `es_event_exit_t`.
    Exit,
}

/// One NOTIFY message, owned: who did it and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsNotify {
    pub process: EsProcess,
    pub body: EsNotifyBody,
}

impl EsNotify {
    pub fn kind(&self) -> super::api::NotifyKind {
        match self.body {
            EsNotifyBody::Close { .. } => super::api::NotifyKind::Close,
            EsNotifyBody::Rename { .. } => super::api::NotifyKind::Rename,
            EsNotifyBody::Exit => super::api::NotifyKind::Exit,
        }
    }

    /// The paths ES calls this event's targets (for target-path muting).
    pub fn targets(&self) -> Vec<String> {
        match &self.body {
            EsNotifyBody::Close { target, .. } => vec![target.path.clone()],
            EsNotifyBody::Rename {
                source,
                destination,
            } => vec![source.path.clone(), destination.path()],
            EsNotifyBody::Exit => Vec::new(),
        }
    }
}

/// What a NOTIFY message means for transitive recording (pure; `handler` acts on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recording {
    /// A modified file closed: `file_closed`.
    Closed {
        pid: u32,
        incarnation: u32,
        file: crate::core::transitive::ReportedFile,
    },
    /// A rename: `file_renamed` (the file, then its new path).
    Renamed {
        pid: u32,
        incarnation: u32,
        from: crate::core::transitive::ReportedFile,
        to: String,
    },
    Exited {
        pid: u32,
        incarnation: u32,
    },
    /// Nothing to record: an unmodified close (Santa's recorder ignores those too), or a
    /// truncated path (it names another file).
    Nothing,
}

fn reported(f: &EsFile) -> crate::core::transitive::ReportedFile {
    crate::core::transitive::ReportedFile {
        path: f.path.clone(),
        identity: convert::file_identity(&f.stat),
    }
}

impl EsNotify {
    pub fn recording(&self) -> Recording {
        let (pid, incarnation) = (self.process.token.pid(), self.process.token.pidversion());
        match &self.body {
            EsNotifyBody::Close { modified, target } => {
                if !*modified || target.path_truncated {
                    return Recording::Nothing;
                }
                Recording::Closed {
                    pid,
                    incarnation,
                    file: reported(target),
                }
            }
            EsNotifyBody::Rename {
                source,
                destination,
            } => {
                if source.path_truncated || destination.truncated() {
                    return Recording::Nothing;
                }
                Recording::Renamed {
                    pid,
                    incarnation,
                    from: reported(source),
                    to: destination.path(),
                }
            }
            EsNotifyBody::Exit => Recording::Exited { pid, incarnation },
        }
    }
}

/// One AUTH message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsMessage {
    /// `es_message_t.version`.
    pub version: u32,
    /// `es_message_t.deadline` in mach absolute ticks.
    pub deadline_ticks: u64,
    pub process: EsProcess,
    pub body: EsBody,
}

fn file_ref(f: &EsFile) -> FileRef {
    FileRef {
        path: f.path.clone(),
        identity: Some(convert::file_identity(&f.stat)),
    }
}

fn process(p: &EsProcess) -> Process {
    Process {
        pid: p.token.pid(),
        pid_version: Some(p.token.pidversion()),
        ppid: Some(p.ppid),
        uid: p.token.euid(),
        gid: p.token.egid(),
        executable: file_ref(&p.executable),
        signing: convert::code_signing(&RawSigning {
            codesigning_flags: p.codesigning_flags,
            is_platform_binary: p.is_platform_binary,
            team_id: &p.team_id,
            signing_id: &p.signing_id,
            cdhash: p.cdhash,
        }),
        audit_token: Some(p.token),
    }
}

fn mount(m: &EsMount, version: u32) -> model::MountInfo {
    convert::mount_info(
        &RawStatfs {
            mntfromname: m.mntfromname.as_bytes(),
            mntonname: m.mntonname.as_bytes(),
            fstypename: m.fstypename.as_bytes(),
            f_flags: m.f_flags,
        },
        version,
        m.disposition,
    )
}

impl EsMessage {
    pub fn kind(&self) -> EventKind {
        self.body.kind()
    }

    /// True when ES truncated any path the policy would read (the actor's executable, the
    /// target, a source or destination). Such a message names some other file than the one the
    /// kernel is asking about, so it is never decided as if whole (issue 10 item 7).
    pub fn any_path_truncated(&self) -> bool {
        let b = match &self.body {
            EsBody::Exec { target } => target.executable.path_truncated,
            EsBody::Open { file, .. } | EsBody::Unlink { file } | EsBody::Truncate { file } => {
                file.path_truncated
            }
            EsBody::Mount(_) | EsBody::Remount(_) => false,
            EsBody::Rename {
                source,
                destination,
            } => source.path_truncated || destination.truncated(),
            EsBody::Link {
                source, target_dir, ..
            } => source.path_truncated || target_dir.path_truncated,
            EsBody::Create { destination } => destination.truncated(),
            EsBody::Clone {
                source, target_dir, ..
            } => source.path_truncated || target_dir.path_truncated,
            EsBody::Copyfile {
                source,
                destination,
            } => source.path_truncated || destination.truncated(),
            EsBody::Exchangedata { file1, file2 } => file1.path_truncated || file2.path_truncated,
        };
        b || self.process.executable.path_truncated
    }

    /// The model's event.
    pub fn to_event(&self) -> Event {
        let body = match &self.body {
            EsBody::Exec { target } => EventBody::Exec {
                target: Box::new(process(target)),
            },
            EsBody::Open { file, fflag } => EventBody::Open {
                file: file_ref(file),
                access: Some(convert::access_flags(*fflag)),
            },
            EsBody::Mount(m) => EventBody::Mount {
                mount: mount(m, self.version),
            },
            EsBody::Remount(m) => EventBody::Remount {
                mount: mount(m, self.version),
            },
            EsBody::Rename {
                source,
                destination,
            } => EventBody::Rename {
                source: file_ref(source),
                destination: destination.path(),
            },
            EsBody::Unlink { file } => EventBody::Unlink {
                file: file_ref(file),
            },
            EsBody::Truncate { file } => EventBody::Truncate {
                file: file_ref(file),
            },
            EsBody::Link {
                source,
                target_dir,
                target_filename,
            } => EventBody::Link {
                source: file_ref(source),
                destination: convert::join_path(&target_dir.path, target_filename),
            },
            EsBody::Create { destination } => EventBody::Create {
                destination: destination.path(),
            },
            EsBody::Clone {
                source,
                target_dir,
                target_name,
            } => EventBody::Clone {
                source: file_ref(source),
                destination: convert::join_path(&target_dir.path, target_name),
            },
            EsBody::Copyfile {
                source,
                destination,
            } => EventBody::Copyfile {
                source: file_ref(source),
                destination: destination.path(),
            },
            EsBody::Exchangedata { file1, file2 } => EventBody::Exchangedata {
                file1: file_ref(file1),
                file2: file_ref(file2),
            },
        };
        Event {
            process: process(&self.process),
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, truncated: bool) -> EsFile {
        EsFile {
            path_truncated: truncated,
            ..EsFile::new(path)
        }
    }

    fn msg(actor_truncated: bool, body: EsBody) -> EsMessage {
        EsMessage {
            version: 8,
            deadline_ticks: 0,
            process: EsProcess {
                executable: f("/bin/sh", actor_truncated),
                ..EsProcess::default()
            },
            body,
        }
    }

    #[test]
    fn any_truncated_path_is_seen_in_every_field() {
        let exec = |t| EsBody::Exec {
            target: Box::new(EsProcess {
                executable: f("/x", t),
                ..EsProcess::default()
            }),
        };
        let new_dest = |t| EsDestination::New {
            directory: f("/d", t),
            filename: "n".to_owned(),
        };
        // (case, actor truncated, body, expected)
        let cases: Vec<(&str, bool, EsBody, bool)> = vec![
            ("whole exec", false, exec(false), false),
            ("exec target", false, exec(true), true),
            ("actor", true, exec(false), true),
            (
                "open",
                false,
                EsBody::Open {
                    file: f("/o", true),
                    fflag: 1,
                },
                true,
            ),
            (
                "unlink",
                false,
                EsBody::Unlink {
                    file: f("/u", true),
                },
                true,
            ),
            (
                "truncate",
                false,
                EsBody::Truncate {
                    file: f("/t", true),
                },
                true,
            ),
            (
                "rename source",
                false,
                EsBody::Rename {
                    source: f("/s", true),
                    destination: new_dest(false),
                },
                true,
            ),
            (
                "rename destination dir",
                false,
                EsBody::Rename {
                    source: f("/s", false),
                    destination: new_dest(true),
                },
                true,
            ),
            (
                "rename existing destination",
                false,
                EsBody::Rename {
                    source: f("/s", false),
                    destination: EsDestination::Existing(f("/e", true)),
                },
                true,
            ),
            (
                "link target dir",
                false,
                EsBody::Link {
                    source: f("/s", false),
                    target_dir: f("/d", true),
                    target_filename: "l".to_owned(),
                },
                true,
            ),
            (
                "create",
                false,
                EsBody::Create {
                    destination: new_dest(true),
                },
                true,
            ),
            (
                "whole create",
                false,
                EsBody::Create {
                    destination: new_dest(false),
                },
                false,
            ),
            ("mount", false, EsBody::Mount(EsMount::default()), false),
            (
                "clone source",
                false,
                EsBody::Clone {
                    source: f("/s", true),
                    target_dir: f("/d", false),
                    target_name: "c".to_owned(),
                },
                true,
            ),
            (
                "clone target dir",
                false,
                EsBody::Clone {
                    source: f("/s", false),
                    target_dir: f("/d", true),
                    target_name: "c".to_owned(),
                },
                true,
            ),
            (
                "copyfile onto an existing file",
                false,
                EsBody::Copyfile {
                    source: f("/s", false),
                    destination: EsDestination::Existing(f("/e", true)),
                },
                true,
            ),
            (
                "whole copyfile",
                false,
                EsBody::Copyfile {
                    source: f("/s", false),
                    destination: new_dest(false),
                },
                false,
            ),
            (
                "exchangedata second file",
                false,
                EsBody::Exchangedata {
                    file1: f("/a", false),
                    file2: f("/b", true),
                },
                true,
            ),
        ];
        for (case, actor, body, want) in cases {
            assert_eq!(msg(actor, body).any_path_truncated(), want, "{case}");
        }
    }

    #[test]
    fn targets_and_destinations_join_directory_and_name() {
        let m = msg(
            false,
            EsBody::Rename {
                source: f("/a/b", false),
                destination: EsDestination::New {
                    directory: f("/c/", false),
                    filename: "d".to_owned(),
                },
            },
        );
        assert_eq!(m.body.targets(), vec!["/a/b".to_owned(), "/c/d".to_owned()]);
        match m.to_event().body {
            model::EventBody::Rename { destination, .. } => assert_eq!(destination, "/c/d"),
            other => panic!("{other:?}"),
        }
    }

    /// Santa's `SNTEndpointSecurityRecorder` drops unmodified closes before its compiler
    /// controller sees them; `SNTCompilerController handleEvent:` takes the close's target,
    /// the rename's source (falling back to its destination) and ends a compiler at its exit.
    #[test]
    fn notify_messages_as_recordings() {
        use crate::core::transitive::ReportedFile;
        let who = EsProcess {
            token: AuditToken::for_pid(600, 7),
            ..EsProcess::default()
        };
        let reported = |p: &str| ReportedFile {
            path: p.to_owned(),
            identity: convert::file_identity(&RawStat::default()),
        };
        let n = |body| EsNotify {
            process: who.clone(),
            body,
        };
        let cases: Vec<(&str, EsNotify, Recording)> = vec![
            (
                "modified close",
                n(EsNotifyBody::Close {
                    modified: true,
                    target: f("/build/a.out", false),
                }),
                Recording::Closed {
                    pid: 600,
                    incarnation: 7,
                    file: reported("/build/a.out"),
                },
            ),
            (
                "unmodified close",
                n(EsNotifyBody::Close {
                    modified: false,
                    target: f("/build/a.out", false),
                }),
                Recording::Nothing,
            ),
            (
                "truncated close",
                n(EsNotifyBody::Close {
                    modified: true,
                    target: f("/build/long", true),
                }),
                Recording::Nothing,
            ),
            (
                "rename to a new path",
                n(EsNotifyBody::Rename {
                    source: f("/build/a.tmp", false),
                    destination: EsDestination::New {
                        directory: f("/build", false),
                        filename: "a.out".into(),
                    },
                }),
                Recording::Renamed {
                    pid: 600,
                    incarnation: 7,
                    from: reported("/build/a.tmp"),
                    to: "/build/a.out".into(),
                },
            ),
            (
                "rename over a file",
                n(EsNotifyBody::Rename {
                    source: f("/build/a.tmp", false),
                    destination: EsDestination::Existing(f("/build/a.out", false)),
                }),
                Recording::Renamed {
                    pid: 600,
                    incarnation: 7,
                    from: reported("/build/a.tmp"),
                    to: "/build/a.out".into(),
                },
            ),
            (
                "rename with a truncated destination",
                n(EsNotifyBody::Rename {
                    source: f("/build/a.tmp", false),
                    destination: EsDestination::Existing(f("/build/long", true)),
                }),
                Recording::Nothing,
            ),
            (
                "exit",
                n(EsNotifyBody::Exit),
                Recording::Exited {
                    pid: 600,
                    incarnation: 7,
                },
            ),
        ];
        for (what, m, want) in cases {
            assert_eq!(m.recording(), want, "{what}");
        }
    }
}
