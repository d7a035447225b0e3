//! The helper's XPC mach-service listener (`dev.gatehouse.helper`): peers must satisfy the
//! configured code-signing requirement (the extension's signing identity), each XPC message
//! carries one protocol frame, and requests go to the bounded worker pool; a full pool answers
//! `Busy` at once. Nothing on XPC's queues blocks.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::frame::decode_whole_frame;
use protocol::handshake::{check_hello, reply_for};
use protocol::{
    HELPER_MAX_FRAME, Hello, HelloReply, HelperErrorKind, HelperRequest, HelperResponse,
    ProtocolError, Request, Response, Role,
};
use xpc::{FrameKind, Incoming, Listener, ServerEvent, XpcError};

use crate::pool::Pool;
use crate::service::Service;

/// The mach service launchd advertises for the helper (`MachServices` in its plist).
pub const SERVICE_NAME: &str = "dev.gatehouse.helper";

const HELLO_MAX_FRAME: u32 = 1024;

/// How the listener authenticates peers.
#[derive(Debug, Clone)]
pub struct Config {
    pub service: String,
    /// The code-signing requirement a peer must satisfy, e.g. `anchor apple generic and
    /// certificate leaf[subject.OU] = "TEAMID" and identifier "dev.gatehouse.extension"`.
    /// Without one, any local process can reach the service, so peers get the CLI role (ping
    /// and stats only) and analysis is refused.
    pub peer_requirement: Option<String>,
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on XPC service {service}: {source}")]
    Listen {
        service: String,
        #[source]
        source: XpcError,
    },
}

/// The role granted to authenticated peers.
fn peer_role(config: &Config) -> Role {
    if config.peer_requirement.is_some() {
        Role::Extension
    } else {
        Role::Cli
    }
}

fn hello_reply(service: &Service, role: Role, hello: Result<Hello, ProtocolError>) -> HelloReply {
    // Without a peer requirement nothing vouches for the peer, so it gets the CLI role only.
    let allowed: &[Role] = if role == Role::Extension {
        &[Role::Extension, Role::Cli]
    } else {
        &[Role::Cli]
    };
    let checked = hello.and_then(|h| match check_hello(&h, allowed) {
        Err(ProtocolError::Unauthorized(_)) if h.role == Role::Extension => {
            Err(ProtocolError::Unauthorized(
                "this helper has no peer code-signing requirement configured, so it does not \
                 trust any peer as the extension; set one (--peer-requirement)"
                    .to_owned(),
            ))
        }
        other => other,
    });
    reply_for(&checked, service.agent())
}

fn handle(config: &Config, service: &Arc<Service>, pool: &Pool, msg: Incoming) {
    let Incoming { message, reply, .. } = msg;
    let Some(reply) = reply else {
        return; // nothing to answer: the peer wants no reply
    };
    let role = peer_role(config);
    let Some(frame) = message.frame() else {
        tracing::warn!("XPC message without a frame; ignored");
        return;
    };
    match message.kind() {
        Some(FrameKind::Hello) => {
            let answer = hello_reply(
                service,
                role,
                decode_whole_frame::<Hello>(&frame, HELLO_MAX_FRAME),
            );
            if let Ok(bytes) = protocol::frame::encode_frame(&answer, HELLO_MAX_FRAME) {
                reply.send(FrameKind::Hello, &bytes);
            }
        }
        Some(FrameKind::Envelope) => {
            let arrived = Instant::now();
            let req: Request<HelperRequest> = match decode_whole_frame(&frame, HELPER_MAX_FRAME) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "malformed request frame; dropped");
                    return;
                }
            };
            service.count_arrival(&req.body);
            let deadline = arrived + Duration::from_micros(req.budget_us);
            let id = req.id;
            let svc = Arc::clone(service);
            let send = move |body: HelperResponse| match protocol::frame::encode_frame(
                &Response { id, body },
                HELPER_MAX_FRAME,
            ) {
                Ok(bytes) => reply.send(FrameKind::Envelope, &bytes),
                Err(e) => tracing::error!(error = %e, "cannot encode a response"),
            };
            // The pool owns the reply from here; if the pool refuses, the job (and the reply
            // inside it) comes back through the shared slot so we can answer Busy.
            let slot = Arc::new(std::sync::Mutex::new(Some(send)));
            let job_slot = Arc::clone(&slot);
            let accepted = pool.try_submit(move || {
                let send = job_slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                if let Some(send) = send {
                    send(svc.handle(role, &req.body, None, deadline));
                }
            });
            if accepted.is_err() {
                let send = slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                if let Some(send) = send {
                    send(service.error(
                        HelperErrorKind::Busy,
                        "all analysis workers are busy; answer the fallback",
                    ));
                }
            }
        }
        // Block notices are the extension's own service, never the helper's.
        Some(FrameKind::Notice) => {
            tracing::warn!("a block-notice request on the helper's service; ignored")
        }
        None => tracing::warn!("XPC message of unknown kind; ignored"),
    }
}

/// Start listening. The listener runs on XPC's queues; keep the returned value alive (dropping
/// it cancels the listener) and run the main thread's loop (`CFRunLoop` or `dispatch_main`).
pub fn listen(
    config: Config,
    service: Arc<Service>,
    pool: Arc<Pool>,
) -> Result<Listener, ServerError> {
    if config.peer_requirement.is_none() {
        tracing::warn!(
            "no peer code-signing requirement: every local process may reach {} (ping and stats only)",
            config.service
        );
    }
    let name = config.service.clone();
    let requirement = config.peer_requirement.clone();
    Listener::new(&name, requirement.as_deref(), move |event| match event {
        ServerEvent::Message(msg) => handle(&config, &service, &pool, msg),
        ServerEvent::PeerError { peer, error } => match error {
            XpcError::Invalid { .. } => tracing::debug!(pid = peer.pid, "peer disconnected"),
            other => tracing::warn!(pid = peer.pid, error = %other, "peer refused or failed"),
        },
        ServerEvent::ListenerError(e) => tracing::error!(error = %e, "XPC listener failed"),
    })
    .map_err(|source| ServerError::Listen {
        service: name.clone(),
        source,
    })
}

/// Listen and serve until the process is terminated (launchd sends SIGTERM; in-flight work is
/// dropped with the process, which is what a budget-bounded request expects). libxpc delivers
/// on its own dispatch queues, so the calling (main) thread only has to stay alive.
pub fn run(
    config: Config,
    service: Arc<Service>,
    pool: Arc<Pool>,
) -> Result<std::convert::Infallible, ServerError> {
    let name = config.service.clone();
    let _listener = listen(config, service, pool)?;
    tracing::info!("gatehouse-helper listening on XPC service {name}");
    loop {
        std::thread::park();
    }
}
