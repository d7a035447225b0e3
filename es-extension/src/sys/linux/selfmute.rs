//! Recognising events from ourselves and from the helper before any conversion work.
//!
//! The helper is identified by a pidfd, not by a bare pid: a pid matches only while its pidfd
//! says the process is still alive, so after the helper exits a stranger that reuses its pid is
//! not muted. When the helper restarts, the new one is registered with [`Muted::set_helper`].

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Who an event's pid belongs to, if it is one of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ours {
    SelfProcess,
    Helper,
}

#[derive(Debug)]
struct HelperPid {
    pid: i32,
    pidfd: OwnedFd,
}

/// The muted pids. Reads are lock-free (one atomic load and, on a helper match, one poll with a
/// zero timeout), so the delivery thread never waits.
#[derive(Debug)]
pub struct Muted {
    own: i32,
    helper: ArcSwapOption<HelperPid>,
}

impl Default for Muted {
    fn default() -> Self {
        Self::new()
    }
}

/// `pidfd_open(2)`; nix 0.30 has no wrapper.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor or -1; it
    // touches no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(r).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// True while the process behind `pidfd` has not exited (a pidfd polls readable on exit).
pub fn pidfd_alive(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

impl Muted {
    pub fn new() -> Muted {
        Muted {
            own: std::process::id() as i32,
            helper: ArcSwapOption::empty(),
        }
    }

    /// Register the (new) helper process. Fails if it is already gone.
    pub fn set_helper(&self, pid: i32) -> io::Result<()> {
        if let Some(h) = self.helper.load().as_ref()
            && h.pid == pid
            && pidfd_alive(&h.pidfd)
        {
            return Ok(());
        }
        let pidfd = pidfd_open(pid)?;
        self.helper.store(Some(Arc::new(HelperPid { pid, pidfd })));
        Ok(())
    }

    pub fn clear_helper(&self) {
        self.helper.store(None);
    }

    /// The helper's pid while it is alive.
    pub fn helper_pid(&self) -> Option<i32> {
        let h = self.helper.load();
        h.as_ref().filter(|h| pidfd_alive(&h.pidfd)).map(|h| h.pid)
    }

    /// Is thread `tid` ours or the helper's? Called on the delivery thread before any
    /// conversion. The group reports thread ids (`FAN_REPORT_TID`), so a main thread matches
    /// by id at once, and any other thread by `tgkill(owner, tid, 0)` (no signal sent, no I/O,
    /// no fanotify event). This must be exact: a thread of ours
    /// (the events-log writer, say) that opened a protected file and were sent to the slow path
    /// would wait on itself.
    ///
    /// `any_thread: false` skips the per-thread lookup: exec events, since neither this process
    /// nor the helper ever executes anything (a child would be another process anyway).
    pub fn check(&self, tid: i32, any_thread: bool) -> Option<Ours> {
        if tid == self.own {
            return Some(Ours::SelfProcess);
        }
        let h = self.helper.load();
        let helper = h.as_ref().filter(|h| pidfd_alive(&h.pidfd));
        if helper.is_some_and(|h| h.pid == tid) {
            return Some(Ours::Helper);
        }
        if !any_thread {
            return None;
        }
        if thread_of(self.own, tid) {
            return Some(Ours::SelfProcess);
        }
        match helper {
            // Re-checked after the lookup: the helper may have died in between, and a reused
            // pid's tasks are not the helper's.
            Some(h) if thread_of(h.pid, tid) && pidfd_alive(&h.pidfd) => Some(Ours::Helper),
            _ => None,
        }
    }
}

/// Whether `tid` is a thread of process `pid`: `tgkill(pid, tid, 0)`, which sends nothing and
/// fails with `ESRCH` unless a thread `tid` exists whose thread group is `pid` (`EPERM` means
/// it exists but we may not signal it). One system call without a path walk: a `stat` of
/// `/proc/<pid>/task/<tid>` did the same and cost about 6 µs on every open event (measured,
/// BENCHMARKS.md).
fn thread_of(pid: i32, tid: i32) -> bool {
    // SAFETY: tgkill takes three integers by value and, with signal 0, only checks that the
    // thread exists in that thread group and that we may signal it; it touches no memory.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_is_muted_only_while_alive() {
        let m = Muted::new();
        assert_eq!(
            m.check(std::process::id() as i32, true),
            Some(Ours::SelfProcess)
        );
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert_eq!(m.check(pid, true), None, "not registered yet");
        m.set_helper(pid).unwrap();
        assert_eq!(m.check(pid, true), Some(Ours::Helper));
        assert_eq!(m.helper_pid(), Some(pid));
        child.kill().unwrap();
        child.wait().unwrap();
        // Reaped: the pid may be reused by anyone now; it must no longer match.
        assert_eq!(m.check(pid, true), None);
        assert_eq!(m.helper_pid(), None);
    }

    #[test]
    fn threads_are_recognised_by_their_owner() {
        let m = Muted::new();
        // A thread of ours that is not the main thread: what the events-log writer is.
        let tid = std::thread::spawn(|| nix::unistd::gettid().as_raw())
            .join()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let _ = stop_rx.recv();
        });
        let live = rx.recv().unwrap();
        assert_ne!(live, std::process::id() as i32);
        assert_eq!(
            m.check(live, true),
            Some(Ours::SelfProcess),
            "a live thread of ours"
        );
        assert_eq!(
            m.check(live, false),
            None,
            "exec events skip the thread lookup"
        );
        stop_tx.send(()).unwrap();
        t.join().unwrap();
        assert_eq!(m.check(tid, true), None, "an exited thread is nobody's");
        // A stranger's main thread.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert_eq!(m.check(child.id() as i32, true), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
