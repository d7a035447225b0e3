//! Following new subdirectories of protected directories: a directory created (or moved in)
//! under a protected directory gets its own `FAN_OPEN_PERM | FAN_EVENT_ON_CHILD` mark a few
//! microseconds after it appears, instead of at the next policy load.
//!
//! # Why inotify and not a second fanotify group
//! The notification source is the same (fsnotify); what differs is how an event names the new
//! directory. A `FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME` group reports the parent as a file
//! handle, which must be resolved with `open_by_handle_at` (a mount fd, `CAP_DAC_READ_SEARCH`)
//! or a handle-to-path table built with `name_to_handle_at` for every marked directory. An
//! inotify watch reports `(watch descriptor, name)`, and the descriptor maps to the directory
//! path we marked: one `read`, one table lookup, one `fanotify_mark`. Nothing here can wait on
//! a permission event (`fanotify_mark` resolves a path without opening it; `read_dir` of a new
//! directory is our own pid, which the delivery thread allows at once).
//!
//! # Threads and bounds
//! One thread (`gh-follow`), never the delivery thread. Followed marks are bounded by
//! [`MAX_FOLLOWED`] (counted when exceeded); inotify watches are one per marked directory,
//! within the same bound plus the policy's own directory marks.
//!
//! # The race (documented, not closed)
//! Between `mkdir` and the mark landing, a file created inside the brand-new directory and
//! opened at once is not authorized: that one open is not seen. Every open after the mark is.
//! A tree created faster than we follow (`mkdir -p a/b/c`) is scanned when its top directory
//! is marked, so its deeper directories are marked too. `IN_Q_OVERFLOW` (lost inotify events)
//! triggers a rescan of every watched directory.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::fanotify::Groups;

/// Most directory marks added by following, over the agent's lifetime between policy loads.
pub const MAX_FOLLOWED: u64 = 4096;

const WATCH_MASK: u32 =
    libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_ONLYDIR | libc::IN_DONT_FOLLOW;

/// Counters of the follower, lock-free.
#[derive(Debug, Default)]
pub struct FollowCounters {
    /// Directory marks added for directories that appeared after the marks were applied.
    pub subdir_marks_added: AtomicU64,
    /// New directories left unmarked because [`MAX_FOLLOWED`] was reached.
    pub subdir_marks_over_budget: AtomicU64,
    /// `fanotify_mark` or `inotify_add_watch` failures (the directory vanished, or limits).
    pub subdir_mark_errors: AtomicU64,
    /// inotify queue overflows (each triggers a rescan).
    pub notify_overflows: AtomicU64,
    /// Followed marks in place since the last policy load, against [`MAX_FOLLOWED`].
    live: AtomicU64,
}

struct State {
    /// Watch descriptor -> the protected directory it names.
    watches: HashMap<i32, PathBuf>,
    /// Directories this follower marked since the last reset (at most [`MAX_FOLLOWED`]): the
    /// marks a policy change must remove when the new policy no longer covers them.
    followed: Vec<PathBuf>,
}

/// The follower: owns the inotify instance and its thread.
pub struct Follower {
    inotify: OwnedFd,
    /// Followed marks go to the open group, with the policy's own open marks.
    groups: Arc<Groups>,
    state: Mutex<State>,
    pub counters: FollowCounters,
    stop: AtomicBool,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").finish_non_exhaustive()
    }
}

fn inotify_init() -> io::Result<OwnedFd> {
    // SAFETY: inotify_init1 takes flags by value and returns a new descriptor or -1.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Follower {
    /// A follower with no watches yet; call [`Follower::reset`] with the marked directories.
    pub fn new(groups: Arc<Groups>) -> io::Result<Arc<Follower>> {
        Ok(Arc::new(Follower {
            inotify: inotify_init()?,
            groups,
            state: Mutex::new(State {
                watches: HashMap::new(),
                followed: Vec::new(),
            }),
            counters: FollowCounters::default(),
            stop: AtomicBool::new(false),
        }))
    }

    /// Start the `gh-follow` thread. It stops when [`Follower::stop`] is called.
    pub fn spawn(self: &Arc<Self>) -> io::Result<std::thread::JoinHandle<()>> {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("gh-follow".into())
            .spawn(move || me.run())
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// The directories marked by following since the last reset, as open marks.
    pub fn followed(&self) -> Vec<(PathBuf, bool)> {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.followed.iter().map(|d| (d.clone(), true)).collect()
    }

    /// Watch exactly `dirs` (the directories the policy marks), dropping earlier watches.
    /// Called after each (re-)application of the marks, off the delivery thread. The caller
    /// took [`Follower::followed`] first: the new application marked (again) every followed
    /// directory still under a protected one, and removed the rest.
    pub fn reset(&self, dirs: &[PathBuf]) {
        self.counters.live.store(0, Ordering::Relaxed);
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.followed.clear();
        for wd in st.watches.keys() {
            // SAFETY: plain syscall on our inotify fd with a watch descriptor by value.
            let _ = unsafe { libc::inotify_rm_watch(self.inotify.as_raw_fd(), *wd) };
        }
        st.watches.clear();
        for d in dirs {
            if let Err(_e) = self.watch(&mut st, d) {
                self.counters
                    .subdir_mark_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Number of directories watched now.
    pub fn watched(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .watches
            .len()
    }

    fn watch(&self, st: &mut State, dir: &Path) -> io::Result<()> {
        let c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("path with NUL"))?;
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
        let wd =
            unsafe { libc::inotify_add_watch(self.inotify.as_raw_fd(), c.as_ptr(), WATCH_MASK) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        st.watches.insert(wd, dir.to_owned());
        Ok(())
    }

    fn run(&self) {
        let mut buf = vec![0u8; 16 * 1024];
        while !self.stop.load(Ordering::Acquire) {
            let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
            // A short timeout so `stop` is seen without a wake-up descriptor.
            match poll(&mut fds, PollTimeout::from(200u16)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
            let n = match nix::unistd::read(self.inotify.as_fd(), &mut buf) {
                Ok(n) => n,
                Err(_) => continue,
            };
            let mut new_dirs = Vec::new();
            let mut overflow = false;
            {
                let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                for (wd, mask, name) in parse(&buf[..n]) {
                    if mask & libc::IN_Q_OVERFLOW != 0 {
                        overflow = true;
                        continue;
                    }
                    if mask & libc::IN_ISDIR == 0 || name.is_empty() {
                        continue;
                    }
                    if let Some(parent) = st.watches.get(&wd) {
                        new_dirs.push(parent.join(OsStr::from_bytes(name)));
                    }
                }
            }
            if overflow {
                self.counters
                    .notify_overflows
                    .fetch_add(1, Ordering::Relaxed);
                let all: Vec<PathBuf> = {
                    let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                    st.watches.values().cloned().collect()
                };
                for d in all {
                    self.follow_children(&d);
                }
            }
            for d in new_dirs {
                self.follow_tree(&d);
            }
        }
    }

    /// Mark and watch every not-yet-watched subdirectory of `dir` (overflow rescan).
    fn follow_children(&self, dir: &Path) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    self.follow_tree(&e.path());
                }
            }
        }
    }

    /// Mark `dir` first (so opens in it are seen from now on), then watch it, then descend into
    /// whatever was created inside it before the watch existed. Symlinks are not followed.
    fn follow_tree(&self, dir: &Path) {
        let mut queue = std::collections::VecDeque::from([dir.to_owned()]);
        while let Some(d) = queue.pop_front() {
            // Seen twice when the scan of its parent and its own creation event both name it.
            let known = self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .watches
                .values()
                .any(|w| *w == d);
            if known {
                continue;
            }
            let used = self.counters.live.load(Ordering::Relaxed);
            if used >= MAX_FOLLOWED {
                self.counters
                    .subdir_marks_over_budget
                    .fetch_add(1 + queue.len() as u64, Ordering::Relaxed);
                return;
            }
            if self.groups.open.mark_open(&d, true).is_err() {
                self.counters
                    .subdir_mark_errors
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.counters
                .subdir_marks_added
                .fetch_add(1, Ordering::Relaxed);
            self.counters.live.fetch_add(1, Ordering::Relaxed);
            {
                let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                st.followed.push(d.clone());
                if self.watch(&mut st, &d).is_err() {
                    self.counters
                        .subdir_mark_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        queue.push_back(e.path());
                    }
                }
            }
        }
    }
}

/// `(wd, mask, name)` of each `struct inotify_event` in one read.
fn parse(mut buf: &[u8]) -> Vec<(i32, u32, &[u8])> {
    const HDR: usize = std::mem::size_of::<libc::inotify_event>();
    let mut out = Vec::new();
    while buf.len() >= HDR {
        // SAFETY: `buf` holds at least HDR initialised bytes; `read_unaligned` copies them into
        // a plain-old-data struct (every bit pattern is valid) without an alignment demand.
        let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
        let len = ev.len as usize;
        let end = (HDR + len).min(buf.len());
        let raw = &buf[HDR..end];
        // The name is NUL-padded to an alignment boundary.
        let name = raw.split(|b| *b == 0).next().unwrap_or(&[]);
        out.push((ev.wd, ev.mask, name));
        buf = &buf[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        fn rec(wd: i32, mask: u32, name: &str, pad: usize) -> Vec<u8> {
            let mut v = Vec::new();
            v.extend_from_slice(&wd.to_ne_bytes());
            v.extend_from_slice(&mask.to_ne_bytes());
            v.extend_from_slice(&0u32.to_ne_bytes());
            v.extend_from_slice(&((name.len() + pad) as u32).to_ne_bytes());
            v.extend_from_slice(name.as_bytes());
            v.extend(std::iter::repeat_n(0u8, pad));
            v
        }
        let mut buf = rec(3, libc::IN_CREATE | libc::IN_ISDIR, "sub", 5);
        buf.extend(rec(-1, libc::IN_Q_OVERFLOW, "", 0));
        buf.extend(rec(4, libc::IN_MOVED_TO, "file.txt", 8));
        let got = parse(&buf);
        let want: Vec<(i32, u32, &[u8])> = vec![
            (3, libc::IN_CREATE | libc::IN_ISDIR, b"sub"),
            (-1, libc::IN_Q_OVERFLOW, b""),
            (4, libc::IN_MOVED_TO, b"file.txt"),
        ];
        assert_eq!(got, want);
        // A truncated trailing header is ignored, not misread.
        assert_eq!(parse(&buf[..10]).len(), 0);
    }
}
