//! The server side: a mach-service listener whose peers must satisfy a code-signing
//! requirement, handing each message (one protocol frame) and a reply handle to a handler.

use std::ffi::c_void;
use std::fmt;
use std::sync::Arc;

use block2::RcBlock;
use dispatch2::{DispatchQueue, DispatchRetained};

use crate::object::{Delivered, Message, Object, c_string, classify};
use crate::{XpcError, sys};

/// Who sent a message, as libxpc reports the connection's peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    pub pid: i32,
    pub euid: u32,
}

/// A message from a peer, with the handle to answer it (if the peer asked for a reply).
#[derive(Debug)]
pub struct Incoming {
    pub peer: PeerInfo,
    pub message: Message,
    pub reply: Option<Reply>,
}

impl Incoming {
    /// The message's [`FrameKind`](crate::FrameKind) field (0 when absent).
    pub fn kind(&self) -> u64 {
        self.message.u64(Message::KIND_KEY)
    }

    /// The protocol frame from the `frame` field, or `NoFrame` for a message without one.
    pub fn frame(&self, service: &str) -> Result<Vec<u8>, XpcError> {
        self.message.frame().ok_or_else(|| XpcError::NoFrame {
            service: service.to_owned(),
        })
    }
}

/// Answers one message. May be sent from any thread, once; dropping it sends nothing (the peer
/// then times out or sees the connection close).
#[derive(Debug)]
pub struct Reply {
    peer: Object,
    reply: Message,
}

impl Reply {
    /// Send `frame` as the reply, tagged with `kind`. Does not block (libxpc queues it).
    pub fn send(mut self, kind: crate::FrameKind, frame: &[u8]) {
        self.reply.set_u64(Message::KIND_KEY, kind as u64);
        self.reply.set_data(Message::FRAME_KEY, frame);
        // SAFETY: both objects are live (we hold references); libxpc retains the message.
        unsafe { sys::xpc_connection_send_message(self.peer.as_ptr(), self.reply.0.as_ptr()) }
    }
}

/// What the listener's handler is told.
#[derive(Debug)]
pub enum ServerEvent {
    Message(Incoming),
    /// A peer connection failed: gone (`Invalid`), or refused by the code-signing requirement
    /// (`PeerRequirement`).
    PeerError {
        peer: PeerInfo,
        error: XpcError,
    },
    /// The listener itself failed (the service name is not ours in launchd, or cancelled).
    ListenerError(XpcError),
}

type Handler = Arc<dyn Fn(ServerEvent) + Send + Sync>;

/// A mach-service listener. Dropping it cancels the listener (peers already connected keep
/// their connections until they close).
pub struct Listener {
    conn: Object,
    _queue: DispatchRetained<DispatchQueue>,
    service: Arc<str>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Listen on `service_name` (which launchd must advertise in the job's `MachServices`).
    /// Every peer must satisfy `peer_requirement` (a code-signing requirement string) when one
    /// is given: libxpc checks it and refuses the peer's messages otherwise. `handler` runs on
    /// XPC's queues and must not block; hand work to a bounded pool.
    pub fn new<H>(
        service_name: &str,
        peer_requirement: Option<&str>,
        handler: H,
    ) -> Result<Self, XpcError>
    where
        H: Fn(ServerEvent) + Send + Sync + 'static,
    {
        let name = c_string("XPC service name", service_name)?;
        let requirement = peer_requirement
            .map(|r| c_string("code-signing requirement", r))
            .transpose()?;
        // A bad requirement string must fail start-up, not every peer later: libxpc only
        // parses it when set on a connection, so check it on the first peer and also here by
        // refusing NUL bytes. (There is no parse-only call in libxpc.)
        let queue = DispatchQueue::new("dev.gatehouse.xpc.listener", None);
        // SAFETY: valid C string (copied by libxpc); live queue we keep retained.
        let raw = unsafe {
            sys::xpc_connection_create_mach_service(
                name.as_ptr(),
                Some(&queue),
                sys::XPC_CONNECTION_MACH_SERVICE_LISTENER,
            )
        };
        // SAFETY: +1 reference from the create call.
        let conn = unsafe { Object::from_owned(raw) }.ok_or(XpcError::Null {
            call: "xpc_connection_create_mach_service",
        })?;
        let service: Arc<str> = Arc::from(service_name);
        let handler: Handler = Arc::new(handler);

        let svc = Arc::clone(&service);
        let listener_handler = RcBlock::new(move |obj: *mut c_void| {
            // SAFETY: libxpc lends the handler a live object for the call's duration.
            match unsafe { classify(obj.cast()) } {
                Delivered::Connection(peer) => {
                    accept_peer(peer, requirement.as_deref(), &svc, &handler);
                }
                Delivered::Error(kind) => {
                    handler(ServerEvent::ListenerError(kind.into_error(&svc)));
                }
                Delivered::Dictionary(_) | Delivered::Other => {}
            }
        });
        // SAFETY: live listener, not yet resumed; libxpc copies the block.
        unsafe { sys::xpc_connection_set_event_handler(conn.as_ptr(), &listener_handler) };
        // SAFETY: live listener with its handler set.
        unsafe { sys::xpc_connection_resume(conn.as_ptr()) };
        Ok(Self {
            conn,
            _queue: queue,
            service,
        })
    }

    pub fn service(&self) -> &str {
        &self.service
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // SAFETY: live connection; cancel is idempotent.
        unsafe { sys::xpc_connection_cancel(self.conn.as_ptr()) }
    }
}

fn peer_info(peer: &Object) -> PeerInfo {
    // SAFETY: `peer` is a live connection object.
    unsafe {
        PeerInfo {
            pid: sys::xpc_connection_get_pid(peer.as_ptr()),
            euid: sys::xpc_connection_get_euid(peer.as_ptr()),
        }
    }
}

/// Set up one new peer connection: requirement, handler, resume.
fn accept_peer(
    peer: Object,
    requirement: Option<&std::ffi::CStr>,
    service: &Arc<str>,
    handler: &Handler,
) {
    let info = peer_info(&peer);
    // The block holds its own reference to the peer, released when libxpc drops the block
    // after the connection is invalidated (cancelled or peer gone), so no cycle outlives it.
    let block_peer = peer.clone();
    let svc = Arc::clone(service);
    let h = Arc::clone(handler);
    let peer_handler = RcBlock::new(move |obj: *mut c_void| {
        // SAFETY: libxpc lends the handler a live object for the call's duration.
        match unsafe { classify(obj.cast()) } {
            Delivered::Dictionary(msg) => {
                // SAFETY: `msg` is a live dictionary received from the peer.
                let reply_raw = unsafe { sys::xpc_dictionary_create_reply(msg.0.as_ptr()) };
                // SAFETY: +1 reference (or NULL when the sender wants no reply).
                let reply = unsafe { Object::from_owned(reply_raw) }.map(|r| Reply {
                    peer: block_peer.clone(),
                    reply: Message(r),
                });
                h(ServerEvent::Message(Incoming {
                    peer: peer_info(&block_peer),
                    message: msg,
                    reply,
                }));
            }
            Delivered::Error(kind) => {
                h(ServerEvent::PeerError {
                    peer: info,
                    error: kind.into_error(&svc),
                });
            }
            Delivered::Connection(_) | Delivered::Other => {}
        }
    });
    // SAFETY: live peer connection, not yet resumed; libxpc copies the block.
    unsafe { sys::xpc_connection_set_event_handler(peer.as_ptr(), &peer_handler) };
    let mut refused = None;
    if let Some(req) = requirement {
        // SAFETY: live peer connection before resume; valid C string copied by libxpc.
        let rc = unsafe {
            sys::xpc_connection_set_peer_code_signing_requirement(peer.as_ptr(), req.as_ptr())
        };
        if rc != 0 {
            refused = Some(XpcError::BadRequirement {
                requirement: req.to_string_lossy().into_owned(),
                code: rc,
            });
        }
    }
    // SAFETY: live peer with its handler set; resumed even when refused, since a never-resumed
    // connection must not be released.
    unsafe { sys::xpc_connection_resume(peer.as_ptr()) };
    if let Some(error) = refused {
        // Fail closed: an unparseable requirement refuses every peer, loudly.
        // SAFETY: live, resumed peer; cancel is idempotent.
        unsafe { sys::xpc_connection_cancel(peer.as_ptr()) };
        handler(ServerEvent::PeerError { peer: info, error });
    }
}
