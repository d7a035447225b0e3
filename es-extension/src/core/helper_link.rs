//! The transport under the helper connection: how request frames reach the helper and how its
//! responses come back. The core keeps ids, in-flight matching, fallbacks and metrics
//! (`helper_client`); a transport only moves frames and reports its connection state.
//!
//! Two transports exist: [`UnixTransport`](super::helper_unix::UnixTransport) (Linux, and
//! tests: one pipelined stream socket with SCM_RIGHTS descriptors) and the macOS XPC client
//! (`helper_xpc::XpcTransport`, beside it in `core/`). Tests may plug in their own.
#![forbid(unsafe_code)]

use std::os::fd::BorrowedFd;
use std::sync::{Arc, Weak};

use crossbeam_channel::Receiver;
use model::FallbackReason;
use protocol::{HelperRequest, HelperResponse, Request, Response};

/// Why a request was not handed to the transport. The core answers the item's fallback.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("no connection to the helper")]
    NotConnected,
    #[error("sending to the helper failed: {0}")]
    Send(String),
    #[error("this transport cannot pass file descriptors")]
    FdUnsupported,
}

/// A way to reach the helper.
///
/// The core calls [`run`](Self::run) once, on its helper thread, and [`send`](Self::send) from
/// its slow-path workers and control thread. Nothing here is called on the delivery thread
/// except [`connected`](Self::connected), which must therefore be a lock-free load.
pub trait HelperTransport: Send + Sync + 'static {
    /// Where this transport goes, for logs and `gatehouse helper ping` ("unix:/run/...").
    fn describe(&self) -> String;

    /// True while requests can be sent. Read on the delivery thread: an atomic load only.
    fn connected(&self) -> bool;

    /// The helper's pid on the current connection, when the transport knows it (kernel peer
    /// credentials, or the kernel's stamp on the XPC connection; never what the helper says of
    /// itself); `None` while disconnected.
    fn peer_pid(&self) -> Option<u32>;

    /// The helper's audit token on the current connection, stamped by the kernel on the
    /// connection itself (XPC), for muting the helper by token: exactly that process
    /// incarnation, never a later holder of its pid. `None` where the transport has no tokens
    /// (the Unix socket: Linux mutes by the peer-credential pid) or while disconnected.
    fn peer_token(&self) -> Option<model::AuditToken> {
        None
    }

    /// Connect lazily and keep connected (reconnecting with backoff), reporting to `sink`
    /// until `stop` is disconnected. Must never wait on the helper without also watching
    /// `stop`. Every response goes to [`LinkSink::response`]; losing a connection with
    /// requests on it is reported with [`LinkSink::disconnected`].
    fn run(&self, sink: LinkSink, stop: &Receiver<()>);

    /// Hand one request (with an optional descriptor for the helper to read through, borrowed
    /// only for this call: SCM_RIGHTS duplicates it into the message) to the connection. May
    /// make one bounded system call; never waits for the answer. The reply timeout, where the
    /// transport has one, is `req.budget_us`. On `Err` nothing was sent
    /// and no response for `req.id` will be reported.
    fn send(
        &self,
        req: &Request<HelperRequest>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), TransportError>;

    /// Drop the current connection and wake `run` (shutdown). Idempotent.
    fn close(&self);
}

impl std::fmt::Debug for dyn HelperTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HelperTransport({})", self.describe())
    }
}

/// The core's side of the link, implemented by the helper client.
pub(crate) trait LinkEvents: Send + Sync {
    fn on_connected(&self);
    fn on_response(&self, resp: Response<HelperResponse>);
    fn on_failed(&self, id: u64, why: FallbackReason);
    fn on_disconnected(&self, why: FallbackReason);
    fn on_protocol_error(&self);
}

/// Where a transport reports. Cheap to clone and safe to keep in callbacks: it holds the core
/// weakly, so a late XPC reply after shutdown goes nowhere.
#[derive(Clone)]
pub struct LinkSink(Weak<dyn LinkEvents>);

impl std::fmt::Debug for LinkSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.strong_count() > 0 {
            "LinkSink(live)"
        } else {
            "LinkSink(gone)"
        })
    }
}

impl LinkSink {
    pub(crate) fn new(events: Weak<dyn LinkEvents>) -> Self {
        Self(events)
    }

    fn with(&self, f: impl FnOnce(&dyn LinkEvents)) {
        if let Some(e) = self.0.upgrade() {
            f(&*e);
        }
    }

    /// A connection came up (counted in `helper_connects`).
    pub fn connected(&self) {
        self.with(|e| e.on_connected());
    }

    /// One response; matched by id. An id nobody waits for is counted and dropped, so late
    /// answers never answer twice.
    pub fn response(&self, resp: Response<HelperResponse>) {
        self.with(|e| e.on_response(resp));
    }

    /// Request `id` will get no response (timed out, or its connection failed): its event gets
    /// the fallback for `why` now, if nothing answered it yet.
    pub fn failed(&self, id: u64, why: FallbackReason) {
        self.with(|e| e.on_failed(id, why));
    }

    /// The connection is gone: every request in flight gets the fallback for `why`.
    pub fn disconnected(&self, why: FallbackReason) {
        self.with(|e| e.on_disconnected(why));
    }

    /// The helper sent something malformed (counted in `helper_protocol_errors`).
    pub fn protocol_error(&self) {
        self.with(|e| e.on_protocol_error());
    }
}

/// How the core reaches the helper, resolved from [`CoreConfig`](super::CoreConfig).
#[derive(Debug, Clone)]
pub enum HelperEndpoint {
    /// No helper: every analysis gets the fallback.
    None,
    /// The helper's Unix socket (`CoreConfig::helper_socket`).
    Unix(std::path::PathBuf),
    /// A transport the backend built (macOS XPC, tests).
    Custom(Arc<dyn HelperTransport>),
}

/// Who the helper is on a connection, as the kernel stamped it: the pid and, where the
/// transport has one, the audit token the backend mutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity {
    /// 0 when the transport could not tell.
    pub pid: u32,
    pub token: Option<model::AuditToken>,
}

impl PeerIdentity {
    /// From the connection's stamped pid and audit token. A token that names another pid than
    /// the connection's (or that arrives without a pid) is not used: muting it could mute some
    /// other process, so the helper is then muted by path only.
    pub fn from_kernel(pid: Option<u32>, token: Option<[u32; 8]>) -> Self {
        let pid = pid.unwrap_or(0);
        let token = token
            .map(model::AuditToken)
            .filter(|t| pid != 0 && t.pid() == pid);
        Self { pid, token }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_identity_table() {
        let token = |pid: u32| {
            let mut t = [501, 501, 20, 501, 20, 0, 100_001, 4];
            t[5] = pid;
            t
        };
        type Token = Option<[u32; 8]>;
        // (stamped pid, stamped token, pid used, token used)
        let cases: [(Option<u32>, Token, u32, bool); 5] = [
            (Some(150), Some(token(150)), 150, true),
            (Some(150), None, 150, false),
            // Stamped for another process (a stale token): never muted.
            (Some(150), Some(token(151)), 150, false),
            (None, Some(token(150)), 0, false),
            (None, None, 0, false),
        ];
        for (pid, tok, want_pid, want_token) in cases {
            let p = PeerIdentity::from_kernel(pid, tok);
            assert_eq!(p.pid, want_pid, "{pid:?} {tok:?}");
            assert_eq!(p.token.is_some(), want_token, "{pid:?} {tok:?}");
            if let Some(t) = p.token {
                assert_eq!(t.0, tok.unwrap());
            }
        }
    }
}
