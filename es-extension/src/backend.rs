//! The contract between the platform-neutral core and a kernel backend (`sys/linux`,
//! `sys/macos`, `sys/test`), in mio's style: the core never knows which OS it runs on.
//!
//! # Contract
//! A backend:
//! 1. owns the kernel's delivery thread (the ES handler block, or the fanotify read loop) and,
//!    for every AUTH event, converts the kernel's message into an owned [`model::Event`] at
//!    once, then calls the core's delivery entry point with a [`Delivery`] on that same thread;
//! 2. takes identity only from the message (ES `es_process_t` fields, the fanotify event fd),
//!    never by re-opening a path;
//! 3. gives each delivery a [`Responder`] that can answer that one event from any thread, without
//!    blocking (an `es_respond_*` call, or one `write` of a `fanotify_response`);
//! 4. computes the event's deadline: the kernel's (ES `msg.deadline`) or its own (Linux: arrival
//!    plus the policy's per-kind deadline, since the kernel never times a permission event out);
//! 5. implements [`KernelControl`] for mutes and cache invalidation; these are called off the
//!    delivery thread and may make system calls.
//!
//! The core guarantees that every [`Responder`] is answered exactly once (first answer wins; a
//! dropped, unanswered responder is answered with the fallback by the core's guard).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use model::{Event, MuteSpec, Verdict};

/// The answer sent to the kernel for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub verdict: Verdict,
    /// Ask the kernel to cache this answer (ES `cache = true`; fanotify: an evictable inode
    /// ignore mark on the file). Only ever set on allows that depend on the file alone.
    pub cache: bool,
}

/// A failure reported by the kernel interface.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("kernel rejected the answer for event {what}: {source}")]
    Respond {
        what: String,
        source: std::io::Error,
    },
    #[error("kernel control call {call} failed: {detail}")]
    Control { call: &'static str, detail: String },
    #[error("{0} is not supported by this backend")]
    Unsupported(&'static str),
}

/// Answers one event. Implemented by each backend; called at most once by the core.
pub trait Responder: Send + 'static {
    /// Deliver `answer` to the kernel. Must not block beyond one short system call.
    fn respond(self, answer: Answer) -> Result<(), BackendError>;

    /// A short description for logs (kind and pid), without I/O.
    fn describe(&self) -> String;
}

/// One event as a backend hands it to the core.
#[derive(Debug)]
pub struct Delivery<R: Responder> {
    pub event: Event,
    /// When the kernel (or, on Linux, our policy) stops waiting.
    pub deadline: Instant,
    /// When the backend received the event, for latency metrics.
    pub received: Instant,
    /// A descriptor of the subject file that the helper may read through (Linux: the event fd
    /// itself, shared with the responder); `None` where the platform has none (macOS) or the
    /// event has no file.
    pub file: Option<SubjectFd>,
    pub responder: R,
}

/// One descriptor of an event's subject file, shared by whoever still needs it: the backend's
/// responder (Linux: the fanotify response names the event fd, and the ignore mark goes
/// through it) and the core's slow-path work item (the fd rides to the helper with
/// SCM_RIGHTS, which only borrows it for the `sendmsg`). Cloning shares the one descriptor
/// (no `dup`); it closes when the last clone drops.
///
/// Closing order on Linux: the responder keeps its clone until after its response `write`, so
/// the kernel's fd-numbered match always sees the fd open; a work item that outlives the answer
/// only delays the close, which is harmless once the event is answered. Each pending event
/// holds exactly one descriptor, whoever holds it.
#[derive(Debug, Clone)]
pub struct SubjectFd(Arc<OwnedFd>);

impl SubjectFd {
    pub fn new(fd: OwnedFd) -> Self {
        Self(Arc::new(fd))
    }
}

impl From<OwnedFd> for SubjectFd {
    fn from(fd: OwnedFd) -> Self {
        Self::new(fd)
    }
}

impl AsFd for SubjectFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Kernel-side controls. Called off the delivery thread; may block on a system call.
pub trait KernelControl: Send + Sync + 'static {
    /// Stop delivering events for this process executable or target path, where the kernel
    /// supports it. The core mirrors every mute in-process, so `Unsupported` is not an error.
    fn mute_path(&self, spec: &MuteSpec) -> Result<(), BackendError>;
    fn unmute_path(&self, spec: &MuteSpec) -> Result<(), BackendError>;
    /// Drop every kernel-cached answer (ES `es_clear_cache`; fanotify: remove ignore marks).
    /// Called on policy change; a throttled call is retried later by the caller.
    fn clear_cache(&self) -> Result<(), BackendError>;

    /// The backend's own counters (kernel queue overflows, ignore marks set, unconvertible
    /// messages, ...), named `backend.<name>`, merged into `gatehouse stats`. Must be cheap:
    /// atomic loads only.
    fn counters(&self) -> Vec<(String, u64)> {
        Vec::new()
    }

    /// What the backend authorizes, for `gatehouse status`: fanotify's marked filesystems.
    /// Empty means the whole machine (Endpoint Security).
    fn scopes(&self) -> Vec<String> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    /// A peer read tells whether any share of the other end is still open: `WouldBlock` while
    /// one is, end-of-file once the last has dropped.
    fn other_end_open(peer: &mut UnixStream) -> bool {
        match peer.read(&mut [0u8; 1]) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => true,
            Ok(0) => false,
            other => panic!("unexpected peer read {other:?}"),
        }
    }

    #[test]
    fn subject_fd_shares_one_descriptor_until_the_last_drop() {
        // (which share drops first: the responder's or the work item's)
        for responder_first in [true, false] {
            let (a, mut peer) = UnixStream::pair().unwrap();
            peer.set_nonblocking(true).unwrap();
            let item = SubjectFd::new(a.into());
            let responder = item.clone();
            assert_eq!(
                item.as_fd().as_raw_fd(),
                responder.as_fd().as_raw_fd(),
                "a clone is the same descriptor, not a dup"
            );
            let (first, last) = if responder_first {
                (responder, item)
            } else {
                (item, responder)
            };
            drop(first);
            assert!(
                other_end_open(&mut peer),
                "responder_first={responder_first}"
            );
            drop(last);
            assert!(
                !other_end_open(&mut peer),
                "responder_first={responder_first}"
            );
        }
    }
}
