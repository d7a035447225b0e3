//! The ES client: created with a block handler through `endpoint-sec-sys` (the high-level
//! `endpoint_sec::Client` is `!Send`, and we answer from other threads), subscriptions, process
//! and path mutes.
//!
//! The handler runs on ES's serial delivery queue. It retains the message (clone of
//! `endpoint_sec::Message`), converts it to a `model::Event` at once, computes the deadline from
//! the message's mach time, and calls the sink (the core's `deliver`), which never blocks.

use std::ffi::CString;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use endpoint_sec::Message;
use endpoint_sec_sys::{
    audit_token_t, es_action_type_t, es_auth_result_t, es_client_t, es_event_type_t, es_message_t,
    es_mute_path_type_t,
};
use model::EventKind;

use super::control::EsCounters;
use super::responder::EsResponder;
use super::{convert, time};
use crate::backend::Delivery;
use crate::sys::es_convert::{self, NewClientError};

/// What the handler hands every converted AUTH event to (the core's `deliver`).
pub type Sink = Arc<dyn Fn(Delivery<EsResponder>) + Send + Sync>;

/// A failed ES client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    NewClient(#[from] NewClientError),
    #[error("{call} failed (ES_RETURN_ERROR){hint}")]
    Call {
        call: &'static str,
        hint: &'static str,
    },
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("the ES client was already deleted")]
    Deleted,
}

/// The ES client handle shared by the handler, every responder and the kernel control.
#[derive(Debug)]
pub struct EsClient {
    raw: NonNull<es_client_t>,
    deleted: AtomicBool,
}

// SAFETY: Apple's ESClient.h documents answering "out of order" from other threads after
// retaining the message, and the subscribe, mute and clear-cache calls carry no thread
// affinity; only `es_delete_client` must run on the creating thread, which `delete` documents
// and `run` honours (both happen on the main thread).
unsafe impl Send for EsClient {}
// SAFETY: as above; the client is only ever used through the thread-safe C calls.
unsafe impl Sync for EsClient {}

fn ok(
    ret: endpoint_sec_sys::es_return_t,
    call: &'static str,
    hint: &'static str,
) -> Result<(), ClientError> {
    if ret == endpoint_sec_sys::es_return_t::ES_RETURN_SUCCESS {
        Ok(())
    } else {
        Err(ClientError::Call { call, hint })
    }
}

/// The ES event type for one of our kinds (all AUTH).
pub fn es_event_type(kind: EventKind) -> es_event_type_t {
    match kind {
        EventKind::Exec => es_event_type_t::ES_EVENT_TYPE_AUTH_EXEC,
        EventKind::Open => es_event_type_t::ES_EVENT_TYPE_AUTH_OPEN,
        EventKind::Mount => es_event_type_t::ES_EVENT_TYPE_AUTH_MOUNT,
        EventKind::Remount => es_event_type_t::ES_EVENT_TYPE_AUTH_REMOUNT,
        EventKind::Rename => es_event_type_t::ES_EVENT_TYPE_AUTH_RENAME,
        EventKind::Unlink => es_event_type_t::ES_EVENT_TYPE_AUTH_UNLINK,
        EventKind::Truncate => es_event_type_t::ES_EVENT_TYPE_AUTH_TRUNCATE,
        EventKind::Link => es_event_type_t::ES_EVENT_TYPE_AUTH_LINK,
        EventKind::Create => es_event_type_t::ES_EVENT_TYPE_AUTH_CREATE,
    }
}

/// The shortest deadline we assume when the timebase is unknown: answer almost at once.
const UNKNOWN_DEADLINE: Duration = Duration::from_millis(100);

impl EsClient {
    /// Connect to ES. Events flow only after [`Self::subscribe`]; until the sink is usable the
    /// caller must not subscribe. Must be called on the thread that will later call
    /// [`Self::delete`] (the main thread).
    /// `counters` records messages the handler could not hand on.
    pub fn new(sink: Sink, counters: Arc<EsCounters>) -> Result<Arc<EsClient>, ClientError> {
        // The handler needs the shared handle for responders, and the handle exists only after
        // `es_new_client` returns: the cell is filled before any subscription, so it is always
        // set when a message arrives.
        let cell: Arc<OnceLock<Arc<EsClient>>> = Arc::new(OnceLock::new());
        let handler_cell = Arc::clone(&cell);
        let block = block2::RcBlock::new(
            move |client: NonNull<es_client_t>, raw: NonNull<es_message_t>| {
                let received = Instant::now();
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    handle(&handler_cell, &sink, raw, received)
                }));
                if !matches!(outcome, Ok(true)) {
                    EsCounters::inc(if outcome.is_err() {
                        &counters.handler_panics
                    } else {
                        &counters.undelivered
                    });
                    // A panic, or a message we could not hand on: answer it now, allowing (an
                    // event shape we cannot read must not stall the machine).
                    allow_now(client, raw);
                }
            },
        );
        let mut client: *mut es_client_t = std::ptr::null_mut();
        // SAFETY: `client` is a valid out-pointer; the block is an RcBlock, so es_new_client's
        // Block_copy only adds a reference and the ES runtime keeps the handler alive until
        // es_delete_client.
        let rc = unsafe { endpoint_sec_sys::es_new_client(&mut client, &block) };
        es_convert::new_client_result(rc.0)?;
        let raw = NonNull::new(client).ok_or(NewClientError::Internal)?;
        let handle = Arc::new(EsClient {
            raw,
            deleted: AtomicBool::new(false),
        });
        // Fresh cell: the set cannot fail.
        let _ = cell.set(Arc::clone(&handle));
        Ok(handle)
    }

    pub(crate) fn raw(&self) -> Result<*mut es_client_t, ClientError> {
        if self.deleted.load(Ordering::Acquire) {
            Err(ClientError::Deleted)
        } else {
            Ok(self.raw.as_ptr())
        }
    }

    /// Add subscriptions.
    pub fn subscribe(&self, kinds: &[EventKind]) -> Result<(), ClientError> {
        if kinds.is_empty() {
            return Ok(());
        }
        let types: Vec<es_event_type_t> = kinds.iter().map(|k| es_event_type(*k)).collect();
        let raw = self.raw()?;
        // SAFETY: live client; `types` is a valid array of `types.len()` (at most 9) entries.
        let ret =
            unsafe { endpoint_sec_sys::es_subscribe(raw, types.as_ptr(), types.len() as u32) };
        ok(ret, "es_subscribe", "")
    }

    /// Remove subscriptions.
    pub fn unsubscribe(&self, kinds: &[EventKind]) -> Result<(), ClientError> {
        if kinds.is_empty() {
            return Ok(());
        }
        let types: Vec<es_event_type_t> = kinds.iter().map(|k| es_event_type(*k)).collect();
        let raw = self.raw()?;
        // SAFETY: live client; valid array of `types.len()` entries.
        let ret =
            unsafe { endpoint_sec_sys::es_unsubscribe(raw, types.as_ptr(), types.len() as u32) };
        ok(ret, "es_unsubscribe", "")
    }

    /// Stop all deliveries (shutdown).
    pub fn unsubscribe_all(&self) -> Result<(), ClientError> {
        let raw = self.raw()?;
        // SAFETY: live client.
        ok(
            unsafe { endpoint_sec_sys::es_unsubscribe_all(raw) },
            "es_unsubscribe_all",
            "",
        )
    }

    /// Mute every event of the process with this audit token (ourselves, the helper).
    pub fn mute_process(&self, token: &audit_token_t) -> Result<(), ClientError> {
        let raw = self.raw()?;
        // SAFETY: live client; `token` is a valid audit token for the call.
        ok(
            unsafe { endpoint_sec_sys::es_mute_process(raw, token) },
            "es_mute_process",
            "",
        )
    }

    /// `es_mute_path` / `es_unmute_path` with the given `es_mute_path_type_t` number.
    pub fn mute_path(&self, path: &str, kind: u32, mute: bool) -> Result<(), ClientError> {
        let c = CString::new(path).map_err(|_| ClientError::Nul(path.to_owned()))?;
        let raw = self.raw()?;
        let ty = es_mute_path_type_t(kind);
        // SAFETY: live client; `c` is a valid C string for the call (ES copies it).
        let ret = unsafe {
            if mute {
                endpoint_sec_sys::es_mute_path(raw, c.as_ptr(), ty)
            } else {
                endpoint_sec_sys::es_unmute_path(raw, c.as_ptr(), ty)
            }
        };
        ok(
            ret,
            if mute {
                "es_mute_path"
            } else {
                "es_unmute_path"
            },
            " (unmuting a path that was never muted also fails)",
        )
    }

    /// `es_clear_cache` as a raw result code (see `es_convert::clear_cache_outcome`).
    pub fn clear_cache(&self) -> Result<u32, ClientError> {
        let raw = self.raw()?;
        // SAFETY: live client. Never called on the delivery thread (it is throttled and may
        // take a while).
        Ok(unsafe { endpoint_sec_sys::es_clear_cache(raw) }.0)
    }

    /// Delete the client. Must be called on the thread that created it, after the core has
    /// answered every pending event (a responder that fires later finds `Deleted`).
    pub fn delete(&self) -> Result<(), ClientError> {
        if self.deleted.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // SAFETY: live client (the flag was false), on the creating thread (caller); nothing
        // uses the pointer after this, since every user checks `deleted` first.
        ok(
            unsafe { endpoint_sec_sys::es_delete_client(self.raw.as_ptr()) },
            "es_delete_client",
            "",
        )
    }
}

/// The handler's work for one message. Returns false when the message was not handed on (and
/// must be answered by the caller).
fn handle(
    cell: &OnceLock<Arc<EsClient>>,
    sink: &Sink,
    raw: NonNull<es_message_t>,
    received: Instant,
) -> bool {
    // SAFETY: ES guarantees the message is valid for the handler's duration; `from_raw`
    // retains it (es_retain_message on macOS 11+; we refuse to start below 13), so it outlives
    // the handler and the retained object is the same pointer `raw`.
    let msg = unsafe { Message::from_raw(raw) };
    if msg.action_type() != es_action_type_t::ES_ACTION_TYPE_AUTH {
        // NOTIFY events need no answer; we subscribe to none, so this is only defensive.
        return true;
    }
    let Some(client) = cell.get() else {
        return false;
    };
    let Some(event) = convert::to_event(&msg) else {
        return false;
    };
    let deadline = match time::timebase() {
        Some(tb) => {
            es_convert::deadline_instant(received, time::now_ticks(), msg.raw_deadline(), &tb)
        }
        None => received + UNKNOWN_DEADLINE,
    };
    let responder = EsResponder::new(
        Arc::clone(client),
        raw,
        msg,
        event.kind(),
        event.process.pid,
    );
    sink(Delivery {
        event,
        deadline,
        received,
        file: None,
        responder,
    });
    true
}

/// Answer allow, uncached, straight from the handler (events we could not hand on).
fn allow_now(client: NonNull<es_client_t>, raw: NonNull<es_message_t>) {
    // SAFETY: both pointers are the ones ES passed to the handler, valid for its duration. The
    // event type decides which call is correct; a wrong one fails harmlessly with
    // ERR_EVENT_TYPE, so both are tried in order. Errors are ignored: there is nothing more
    // to do from inside the handler.
    unsafe {
        let is_open = raw.as_ref().event_type == es_event_type_t::ES_EVENT_TYPE_AUTH_OPEN;
        if is_open {
            let _ = endpoint_sec_sys::es_respond_flags_result(
                client.as_ptr(),
                raw.as_ptr(),
                es_convert::OPEN_ALLOW_ALL_FLAGS,
                false,
            );
        } else {
            let _ = endpoint_sec_sys::es_respond_auth_result(
                client.as_ptr(),
                raw.as_ptr(),
                es_auth_result_t::ES_AUTH_RESULT_ALLOW,
                false,
            );
        }
    }
}
