//! The client side: a connection to a mach service with asynchronous, time-bounded replies.

use std::ffi::c_void;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use block2::RcBlock;
use dispatch2::{DispatchQueue, DispatchRetained, DispatchTime};

use crate::object::{Delivered, FrameKind, Message, Object, c_string, classify};
use crate::{XpcError, sys};

/// How to connect.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// Look the service up in the system bootstrap (`XPC_CONNECTION_MACH_SERVICE_PRIVILEGED`):
    /// needed for a launchd daemon's service such as `dev.gatehouse.helper`.
    pub privileged: bool,
    /// A code-signing requirement the service must satisfy (`xpc_connection_set_peer_code_
    /// signing_requirement`), e.g. `anchor apple generic and certificate leaf[subject.OU] =
    /// "TEAMID" and identifier "dev.gatehouse.helper"`.
    pub peer_requirement: Option<String>,
    /// Called on the connection's queue for connection-level errors (interrupted: the service
    /// restarted; invalid: it does not exist or we cancelled). Must not block.
    pub on_error: Option<Arc<dyn Fn(XpcError) + Send + Sync>>,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("privileged", &self.privileged)
            .field("peer_requirement", &self.peer_requirement)
            .field("on_error", &self.on_error.is_some())
            .finish()
    }
}

/// A client connection to a mach service. Sending never blocks: replies and timeouts arrive on
/// the connection's dispatch queue.
#[derive(Debug)]
pub struct Connection {
    conn: Object,
    queue: DispatchRetained<DispatchQueue>,
    service: Arc<str>,
}

impl Connection {
    /// Connect to `service_name`; handlers and replies run on `queue`. Connecting does not talk
    /// to the service (libxpc connects lazily on the first message), so this never waits on it.
    pub fn connect(
        service_name: &str,
        queue: DispatchRetained<DispatchQueue>,
        options: ConnectOptions,
    ) -> Result<Self, XpcError> {
        let name = c_string("XPC service name", service_name)?;
        let requirement = options
            .peer_requirement
            .as_deref()
            .map(|r| c_string("code-signing requirement", r))
            .transpose()?;
        let flags = if options.privileged {
            sys::XPC_CONNECTION_MACH_SERVICE_PRIVILEGED
        } else {
            0
        };
        // SAFETY: `name` is a valid C string for the call (libxpc copies it); `queue` is a live
        // dispatch queue we keep retained for the connection's life.
        let raw =
            unsafe { sys::xpc_connection_create_mach_service(name.as_ptr(), Some(&queue), flags) };
        // SAFETY: `raw` is the +1 reference the create call returned.
        let conn = unsafe { Object::from_owned(raw) }.ok_or(XpcError::Null {
            call: "xpc_connection_create_mach_service",
        })?;
        let service: Arc<str> = Arc::from(service_name);

        let on_error = options.on_error;
        let svc = Arc::clone(&service);
        let handler = RcBlock::new(move |obj: *mut c_void| {
            // SAFETY: libxpc lends the handler a live object for the call's duration.
            if let Delivered::Error(kind) = unsafe { classify(obj.cast()) }
                && let Some(cb) = &on_error
            {
                cb(kind.into_error(&svc));
            }
            // A client connection accepts no unsolicited messages: anything else is ignored.
        });
        // SAFETY: `conn` is a live, not yet resumed connection; libxpc copies the block.
        unsafe { sys::xpc_connection_set_event_handler(conn.as_ptr(), &handler) };

        let mut requirement_error = None;
        if let Some(req) = &requirement {
            // SAFETY: live connection, not yet resumed (the call must precede resume); valid C
            // string, copied by libxpc.
            let rc = unsafe {
                sys::xpc_connection_set_peer_code_signing_requirement(conn.as_ptr(), req.as_ptr())
            };
            if rc != 0 {
                requirement_error = Some(XpcError::BadRequirement {
                    requirement: req.to_string_lossy().into_owned(),
                    code: rc,
                });
            }
        }
        // SAFETY: live connection with its event handler set. Resumed even on the error path,
        // because a never-resumed connection must not be released.
        unsafe { sys::xpc_connection_resume(conn.as_ptr()) };
        if let Some(err) = requirement_error {
            // SAFETY: live, resumed connection; cancel is idempotent.
            unsafe { sys::xpc_connection_cancel(conn.as_ptr()) };
            return Err(err);
        }
        Ok(Self {
            conn,
            queue,
            service,
        })
    }

    /// The service this connection talks to.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The peer's pid as the kernel stamped it on the connection (`xpc_connection_get_pid`),
    /// never what the peer says about itself; `None` until a message from the peer has arrived.
    pub fn peer_pid(&self) -> Option<u32> {
        // SAFETY: `conn` is a live connection object for as long as `self`.
        let pid = unsafe { sys::xpc_connection_get_pid(self.conn.as_ptr()) };
        u32::try_from(pid).ok().filter(|p| *p != 0)
    }

    /// The peer's audit token as the kernel stamped it on the last message received
    /// (`xpc_connection_get_audit_token`): one process incarnation, which a later holder of
    /// the same pid does not share. `None` until a message from the peer has arrived.
    pub fn peer_audit_token(&self) -> Option<[u32; 8]> {
        let mut token = [0u32; 8];
        // SAFETY: `conn` is a live connection object for as long as `self`; `token` is a
        // writable `audit_token_t` (eight 32-bit words).
        unsafe { sys::xpc_connection_get_audit_token(self.conn.as_ptr(), &mut token) };
        // A token is all zeroes until a message has arrived; pid 0 is the kernel, never a peer.
        (token[5] != 0).then_some(token)
    }

    /// Send one protocol frame of `kind` and call `callback` exactly once on the connection's
    /// queue: with the reply's kind and frame, with the connection error libxpc delivered
    /// instead, or with [`XpcError::Timeout`] when `timeout` passes first (a late reply is then
    /// dropped). Never blocks the caller.
    pub fn send_with_reply<F>(&self, kind: FrameKind, frame: &[u8], timeout: Duration, callback: F)
    where
        F: FnOnce(Result<(Option<FrameKind>, Vec<u8>), XpcError>) + Send + 'static,
    {
        let svc = Arc::clone(&self.service);
        self.send_message_with_reply(Message::with_frame(kind, frame), timeout, move |r| {
            callback(r.and_then(|m| {
                let frame = m.frame().ok_or_else(|| XpcError::NoFrame {
                    service: svc.to_string(),
                })?;
                Ok((m.kind(), frame))
            }))
        });
    }

    /// [`Self::send_with_reply`] for a whole message.
    pub fn send_message_with_reply<F>(&self, msg: Message, timeout: Duration, callback: F)
    where
        F: FnOnce(Result<Message, XpcError>) + Send + 'static,
    {
        // Whoever takes the callback first (reply or timer) answers; the other finds `None`.
        let slot = Arc::new(Mutex::new(Some(callback)));
        let take =
            |slot: &Mutex<Option<F>>| slot.lock().unwrap_or_else(PoisonError::into_inner).take();

        let reply_slot = Arc::clone(&slot);
        let svc = Arc::clone(&self.service);
        let handler = RcBlock::new(move |obj: *mut c_void| {
            let Some(cb) = take(&reply_slot) else {
                return;
            };
            // SAFETY: libxpc lends the reply handler a live object for the call's duration.
            let result = match unsafe { classify(obj.cast()) } {
                Delivered::Dictionary(m) => Ok(m),
                Delivered::Error(kind) => Err(kind.into_error(&svc)),
                Delivered::Connection(_) | Delivered::Other => Err(XpcError::NoFrame {
                    service: svc.to_string(),
                }),
            };
            cb(result);
        });
        // SAFETY: live connection and message (both held by us for the call); libxpc retains
        // the message and copies the block; replies run on our retained queue.
        unsafe {
            sys::xpc_connection_send_message_with_reply(
                self.conn.as_ptr(),
                msg.0.as_ptr(),
                Some(&self.queue),
                &handler,
            )
        };

        let svc = Arc::clone(&self.service);
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let when = DispatchTime::try_from(timeout).unwrap_or(DispatchTime::FOREVER);
        let fire = move || {
            if let Some(cb) = take(&slot) {
                cb(Err(XpcError::Timeout {
                    service: svc.to_string(),
                    timeout_ms,
                }));
            }
        };
        // `after` cannot fail in this version; if it ever does, the reply still answers.
        let _ = self.queue.after(when, fire);
    }

    /// Cancel the connection: pending replies get `Invalid`, and nothing more is delivered.
    pub fn cancel(&self) {
        // SAFETY: live connection; cancel is idempotent.
        unsafe { sys::xpc_connection_cancel(self.conn.as_ptr()) }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.cancel();
    }
}
