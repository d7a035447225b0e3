//! The Unix-socket [`HelperTransport`]: one pipelined stream connection (frames plus SCM_RIGHTS
//! descriptors), a version handshake, and one reader that also (re)connects with backoff. The
//! helper's pid comes from the kernel's peer credentials at connect (`SO_PEERCRED`), never from
//! what the helper says.
#![forbid(unsafe_code)]

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::Receiver;
use model::FallbackReason;
use protocol::{HELPER_MAX_FRAME, HelperRequest, HelperResponse, Request, Response, Role};

use super::helper_link::{HelperTransport, LinkSink, TransportError};

/// Handshake and connect must not hang the connector on a wedged helper.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(25);
/// The request id of the ping sent right after the handshake (the helper client's ids start
/// at 1).
const CONNECT_PING: u64 = 0;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The helper's Unix socket.
#[derive(Debug)]
pub struct UnixTransport {
    path: PathBuf,
    write_timeout: Duration,
    backoff_max: Duration,
    connected: AtomicBool,
    /// The peer's pid on the current connection; 0 when none.
    peer_pid: AtomicU32,
    /// Set by `close`: errors after it are shutdown noise, not worth a warning.
    closed: AtomicBool,
    /// The current connection. Locked only to clone or replace the `Arc` (never across a
    /// system call), so `close` can always reach a socket a worker is blocked writing to.
    conn: Mutex<Option<Arc<UnixStream>>>,
    /// Held by a sender across one `sendmsg` so frames never interleave. The delivery thread
    /// never touches it.
    write_lock: Mutex<()>,
}

impl UnixTransport {
    /// A transport to `path`; nothing connects until [`HelperTransport::run`].
    /// `write_timeout`: a helper that does not take a frame within this long is treated as
    /// dead. `backoff_max`: the longest wait between connection attempts.
    pub fn new(path: PathBuf, write_timeout: Duration, backoff_max: Duration) -> Self {
        Self {
            path,
            write_timeout,
            backoff_max,
            connected: AtomicBool::new(false),
            peer_pid: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            conn: Mutex::new(None),
            write_lock: Mutex::new(()),
        }
    }

    fn connect(&self) -> Result<UnixStream, String> {
        let mut s = UnixStream::connect(&self.path).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .and_then(|()| s.set_write_timeout(Some(HANDSHAKE_TIMEOUT)))
            .map_err(|e| e.to_string())?;
        let agent = format!("gatehouse-extension/{}", env!("CARGO_PKG_VERSION"));
        protocol::handshake::client(&mut s, Role::Extension, &agent).map_err(|e| e.to_string())?;
        // The helper closes a connection that sends no request within its idle limit, until
        // the first one: ours may stay quiet for hours, so it asks at once. The answer (id
        // `CONNECT_PING`, which the client never uses) is dropped by the reader.
        let hello = Request {
            id: CONNECT_PING,
            budget_us: HANDSHAKE_TIMEOUT.as_micros() as u64,
            body: HelperRequest::Ping,
        };
        protocol::unix::send_frame(&s, &hello, &[], HELPER_MAX_FRAME).map_err(|e| e.to_string())?;
        s.set_read_timeout(None)
            .and_then(|()| s.set_write_timeout(Some(self.write_timeout)))
            .map_err(|e| e.to_string())?;
        Ok(s)
    }

    /// Forget `stream` if it is still the current connection.
    fn drop_current(&self, stream: &Arc<UnixStream>) {
        let mut c = lock(&self.conn);
        if c.as_ref().is_some_and(|s| Arc::ptr_eq(s, stream)) {
            *c = None;
            self.connected.store(false, Ordering::Release);
            self.peer_pid.store(0, Ordering::Release);
        }
    }

    /// Read responses until the connection fails; returns why.
    fn read_loop(
        &self,
        stream: &UnixStream,
        sink: &LinkSink,
        backoff: &mut Duration,
    ) -> FallbackReason {
        loop {
            match protocol::unix::recv_frame::<Response<HelperResponse>>(stream, HELPER_MAX_FRAME) {
                Ok((resp, _fds)) => {
                    // A helper that answers is healthy: reconnect quickly next time.
                    *backoff = BACKOFF_START;
                    if resp.id != CONNECT_PING {
                        sink.response(resp);
                    }
                }
                Err(protocol::ProtocolError::Decode(e)) => {
                    tracing::warn!(error = %e, "malformed frame from the helper; reconnecting");
                    sink.protocol_error();
                    return FallbackReason::HelperError;
                }
                Err(protocol::ProtocolError::FrameTooLarge { .. }) => {
                    sink.protocol_error();
                    return FallbackReason::HelperError;
                }
                Err(_) => return FallbackReason::HelperUnavailable,
            }
        }
    }
}

impl HelperTransport for UnixTransport {
    fn describe(&self) -> String {
        format!("unix:{}", self.path.display())
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    fn peer_pid(&self) -> Option<u32> {
        match self.peer_pid.load(Ordering::Acquire) {
            0 => None,
            pid => Some(pid),
        }
    }

    fn run(&self, sink: LinkSink, stop: &Receiver<()>) {
        let stopped = || {
            matches!(
                stop.try_recv(),
                Err(crossbeam_channel::TryRecvError::Disconnected)
            )
        };
        let mut backoff = BACKOFF_START;
        let mut logged = false;
        while !stopped() {
            let stream = match self.connect() {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    if !logged {
                        tracing::info!(path = %self.path.display(), error = %e, "helper not reachable; retrying with backoff");
                        logged = true;
                    }
                    if stop
                        .recv_timeout(backoff)
                        .is_err_and(|e| e.is_disconnected())
                    {
                        break;
                    }
                    backoff = (backoff * 2).min(self.backoff_max);
                    continue;
                }
            };
            logged = false;
            let pid = protocol::unix::peer_credentials(&stream).map_or(0, |c| c.pid);
            self.peer_pid.store(pid, Ordering::Release);
            *lock(&self.conn) = Some(Arc::clone(&stream));
            self.connected.store(true, Ordering::Release);
            sink.connected();
            if stopped() {
                self.close();
                break;
            }
            let why = self.read_loop(&stream, &sink, &mut backoff);
            let _ = stream.shutdown(std::net::Shutdown::Both);
            self.drop_current(&stream);
            sink.disconnected(why);
            // A helper that dies on every connection must not make us spin.
            if stop
                .recv_timeout(backoff)
                .is_err_and(|e| e.is_disconnected())
            {
                break;
            }
            backoff = (backoff * 2).min(self.backoff_max);
        }
        self.close();
    }

    fn send(
        &self,
        req: &Request<HelperRequest>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), TransportError> {
        let _w = lock(&self.write_lock);
        let Some(stream) = lock(&self.conn).clone() else {
            return Err(TransportError::NotConnected);
        };
        let fds: &[BorrowedFd<'_>] = fd.as_slice();
        protocol::unix::send_frame(&stream, req, fds, HELPER_MAX_FRAME).map_err(|e| {
            if !self.closed.load(Ordering::Acquire) {
                tracing::warn!(error = %e, "sending to the helper failed; reconnecting");
            }
            // A partial frame would desynchronise the stream: tear it down, which also wakes
            // the reader, which fails everything in flight and reconnects.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            self.drop_current(&stream);
            TransportError::Send(e.to_string())
        })
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let current = lock(&self.conn).take();
        if let Some(s) = current {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.connected.store(false, Ordering::Release);
        self.peer_pid.store(0, Ordering::Release);
    }
}
