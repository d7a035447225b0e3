//! Converting one fanotify permission record into the owned [`model::Event`].
//!
//! The only I/O here (documented exception to the delivery-thread rule, DESIGN.md 3) is on
//! procfs: `readlink("/proc/self/fd/N")` for the file's path, `readlink("/proc/<pid>/exe")` and
//! one read of `/proc/<pid>/status` for the opener, plus `fstat` on the event fd for the file's
//! identity. None of these can raise a fanotify event or wait on one: procfs is its own
//! superblock, which we never mark; `readlink` resolves a link without opening its target; and
//! `fstat` on an fd we already hold opens nothing.

use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd};

use model::{CodeSigning, Event, EventBody, FileIdentity, FileRef, Process};

use super::fanotify::PermKind;

/// The path the kernel resolved for the event's file. A deleted file reads `... (deleted)`.
pub fn fd_path(fd: BorrowedFd<'_>) -> String {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match std::fs::read_link(link) {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(_) => String::new(),
    }
}

/// `fstat` on the kernel's own fd: the identity that keys caches (never a re-opened path).
pub fn file_identity(fd: BorrowedFd<'_>) -> Option<FileIdentity> {
    let st = nix::sys::stat::fstat(fd).ok()?;
    Some(FileIdentity {
        dev: st.st_dev,
        ino: st.st_ino,
        size: u64::try_from(st.st_size).unwrap_or(0),
        mtime_ns: st.st_mtime.saturating_mul(1_000_000_000) + st.st_mtime_nsec,
        ctime_ns: st.st_ctime.saturating_mul(1_000_000_000) + st.st_ctime_nsec,
    })
}

/// Fields of `/proc/<pid>/status` the model carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    pub ppid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
}

/// Parse the `PPid`, `Uid` (real) and `Gid` (real) lines of a status file. Works on bytes and
/// stops at the `Gid:` line (the kernel prints `PPid`, `Uid`, `Gid` in that order near the top):
/// this runs on the delivery thread for every event, so no UTF-8 pass over the whole file.
pub fn parse_status(text: &[u8]) -> Status {
    fn first_number(rest: &[u8]) -> Option<u32> {
        let s = rest.split(|b| *b == b'\n').next()?;
        let s = std::str::from_utf8(s).ok()?;
        s.split_whitespace().next()?.parse().ok()
    }
    let mut s = Status::default();
    for line in text.split(|b| *b == b'\n') {
        if let Some(rest) = line.strip_prefix(b"PPid:") {
            s.ppid = first_number(rest);
        } else if let Some(rest) = line.strip_prefix(b"Uid:") {
            s.uid = first_number(rest).unwrap_or(u32::MAX);
        } else if let Some(rest) = line.strip_prefix(b"Gid:") {
            s.gid = first_number(rest).unwrap_or(u32::MAX);
            break;
        }
    }
    s
}

/// One bounded read of `/proc/<pid>/status` (a few hundred bytes; we stop at 4 KiB). A
/// process that is already gone reports uid/gid `u32::MAX` (nobody we would trust).
pub fn read_status(pid: i32) -> Status {
    let mut buf = [0u8; 4096];
    let n = std::fs::File::open(format!("/proc/{pid}/status"))
        .and_then(|mut f| f.read(&mut buf))
        .unwrap_or(0);
    if n == 0 {
        return Status {
            ppid: None,
            uid: u32::MAX,
            gid: u32::MAX,
        };
    }
    parse_status(&buf[..n])
}

/// The process that triggered the event, from procfs.
pub fn process(pid: i32) -> Process {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let st = read_status(pid);
    Process {
        pid: pid.max(0) as u32,
        pid_version: None,
        ppid: st.ppid,
        uid: st.uid,
        gid: st.gid,
        executable: FileRef::new(exe),
        signing: CodeSigning::unsigned(),
    }
}

/// The owned event for one permission record. For exec the caller is still the old image
/// (`FAN_OPEN_EXEC_PERM` fires before the point of no return), so `process` is the caller and
/// the target is the same pid with the file being executed as its executable.
pub fn to_event(kind: PermKind, pid: i32, fd: BorrowedFd<'_>) -> Event {
    let file = FileRef {
        path: fd_path(fd),
        identity: file_identity(fd),
    };
    let caller = process(pid);
    let body = match kind {
        PermKind::Exec => {
            let mut target = caller.clone();
            target.executable = file;
            EventBody::Exec {
                target: Box::new(target),
            }
        }
        // fanotify carries no open flags (DESIGN.md 6): `None` = possibly modifying.
        PermKind::Open => EventBody::Open { file, access: None },
    };
    Event {
        process: caller,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_status_table() {
        let cases = [
            (
                "Name:\tcat\nPPid:\t42\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n",
                Status {
                    ppid: Some(42),
                    uid: 1000,
                    gid: 100,
                },
            ),
            (
                "PPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n",
                Status {
                    ppid: Some(0),
                    uid: 0,
                    gid: 0,
                },
            ),
            (
                "Uid:\tx\n",
                Status {
                    ppid: None,
                    uid: u32::MAX,
                    gid: 0,
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_status(text.as_bytes()), want, "{text:?}");
        }
    }

    #[test]
    fn own_process_from_procfs() {
        let me = std::process::id() as i32;
        let p = process(me);
        assert_eq!(p.pid, me as u32);
        assert_eq!(p.uid, nix::unistd::getuid().as_raw());
        assert_eq!(
            p.executable.path,
            std::env::current_exe().unwrap().to_string_lossy()
        );
    }

    #[test]
    fn event_from_plain_fd() {
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let ev = to_event(PermKind::Open, std::process::id() as i32, f.as_fd());
        let file = ev.subject_file().unwrap();
        assert_eq!(file.path, path.to_string_lossy());
        assert_eq!(file.identity.unwrap().size, 3);
        let ev = to_event(PermKind::Exec, std::process::id() as i32, f.as_fd());
        assert_eq!(ev.kind(), model::EventKind::Exec);
        assert_eq!(ev.subject_file().unwrap().path, path.to_string_lossy());
    }
}
