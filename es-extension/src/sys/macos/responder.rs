//! The `Responder` for one ES message: `es_respond_flags_result` for AUTH_OPEN (all bits to
//! allow, none to deny), `es_respond_auth_result` for the rest; `cache` only when asked.

use std::ptr::NonNull;
use std::sync::Arc;

use endpoint_sec::Message;
use endpoint_sec_sys::{es_auth_result_t, es_message_t};
use model::EventKind;

use super::client::EsClient;
use crate::backend::{Answer, BackendError, Responder};
use crate::sys::es_convert::{self, EsResponse};

/// Answers one retained ES message from any thread.
#[derive(Debug)]
pub struct EsResponder {
    client: Arc<EsClient>,
    /// The message pointer ES passed the handler; `_msg` holds the retain that keeps it alive.
    raw: NonNull<es_message_t>,
    _msg: Message,
    kind: EventKind,
    pid: u32,
}

// SAFETY: `raw` points to the ES message retained by `_msg` (which is Send), so it stays valid
// wherever the responder goes; ES allows answering from any thread; `EsClient` is Send + Sync.
unsafe impl Send for EsResponder {}

impl EsResponder {
    pub(crate) fn new(
        client: Arc<EsClient>,
        raw: NonNull<es_message_t>,
        msg: Message,
        kind: EventKind,
        pid: u32,
    ) -> Self {
        Self {
            client,
            raw,
            _msg: msg,
            kind,
            pid,
        }
    }
}

impl Responder for EsResponder {
    fn respond(self, answer: Answer) -> Result<(), BackendError> {
        let what = self.describe();
        let client = self.client.raw().map_err(|e| BackendError::Respond {
            what: what.clone(),
            source: std::io::Error::other(e),
        })?;
        // SAFETY: live client (checked just above; deleted only after the core answered every
        // event), and `raw` is kept alive by `_msg`. Both calls only read the message.
        let rc = unsafe {
            match es_convert::es_response(self.kind, answer) {
                EsResponse::Flags {
                    authorized_flags,
                    cache,
                } => endpoint_sec_sys::es_respond_flags_result(
                    client,
                    self.raw.as_ptr(),
                    authorized_flags,
                    cache,
                ),
                EsResponse::Auth { result, cache } => endpoint_sec_sys::es_respond_auth_result(
                    client,
                    self.raw.as_ptr(),
                    es_auth_result_t(result),
                    cache,
                ),
            }
        };
        es_convert::respond_result(rc.0).map_err(|e| BackendError::Respond {
            what,
            source: std::io::Error::other(e),
        })
    }

    fn describe(&self) -> String {
        format!("es {} pid {}", self.kind.as_str(), self.pid)
    }
}
