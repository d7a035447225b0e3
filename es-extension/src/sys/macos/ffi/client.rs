//! The ES client through `endpoint-sec-sys` (the high-level `endpoint_sec::Client` is `!Send`,
//! and we answer from other threads): create with a block handler, subscribe, respond, mute,
//! invert muting, clear the cache, delete. Nothing here decides anything: every call maps one
//! [`EsApi`] method to one C call.
//!
//! The handler runs on ES's serial delivery queue: it retains the message, reads it into owned
//! fields (`read::message`) and calls `Handler::on_message`. Only a panic or a message we
//! cannot read is answered here (allow, uncached: an event shape we cannot read must not
//! stall the machine).

use std::ffi::CString;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use endpoint_sec::Message;
use endpoint_sec_sys::{
    audit_token_t, es_action_type_t, es_auth_result_t, es_client_t, es_event_type_t, es_message_t,
    es_mute_inversion_type_t, es_mute_path_type_t, es_return_t,
};
use model::EventKind;

use super::{read, time};
use crate::sys::macos::api::{ApiError, AuditToken, EsApi, NotifyKind};
use crate::sys::macos::control::EsCounters;
use crate::sys::macos::convert::{self, NewClientError, Timebase};
use crate::sys::macos::handler::Handler;

/// One retained ES message.
#[derive(Debug)]
pub struct FfiMsg {
    /// The pointer ES passed the handler; `_retain` keeps it alive.
    raw: NonNull<es_message_t>,
    _retain: Message,
}

// SAFETY: `raw` points to the message retained by `_retain` (es_retain_message), so it stays
// valid wherever the handle goes, and ES allows answering a retained message from any thread.
unsafe impl Send for FfiMsg {}

/// The ES client handle shared by its handler, every responder and the kernel control.
#[derive(Debug)]
pub struct FfiClient {
    raw: NonNull<es_client_t>,
    deleted: AtomicBool,
}

// SAFETY: Apple's ESClient.h documents answering "out of order" from other threads after
// retaining the message, and the subscribe, mute and clear-cache calls carry no thread
// affinity; only `es_delete_client` must run on the creating thread, which `delete` documents
// and `Session::stop` honours (both happen on the main thread).
unsafe impl Send for FfiClient {}
// SAFETY: as above; the client is only ever used through the thread-safe C calls.
unsafe impl Sync for FfiClient {}

fn ok(ret: es_return_t, call: &'static str, hint: &'static str) -> Result<(), ApiError> {
    if ret == es_return_t::ES_RETURN_SUCCESS {
        Ok(())
    } else {
        Err(ApiError::Call { call, hint })
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
        EventKind::Clone => es_event_type_t::ES_EVENT_TYPE_AUTH_CLONE,
        EventKind::Copyfile => es_event_type_t::ES_EVENT_TYPE_AUTH_COPYFILE,
        EventKind::Exchangedata => es_event_type_t::ES_EVENT_TYPE_AUTH_EXCHANGEDATA,
    }
}

/// The ES event type for a NOTIFY kind the recorder takes.
pub fn es_notify_type(kind: NotifyKind) -> es_event_type_t {
    match kind {
        NotifyKind::Close => es_event_type_t::ES_EVENT_TYPE_NOTIFY_CLOSE,
        NotifyKind::Rename => es_event_type_t::ES_EVENT_TYPE_NOTIFY_RENAME,
        NotifyKind::Exit => es_event_type_t::ES_EVENT_TYPE_NOTIFY_EXIT,
    }
}

impl FfiClient {
    /// `es_new_client` with `handler` on its delivery queue. Events flow only after a
    /// subscription. Must be called on the thread that will later call `delete`.
    pub fn new(handler: Arc<Handler<FfiClient>>) -> Result<Arc<FfiClient>, ApiError> {
        let block = block2::RcBlock::new(
            move |client: NonNull<es_client_t>, raw: NonNull<es_message_t>| {
                let received = Instant::now();
                let outcome = catch_unwind(AssertUnwindSafe(|| deliver(&handler, raw, received)));
                if !matches!(outcome, Ok(true)) {
                    let c = handler.counters();
                    EsCounters::inc(if outcome.is_err() {
                        &c.handler_panics
                    } else {
                        &c.undelivered
                    });
                    allow_now(client, raw);
                }
            },
        );
        let mut client: *mut es_client_t = std::ptr::null_mut();
        // SAFETY: `client` is a valid out-pointer; the block is an RcBlock, so es_new_client's
        // Block_copy only adds a reference and the ES runtime keeps the handler alive until
        // es_delete_client.
        let rc = unsafe { endpoint_sec_sys::es_new_client(&mut client, &block) };
        convert::new_client_result(rc.0)?;
        let raw = NonNull::new(client).ok_or(NewClientError::Internal)?;
        Ok(Arc::new(FfiClient {
            raw,
            deleted: AtomicBool::new(false),
        }))
    }

    fn raw(&self) -> Result<*mut es_client_t, ApiError> {
        if self.deleted.load(Ordering::Acquire) {
            Err(ApiError::Deleted)
        } else {
            Ok(self.raw.as_ptr())
        }
    }

    fn types(kinds: &[EventKind]) -> Vec<es_event_type_t> {
        kinds.iter().map(|k| es_event_type(*k)).collect()
    }

    fn subscribe_types(&self, types: &[es_event_type_t], on: bool) -> Result<(), ApiError> {
        let raw = self.raw()?;
        let n = u32::try_from(types.len()).unwrap_or(u32::MAX);
        // SAFETY: live client; `types` is a valid array of `n` entries (at most a dozen).
        let ret = unsafe {
            if on {
                endpoint_sec_sys::es_subscribe(raw, types.as_ptr(), n)
            } else {
                endpoint_sec_sys::es_unsubscribe(raw, types.as_ptr(), n)
            }
        };
        if on {
            ok(ret, "es_subscribe", "")
        } else {
            ok(ret, "es_unsubscribe", "")
        }
    }
}

impl EsApi for FfiClient {
    type Msg = FfiMsg;

    fn respond_auth(&self, msg: &FfiMsg, result: u32, cache: bool) -> Result<u32, ApiError> {
        let client = self.raw()?;
        // SAFETY: live client (deleted only after the core answered every event); `msg.raw`
        // is kept alive by its retain. The call only reads the message.
        let rc = unsafe {
            endpoint_sec_sys::es_respond_auth_result(
                client,
                msg.raw.as_ptr(),
                es_auth_result_t(result),
                cache,
            )
        };
        Ok(rc.0)
    }

    fn respond_flags(&self, msg: &FfiMsg, flags: u32, cache: bool) -> Result<u32, ApiError> {
        let client = self.raw()?;
        // SAFETY: as in `respond_auth`.
        let rc = unsafe {
            endpoint_sec_sys::es_respond_flags_result(client, msg.raw.as_ptr(), flags, cache)
        };
        Ok(rc.0)
    }

    fn subscribe(&self, kinds: &[EventKind]) -> Result<(), ApiError> {
        self.subscribe_types(&Self::types(kinds), true)
    }

    fn unsubscribe(&self, kinds: &[EventKind]) -> Result<(), ApiError> {
        self.subscribe_types(&Self::types(kinds), false)
    }

    fn subscribe_notify(&self, kinds: &[NotifyKind]) -> Result<(), ApiError> {
        let types: Vec<_> = kinds.iter().map(|k| es_notify_type(*k)).collect();
        self.subscribe_types(&types, true)
    }

    fn unsubscribe_notify(&self, kinds: &[NotifyKind]) -> Result<(), ApiError> {
        let types: Vec<_> = kinds.iter().map(|k| es_notify_type(*k)).collect();
        self.subscribe_types(&types, false)
    }

    fn unsubscribe_all(&self) -> Result<(), ApiError> {
        let raw = self.raw()?;
        // SAFETY: live client.
        ok(
            unsafe { endpoint_sec_sys::es_unsubscribe_all(raw) },
            "es_unsubscribe_all",
            "",
        )
    }

    fn mute_process(&self, token: &AuditToken) -> Result<(), ApiError> {
        let raw = self.raw()?;
        let token = audit_token_t { val: token.0 };
        // SAFETY: live client; `token` is a valid audit token for the call (ES copies it).
        ok(
            unsafe { endpoint_sec_sys::es_mute_process(raw, &token) },
            "es_mute_process",
            "",
        )
    }

    fn mute_path(&self, path: &str, kind: u32, mute: bool) -> Result<(), ApiError> {
        let c = CString::new(path).map_err(|_| ApiError::Nul(path.to_owned()))?;
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

    fn unmute_all_target_paths(&self) -> Result<(), ApiError> {
        let raw = self.raw()?;
        // SAFETY: live client (macOS 13+, checked at start-up).
        ok(
            unsafe { endpoint_sec_sys::es_unmute_all_target_paths(raw) },
            "es_unmute_all_target_paths",
            "",
        )
    }

    fn invert_muting(&self, kind: u32) -> Result<(), ApiError> {
        let raw = self.raw()?;
        let ty = es_mute_inversion_type_t(kind);
        // SAFETY: live client (macOS 13+, checked at start-up); `ty` is one of the three
        // inversion types (`api::inversion`).
        let ret = unsafe { endpoint_sec_sys::es_invert_muting(raw, ty) };
        ok(
            ret,
            "es_invert_muting",
            " (ES refuses it while the client has AUTH subscriptions)",
        )
    }

    fn clear_cache(&self) -> Result<u32, ApiError> {
        let raw = self.raw()?;
        // SAFETY: live client. Never called on a delivery queue (it may take a while).
        Ok(unsafe { endpoint_sec_sys::es_clear_cache(raw) }.0)
    }

    fn now_ticks(&self) -> u64 {
        time::now_ticks()
    }

    fn timebase(&self) -> Option<Timebase> {
        time::timebase()
    }

    fn delete(&self) -> Result<(), ApiError> {
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

/// Retain, read and hand one message to the logic. False when it was not handed on.
fn deliver(handler: &Handler<FfiClient>, raw: NonNull<es_message_t>, received: Instant) -> bool {
    // SAFETY: ES guarantees the message is valid for the handler's duration; `from_raw`
    // retains it (es_retain_message on macOS 11+; we refuse to start below 13), so it outlives
    // the handler and the retained object is the same pointer `raw`.
    let msg = unsafe { Message::from_raw(raw) };
    if msg.action_type() != es_action_type_t::ES_ACTION_TYPE_AUTH {
        // NOTIFY events need no answer: the recorder client's go to the transitive recorder
        // (never blocking), read only when they come from a tracked compiler.
        let pid = msg.process().audit_token().pid() as u32;
        if handler.wants_notify(pid)
            && let Some(view) = read::notify(&msg)
        {
            handler.on_notify(&view);
        }
        return true;
    }
    let Some(view) = read::message(&msg) else {
        return false;
    };
    handler.on_message(FfiMsg { raw, _retain: msg }, &view, received)
}

/// Answer allow, uncached, straight from the handler (a panic, or a message we cannot read).
fn allow_now(client: NonNull<es_client_t>, raw: NonNull<es_message_t>) {
    // SAFETY: both pointers are the ones ES passed to the handler, valid for its duration.
    // Errors are ignored: a message the logic already answered fails harmlessly with
    // ERR_DUPLICATE_RESPONSE, and there is nothing more to do from inside the handler.
    unsafe {
        if raw.as_ref().event_type == es_event_type_t::ES_EVENT_TYPE_AUTH_OPEN {
            let _ = endpoint_sec_sys::es_respond_flags_result(
                client.as_ptr(),
                raw.as_ptr(),
                convert::OPEN_ALLOW_ALL_FLAGS,
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
