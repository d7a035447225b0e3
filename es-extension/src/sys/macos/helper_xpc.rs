//! The asynchronous XPC client to the helper's mach service (`dev.gatehouse.helper`): one
//! protocol frame per XPC message, a version handshake, request ids, and every request bounded
//! by its event's budget (the XPC timeout is the budget, so no reply is awaited past the
//! watchdog). Only `xpc_connection_send_message_with_reply` is used; nothing here blocks.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use protocol::{
    HELPER_MAX_FRAME, Hello, HelloReply, HelperRequest, HelperResponse, MAGIC, PROTOCOL_VERSION,
    ProtocolError, Request, Response, Role,
};
use xpc::{ConnectOptions, Connection, DispatchQueue, FrameKind, XpcError};

use crate::sys::es_convert::decode_xpc_frame;

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
    /// Set up the connection (libxpc connects lazily: this never waits on the helper).
    pub fn connect(service: &str, peer_requirement: Option<String>) -> Result<Arc<Self>, XpcError> {
        let ready = Arc::new(AtomicBool::new(false));
        let on_error_ready = Arc::clone(&ready);
        let options = ConnectOptions {
            privileged: true,
            peer_requirement,
            on_error: Some(Arc::new(move |e: XpcError| {
                on_error_ready.store(false, Ordering::Release);
                tracing::warn!(error = %e, "helper XPC connection");
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
                    match decode_xpc_frame::<HelloReply>(&bytes, HELLO_MAX_FRAME)? {
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
        if !self.ready() {
            return done(Err(HelperXpcError::NotReady));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = Request {
            id,
            budget_us: u64::try_from(budget.as_micros()).unwrap_or(u64::MAX),
            body,
        };
        let frame = match protocol::frame::encode_frame(&req, HELPER_MAX_FRAME) {
            Ok(f) => f,
            Err(e) => return done(Err(e.into())),
        };
        self.conn
            .send_with_reply(FrameKind::Envelope, &frame, budget, move |r| {
                let result = r.map_err(HelperXpcError::from).and_then(|(kind, bytes)| {
                    if kind != Some(FrameKind::Envelope) {
                        return Err(HelperXpcError::WrongKind(kind));
                    }
                    let resp: Response<HelperResponse> =
                        decode_xpc_frame(&bytes, HELPER_MAX_FRAME)?;
                    if resp.id != id {
                        return Err(HelperXpcError::IdMismatch {
                            sent: id,
                            got: resp.id,
                        });
                    }
                    Ok(resp.body)
                });
                done(result);
            });
    }
}
