//! An `endpoint_sec::Message` into the owned `model::Event`, on the delivery thread: message
//! data only (the kernel's code-signing fields and `stat`s), never a path re-opened.

use std::ffi::OsStr;

use endpoint_sec::{
    Event as EsEvent, EventCreateDestinationFile, EventRenameDestinationFile, File, Message,
    Process as EsProcess,
};
use model::{Event, EventBody, FileRef, Process};

use crate::sys::es_convert::{self, RawSigning, RawStat, RawStatfs};

fn lossy(s: &OsStr) -> String {
    s.to_string_lossy().into_owned()
}

fn file_ref(f: &File<'_>) -> FileRef {
    let st = f.stat();
    FileRef {
        path: lossy(f.path()),
        identity: Some(es_convert::file_identity(&RawStat {
            dev: i64::from(st.st_dev),
            ino: st.st_ino,
            size: st.st_size,
            mtime_sec: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec,
            ctime_sec: st.st_ctime,
            ctime_nsec: st.st_ctime_nsec,
        })),
    }
}

fn process(p: &EsProcess<'_>) -> Process {
    let token = p.audit_token();
    let team = lossy(p.team_id());
    let signing_id = lossy(p.signing_id());
    Process {
        pid: token.pid() as u32,
        pid_version: Some(token.pidversion() as u32),
        ppid: Some(p.ppid() as u32),
        uid: token.euid(),
        gid: token.egid(),
        executable: file_ref(&p.executable()),
        signing: es_convert::code_signing(&RawSigning {
            codesigning_flags: p.codesigning_flags(),
            is_platform_binary: p.is_platform_binary(),
            team_id: &team,
            signing_id: &signing_id,
            cdhash: p.cdhash(),
        }),
    }
}

/// `c_char` arrays of a `statfs` as bytes.
fn bytes(field: &[libc::c_char]) -> &[u8] {
    // SAFETY: `c_char` is `i8` or `u8`, with the size and alignment of `u8`; the slice covers
    // exactly the same memory for the same lifetime.
    unsafe { std::slice::from_raw_parts(field.as_ptr().cast::<u8>(), field.len()) }
}

fn mount(statfs: &libc::statfs, version: u32, disposition: Option<u32>) -> model::MountInfo {
    es_convert::mount_info(
        &RawStatfs {
            mntfromname: bytes(&statfs.f_mntfromname),
            mntonname: bytes(&statfs.f_mntonname),
            fstypename: bytes(&statfs.f_fstypename),
            f_flags: statfs.f_flags,
        },
        version,
        disposition,
    )
}

/// The event, or `None` for an AUTH event we do not subscribe to or cannot read (the handler
/// then allows it at once).
pub fn to_event(msg: &Message) -> Option<Event> {
    let version = msg.version();
    let body = match msg.event()? {
        EsEvent::AuthExec(e) => EventBody::Exec {
            target: Box::new(process(&e.target())),
        },
        EsEvent::AuthOpen(e) => EventBody::Open {
            file: file_ref(&e.file()),
            access: Some(es_convert::access_flags(e.fflag())),
        },
        EsEvent::AuthMount(e) => EventBody::Mount {
            mount: mount(e.statfs(), version, e.disposition().map(|d| d.0)),
        },
        EsEvent::AuthRemount(e) => EventBody::Remount {
            mount: mount(e.statfs(), version, e.disposition().map(|d| d.0)),
        },
        EsEvent::AuthRename(e) => EventBody::Rename {
            source: file_ref(&e.source()),
            destination: match e.destination()? {
                EventRenameDestinationFile::ExistingFile { file, .. } => lossy(file.path()),
                EventRenameDestinationFile::NewPath {
                    directory,
                    filename,
                    ..
                } => es_convert::join_path(&lossy(directory.path()), &lossy(filename)),
                _ => return None,
            },
        },
        EsEvent::AuthUnlink(e) => EventBody::Unlink {
            file: file_ref(&e.target()),
        },
        EsEvent::AuthTruncate(e) => EventBody::Truncate {
            file: file_ref(&e.target()),
        },
        EsEvent::AuthLink(e) => EventBody::Link {
            source: file_ref(&e.source()),
            destination: es_convert::join_path(
                &lossy(e.target_dir().path()),
                &lossy(e.target_filename()),
            ),
        },
        EsEvent::AuthCreate(e) => EventBody::Create {
            destination: match e.destination()? {
                EventCreateDestinationFile::ExistingFile { file, .. } => lossy(file.path()),
                EventCreateDestinationFile::NewPath {
                    directory,
                    filename,
                    ..
                } => es_convert::join_path(&lossy(directory.path()), &lossy(filename)),
                _ => return None,
            },
        },
        _ => return None,
    };
    Some(Event {
        process: process(&msg.process()),
        body,
    })
}
