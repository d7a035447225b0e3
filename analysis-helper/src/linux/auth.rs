//! Peer authentication on the helper socket: the kernel-reported uid must be root (or the
//! helper's own uid, so tests can run it unprivileged: a process of the same uid could ptrace
//! the helper anyway, so it gains nothing), and the peer's executable must be in the allowed
//! set. The peer is pinned with a pidfd (SO_PEERPIDFD) so a pid reused between `connect` and
//! our `/proc/<pid>/exe` lookup is detected.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{getsockopt, sockopt};

/// Who may connect.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    /// Accepted uids: 0 and the helper's own.
    pub uids: Vec<u32>,
    /// Accepted executables, as absolute canonical paths.
    pub executables: Vec<PathBuf>,
}

/// Why a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the peer's credentials: {0}")]
    Credentials(String),
    #[error("peer uid {uid} (pid {pid}) is not allowed; only root may use the helper socket")]
    Uid { uid: u32, pid: u32 },
    #[error("cannot read /proc/{pid}/exe of the peer: {source}")]
    Exe {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("peer pid {pid} exited while it was being checked")]
    Gone { pid: u32 },
    #[error(
        "peer executable {exe} (pid {pid}) is not allowed; start the helper with --allowed-exe {exe} if it should be"
    )]
    Executable { exe: String, pid: u32 },
}

impl PeerPolicy {
    /// Root and our own uid; the given executables (canonicalized where they exist).
    pub fn new(executables: impl IntoIterator<Item = PathBuf>) -> Self {
        let own = nix::unistd::getuid().as_raw();
        let mut uids = vec![0];
        if own != 0 {
            uids.push(own);
        }
        Self {
            uids,
            executables: executables
                .into_iter()
                .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
                .collect(),
        }
    }

    /// Check the process at the other end of `stream`. Returns its pid on success.
    pub fn authorize(&self, stream: &UnixStream) -> Result<u32, AuthError> {
        let cred = protocol::unix::peer_credentials(stream)
            .map_err(|e| AuthError::Credentials(e.to_string()))?;
        if !self.uids.contains(&cred.uid) {
            return Err(AuthError::Uid {
                uid: cred.uid,
                pid: cred.pid,
            });
        }
        // Kernels before 6.5 lack SO_PEERPIDFD; there we fall back to the bare pid (a reuse
        // race then needs the peer to exit and a new process to take its pid within this call).
        let pidfd: Option<OwnedFd> = getsockopt(stream, sockopt::PeerPidfd).ok();
        let exe = std::fs::read_link(format!("/proc/{}/exe", cred.pid)).map_err(|source| {
            AuthError::Exe {
                pid: cred.pid,
                source,
            }
        })?;
        if let Some(pidfd) = &pidfd
            && exited(pidfd)
        {
            return Err(AuthError::Gone { pid: cred.pid });
        }
        if self.allows_exe(&exe) {
            Ok(cred.pid)
        } else {
            Err(AuthError::Executable {
                exe: exe.display().to_string(),
                pid: cred.pid,
            })
        }
    }

    fn allows_exe(&self, exe: &Path) -> bool {
        self.executables.iter().any(|p| p == exe)
    }
}

/// A pidfd polls readable once its process has exited.
fn exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exe_and_uid_table() {
        let me = std::env::current_exe().unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let cases: Vec<(&str, PeerPolicy, bool)> = vec![
            ("own exe, own uid", PeerPolicy::new([me.clone()]), true),
            (
                "other exe",
                PeerPolicy::new([PathBuf::from("/usr/bin/true")]),
                false,
            ),
            (
                "uid not allowed",
                PeerPolicy {
                    uids: vec![4_000_000],
                    executables: vec![me.clone()],
                },
                false,
            ),
        ];
        for (name, policy, ok) in cases {
            let r = policy.authorize(&a);
            assert_eq!(r.is_ok(), ok, "{name}: {r:?}");
        }
    }
}
