//! The Linux fanotify backend: two `FAN_CLASS_CONTENT` permission groups, exec authorization on
//! whole filesystems (the exec group), open authorization on protected paths only (the open
//! group), the kernel exec allow cache as evictable inode ignore marks in the exec group, and a
//! liveness guard that releases the machine if the delivery thread ever stops answering.
//!
//! - `fanotify`: the safe wrapper (init, marks, reads, answers).
//! - `convert`: a record into a `model::Event` (procfs reads only).
//! - `marks`: what to mark from the policy; cache invalidation.
//! - `cache`: the keeper that flushes the exec allow cache when its mark budget is spent.
//! - `opener`: how the blocked opener opens the file (`/proc/<tid>/syscall`).
//! - `follow`: marks new subdirectories of protected directories as they appear.
//! - `responder`: the `Responder` (one write, then the optional ignore mark) and counters.
//! - `selfmute`: our own and the helper's (pidfd-verified) events, allowed at once.
//! - `delivery`: the delivery thread's loop.
//! - `liveness`: the guard.
//! - `supervise`: sd_notify readiness and watchdog heartbeats, SIGHUP reloads, parent death.
//! - `trusted_ids`: pins our own binaries and their interpreters at start-up.
//! - `run`: the extension's Linux entry point (core + backend + signals).

pub mod cache;
pub mod convert;
pub mod delivery;
pub mod fanotify;
pub mod follow;
pub mod liveness;
pub mod marks;
pub mod opener;
pub mod responder;
pub mod run;
pub mod selfmute;
pub mod supervise;
pub mod trusted_ids;

pub use run::{LinuxOptions, run};
