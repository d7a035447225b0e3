//! SHA-256 on macOS: through the request's descriptor when there is one, else by opening the
//! path and refusing a file whose identity differs from the kernel's (`stat` in the message).
#![forbid(unsafe_code)]

use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use model::{FileIdentity, Sha256};

use crate::analyzer::{AnalysisError, FileHasher, Input};
use crate::hash::FdHasher;

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
    let got = FileIdentity {
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
        mtime_ns: md
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(md.mtime_nsec()),
        ctime_ns: md
            .ctime()
            .saturating_mul(1_000_000_000)
            .saturating_add(md.ctime_nsec()),
    };
    if got != want {
        return Err(AnalysisError::io(
            what(),
            std::io::Error::other("the file changed or was replaced since the event; not hashed"),
        ));
    }
    Ok(file)
}

impl FileHasher for PathHasher {
    fn sha256(&self, input: &Input<'_>) -> Result<Sha256, AnalysisError> {
        let inner = FdHasher {
            max_size: self.max_size,
        };
        if input.fd.is_some() {
            return inner.sha256(input);
        }
        input.check_deadline()?;
        let file = open_checked(input)?;
        inner.sha256(&Input {
            fd: Some(file.as_fd()),
            ..*input
        })
    }
}
