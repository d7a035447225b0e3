//! Bounded reads of files an operator names (policies, Santa imports, event and facts JSON):
//! the one reader both the `gatehouse` CLI and the extension's control thread use, so a path to
//! `/dev/zero`, a FIFO nobody writes, a directory or a huge file gives a prompt, clear error
//! instead of exhausting memory or hanging (invariant `bounded`).
//!
//! The rules: open with `O_NONBLOCK | O_NOCTTY` (opening a FIFO with no writer, or a terminal,
//! cannot block or take a controlling terminal), `fstat` the opened descriptor (never the path
//! again: what we read is what we checked), refuse anything but a regular file, clear
//! `O_NONBLOCK`, and read at most `limit` bytes, refusing the file if there is more.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// Largest policy file (and Santa import) read: far above any real policy (thousands of rules
/// are a few hundred KiB), and twice the control frame, so a policy too big to travel inline
/// can still be loaded by path.
pub const POLICY_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Largest event or facts JSON read by `policy eval`: one event is a few KiB.
pub const JSON_INPUT_MAX_BYTES: u64 = 1024 * 1024;

/// Why a bounded read failed. Each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "{} is {kind}, not a regular file; only regular files are read (a device, FIFO or socket \
         may never end or never answer): save the content to a file and give its path",
        path.display()
    )]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "{} is larger than {limit} bytes, the most read for this input; is it the right file?",
        path.display()
    )]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is not UTF-8 text: {source}", path.display())]
    NotUtf8 {
        path: PathBuf,
        source: std::string::FromUtf8Error,
    },
}

/// What a non-regular file is, for the refusal message.
fn kind(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Open `path` for reading under the rules in the module docs; the returned file is a regular
/// file in blocking mode.
pub fn open_regular(path: &Path) -> Result<File, InputError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(path)
        .map_err(|source| match std::fs::metadata(path) {
            // A socket cannot be opened at all (ENXIO); say what it is rather than the errno.
            // The path is looked at again only to word this message.
            Ok(m) if !m.file_type().is_file() => InputError::NotRegular {
                path: path.to_owned(),
                kind: kind(m.file_type()),
            },
            _ => InputError::Open {
                path: path.to_owned(),
                source,
            },
        })?;
    let read_err = |source| InputError::Read {
        path: path.to_owned(),
        source,
    };
    let t = file.metadata().map_err(read_err)?.file_type();
    if !t.is_file() {
        return Err(InputError::NotRegular {
            path: path.to_owned(),
            kind: kind(t),
        });
    }
    let flags = fcntl(&file, FcntlArg::F_GETFL).map_err(|e| read_err(e.into()))?;
    let flags = OFlag::from_bits_retain(flags) & !OFlag::O_NONBLOCK;
    fcntl(&file, FcntlArg::F_SETFL(flags)).map_err(|e| read_err(e.into()))?;
    Ok(file)
}

/// At most `limit` bytes from `r`; more is [`InputError::TooLarge`]. `path` names the source in
/// errors. Reads one byte past the limit to tell "exactly at the limit" from "over it", so a
/// file that grows while being read is caught too.
pub fn read_limited(mut r: impl Read, path: &Path, limit: u64) -> Result<Vec<u8>, InputError> {
    let mut buf = Vec::new();
    (&mut r)
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|source| InputError::Read {
            path: path.to_owned(),
            source,
        })?;
    if buf.len() as u64 > limit {
        return Err(InputError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(buf)
}

/// The bytes of the regular file `path`, at most `limit` of them.
pub fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, InputError> {
    let file = open_regular(path)?;
    // The size up front refuses a huge (or sparse) file without reading any of it.
    if file.metadata().is_ok_and(|m| m.len() > limit) {
        return Err(InputError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    read_limited(file, path, limit)
}

/// [`read_file`] as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> Result<String, InputError> {
    String::from_utf8(read_file(path, limit)?).map_err(|source| InputError::NotUtf8 {
        path: path.to_owned(),
        source,
    })
}

/// Write `bytes` to `path` atomically: a new temporary file beside it (mode `mode`), synced,
/// renamed over `path`, then the directory synced, so a crash leaves the old file or the new
/// one, whole, and a reader never sees half a file. The directory is created when missing.
/// Used for the files Gatehouse itself keeps (local rules, runtime mutes).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> io::Result<()> {
        // create_new: a leftover temporary (a crash mid-write) or a planted symlink is refused,
        // never followed or reused.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::time::{Duration, Instant};

    #[test]
    fn refusals_and_limits_table() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("ok"), b"0123456789").unwrap();
        std::fs::File::create(p("sparse"))
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        nix::unistd::mkfifo(&p("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let _sock = UnixListener::bind(p("sock")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", p("zero-link")).unwrap();
        // (path, limit, Ok(len) or the error's expected text)
        let cases: Vec<(PathBuf, u64, Result<usize, &str>)> = vec![
            (p("ok"), 10, Ok(10)),
            (p("ok"), 9, Err("larger than 9 bytes")),
            (p("sparse"), 1024, Err("larger than 1024 bytes")),
            (
                p("fifo"),
                1024,
                Err("is a FIFO (named pipe), not a regular file"),
            ),
            (p("sock"), 1024, Err("is a socket, not a regular file")),
            (dir.path().to_owned(), 1024, Err("is a directory")),
            ("/dev/zero".into(), 1024, Err("is a character device")),
            (p("zero-link"), 1024, Err("is a character device")),
            (p("missing"), 1024, Err("cannot open")),
        ];
        for (path, limit, want) in cases {
            let start = Instant::now();
            let got = read_file(&path, limit);
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{path:?} took {:?}",
                start.elapsed()
            );
            match (got, want) {
                (Ok(b), Ok(n)) => assert_eq!(b.len(), n, "{path:?}"),
                (Err(e), Err(w)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(w), "{path:?}: {msg:?} lacks {w:?}");
                    assert!(msg.contains(&path.display().to_string()), "{msg}");
                }
                (got, want) => panic!("{path:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn opened_file_is_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let f = open_regular(&path).unwrap();
        let flags = OFlag::from_bits_retain(fcntl(&f, FcntlArg::F_GETFL).unwrap());
        assert!(!flags.contains(OFlag::O_NONBLOCK));
    }

    #[test]
    fn read_limited_counts_stream_bytes() {
        let p = Path::new("<stdin>");
        assert_eq!(read_limited(&b"abc"[..], p, 3).unwrap(), b"abc");
        let e = read_limited(io::repeat(0), p, 100).unwrap_err();
        assert!(e.to_string().contains("larger than 100 bytes"), "{e}");
    }
}
