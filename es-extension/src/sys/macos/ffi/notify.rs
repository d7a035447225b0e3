//! The extension's XPC service for block notices (`NSEndpointSecurityMachServiceName`,
//! `<TEAMID>.dev.gatehouse.extension.xpc`): the host app's notifier agent, running in each
//! user's session, long-polls it with a `NoticeRequest` and is answered with a `NoticeBatch`
//! when one of that user's (or root's) processes is blocked. Every decision is in
//! `core::notices`; this file only decodes, checks the protocol version and replies.
//!
//! Peers must be our host app (a Developer ID requirement on `dev.gatehouse.app` of our team,
//! checked by libxpc), and the user they act for is the connection's euid, from the kernel.
//! The handler runs on XPC's queue and never blocks: a waiting request is a stored reply
//! handle, sent later from the events-log writer thread (libxpc queues it).

use std::sync::Arc;
use std::time::Instant;

use protocol::frame::{decode_whole_frame, encode_frame};
use protocol::{NOTICE_MAX_FRAME, NoticeBatch, NoticeRequest, PROTOCOL_VERSION};
use xpc::{FrameKind, Listener, ServerEvent, XpcError};

use crate::core::notices::BlockNotices;

/// Listens for notifier agents when the build has a team (the service name must start with
/// it; a development build without one serves no notices).
pub fn listen(notices: Arc<BlockNotices>) -> Option<Result<Listener, XpcError>> {
    let team = defaults::TEAM_ID?;
    let service = defaults::macos::extension_mach_service(team);
    let requirement = defaults::developer_id_requirement(defaults::macos::APP_ID, team);
    let svc = service.clone();
    Some(Listener::new(&service, Some(&requirement), move |ev| {
        handle(&notices, &svc, ev)
    }))
}

fn handle(notices: &BlockNotices, service: &str, ev: ServerEvent) {
    let msg = match ev {
        ServerEvent::Message(m) => m,
        ServerEvent::PeerError { peer, error } => {
            tracing::debug!(pid = peer.pid, %error, "notifier agent connection ended");
            return;
        }
        ServerEvent::ListenerError(error) => {
            tracing::warn!(%error, "the block-notice XPC service failed; the host app gets no notifications");
            return;
        }
    };
    let Some(reply) = msg.reply else { return };
    if msg.message.kind() != Some(FrameKind::Notice) {
        return;
    }
    let req = msg
        .message
        .frame()
        .ok_or_else(|| format!("{service}: a message without a frame"))
        .and_then(|f| {
            decode_whole_frame::<NoticeRequest>(&f, NOTICE_MAX_FRAME).map_err(|e| e.to_string())
        });
    let req = match req {
        Ok(r) if r.version == PROTOCOL_VERSION => r,
        Ok(r) => {
            tracing::warn!(
                pid = msg.peer.pid,
                version = r.version,
                "a notifier agent speaks another protocol version; update the host app"
            );
            return;
        }
        Err(e) => {
            tracing::warn!(pid = msg.peer.pid, error = %e, "undecodable notice request");
            return;
        }
    };
    notices.wait(
        req.after,
        msg.peer.euid,
        Instant::now(),
        Box::new(move |batch: NoticeBatch| {
            if let Ok(bytes) = encode_frame(&batch, NOTICE_MAX_FRAME) {
                reply.send(FrameKind::Notice, &bytes);
            }
        }),
    );
}
