//! The helper's Unix socket listener: authenticated peers, a handshake, then per connection a
//! reader (frames in, work to the pool) and a writer (answers out, in completion order). A
//! worker sends its own answer when the socket takes it at once and no frame is being written
//! (saving the wake-up of the writer, one of four thread hand-offs in a round trip,
//! BENCHMARKS.md); otherwise the answer queues for the writer as before.
//!
//! Bounded everywhere: a fixed worker pool with a bounded queue (`Busy` when full), a cap on
//! connections (two threads each), a cap on requests in flight per connection, and the frame
//! limit. A malformed or oversized frame closes only its own connection.
//!
//! Deadlines, so that silent or trickling peers cannot hold every connection slot: the hello
//! must be complete within [`HELLO_DEADLINE`] of the accept (a deadline, not a per-read
//! timeout, so a byte at a time does not extend it); the first request must follow within
//! [`IDLE_LIMIT`]; a CLI peer gets the same limit before each later request. The extension's
//! connection is long-lived and may be quiet for hours, so after its first request (it pings
//! right after the handshake) it has no idle limit. Once a frame has started, each read must
//! come within [`FRAME_READ_TIMEOUT`].
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, sendmsg};
use protocol::unix::{recv_frame, send_frame};
use protocol::{
    HELPER_MAX_FRAME, HelloReply, HelperErrorKind, HelperRequest, HelperResponse, PROTOCOL_VERSION,
    ProtocolError, Request, Response, Role, handshake,
};

use super::auth::PeerPolicy;
use crate::pool::{Pool, Submitter};
use crate::service::Service;
use crate::stats::Stats;

/// How long a peer has, from its accept, to complete the handshake.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(1);
/// How long a connection may wait before its first request (a CLI peer: before each request).
pub const IDLE_LIMIT: Duration = Duration::from_secs(5);
/// Once a frame's first byte has arrived, how long each further read may take.
const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a write to a peer that does not read may block the connection's writer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Answers up to this size may be sent by the worker itself: a Unix stream socket queues a send
/// this small as one buffer, so a non-blocking `sendmsg` takes all of it or none.
const DIRECT_MAX: usize = 4096;
/// How often the accept loop looks at the shutdown flag.
const ACCEPT_POLL: u16 = 200;
/// How long shutdown waits for connections and in-flight work before abandoning them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Listener settings (`gatehouse-helper` flags).
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub workers: usize,
    /// Requests queued for the workers beyond those running.
    pub queue: usize,
    pub max_connections: usize,
    /// Requests one connection may have queued or running at once.
    pub max_in_flight: usize,
    pub peers: PeerPolicy,
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the socket directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another helper is already listening on {0}; stop it or choose another --socket")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; remove it or choose another --socket")]
    NotASocket(PathBuf),
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start worker threads: {0}")]
    Threads(#[source] io::Error),
}

/// A bound listener, ready to [`Listener::run`].
#[derive(Debug)]
pub struct Listener {
    listener: UnixListener,
    /// The socket file's (device, inode) right after bind.
    bound: Option<(u64, u64)>,
    config: Config,
    service: Arc<Service>,
}

impl Listener {
    /// Create the parent directory, replace a stale socket, bind with mode 0600.
    pub fn bind(config: Config, service: Arc<Service>) -> Result<Self, ServerError> {
        let path = &config.socket;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ServerError::Dir {
                dir: dir.to_owned(),
                source,
            })?;
        }
        remove_stale(path)?;
        // The umask makes the socket 0600 from its creation, with no window where it is wider.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(|source| ServerError::Bind {
            path: path.clone(),
            source,
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| ServerError::Bind {
                path: path.clone(),
                source,
            },
        )?;
        let bound = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok(Self {
            listener,
            bound,
            config,
            service,
        })
    }

    /// Serve until `shutdown` is set, then stop accepting, close every connection, give
    /// in-flight work a short grace period, and remove the socket.
    pub fn run(self, shutdown: &AtomicBool) -> Result<(), ServerError> {
        let pool =
            Pool::new(self.config.workers, self.config.queue).map_err(ServerError::Threads)?;
        let conns: Arc<Mutex<HashMap<u64, UnixStream>>> = Arc::default();
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let mut next_id: u64 = 0;
        tracing::info!(socket = %self.config.socket.display(), workers = self.config.workers, "helper listening");
        while !shutdown.load(Ordering::SeqCst) {
            let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ACCEPT_POLL)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "poll on the listener failed");
                    std::thread::sleep(Duration::from_millis(ACCEPT_POLL.into()));
                    continue;
                }
            }
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            };
            threads.retain(|t| !t.is_finished());
            if threads.len() >= self.config.max_connections {
                Stats::bump(&self.service.stats().connections_refused);
                tracing::warn!(
                    max = self.config.max_connections,
                    "connection limit reached; refusing"
                );
                continue;
            }
            next_id += 1;
            let id = next_id;
            if let Ok(clone) = stream.try_clone() {
                lock(&conns).insert(id, clone);
            }
            let conn = Connection {
                id,
                stream,
                service: self.service.clone(),
                peers: self.config.peers.clone(),
                submitter: pool.submitter(),
                max_in_flight: self.config.max_in_flight,
                conns: conns.clone(),
            };
            match std::thread::Builder::new()
                .name(format!("conn-{id}"))
                .spawn(move || conn.serve())
            {
                Ok(t) => threads.push(t),
                Err(e) => {
                    lock(&conns).remove(&id);
                    tracing::warn!(error = %e, "cannot start a connection thread");
                }
            }
        }
        tracing::info!("shutting down: no longer accepting");
        remove_own_socket(&self.config.socket, self.bound);
        for s in lock(&conns).values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let end = Instant::now() + SHUTDOWN_GRACE;
        while threads.iter().any(|t| !t.is_finished()) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !pool.shutdown(end.saturating_duration_since(Instant::now())) {
            tracing::warn!("in-flight analyses abandoned at shutdown");
        }
        Ok(())
    }
}

/// A connection's sending side, shared by its writer thread and the workers answering its
/// requests. The lock is held across one frame so frames never interleave.
#[derive(Debug)]
struct Out {
    stream: UnixStream,
    lock: Mutex<()>,
}

impl Out {
    /// Send `resp` from the calling worker if that cannot block: nobody is mid-frame and the
    /// socket takes the whole frame now. False: queue it for the writer (which also reports a
    /// failed connection).
    fn try_send_now(&self, resp: &Response<HelperResponse>) -> bool {
        let _g = match self.lock.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        let Ok(buf) = protocol::frame::encode_frame(resp, HELPER_MAX_FRAME) else {
            return false;
        };
        if buf.len() > DIRECT_MAX {
            return false;
        }
        match sendmsg::<()>(
            self.stream.as_raw_fd(),
            &[IoSlice::new(&buf)],
            &[],
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(n) if n == buf.len() => true,
            // Not expected at this size; the frame must still be whole, so finish it (bounded
            // by the socket's write timeout) or end the connection.
            Ok(n) => {
                if (&self.stream).write_all(&buf[n..]).is_err() {
                    let _ = self.stream.shutdown(Shutdown::Both);
                }
                true
            }
            Err(_) => false,
        }
    }

    fn send(&self, resp: &Response<HelperResponse>) -> Result<(), ProtocolError> {
        let _g = lock(&self.lock);
        send_frame(&self.stream, resp, &[], HELPER_MAX_FRAME)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Remove our socket at shutdown only if the path still names the socket we bound (same
/// inode): a file put there since is not ours to delete.
fn remove_own_socket(path: &Path, bound: Option<(u64, u64)>) {
    if let (Ok(m), Some(ours)) = (std::fs::symlink_metadata(path), bound)
        && m.file_type().is_socket()
        && (m.dev(), m.ino()) == ours
    {
        let _ = std::fs::remove_file(path);
    }
}

/// A leftover socket from a helper that died is removed; a live one is an error.
fn remove_stale(path: &Path) -> Result<(), ServerError> {
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if !m.file_type().is_socket() => Err(ServerError::NotASocket(path.to_owned())),
        Ok(_) => {
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(|source| ServerError::Bind {
                path: path.to_owned(),
                source,
            })
        }
    }
}

/// One accepted connection, served by its own reader thread plus a writer thread.
struct Connection {
    id: u64,
    stream: UnixStream,
    service: Arc<Service>,
    peers: PeerPolicy,
    submitter: Submitter,
    max_in_flight: usize,
    conns: Arc<Mutex<HashMap<u64, UnixStream>>>,
}

impl Connection {
    fn serve(self) {
        let stats = self.service.stats();
        let accepted = Instant::now();
        match self.admit(accepted) {
            Ok(role) => {
                Stats::bump(&stats.connections_accepted);
                self.serve_requests(role);
            }
            Err(Refusal::Auth(reason)) => {
                Stats::bump(&stats.connections_refused);
                tracing::warn!(conn = self.id, %reason, "peer refused");
            }
            Err(Refusal::Handshake(e)) => {
                Stats::bump(&stats.handshake_failures);
                tracing::warn!(conn = self.id, error = %e, "handshake failed");
            }
            Err(Refusal::HelloTimeout) => {
                Stats::bump(&stats.hello_timeouts);
                tracing::debug!(conn = self.id, "no hello within the deadline; closed");
            }
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        lock(&self.conns).remove(&self.id);
    }

    /// Authenticate the peer, then run the handshake. A refused peer is told why.
    fn admit(&self, accepted: Instant) -> Result<Role, Refusal> {
        let s = &self.stream;
        let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
        let mut io = Deadline {
            stream: s,
            until: accepted + HELLO_DEADLINE,
            expired: false,
        };
        if let Err(e) = self.peers.authorize(s) {
            // Read its hello first so our answer is not lost to a connection reset.
            let _ = protocol::frame::read_frame_body(&mut io, 1024);
            let reply = HelloReply::Rejected {
                reason: format!("peer not authorized: {e}"),
                supported: PROTOCOL_VERSION,
            };
            let _ = protocol::frame::write_frame(&mut &*s, &reply, 1024);
            return Err(Refusal::Auth(e.to_string()));
        }
        let hs = handshake::server(&mut io, &[Role::Extension, Role::Cli], self.service.agent());
        match hs {
            Ok((role, _agent)) => {
                let _ = s.set_read_timeout(Some(FRAME_READ_TIMEOUT));
                Ok(role)
            }
            Err(_) if io.expired => Err(Refusal::HelloTimeout),
            Err(e) => Err(Refusal::Handshake(e)),
        }
    }

    fn serve_requests(&self, role: Role) {
        let stats = self.service.stats();
        let (tx, rx) = bounded::<Response<HelperResponse>>(self.max_in_flight + 4);
        let out = match self.stream.try_clone() {
            Ok(stream) => Arc::new(Out {
                stream,
                lock: Mutex::new(()),
            }),
            Err(e) => {
                tracing::warn!(conn = self.id, error = %e, "cannot clone the connection's socket");
                return;
            }
        };
        let spawned = {
            let service = self.service.clone();
            let out = Arc::clone(&out);
            std::thread::Builder::new()
                .name(format!("conn-{}-w", self.id))
                .spawn(move || {
                    for resp in rx {
                        if out.send(&resp).is_err() {
                            Stats::bump(&service.stats().responses_dropped);
                            // Wake the reader: this connection is finished.
                            let _ = out.stream.shutdown(Shutdown::Both);
                            break;
                        }
                    }
                })
        };
        let writer = match spawned {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(conn = self.id, error = %e, "cannot start the writer thread");
                return;
            }
        };
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut first = true;
        loop {
            let idle = (first || role == Role::Cli).then_some(IDLE_LIMIT);
            if !wait_readable(&self.stream, idle) {
                Stats::bump(&stats.idle_closed);
                tracing::debug!(conn = self.id, "no request within the idle limit; closed");
                break;
            }
            first = false;
            match recv_frame::<Request<HelperRequest>>(&self.stream, HELPER_MAX_FRAME) {
                Ok((req, fds)) => {
                    if !self.dispatch(role, req, fds, (&tx, &out), &in_flight) {
                        break;
                    }
                }
                Err(ProtocolError::Closed) => break,
                Err(ProtocolError::FrameTooLarge { len, max }) => {
                    Stats::bump(&stats.oversized_frames);
                    tracing::warn!(conn = self.id, len, max, "oversized frame; closing");
                    break;
                }
                Err(ProtocolError::Io(e)) if !matches!(e.kind(), io::ErrorKind::UnexpectedEof) => {
                    // Reset by the peer, or shut down by us: nothing malformed about it.
                    break;
                }
                Err(e) => {
                    Stats::bump(&stats.malformed_frames);
                    tracing::warn!(conn = self.id, error = %e, "malformed frame; closing");
                    break;
                }
            }
        }
        drop(tx);
        let _ = writer.join();
    }

    /// Handle one request; false when the connection should close.
    fn dispatch(
        &self,
        role: Role,
        req: Request<HelperRequest>,
        fds: Vec<OwnedFd>,
        (tx, out): (&Sender<Response<HelperResponse>>, &Arc<Out>),
        in_flight: &Arc<AtomicUsize>,
    ) -> bool {
        let arrival = Instant::now();
        let service = &self.service;
        service.count_arrival(&req.body);
        let deadline = arrival
            .checked_add(Duration::from_micros(req.budget_us))
            .unwrap_or(arrival + Duration::from_secs(86_400));
        let id = req.id;
        let reply = |body| tx.send(Response { id, body }).is_ok();
        if fds.len() > 1 {
            return reply(service.error(
                HelperErrorKind::BadRequest,
                format!(
                    "{} descriptors attached; at most one per request",
                    fds.len()
                ),
            ));
        }
        let fd = fds.into_iter().next();
        let needs_worker = matches!(req.body, HelperRequest::Analyze { .. }) && arrival < deadline;
        if !needs_worker {
            // Ping, Stats and spent budgets are answered here: cheap, and health checks keep
            // working while the workers are saturated.
            return reply(service.handle(
                role,
                &req.body,
                fd.as_ref().map(|f| f.as_fd()),
                deadline,
            ));
        }
        if in_flight.load(Ordering::SeqCst) >= self.max_in_flight {
            return reply(service.error(
                HelperErrorKind::Busy,
                format!(
                    "{} requests already in flight on this connection; wait for answers",
                    self.max_in_flight
                ),
            ));
        }
        in_flight.fetch_add(1, Ordering::SeqCst);
        let job = {
            let service = service.clone();
            let tx = tx.clone();
            let in_flight = in_flight.clone();
            let out = Arc::clone(out);
            let body = req.body;
            move || {
                let resp = service.handle(role, &body, fd.as_ref().map(|f| f.as_fd()), deadline);
                drop(fd);
                in_flight.fetch_sub(1, Ordering::SeqCst);
                let resp = Response { id, body: resp };
                if out.try_send_now(&resp) {
                    return;
                }
                // Never block a worker on a peer that does not read: give up at the deadline.
                let wait = deadline.saturating_duration_since(Instant::now());
                if tx.send_timeout(resp, wait).is_err() {
                    Stats::bump(&service.stats().responses_dropped);
                }
            }
        };
        if self.submitter.try_submit(job).is_err() {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            return reply(service.error(
                HelperErrorKind::Busy,
                "all analysis workers are busy and the queue is full; retry or fall back",
            ));
        }
        true
    }
}

enum Refusal {
    Auth(String),
    Handshake(ProtocolError),
    HelloTimeout,
}

/// Reads under one deadline: each read waits at most the time left, so a peer that trickles
/// bytes still runs into it.
struct Deadline<'a> {
    stream: &'a UnixStream,
    until: Instant,
    expired: bool,
}

impl io::Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.expired = true;
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        match (&mut &*self.stream).read(buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.expired = true;
                Err(io::ErrorKind::TimedOut.into())
            }
            r => r,
        }
    }
}

impl io::Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&mut &*self.stream).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Wait until `s` has something to read (or is closed), for at most `limit` (`None`: forever).
/// False when the limit passed first.
fn wait_readable(s: &UnixStream, limit: Option<Duration>) -> bool {
    let until = limit.map(|l| Instant::now() + l);
    loop {
        let timeout = match until {
            None => PollTimeout::NONE,
            Some(u) => {
                let left = u.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                PollTimeout::try_from(left.as_millis().clamp(1, 60_000) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            // Readable, hung up or in error: the read that follows tells which.
            Ok(_) | Err(_) => return true,
        }
    }
}
