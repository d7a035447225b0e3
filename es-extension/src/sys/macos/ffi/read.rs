//! One `endpoint_sec::Message` read into the owned [`EsMessage`] on the delivery queue: a copy
//! of the message's own fields (the kernel's code-signing fields and `stat`s), never a path
//! re-opened. Every choice about what the fields mean is in `message` and `convert`.

use std::ffi::OsStr;

use endpoint_sec::{
    Event as RawEvent, EventCreateDestinationFile, EventRename, EventRenameDestinationFile, File,
    Message, Process as RawProcess,
};

use crate::sys::macos::api::AuditToken;
use crate::sys::macos::convert::{self, RawStat};
use crate::sys::macos::message::{
    EsBody, EsDestination, EsFile, EsMessage, EsMount, EsNotify, EsNotifyBody, EsProcess,
};

fn lossy(s: &OsStr) -> String {
    s.to_string_lossy().into_owned()
}

fn file(f: &File<'_>) -> EsFile {
    let st = f.stat();
    EsFile {
        path: lossy(f.path()),
        path_truncated: f.path_truncated(),
        stat: RawStat {
            dev: i64::from(st.st_dev),
            ino: st.st_ino,
            size: st.st_size,
            mtime_sec: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec,
            ctime_sec: st.st_ctime,
            ctime_nsec: st.st_ctime_nsec,
        },
    }
}

fn process(p: &RawProcess<'_>) -> EsProcess {
    EsProcess {
        token: AuditToken(p.audit_token().raw_token().val),
        ppid: p.ppid() as u32,
        executable: file(&p.executable()),
        codesigning_flags: p.codesigning_flags(),
        is_platform_binary: p.is_platform_binary(),
        team_id: lossy(p.team_id()),
        signing_id: lossy(p.signing_id()),
        cdhash: p.cdhash(),
    }
}

/// `c_char` arrays of a `statfs` as bytes.
fn bytes(field: &[libc::c_char]) -> &[u8] {
    // SAFETY: `c_char` is `i8` or `u8`, with the size and alignment of `u8`; the slice covers
    // exactly the same memory for the same lifetime.
    unsafe { std::slice::from_raw_parts(field.as_ptr().cast::<u8>(), field.len()) }
}

/// A mounted filesystem's `statfs` (from `getfsstat`) as the message's mount fields.
pub fn statfs_mount(statfs: &libc::statfs) -> EsMount {
    mount(statfs, None)
}

fn mount(statfs: &libc::statfs, disposition: Option<u32>) -> EsMount {
    EsMount {
        mntfromname: convert::c_field(bytes(&statfs.f_mntfromname)),
        mntonname: convert::c_field(bytes(&statfs.f_mntonname)),
        fstypename: convert::c_field(bytes(&statfs.f_fstypename)),
        f_flags: statfs.f_flags,
        disposition,
    }
}

/// Where a rename (AUTH or NOTIFY) goes; `None` for a destination type we do not know.
fn rename_destination(e: &EventRename<'_>) -> Option<EsDestination> {
    Some(match e.destination()? {
        EventRenameDestinationFile::ExistingFile { file: f, .. } => {
            EsDestination::Existing(file(&f))
        }
        EventRenameDestinationFile::NewPath {
            directory,
            filename,
            ..
        } => EsDestination::New {
            directory: file(&directory),
            filename: lossy(filename),
        },
        _ => return None,
    })
}

/// The message, or `None` for an AUTH event we do not subscribe to or cannot read (the
/// handler block then allows it at once).
pub fn message(msg: &Message) -> Option<EsMessage> {
    let body = match msg.event()? {
        RawEvent::AuthExec(e) => EsBody::Exec {
            target: Box::new(process(&e.target())),
        },
        RawEvent::AuthOpen(e) => EsBody::Open {
            file: file(&e.file()),
            fflag: e.fflag(),
        },
        RawEvent::AuthMount(e) => EsBody::Mount(mount(e.statfs(), e.disposition().map(|d| d.0))),
        RawEvent::AuthRemount(e) => {
            EsBody::Remount(mount(e.statfs(), e.disposition().map(|d| d.0)))
        }
        RawEvent::AuthRename(e) => EsBody::Rename {
            source: file(&e.source()),
            destination: rename_destination(&e)?,
        },
        RawEvent::AuthUnlink(e) => EsBody::Unlink {
            file: file(&e.target()),
        },
        RawEvent::AuthTruncate(e) => EsBody::Truncate {
            file: file(&e.target()),
        },
        RawEvent::AuthLink(e) => EsBody::Link {
            source: file(&e.source()),
            target_dir: file(&e.target_dir()),
            target_filename: lossy(e.target_filename()),
        },
        RawEvent::AuthCreate(e) => EsBody::Create {
            destination: match e.destination()? {
                EventCreateDestinationFile::ExistingFile { file: f, .. } => {
                    EsDestination::Existing(file(&f))
                }
                EventCreateDestinationFile::NewPath {
                    directory,
                    filename,
                    ..
                } => EsDestination::New {
                    directory: file(&directory),
                    filename: lossy(filename),
                },
                _ => return None,
            },
        },
        RawEvent::AuthClone(e) => EsBody::Clone {
            source: file(&e.source()),
            target_dir: file(&e.target_dir()),
            target_name: lossy(e.target_name()),
        },
        RawEvent::AuthCopyFile(e) => EsBody::Copyfile {
            source: file(&e.source()),
            destination: match e.target_file() {
                Some(f) => EsDestination::Existing(file(&f)),
                None => EsDestination::New {
                    directory: file(&e.target_dir()),
                    filename: lossy(e.target_name()),
                },
            },
        },
        RawEvent::AuthExchangeData(e) => EsBody::Exchangedata {
            file1: file(&e.file1()),
            file2: file(&e.file2()),
        },
        _ => return None,
    };
    Some(EsMessage {
        version: msg.version(),
        deadline_ticks: msg.raw_deadline(),
        process: process(&msg.process()),
        body,
    })
}

/// A NOTIFY message the recorder client takes, or `None` for any other (nothing is owed).
pub fn notify(msg: &Message) -> Option<EsNotify> {
    let body = match msg.event()? {
        RawEvent::NotifyClose(e) => EsNotifyBody::Close {
            modified: e.modified(),
            target: file(&e.target()),
        },
        RawEvent::NotifyRename(e) => EsNotifyBody::Rename {
            source: file(&e.source()),
            destination: rename_destination(&e)?,
        },
        RawEvent::NotifyExit(_) => EsNotifyBody::Exit,
        _ => return None,
    };
    Some(EsNotify {
        process: process(&msg.process()),
        body,
    })
}
