//! How the blocked opener is opening the file: its system call and flags, read from
//! `/proc/<tid>/syscall` (DESIGN.md 6: a fanotify permission event carries no open flags).
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
#![forbid(unsafe_code)]

use model::AccessFlags;

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

/// Read and parse `/proc/<tid>/syscall`. A procfs read: it raises no fanotify event (procfs is
/// never marked) and the target thread is already parked in our permission wait, so the
/// kernel's wait for it to be inactive returns at once. Needs ptrace-read access to the thread
/// (root has it unless Yama forbids all attaching; then this is `None`, the strict answer).
pub fn read(tid: i32) -> Option<AccessFlags> {
    let mut buf = [0u8; 256];
    let n = std::io::Read::read(
        &mut std::fs::File::open(format!("/proc/{tid}/syscall")).ok()?,
        &mut buf,
    )
    .ok()?;
    parse(std::str::from_utf8(&buf[..n]).ok()?)
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
        let got = read(child.id() as i32);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(got, None);
        assert_eq!(read(i32::MAX), None, "a thread that does not exist");
    }
}
