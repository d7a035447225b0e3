//! A small safe wrapper over the fanotify permission groups: init, marks (including the
//! evictable inode ignore marks nix has flags for but no helper), reading event batches with the
//! event descriptors owned at once, and writing answers.
//!
//! Two groups ([`Groups`]), because `FAN_MARK_FLUSH` is per mark class per group and not
//! selective within a class: the exec group holds the filesystem exec marks and the evictable
//! inode ignore marks (the kernel allow cache), so flushing its inode marks drops exactly the
//! cache; the open group holds the inode and directory open marks of protected paths, which a
//! cache clear therefore never touches.
//!
//! nix's `Fanotify` covers init, mark and the response write; reading is our own because nix's
//! `FanotifyEvent` closes its descriptor on drop and we hand that descriptor on instead (shared
//! by the responder and, on the slow path, the helper request: `backend::SubjectFd`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response,
};

/// What one permission event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermKind {
    /// `FAN_OPEN_EXEC_PERM`: a file opened for execve (or as an ELF interpreter).
    Exec,
    /// `FAN_OPEN_PERM`: a plain open of a guarded file.
    Open,
}

/// One record read from the group.
#[derive(Debug)]
pub enum RawEvent {
    /// A permission event: it must be answered exactly once, by writing `fd` back.
    Perm {
        kind: PermKind,
        pid: i32,
        fd: OwnedFd,
    },
    /// `FAN_CLOSE_WRITE` (the write group only): process `pid` (a process id: that group
    /// reports no thread ids) closed a file it had open for writing; `fd` is the kernel's own
    /// descriptor of that file. A notification: nothing to answer.
    Written { pid: i32, fd: OwnedFd },
    /// `FAN_Q_OVERFLOW`: the kernel dropped events (fail-open). Counted as a security event.
    Overflow,
    /// A record we did not ask for (a newer kernel's notification bit); its fd, if any, was
    /// closed. Permission bits are never silently dropped: they parse as `Perm`.
    Other { mask: u64 },
}

/// The two permission groups. An event's kind names its group: the exec group marks only
/// `FAN_OPEN_EXEC_PERM`, the open group only `FAN_OPEN_PERM` (an exec of a protected file raises
/// one event in each), so an answer always goes back to the group the event came from.
#[derive(Debug)]
pub struct Groups {
    /// `FAN_OPEN_EXEC_PERM` filesystem marks and the exec allow cache (inode ignore marks).
    pub exec: Group,
    /// `FAN_OPEN_PERM` inode/directory marks on protected paths; never kernel-cached.
    pub open: Group,
}

impl Groups {
    pub fn new() -> io::Result<Groups> {
        Ok(Groups {
            exec: Group::new()?,
            open: Group::new()?,
        })
    }

    /// The group that delivers events of `kind`, and takes their answers.
    pub fn of(&self, kind: PermKind) -> &Group {
        match kind {
            PermKind::Exec => &self.exec,
            PermKind::Open => &self.open,
        }
    }

    /// Both, exec first.
    pub fn both(&self) -> [&Group; 2] {
        [&self.exec, &self.open]
    }
}

/// A fanotify permission group. Every descriptor of the group is `O_CLOEXEC`, so no child we
/// spawn can keep it alive after we die.
#[derive(Debug)]
pub struct Group {
    inner: Fanotify,
}

/// `FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM` mask bits as the kernel reports them.
const OPEN_PERM: u64 = libc::FAN_OPEN_PERM;
const OPEN_EXEC_PERM: u64 = libc::FAN_OPEN_EXEC_PERM;
const PERM_BITS: u64 = OPEN_PERM | OPEN_EXEC_PERM | libc::FAN_ACCESS_PERM;

impl Group {
    /// Create a content-class permission group: unlimited queue (no fail-open overflow),
    /// unlimited marks (our own budget bounds them), non-blocking reads (the delivery thread
    /// polls so it can be woken for shutdown), close-on-exec everywhere, and thread ids in
    /// `pid` (`FAN_REPORT_TID`): the blocked thread's `/proc/<tid>/syscall` tells how it is
    /// opening the file (`opener`), which a process id cannot when the opener is threaded.
    pub fn new() -> io::Result<Group> {
        let flags = InitFlags::FAN_CLASS_CONTENT
            | InitFlags::FAN_CLOEXEC
            | InitFlags::FAN_NONBLOCK
            | InitFlags::FAN_UNLIMITED_QUEUE
            | InitFlags::FAN_UNLIMITED_MARKS
            | InitFlags::FAN_REPORT_TID;
        let ev = EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC;
        let inner = Fanotify::init(flags, ev).map_err(io::Error::from)?;
        Ok(Group { inner })
    }

    fn mark(
        &self,
        flags: MarkFlags,
        mask: u64,
        dirfd: BorrowedFd<'_>,
        path: Option<&Path>,
    ) -> Result<(), Errno> {
        let mask = MaskFlags::from_bits_retain(mask);
        self.inner.mark(flags, mask, dirfd, path)
    }

    /// Exec authorization on the whole filesystem holding `path` (bind mounts included).
    pub fn mark_filesystem_exec(&self, path: &Path) -> Result<(), Errno> {
        self.mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
            OPEN_EXEC_PERM,
            cwd(),
            Some(path),
        )
    }

    /// Open authorization on one file (inode mark) or on a directory's direct children.
    pub fn mark_open(&self, path: &Path, directory: bool) -> Result<(), Errno> {
        let mask = if directory {
            OPEN_PERM | libc::FAN_EVENT_ON_CHILD
        } else {
            OPEN_PERM
        };
        self.mark(MarkFlags::FAN_MARK_ADD, mask, cwd(), Some(path))
    }

    /// Remove the open marks added by [`Group::mark_open`].
    pub fn unmark_open(&self, path: &Path, directory: bool) -> Result<(), Errno> {
        let mask = if directory {
            OPEN_PERM | libc::FAN_EVENT_ON_CHILD
        } else {
            OPEN_PERM
        };
        self.mark(MarkFlags::FAN_MARK_REMOVE, mask, cwd(), Some(path))
    }

    /// The kernel allow cache: an evictable inode ignore mark for `kind` on the very file
    /// object behind `file` (an event fd). With a NULL pathname `fanotify_mark(2)` marks the
    /// object `dirfd` refers to, so nothing is re-opened and no event is raised. Without
    /// `FAN_MARK_IGNORED_SURV_MODIFY`, the kernel clears the ignore mask on the first
    /// modification of the file, so a changed binary is decided again.
    pub fn add_ignore(&self, file: BorrowedFd<'_>, kind: PermKind) -> Result<(), Errno> {
        let mask = match kind {
            PermKind::Exec => OPEN_EXEC_PERM,
            PermKind::Open => OPEN_PERM,
        };
        self.mark(
            MarkFlags::FAN_MARK_ADD
                | MarkFlags::FAN_MARK_IGNORED_MASK
                | MarkFlags::FAN_MARK_EVICTABLE,
            mask,
            file,
            None,
        )
    }

    /// Remove every mark of this group on filesystems/mounts/inodes of the given class. Used on
    /// shutdown and on cache invalidation (the caller re-adds the policy marks).
    pub fn flush(&self, class: MarkFlags) -> Result<(), Errno> {
        self.mark(
            MarkFlags::FAN_MARK_FLUSH | class,
            0,
            cwd(),
            Some(Path::new("/")),
        )
    }

    /// Answer one permission event. One `write(2)` on the group fd; never blocks beyond it.
    pub fn respond(&self, event_fd: BorrowedFd<'_>, allow: bool) -> Result<(), Errno> {
        let r = if allow {
            Response::FAN_ALLOW
        } else {
            Response::FAN_DENY
        };
        self.inner
            .write_response(FanotifyResponse::new(event_fd, r))
    }

    /// Read at most `max_records` queued records (non-blocking) into `out`, using `buf` (which
    /// must hold that many metadata records). Returns `Ok(0)` when nothing is queued. Every
    /// returned permission event owns its descriptor.
    ///
    /// A read can fail for one record while the group is sound: the kernel opens a descriptor
    /// for each permission record as it copies it, so `EMFILE`, `ENFILE`, `ENOMEM` (or an LSM
    /// refusing that open) fail the read when no earlier record was copied. The kernel answers
    /// that one record itself (deny) and keeps the rest queued; the error is returned as is.
    pub fn read_batch(
        &self,
        buf: &mut [u8],
        max_records: usize,
        out: &mut Vec<RawEvent>,
    ) -> Result<usize, Errno> {
        let len = (max_records * META_LEN).min(buf.len());
        let n = match nix::unistd::read(self.inner.as_fd(), &mut buf[..len]) {
            Ok(n) => n,
            Err(Errno::EAGAIN) => return Ok(0),
            Err(e) => return Err(e),
        };
        let before = out.len();
        parse_records(&buf[..n], out);
        Ok(out.len() - before)
    }
}

impl AsFd for Group {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

/// The write group: a notification group (`FAN_CLASS_NOTIF`) for transitive allowlisting,
/// with `FAN_CLOSE_WRITE` filesystem marks on the scope filesystems, added only while the
/// policy can record transitive allows (`Policy::records_transitive`). Its own group because
/// a notification never needs an answer and must never sit in a permission group's queue
/// ahead of the events that do. Process ids, not thread ids (a compiler is tracked by
/// process). Its queue is the kernel's default bound (16,384 events); an overflow is counted.
#[derive(Debug)]
pub struct WriteGroup {
    inner: Group,
}

impl WriteGroup {
    pub fn new() -> io::Result<WriteGroup> {
        let flags = InitFlags::FAN_CLASS_NOTIF | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK;
        // The kernel opens each event's file read-only for us, with FMODE_NONOTIFY: the
        // descriptor raises no event of its own, and the recorder hashes through it.
        let ev = EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC;
        let inner = Fanotify::init(flags, ev).map_err(io::Error::from)?;
        Ok(WriteGroup {
            inner: Group { inner },
        })
    }

    /// Close-write events on the whole filesystem holding `path` (`add`), or no longer.
    pub fn mark_filesystem(&self, path: &Path, add: bool) -> Result<(), Errno> {
        let op = if add {
            MarkFlags::FAN_MARK_ADD
        } else {
            MarkFlags::FAN_MARK_REMOVE
        };
        self.inner.mark(
            op | MarkFlags::FAN_MARK_FILESYSTEM,
            libc::FAN_CLOSE_WRITE,
            cwd(),
            Some(path),
        )
    }

    /// As [`Group::read_batch`].
    pub fn read_batch(
        &self,
        buf: &mut [u8],
        max_records: usize,
        out: &mut Vec<RawEvent>,
    ) -> Result<usize, Errno> {
        self.inner.read_batch(buf, max_records, out)
    }
}

impl AsFd for WriteGroup {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

fn cwd() -> BorrowedFd<'static> {
    // SAFETY: AT_FDCWD is a sentinel the *at() calls accept as "relative to the cwd"; it is
    // never closed and never dereferenced as a real descriptor by us.
    unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) }
}

/// One record's metadata; our groups report no info records, so this is one record's length.
pub const META_LEN: usize = std::mem::size_of::<libc::fanotify_event_metadata>();

/// Split one `read(2)` result into records. Ownership of each record's fd moves into the
/// returned event at once, so every path (including a malformed record) closes it.
fn parse_records(mut buf: &[u8], out: &mut Vec<RawEvent>) {
    while buf.len() >= META_LEN {
        // SAFETY: `buf` holds at least META_LEN initialised bytes; `read_unaligned` copies
        // them into a plain-old-data struct (every bit pattern is a valid value), without
        // requiring the alignment the byte buffer does not have.
        let meta: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
        let fd = take_fd(meta.fd);
        let len = (meta.event_len as usize).max(META_LEN);
        if meta.vers != libc::FANOTIFY_METADATA_VERSION {
            // A kernel speaking another layout: stop parsing; the fd (if any) closes here.
            // Unanswered permission events are then released by the liveness guard.
            out.push(RawEvent::Other { mask: meta.mask });
            return;
        }
        let ev = if meta.mask & libc::FAN_Q_OVERFLOW != 0 {
            RawEvent::Overflow
        } else if meta.mask & PERM_BITS != 0 {
            match fd {
                Some(fd) => RawEvent::Perm {
                    kind: if meta.mask & OPEN_EXEC_PERM != 0 {
                        PermKind::Exec
                    } else {
                        PermKind::Open
                    },
                    pid: meta.pid,
                    fd,
                },
                None => RawEvent::Other { mask: meta.mask },
            }
        } else if meta.mask & libc::FAN_CLOSE_WRITE != 0
            && let Some(fd) = fd
        {
            RawEvent::Written { pid: meta.pid, fd }
        } else {
            RawEvent::Other { mask: meta.mask }
        };
        out.push(ev);
        buf = &buf[len.min(buf.len())..];
    }
}

fn take_fd(raw: RawFd) -> Option<OwnedFd> {
    if raw < 0 {
        return None;
    }
    // SAFETY: the kernel installed `raw` in our table for this record alone and nothing else
    // refers to it; taking ownership here guarantees it is closed exactly once.
    Some(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Whether fanotify permission events are usable here (root, kernel support). Creates and
/// drops a group without marking anything, so it can never block anyone.
pub fn probe() -> Result<(), String> {
    match Group::new() {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            Err("fanotify permission events need CAP_SYS_ADMIN (run as root)".into())
        }
        Err(e) => Err(format!("fanotify_init failed: {e}")),
    }
}

/// `fstat` of a descriptor, for the event's file identity.
pub fn fstat(fd: BorrowedFd<'_>) -> Option<nix::sys::stat::FileStat> {
    nix::sys::stat::fstat(fd).ok()
}

/// The group fd number, for logs.
pub fn raw(group: &Group) -> RawFd {
    group.as_fd().as_raw_fd()
}
