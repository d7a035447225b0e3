//! Frames over Unix stream sockets, with file descriptors passed alongside (SCM_RIGHTS) and the
//! peer's kernel-reported credentials. Used by the helper and control channels on Linux, and by
//! tests on macOS.
//!
//! A frame and its descriptors travel in one `sendmsg`; the receiver reads with `recvmsg` only,
//! so descriptors are never dropped by a plain `read` that crosses them.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::frame::encode_frame;
use crate::{ProtocolError, codec};

/// Most descriptors one frame may carry; more are closed and the frame is refused.
pub const MAX_FDS_PER_FRAME: usize = 4;

/// The connecting process as the kernel reports it at `connect` time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Kernel-reported credentials of the socket's peer (SO_PEERCRED on Linux; LOCAL_PEERPID and
/// getpeereid on macOS). Never trust what a peer says about itself.
pub fn peer_credentials(s: &UnixStream) -> Result<PeerCred, ProtocolError> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let c = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(io::Error::from)?;
        Ok(PeerCred {
            pid: c.pid() as u32,
            uid: c.uid(),
            gid: c.gid(),
        })
    }
    #[cfg(target_vendor = "apple")]
    {
        let pid = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::LocalPeerPid)
            .map_err(io::Error::from)?;
        let (uid, gid) = nix::unistd::getpeereid(s).map_err(io::Error::from)?;
        Ok(PeerCred {
            pid: pid as u32,
            uid: uid.as_raw(),
            gid: gid.as_raw(),
        })
    }
}

/// Encode `msg` as one frame and send it with `fds` attached, in a single `sendmsg`.
pub fn send_frame<T: Serialize>(
    s: &UnixStream,
    msg: &T,
    fds: &[BorrowedFd<'_>],
    max: u32,
) -> Result<(), ProtocolError> {
    if fds.len() > MAX_FDS_PER_FRAME {
        return Err(ProtocolError::Encode(format!(
            "{} descriptors in one frame; at most {MAX_FDS_PER_FRAME}",
            fds.len()
        )));
    }
    let buf = encode_frame(msg, max)?;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    let mut sent = 0;
    while sent < buf.len() {
        // Descriptors ride on the first chunk only; a short write sends the rest plainly.
        let c = if sent == 0 { cmsgs } else { &[] };
        match sendmsg::<()>(
            s.as_raw_fd(),
            &[IoSlice::new(&buf[sent..])],
            c,
            MsgFlags::empty(),
            None,
        ) {
            Ok(n) => sent += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e).into()),
        }
    }
    Ok(())
}

/// Receive one frame and every descriptor that arrived with it. A clean end of stream before
/// the first byte is [`ProtocolError::Closed`]. Honours the socket's read timeout.
pub fn recv_frame<T: DeserializeOwned>(
    s: &UnixStream,
    max: u32,
) -> Result<(T, Vec<OwnedFd>), ProtocolError> {
    let mut fds = Vec::new();
    let mut len = [0u8; 4];
    if !recv_exact(s.as_fd(), &mut len, &mut fds)? {
        return Err(ProtocolError::Closed);
    }
    let mut body = vec![0u8; crate::frame::body_len(len, max)?];
    if !recv_exact(s.as_fd(), &mut body, &mut fds)? {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    if fds.len() > MAX_FDS_PER_FRAME {
        return Err(ProtocolError::Decode(format!(
            "{} descriptors in one frame",
            fds.len()
        )));
    }
    Ok((codec::decode(&body)?, fds))
}

/// Fill `buf` with `recvmsg`, collecting descriptors. Returns false on end of stream before the
/// first byte.
fn recv_exact(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<bool, ProtocolError> {
    let mut got = 0;
    while got < buf.len() {
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_FRAME]);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let flags = MsgFlags::MSG_CMSG_CLOEXEC;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let flags = MsgFlags::empty();
        let msg = match recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
            Ok(m) => m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e).into()),
        };
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for r in raw {
                        #[expect(
                            unsafe_code,
                            reason = "taking ownership of a received descriptor"
                        )]
                        // SAFETY: the kernel just installed `r` in our descriptor table for this
                        // SCM_RIGHTS message; nothing else in the process knows or owns it, so
                        // wrapping it in exactly one OwnedFd gives it exactly one owner.
                        fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                    }
                }
            }
        }
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        let n = msg.bytes;
        if truncated {
            return Err(ProtocolError::Decode(
                "too many descriptors attached".into(),
            ));
        }
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        got += n;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn frame_with_fd_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"contents").unwrap();
        send_frame(&a, &"analyze".to_string(), &[file.as_fd()], 1024).unwrap();
        send_frame(&a, &"second".to_string(), &[], 1024).unwrap();
        let (msg, fds): (String, _) = recv_frame(&b, 1024).unwrap();
        assert_eq!(msg, "analyze");
        assert_eq!(fds.len(), 1);
        let mut f = std::fs::File::from(fds.into_iter().next().unwrap());
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "contents");
        let (msg, fds): (String, _) = recv_frame(&b, 1024).unwrap();
        assert_eq!((msg.as_str(), fds.len()), ("second", 0));
        drop(a);
        assert!(matches!(
            recv_frame::<String>(&b, 1024),
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn oversized_frame_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&u32::MAX.to_le_bytes()).unwrap();
        assert!(matches!(
            recv_frame::<String>(&b, 1024),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn peer_credentials_are_ours() {
        let (a, _b) = UnixStream::pair().unwrap();
        let c = peer_credentials(&a).unwrap();
        assert_eq!(c.pid, std::process::id());
        assert_eq!(c.uid, nix::unistd::getuid().as_raw());
    }
}
