//! How the blocked opener is opening the file: its system call and flags, read from
//! `/proc/<tid>/syscall` (docs/DESIGN.md 6: a fanotify permission event carries no open flags).
//!
//! Without this, every open of a watched path would count as possibly modifying, so
//! `allow_read_access` could not be honoured and an exec of a protected binary (the kernel
//! raises `FAN_OPEN_PERM` for exec opens too) would be treated as a write.
//!
//! The thread is blocked in the kernel waiting for our answer, so the file names the system
//! call it is inside. Only the open family is understood; anything else (including `openat2`,
//! whose flags live in the caller's memory, io_uring workers, and 32-bit compat tasks whose
//! numbers differ) is `None`, which the policy treats as possibly modifying: an unknown can only
//! err towards the stricter answer. Every compat (ia32) number that collides with a 64-bit
//! open-family number belongs to a call that cannot open a file, so it never reaches here.
//!
//! # "running"
//! `/proc/<tid>/syscall` reads "running" for a task whose state is `TASK_RUNNING` (the kernel
//! refuses to sample registers that may be changing). A thread that has queued a permission
//! event is committed to waiting for our answer, yet reads "running" (a) for the few
//! instructions between queueing the event and setting its sleeping state, and (b) whenever it
//! is woken: every answer written to a group wakes ALL of that group's waiting openers (one
//! wait queue per group), each re-checks its own event and sleeps again. With many threads
//! opening protected files, the answer to one event leaves the others "running", and on a busy
//! machine they can stay runnable (not yet back asleep) for tens of milliseconds (73 ms
//! measured, 2 busy cores, 16 threads). So the delivery loop reads the flags of a whole batch
//! before it answers any event of it, yields a few times for case (a), and parks an event
//! whose opener is still "running" (bounded, see `delivery.rs`) to read again on its next
//! turns, never waiting; past the park limit the flags are unknown (the strict answer).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use model::AccessFlags;

/// Yields on the spot for an opener that reads "running", before the event is parked.
pub const QUICK_RETRIES: u32 = 2;

/// How the flags were read, lock-free.
#[derive(Debug, Default)]
pub struct OpenerCounters {
    /// Reads of `/proc/<tid>/syscall` (first tries and retries).
    pub read: AtomicU64,
    /// Reads that found the opener "running".
    pub running: AtomicU64,
    /// Events parked because their opener was still "running" after the quick retries.
    pub parked: AtomicU64,
    /// Openers still "running" at the park limit (or with the park full): flags unknown.
    pub still_running: AtomicU64,
    /// Longest time from an event's arrival to its flags, for parked events, in microseconds.
    pub park_us_max: AtomicU64,
    /// Opens whose flags were not read because the policy has no use for them.
    pub skipped: AtomicU64,
}

/// What one look at the opener found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flags {
    /// The call was read: its flags, or `None` when it is not an open this build understands
    /// (or the file could not be read).
    Known(Option<AccessFlags>),
    /// The opener is "running": look again later.
    Running,
}

const O_ACCMODE: u64 = 0o3;
const O_WRONLY: u64 = 0o1;
const O_RDWR: u64 = 0o2;
const O_TRUNC: u64 = 0o1000;
const O_APPEND: u64 = 0o2000;

/// Where the flags of an open-family call are, per system call number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// Flags in argument `n` (0-based).
    FlagsIn(usize),
    /// `creat`: write, create, truncate.
    Creat,
    /// `execve`/`execveat`/`uselib`: the kernel opens the image read-only.
    Exec,
}

#[cfg(target_arch = "x86_64")]
fn call(nr: i64) -> Option<Call> {
    Some(match nr {
        2 => Call::FlagsIn(1),        // open(path, flags, mode)
        257 => Call::FlagsIn(2),      // openat(dfd, path, flags, mode)
        304 => Call::FlagsIn(2),      // open_by_handle_at(mount_fd, handle, flags)
        85 => Call::Creat,            // creat(path, mode)
        59 | 322 | 134 => Call::Exec, // execve, execveat, uselib
        _ => return None,
    })
}

#[cfg(target_arch = "aarch64")]
fn call(nr: i64) -> Option<Call> {
    Some(match nr {
        56 => Call::FlagsIn(2),  // openat
        265 => Call::FlagsIn(2), // open_by_handle_at
        221 | 281 => Call::Exec, // execve, execveat
        _ => return None,
    })
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn call(_nr: i64) -> Option<Call> {
    None
}

/// Access flags from the text of `/proc/<tid>/syscall` ("nr arg0 .. arg5 sp pc", arguments in
/// hex; "running" or "-1 sp pc" when not inside a call). `None` when it is not an open-family
/// call this build understands.
pub fn parse(text: &str) -> Option<AccessFlags> {
    let mut fields = text.split_ascii_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    let args: Vec<u64> = fields
        .take(6)
        .map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16))
        .collect::<Result<_, _>>()
        .ok()?;
    match call(nr)? {
        Call::Exec => Some(AccessFlags::READ),
        Call::Creat => Some(AccessFlags {
            read: false,
            write: true,
            append: false,
            truncate: true,
        }),
        Call::FlagsIn(i) => {
            let flags = *args.get(i)?;
            let mode = flags & O_ACCMODE;
            Some(AccessFlags {
                read: mode != O_WRONLY,
                write: mode == O_WRONLY || mode == O_RDWR,
                append: flags & O_APPEND != 0,
                truncate: flags & O_TRUNC != 0,
            })
        }
    }
}

/// One read of `/proc/<tid>/syscall` into `buf`; the text read.
fn read_text(tid: i32, buf: &mut [u8; 256]) -> Option<&str> {
    let n = std::io::Read::read(
        &mut std::fs::File::open(format!("/proc/{tid}/syscall")).ok()?,
        buf,
    )
    .ok()?;
    std::str::from_utf8(&buf[..n]).ok()
}

/// One read of `/proc/<tid>/syscall`, then up to `yields` more after a `sched_yield` each
/// while the opener is "running". A procfs read: it raises no fanotify event (procfs is never
/// marked), and once the opener sleeps the kernel's wait for it to be inactive returns at
/// once. Needs ptrace-read access to the thread (root has it unless Yama forbids all
/// attaching; then this is `Known(None)`, the strict answer).
pub fn read(tid: i32, yields: u32, counters: &OpenerCounters) -> Flags {
    let mut buf = [0u8; 256];
    for i in 0..=yields {
        if i > 0 {
            std::thread::yield_now();
        }
        counters.read.fetch_add(1, Ordering::Relaxed);
        let Some(text) = read_text(tid, &mut buf) else {
            return Flags::Known(None);
        };
        if !text.starts_with("running") {
            return Flags::Known(parse(text));
        }
        counters.running.fetch_add(1, Ordering::Relaxed);
    }
    Flags::Running
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    const R: Option<AccessFlags> = Some(AccessFlags::READ);

    fn acc(read: bool, write: bool, append: bool, truncate: bool) -> Option<AccessFlags> {
        Some(AccessFlags {
            read,
            write,
            append,
            truncate,
        })
    }

    #[test]
    fn parse_table() {
        let cases: &[(&str, Option<AccessFlags>)] = &[
            // openat(AT_FDCWD, path, O_RDONLY|O_CLOEXEC)
            (
                "257 0xffffff9c 0x7ffd1 0x80000 0x0 0x0 0x0 0x7ffd0 0x7f12",
                R,
            ),
            // openat(..., O_WRONLY|O_CREAT|O_TRUNC)
            (
                "257 0xffffff9c 0x7ffd1 0x241 0x1b6 0x0 0x0 0x7ffd0 0x7f12",
                acc(false, true, false, true),
            ),
            // openat(..., O_RDWR|O_APPEND)
            (
                "257 0xffffff9c 0x7ffd1 0x402 0x0 0x0 0x0 0x7ffd0 0x7f12",
                acc(true, true, true, false),
            ),
            // open(path, O_WRONLY|O_APPEND)
            (
                "2 0x7ffd1 0x401 0x0 0x0 0x0 0x0 0x7ffd0 0x7f12",
                acc(false, true, true, false),
            ),
            // creat
            (
                "85 0x7ffd1 0x1a4 0x0 0x0 0x0 0x0 0x7ffd0 0x7f12",
                acc(false, true, false, true),
            ),
            // open_by_handle_at(fd, handle, O_RDONLY)
            ("304 0x3 0x7ffd1 0x0 0x0 0x0 0x0 0x7ffd0 0x7f12", R),
            // execve and execveat open the image read-only
            ("59 0x7ffd1 0x7ffd2 0x7ffd3 0x0 0x0 0x0 0x7ffd0 0x7f12", R),
            ("322 0x3 0x7ffd1 0x0 0x0 0x1000 0x0 0x7ffd0 0x7f12", R),
            // openat2: flags are in memory: unknown
            (
                "437 0xffffff9c 0x7ffd1 0x7ffd2 0x18 0x0 0x0 0x7ffd0 0x7f12",
                None,
            ),
            // not in a call, running, garbage, truncated
            ("-1 0x7ffd0 0x7f12", None),
            ("running", None),
            ("", None),
            ("257 0xffffff9c 0x7ffd1", None),
            ("257 zz 0x7ffd1 0x0 0x0 0x0 0x0", None),
            // some other call
            ("0 0x3 0x7ffd1 0x100 0x0 0x0 0x0 0x7ffd0 0x7f12", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), *want, "{text:?}");
        }
    }

    #[test]
    fn reads_a_real_blocked_thread() {
        // A child blocked in read(2) on a pipe: the file names a call we do not treat as an
        // open, so the answer is None; and the file is readable for our own children.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let c = OpenerCounters::default();
        let got = read(child.id() as i32, QUICK_RETRIES, &c);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(got, Flags::Known(None));
        assert_eq!(
            read(i32::MAX, 0, &c),
            Flags::Known(None),
            "a thread that does not exist"
        );
    }
}
