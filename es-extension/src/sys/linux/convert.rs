//! Converting one fanotify permission record into the owned [`model::Event`].
//!
//! The only I/O here (documented exception to the delivery-thread rule, docs/DESIGN.md 3) is on
//! procfs: `readlink("/proc/self/fd/N")` for the file's path, `readlink("/proc/<pid>/exe")` and
//! one `stat("/proc/<pid>")` for the opener's ids, for open events one read of
//! `/proc/<tid>/syscall` for the open flags (`opener`), plus `fstat` on the event fd for the
//! file's identity. None of these can raise a fanotify event or wait on one: procfs is its own
//! superblock, which we never mark; `readlink` resolves a link without opening its target; and
//! `fstat` on an fd we already hold opens nothing.
//!
//! Why not `/proc/<pid>/status`: generating it takes the target's `mmap_lock` (for the `Vm*`
//! lines), a lock another thread of that process may hold across slow work, and it costs an
//! open, a read and a close plus parsing on every cold event. The owner of `/proc/<pid>` is the
//! process's effective uid and gid in one `stat` (root for a non-dumpable process, e.g. a
//! setuid program). The ids are recorded for the events log; no decision reads them. The parent
//! pid is not read at all (`ppid: None`).

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

/// The opener's effective uid and gid: the owner of `/proc/<pid>`. A process that is already
/// gone reports `u32::MAX` (nobody we would trust).
pub fn process_ids(pid: i32) -> (u32, u32) {
    nix::sys::stat::stat(format!("/proc/{pid}").as_str())
        .map_or((u32::MAX, u32::MAX), |st| (st.st_uid, st.st_gid))
}

/// The process that triggered the event, from procfs.
pub fn process(pid: i32) -> Process {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (uid, gid) = process_ids(pid);
    Process {
        pid: pid.max(0) as u32,
        pid_version: None,
        ppid: None,
        uid,
        gid,
        executable: FileRef::new(exe),
        signing: CodeSigning::unsigned(),
        audit_token: None,
    }
}

/// The owned event for one permission record. For exec the caller is still the old image
/// (`FAN_OPEN_EXEC_PERM` fires before the point of no return), so `process` is the caller and
/// the target is the same pid with the file being executed as its executable.
/// `pid` is the opener's thread id (the group reports thread ids): procfs answers for a thread
/// id as for a process id, and `/proc/<tid>/syscall` names the blocked thread's own call.
/// `access` is how an open's opener opens the file (`opener::read`, done by the delivery loop
/// for a whole batch before any answer); it is ignored for exec.
pub fn to_event(
    kind: PermKind,
    pid: i32,
    fd: BorrowedFd<'_>,
    access: Option<model::AccessFlags>,
) -> Event {
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
        // fanotify carries no open flags (docs/DESIGN.md 6): they come from the blocked thread's
        // system call; `None` (not understood) counts as possibly modifying.
        PermKind::Open => EventBody::Open { file, access },
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
    fn ids_of_a_gone_process_are_nobody() {
        // pid_max is at most 2^22 on Linux, so this pid never exists.
        assert_eq!(process_ids(i32::MAX), (u32::MAX, u32::MAX));
    }

    #[test]
    fn own_process_from_procfs() {
        let me = std::process::id() as i32;
        let p = process(me);
        assert_eq!(p.pid, me as u32);
        assert_eq!(p.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(p.gid, nix::unistd::getegid().as_raw());
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
        let ev = to_event(PermKind::Open, std::process::id() as i32, f.as_fd(), None);
        let file = ev.subject_file().unwrap();
        assert_eq!(file.path, path.to_string_lossy());
        assert_eq!(file.identity.unwrap().size, 3);
        let ev = to_event(PermKind::Exec, std::process::id() as i32, f.as_fd(), None);
        assert_eq!(ev.kind(), model::EventKind::Exec);
        assert_eq!(ev.subject_file().unwrap().path, path.to_string_lossy());
    }
}
