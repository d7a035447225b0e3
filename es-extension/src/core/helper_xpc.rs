//! The asynchronous XPC client to the helper's mach service (`dev.gatehouse.helper`): one
//! protocol frame per XPC message, a version handshake, request ids, and every request bounded
//! by its event's budget (the XPC timeout is the budget, so no reply is awaited past the
//! watchdog). Only `xpc_connection_send_message_with_reply` is used; nothing here blocks.
//!
//! [`XpcTransport`] is the core's [`HelperTransport`] on macOS: the core's helper thread
//! greets the helper (handshake, then a ping for its pid), reports the connection up, and waits
//! for libxpc to say it was lost; requests go out from the workers and their replies (or
//! timeouts) come back on XPC's queue, straight to the core's matching by id.
#![forbid(unsafe_code)]

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use model::FallbackReason;

use protocol::{
    HELPER_MAX_FRAME, Hello, HelloReply, HelperRequest, HelperResponse, MAGIC, PROTOCOL_VERSION,
    ProtocolError, Request, Response, Role,
};
use xpc::{ConnectOptions, Connection, DispatchQueue, FrameKind, XpcError};

use crate::core::{HelperTransport, LinkSink, PeerIdentity, TransportError};
use protocol::frame::decode_whole_frame;

/// The helper's launchd mach service.
pub const HELPER_SERVICE: &str = "dev.gatehouse.helper";

/// Handshake frames are tiny (as on the Unix socket).
const HELLO_MAX_FRAME: u32 = 1024;

/// A failed helper exchange.
#[derive(Debug, thiserror::Error)]
pub enum HelperXpcError {
    #[error(transparent)]
    Xpc(#[from] XpcError),
    #[error("helper protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the helper answered with a {0:?} frame where another kind was expected")]
    WrongKind(Option<FrameKind>),
    #[error("the helper answered request {got} to request {sent}")]
    IdMismatch { sent: u64, got: u64 },
    #[error("the helper has not completed the version handshake")]
    NotReady,
}

/// The client. Cheap to share; all methods return at once and call back on XPC's queue.
#[derive(Debug)]
pub struct HelperXpc {
    conn: Connection,
    next_id: AtomicU64,
    /// Set after a successful handshake; cleared when the connection is interrupted (the helper
    /// restarted and must be greeted again).
    ready: Arc<AtomicBool>,
}

impl HelperXpc {
    /// The peer's pid from the kernel's stamp on the connection.
    pub fn peer_pid(&self) -> Option<u32> {
        self.conn.peer_pid()
    }

    /// The peer's audit token from the kernel's stamp on the connection.
    pub fn peer_audit_token(&self) -> Option<[u32; 8]> {
        self.conn.peer_audit_token()
    }

    /// Set up the connection (libxpc connects lazily: this never waits on the helper).
    /// `on_lost` is called on XPC's queue for each connection-level error (the helper exited,
    /// restarted, or was refused); it must not block.
    pub fn connect(
        service: &str,
        peer_requirement: Option<String>,
        on_lost: impl Fn(XpcError) + Send + Sync + 'static,
    ) -> Result<Arc<Self>, XpcError> {
        let ready = Arc::new(AtomicBool::new(false));
        let on_error_ready = Arc::clone(&ready);
        let options = ConnectOptions {
            privileged: true,
            peer_requirement,
            on_error: Some(Arc::new(move |e: XpcError| {
                on_error_ready.store(false, Ordering::Release);
                on_lost(e);
            })),
        };
        let queue = DispatchQueue::new("dev.gatehouse.extension.helper", None);
        let conn = Connection::connect(service, queue, options)?;
        Ok(Arc::new(Self {
            conn,
            next_id: AtomicU64::new(1),
            ready,
        }))
    }

    /// True once the handshake succeeded and the connection has not been interrupted since.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Send our `Hello`; `done` gets the helper's agent string, or why it refused.
    pub fn handshake<F>(&self, timeout: Duration, done: F)
    where
        F: FnOnce(Result<String, HelperXpcError>) + Send + 'static,
    {
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role: Role::Extension,
            agent: format!("gatehouse-extension/{}", env!("CARGO_PKG_VERSION")),
        };
        let frame = match protocol::frame::encode_frame(&hello, HELLO_MAX_FRAME) {
            Ok(f) => f,
            Err(e) => return done(Err(e.into())),
        };
        let ready = Arc::clone(&self.ready);
        self.conn
            .send_with_reply(FrameKind::Hello, &frame, timeout, move |r| {
                let result = r.map_err(HelperXpcError::from).and_then(|(kind, bytes)| {
                    if kind != Some(FrameKind::Hello) {
                        return Err(HelperXpcError::WrongKind(kind));
                    }
                    match decode_whole_frame::<HelloReply>(&bytes, HELLO_MAX_FRAME)? {
                        HelloReply::Accepted { version, agent } if version == PROTOCOL_VERSION => {
                            Ok(agent)
                        }
                        HelloReply::Accepted { version, .. } => {
                            Err(ProtocolError::VersionMismatch {
                                ours: PROTOCOL_VERSION,
                                theirs: version,
                            }
                            .into())
                        }
                        HelloReply::Rejected { reason, .. } => {
                            Err(ProtocolError::Rejected(reason).into())
                        }
                    }
                });
                ready.store(result.is_ok(), Ordering::Release);
                done(result);
            });
    }

    /// Send one request with `budget` as both its `budget_us` and the reply timeout; `done`
    /// is called exactly once.
    pub fn request<F>(&self, body: HelperRequest, budget: Duration, done: F)
    where
        F: FnOnce(Result<HelperResponse, HelperXpcError>) + Send + 'static,
    {
        let req = Request {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            budget_us: u64::try_from(budget.as_micros()).unwrap_or(u64::MAX),
            body,
        };
        self.send_request(&req, move |r| done(r.map(|resp| resp.body)));
    }

    /// Send `req` as it is (the caller's id), with its `budget_us` as the reply timeout; `done`
    /// is called exactly once, on XPC's queue (or at once when not ready), with the response
    /// whose id matches.
    pub fn send_request<F>(&self, req: &Request<HelperRequest>, done: F)
    where
        F: FnOnce(Result<Response<HelperResponse>, HelperXpcError>) + Send + 'static,
    {
        if !self.ready() {
            return done(Err(HelperXpcError::NotReady));
        }
        let frame = match protocol::frame::encode_frame(req, HELPER_MAX_FRAME) {
            Ok(f) => f,
            Err(e) => return done(Err(e.into())),
        };
        let id = req.id;
        let timeout = Duration::from_micros(req.budget_us);
        self.conn
            .send_with_reply(FrameKind::Envelope, &frame, timeout, move |r| {
                let result = r.map_err(HelperXpcError::from).and_then(|(kind, bytes)| {
                    if kind != Some(FrameKind::Envelope) {
                        return Err(HelperXpcError::WrongKind(kind));
                    }
                    let resp: Response<HelperResponse> =
                        decode_whole_frame(&bytes, HELPER_MAX_FRAME)?;
                    if resp.id != id {
                        return Err(HelperXpcError::IdMismatch {
                            sent: id,
                            got: resp.id,
                        });
                    }
                    Ok(resp)
                });
                done(result);
            });
    }

    /// Cancel the connection: pending replies fail at once, nothing more is delivered.
    pub fn cancel(&self) {
        self.ready.store(false, Ordering::Release);
        self.conn.cancel();
    }
}

/// The fallback for a request whose reply will not come.
fn failure_reason(e: &HelperXpcError) -> FallbackReason {
    match e {
        HelperXpcError::Xpc(XpcError::Timeout { .. }) => FallbackReason::Deadline,
        HelperXpcError::Xpc(_) | HelperXpcError::NotReady => FallbackReason::HelperUnavailable,
        HelperXpcError::Protocol(_)
        | HelperXpcError::WrongKind(_)
        | HelperXpcError::IdMismatch { .. } => FallbackReason::HelperError,
    }
}

/// How long the greeting (handshake, then ping) may take.
const GREETING_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The core's helper transport over XPC.
#[derive(Debug)]
pub struct XpcTransport {
    service: String,
    requirement: Option<String>,
    /// The current connection; replaced after `Invalid` (a cancelled or never-found service
    /// never delivers again). Locked only to clone or swap the `Arc`.
    conn: Mutex<Option<Arc<HelperXpc>>>,
    connected: AtomicBool,
    /// The helper's pid from the kernel's stamp on the connection; 0 when unknown.
    pid: AtomicU32,
    /// The helper's audit token from the kernel's stamp on the connection. Read by the
    /// backend's maintenance thread only (never the delivery queue).
    token: Mutex<Option<model::AuditToken>>,
    /// Where replies go; set while `run` runs.
    sink: Mutex<Option<LinkSink>>,
    lost_tx: Sender<XpcError>,
    lost_rx: Receiver<XpcError>,
}

impl XpcTransport {
    /// A transport to `service`. Connects nothing yet (libxpc is lazy); fails only on a name
    /// or requirement libxpc refuses.
    pub fn new(service: &str, requirement: Option<String>) -> Result<Arc<Self>, XpcError> {
        let (lost_tx, lost_rx) = crossbeam_channel::bounded(4);
        let t = Self {
            service: service.to_owned(),
            requirement,
            conn: Mutex::new(None),
            connected: AtomicBool::new(false),
            pid: AtomicU32::new(0),
            token: Mutex::new(None),
            sink: Mutex::new(None),
            lost_tx,
            lost_rx,
        };
        let first = t.new_connection()?;
        *lock(&t.conn) = Some(first);
        Ok(Arc::new(t))
    }

    fn new_connection(&self) -> Result<Arc<HelperXpc>, XpcError> {
        let tx = self.lost_tx.clone();
        // Full: the helper thread already has a loss to handle; one is enough.
        HelperXpc::connect(&self.service, self.requirement.clone(), move |e| {
            let _ = tx.try_send(e);
        })
    }

    fn current(&self) -> Result<Arc<HelperXpc>, XpcError> {
        let mut c = lock(&self.conn);
        if let Some(conn) = c.as_ref() {
            return Ok(Arc::clone(conn));
        }
        let conn = self.new_connection()?;
        *c = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Handshake, then ping for the pid. `None` when stopping.
    fn greet(&self, conn: &HelperXpc, stop: &Receiver<()>) -> Option<Result<PeerIdentity, String>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        conn.handshake(GREETING_TIMEOUT, move |r| {
            let _ = tx.try_send(r);
        });
        let agent = crossbeam_channel::select! {
            recv(rx) -> r => match r {
                Ok(Ok(agent)) => agent,
                Ok(Err(e)) => return Some(Err(e.to_string())),
                Err(_) => return Some(Err("the handshake callback was dropped".to_owned())),
            },
            recv(stop) -> _ => return None,
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        conn.request(HelperRequest::Ping, GREETING_TIMEOUT, move |r| {
            let _ = tx.try_send(r);
        });
        let said = crossbeam_channel::select! {
            recv(rx) -> r => match r {
                Ok(Ok(HelperResponse::Pong { pid, .. })) => pid,
                Ok(Ok(other)) => {
                    tracing::warn!(?other, "unexpected answer to ping");
                    0
                }
                Ok(Err(e)) => return Some(Err(format!("ping after the handshake: {e}"))),
                Err(_) => return Some(Err("the ping callback was dropped".to_owned())),
            },
            recv(stop) -> _ => return None,
        };
        // Who the backend mutes comes from the kernel's stamp on the connection (the reply just
        // arrived, so it is set), never from the `Pong` (issue 10 item 6): a helper that lied,
        // or an impostor, must not get some other process muted.
        let peer = PeerIdentity::from_kernel(conn.peer_pid(), conn.peer_audit_token());
        if peer.pid != said {
            tracing::warn!(
                kernel = peer.pid,
                said,
                "the helper's Pong names another pid; using the kernel's"
            );
        }
        if peer.token.is_none() {
            tracing::warn!(
                pid = peer.pid,
                "no usable audit token on the helper's XPC connection; it is muted by path only"
            );
        }
        tracing::info!(%agent, pid = peer.pid, "helper connected over XPC");
        Some(Ok(peer))
    }

    fn went_down(&self, sink: &LinkSink) {
        if self.connected.swap(false, Ordering::AcqRel) {
            self.pid.store(0, Ordering::Release);
            sink.disconnected(FallbackReason::HelperUnavailable);
        }
    }

    fn run_loop(&self, sink: &LinkSink, stop: &Receiver<()>) {
        let wait = |d: Duration| stop.recv_timeout(d).is_err_and(|e| e.is_disconnected());
        let mut backoff = BACKOFF_START;
        let mut logged = false;
        loop {
            let conn = match self.current() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot create the helper XPC connection");
                    if wait(BACKOFF_MAX) {
                        return;
                    }
                    continue;
                }
            };
            // Losses reported before this attempt belong to earlier ones.
            while self.lost_rx.try_recv().is_ok() {}
            match self.greet(&conn, stop) {
                None => return,
                Some(Ok(peer)) => {
                    logged = false;
                    backoff = BACKOFF_START;
                    *lock(&self.token) = peer.token;
                    self.pid.store(peer.pid, Ordering::Release);
                    self.connected.store(true, Ordering::Release);
                    sink.connected();
                    let lost = crossbeam_channel::select! {
                        recv(self.lost_rx) -> e => e.ok(),
                        recv(stop) -> _ => return,
                    };
                    if let Some(e) = &lost {
                        tracing::warn!(error = %e, "helper XPC connection lost; greeting again");
                    }
                    self.went_down(sink);
                    if matches!(lost, Some(XpcError::Invalid { .. })) {
                        lock(&self.conn).take();
                    }
                }
                Some(Err(e)) => {
                    if !logged {
                        tracing::info!(service = %self.service, error = %e, "helper not reachable over XPC; retrying with backoff");
                        logged = true;
                    }
                    // An invalid connection never recovers: make a new one next time.
                    let invalid = self
                        .lost_rx
                        .try_iter()
                        .any(|e| matches!(e, XpcError::Invalid { .. }));
                    if invalid {
                        lock(&self.conn).take();
                    }
                }
            }
            if wait(backoff) {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

impl HelperTransport for XpcTransport {
    fn describe(&self) -> String {
        format!("xpc:{}", self.service)
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    fn peer_pid(&self) -> Option<u32> {
        match self.pid.load(Ordering::Acquire) {
            0 => None,
            pid => Some(pid),
        }
    }

    fn peer_token(&self) -> Option<model::AuditToken> {
        if self.connected() {
            *lock(&self.token)
        } else {
            None
        }
    }

    fn run(&self, sink: LinkSink, stop: &Receiver<()>) {
        *lock(&self.sink) = Some(sink.clone());
        self.run_loop(&sink, stop);
        self.went_down(&sink);
        lock(&self.sink).take();
    }

    fn send(
        &self,
        req: &Request<HelperRequest>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), TransportError> {
        if fd.is_some() {
            // Endpoint Security gives no descriptor; the helper opens by path and checks
            // identity (analysis-helper/src/macos/hash.rs).
            return Err(TransportError::FdUnsupported);
        }
        if !self.connected() {
            return Err(TransportError::NotConnected);
        }
        let conn = lock(&self.conn)
            .clone()
            .ok_or(TransportError::NotConnected)?;
        let sink = lock(&self.sink)
            .clone()
            .ok_or(TransportError::NotConnected)?;
        if !conn.ready() {
            return Err(TransportError::NotConnected);
        }
        let id = req.id;
        conn.send_request(req, move |r| match r {
            Ok(resp) => sink.response(resp),
            Err(e) => {
                let why = failure_reason(&e);
                if why == FallbackReason::HelperError {
                    tracing::warn!(error = %e, id, "bad reply from the helper");
                    sink.protocol_error();
                }
                sink.failed(id, why);
            }
        });
        Ok(())
    }

    fn close(&self) {
        self.connected.store(false, Ordering::Release);
        self.pid.store(0, Ordering::Release);
        if let Some(c) = lock(&self.conn).take() {
            c.cancel();
        }
    }
}
