//! Streaming digests through a passed descriptor with positioned reads (`pread`), so the
//! opener's shared file offset is never moved, under a size cap and the request's deadline; and
//! for platforms without a descriptor (macOS), hashing by path after checking the opened file
//! against the kernel's identity.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

use model::{FileIdentity, Sha256};

use sha2::Digest;

use crate::analyzer::{AnalysisError, FileHasher, Input};

/// Bytes read per `pread`; the deadline is checked between chunks.
const CHUNK: usize = 256 * 1024;

/// Default limit on the size of a file the helper will read (`--max-file-size`).
pub const DEFAULT_MAX_FILE_SIZE: u64 = 1 << 30;

/// Digest the whole file behind `fd` from offset 0. Stops with `TooLarge` as soon as more than
/// `max` bytes were seen (the file may grow while it is read), and with `DeadlineExceeded` when
/// the input's deadline passes between chunks.
pub fn digest_fd<D: Digest>(
    input: &Input<'_>,
    fd: BorrowedFd<'_>,
    max: u64,
) -> Result<D, AnalysisError> {
    input.check_deadline()?;
    let what = || format!("reading {} through its descriptor", input.file.path);
    let st = nix::sys::stat::fstat(fd).map_err(|e| AnalysisError::io(what(), e.into()))?;
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let too_large = |size| AnalysisError::TooLarge {
        path: input.file.path.clone(),
        size,
        max,
    };
    if size > max {
        return Err(too_large(size));
    }
    let mut hasher = D::new();
    let mut buf = vec![0u8; CHUNK];
    let mut offset: u64 = 0;
    loop {
        input.check_deadline()?;
        let off = i64::try_from(offset).map_err(|_| too_large(offset))?;
        let n = match nix::sys::uio::pread(fd, &mut buf, off) {
            Ok(0) => break,
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(AnalysisError::io(what(), e.into())),
        };
        offset += n as u64;
        if offset > max {
            return Err(too_large(offset));
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher)
}

/// SHA-256 through the passed descriptor (any Unix: `pread` works on both platforms).
#[derive(Debug, Clone, Copy)]
pub struct FdHasher {
    pub max_size: u64,
}

impl FileHasher for FdHasher {
    fn sha256(&self, input: &Input<'_>) -> Result<model::Sha256, AnalysisError> {
        let fd = input.require_fd("hashing")?;
        let d = digest_fd::<sha2::Sha256>(input, fd, self.max_size)?;
        Ok(model::Sha256(d.finalize().into()))
    }

    fn file_kind(&self, input: &Input<'_>) -> Result<model::FileKind, AnalysisError> {
        let fd = input.require_fd("reading the file's kind")?;
        Ok(model::FileKind::of(&read_prefix(input, fd)?))
    }
}

/// The first [`model::FileKind::PREFIX`] bytes behind `fd` (fewer for a shorter file), from
/// offset 0 with `pread`, so the descriptor's offset is untouched.
pub fn read_prefix(input: &Input<'_>, fd: BorrowedFd<'_>) -> Result<Vec<u8>, AnalysisError> {
    input.check_deadline()?;
    let mut buf = vec![0u8; model::FileKind::PREFIX];
    let mut got = 0;
    while got < buf.len() {
        let off = i64::try_from(got).unwrap_or(i64::MAX);
        match nix::sys::uio::pread(fd, &mut buf[got..], off) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(AnalysisError::io(
                    format!("reading the start of {}", input.file.path),
                    e.into(),
                ));
            }
        }
    }
    buf.truncate(got);
    Ok(buf)
}

// Hashing by path, for platforms whose kernel hands us no descriptor (Endpoint Security).
// Platform-neutral so that it is tested here on Linux too.

/// Hashes through the passed fd, or the path checked against the kernel's identity.
#[derive(Debug, Clone, Copy)]
pub struct PathHasher {
    pub max_size: u64,
}

/// Open `input.file.path` without following a final symlink and check that it is the file the
/// event named: same device, inode, size, mtime and ctime as the kernel reported. A file
/// swapped or modified since the event is refused rather than hashed.
pub fn open_checked(input: &Input<'_>) -> Result<std::fs::File, AnalysisError> {
    let path = &input.file.path;
    let what = || format!("opening {path}");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| AnalysisError::io(what(), e))?;
    let Some(want) = input.file.identity else {
        return Err(AnalysisError::BadRequest(format!(
            "{path}: the request carries no file identity to check the open against"
        )));
    };
    let md = file.metadata().map_err(|e| AnalysisError::io(what(), e))?;
    let got = FileIdentity::from(&md);
    if got != want {
        return Err(AnalysisError::io(
            what(),
            std::io::Error::other("the file changed or was replaced since the event; not hashed"),
        ));
    }
    Ok(file)
}

impl PathHasher {
    /// Run `f` on the descriptor the event passed or, without one (Endpoint Security), on the
    /// path opened and checked against the kernel's identity.
    fn through_fd<T>(
        &self,
        input: &Input<'_>,
        f: impl FnOnce(&FdHasher, &Input<'_>) -> Result<T, AnalysisError>,
    ) -> Result<T, AnalysisError> {
        let inner = FdHasher {
            max_size: self.max_size,
        };
        if input.fd.is_some() {
            return f(&inner, input);
        }
        input.check_deadline()?;
        let file = open_checked(input)?;
        f(
            &inner,
            &Input {
                fd: Some(file.as_fd()),
                ..*input
            },
        )
    }
}

impl FileHasher for PathHasher {
    fn file_kind(&self, input: &Input<'_>) -> Result<model::FileKind, AnalysisError> {
        self.through_fd(input, |h, i| h.file_kind(i))
    }

    fn sha256(&self, input: &Input<'_>) -> Result<Sha256, AnalysisError> {
        self.through_fd(input, |h, i| h.sha256(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::FileRef;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    fn file_with(bytes: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn file_kind_through_the_descriptor_table() {
        let cases: &[(&[u8], model::FileKind)] = &[
            (b"#!/bin/sh\necho hi\n", model::FileKind::Script),
            (b"\x7fELF\x02\x01\x01\x00", model::FileKind::Elf),
            (b"#", model::FileKind::Other),
            (b"", model::FileKind::Other),
        ];
        let file = FileRef::new("/t");
        for (bytes, want) in cases {
            let mut f = file_with(bytes);
            f.seek(SeekFrom::Start(1)).ok();
            let input = Input {
                file: &file,
                fd: Some(f.as_fd()),
                deadline: Instant::now() + Duration::from_secs(30),
            };
            let got = FdHasher { max_size: 10 }.file_kind(&input).unwrap();
            assert_eq!(got, *want, "{bytes:?}");
            assert_eq!(
                f.stream_position().unwrap(),
                1,
                "pread must not move the offset"
            );
        }
    }

    #[test]
    fn sha256_table_and_offset_untouched() {
        let big = vec![7u8; CHUNK * 2 + 5];
        let cases: &[(&[u8], u64, Option<&str>)] = &[
            (
                b"",
                10,
                Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            ),
            (
                b"abc",
                10,
                Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            ),
            (b"abcd", 3, None),
            (&big, big.len() as u64, Some("")),
        ];
        let file = FileRef::new("/t");
        for (bytes, max, want) in cases {
            let mut f = file_with(bytes);
            f.seek(SeekFrom::Start(1)).ok();
            let input = Input {
                file: &file,
                fd: Some(f.as_fd()),
                deadline: Instant::now() + Duration::from_secs(30),
            };
            let got = FdHasher { max_size: *max }.sha256(&input);
            match want {
                Some("") => {
                    let expect: [u8; 32] = sha2::Sha256::digest(bytes).into();
                    assert_eq!(got.unwrap().0, expect);
                }
                Some(hex) => assert_eq!(got.unwrap().to_hex(), *hex),
                None => assert!(
                    matches!(got, Err(AnalysisError::TooLarge { .. })),
                    "{got:?}"
                ),
            }
            assert_eq!(
                f.stream_position().unwrap(),
                1,
                "pread must not move the offset"
            );
        }
    }

    #[test]
    fn spent_deadline_and_missing_fd() {
        let file = FileRef::new("/t");
        let f = file_with(b"x");
        let spent = Input {
            file: &file,
            fd: Some(f.as_fd()),
            deadline: Instant::now(),
        };
        let h = FdHasher { max_size: 10 };
        assert!(matches!(
            h.sha256(&spent),
            Err(AnalysisError::DeadlineExceeded)
        ));
        let no_fd = Input {
            fd: None,
            deadline: Instant::now() + Duration::from_secs(5),
            ..spent
        };
        assert!(matches!(
            h.sha256(&no_fd),
            Err(AnalysisError::BadRequest(_))
        ));
    }

    /// Hashing by path (macOS): only the very file the kernel described is read.
    #[test]
    fn path_hasher_checks_the_kernels_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool");
        std::fs::write(&path, b"abc").unwrap();
        let identity = FileIdentity::from(&std::fs::metadata(&path).unwrap());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let named = |p: &std::path::Path, identity: Option<FileIdentity>| FileRef {
            path: p.to_string_lossy().into_owned(),
            identity,
        };
        let hasher = PathHasher { max_size: 1 << 20 };
        let hash = |file: &FileRef| {
            hasher.sha256(&Input {
                file,
                fd: None,
                deadline: Instant::now() + Duration::from_secs(30),
            })
        };
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(hash(&named(&path, Some(identity))).unwrap().to_hex(), abc);
        // (what, file as the request names it)
        let cases = [
            ("no identity to check against", named(&path, None)),
            ("a symlink to it (O_NOFOLLOW)", named(&link, Some(identity))),
            ("another file", named(dir.path(), Some(identity))),
        ];
        for (what, file) in &cases {
            assert!(hash(file).is_err(), "{what}");
        }
        // Modified since the event: size and times differ, so it is refused.
        std::fs::write(&path, b"abcd").unwrap();
        assert!(
            hash(&named(&path, Some(identity))).is_err(),
            "modified file"
        );
    }
}
