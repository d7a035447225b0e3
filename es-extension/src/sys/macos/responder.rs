//! The `Responder` for one ES message: `es_respond_flags_result` for AUTH_OPEN (all bits to
//! allow, none to deny), `es_respond_auth_result` for the rest; `cache` only when asked.
#![forbid(unsafe_code)]

use std::sync::Arc;

use model::EventKind;

use super::api::EsApi;
use super::convert::{self, EsResponse};
use crate::backend::{Answer, BackendError, Responder};

/// Answers one retained ES message from any thread.
#[derive(Debug)]
pub struct EsResponder<A: EsApi> {
    api: Arc<A>,
    msg: A::Msg,
    kind: EventKind,
    pid: u32,
}

impl<A: EsApi> EsResponder<A> {
    pub(crate) fn new(api: Arc<A>, msg: A::Msg, kind: EventKind, pid: u32) -> Self {
        Self {
            api,
            msg,
            kind,
            pid,
        }
    }
}

/// Answer `msg` of `kind` (shared by the responder and the handler's immediate answers).
pub(crate) fn answer<A: EsApi>(
    api: &A,
    msg: &A::Msg,
    kind: EventKind,
    answer: Answer,
) -> Result<(), String> {
    let rc = match convert::es_response(kind, answer) {
        EsResponse::Flags {
            authorized_flags,
            cache,
        } => api.respond_flags(msg, authorized_flags, cache),
        EsResponse::Auth { result, cache } => api.respond_auth(msg, result, cache),
    }
    .map_err(|e| e.to_string())?;
    convert::respond_result(rc).map_err(|e| e.to_string())
}

impl<A: EsApi> Responder for EsResponder<A> {
    fn respond(self, a: Answer) -> Result<(), BackendError> {
        answer(&*self.api, &self.msg, self.kind, a).map_err(|e| BackendError::Respond {
            what: self.describe(),
            source: std::io::Error::other(e),
        })
    }

    fn describe(&self) -> String {
        format!("es {} pid {}", self.kind.as_str(), self.pid)
    }
}
