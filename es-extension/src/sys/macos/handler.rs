//! What runs on an ES client's serial delivery queue for each message: convert it (already
//! owned), compute its deadline from mach time, and hand it to the core, which never blocks.
//! A message with a truncated path is answered with the policy's fallback at once (issue 10
//! item 7): its path names another file, so no rule may be matched against it.
//!
//! NOTIFY messages (the recorder client's) need no answer: [`Handler::on_notify`] turns each
//! into a [`Recording`] and hands it to the core's transitive recorder, which never blocks.
#![forbid(unsafe_code)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use model::{EventKind, Verdict};

use super::api::EsApi;
use super::control::EsCounters;
use super::convert;
use super::message::{EsMessage, EsNotify, Recording};
use super::responder::{self, EsResponder};
use crate::backend::{Answer, Delivery};

/// What the handler hands every converted AUTH event to (the core's `deliver`).
pub type Sink<A> = Arc<dyn Fn(Delivery<EsResponder<A>>) + Send + Sync>;

/// The policy's explicit fallback verdict for a kind (read from the current snapshot: one
/// atomic load, no lock).
pub type Fallback = Arc<dyn Fn(EventKind) -> Verdict + Send + Sync>;

/// What the handler hands every NOTIFY message's meaning to (the core's transitive recorder:
/// `file_closed`, `file_renamed`, `process_exited`). Must not block.
pub type NotifySink = Arc<dyn Fn(Recording) + Send + Sync>;

/// Whether a NOTIFY message from process `pid` can matter (a tracked compiler): asked before
/// the message is read, so the closes of every other process cost one lock-free lookup and no
/// copy. Must not block.
pub type NotifyFilter = Arc<dyn Fn(u32) -> bool + Send + Sync>;

/// The shortest deadline we assume when the timebase is unknown: answer almost at once.
const UNKNOWN_DEADLINE: Duration = Duration::from_millis(100);

/// One client's message handler.
pub struct Handler<A: EsApi> {
    api: OnceLock<Arc<A>>,
    sink: Sink<A>,
    fallback: Fallback,
    counters: Arc<EsCounters>,
    notify: Option<(NotifyFilter, NotifySink)>,
}

impl<A: EsApi> std::fmt::Debug for Handler<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("attached", &self.api.get().is_some())
            .finish_non_exhaustive()
    }
}

impl<A: EsApi> Handler<A> {
    pub fn new(sink: Sink<A>, fallback: Fallback, counters: Arc<EsCounters>) -> Self {
        Self {
            api: OnceLock::new(),
            sink,
            fallback,
            counters,
            notify: None,
        }
    }

    /// The same handler, also taking NOTIFY messages (the recorder client's).
    pub fn with_notify(mut self, filter: NotifyFilter, notify: NotifySink) -> Self {
        self.notify = Some((filter, notify));
        self
    }

    /// Whether a NOTIFY message from `pid` is worth reading ([`NotifyFilter`]); false on a
    /// client that takes none.
    pub fn wants_notify(&self, pid: u32) -> bool {
        match &self.notify {
            Some((filter, _)) => filter(pid),
            None => {
                EsCounters::inc(&self.counters.notify_unexpected);
                false
            }
        }
    }

    /// Handle one NOTIFY message on the delivery queue (nothing is owed to ES for it).
    pub fn on_notify(&self, view: &EsNotify) {
        let Some((_, notify)) = &self.notify else {
            EsCounters::inc(&self.counters.notify_unexpected);
            return;
        };
        let r = view.recording();
        if r != Recording::Nothing {
            notify(r);
        }
    }

    /// Give the handler its client (which exists only once created with this handler). Must
    /// happen before the client subscribes.
    pub fn attach(&self, api: Arc<A>) {
        let _ = self.api.set(api);
    }

    pub fn counters(&self) -> &EsCounters {
        &self.counters
    }

    /// Handle one AUTH message on the delivery queue. Returns false when it was neither handed
    /// on nor answered; the caller (which still has the raw message) must then allow it.
    pub fn on_message(&self, msg: A::Msg, view: &EsMessage, received: Instant) -> bool {
        let Some(api) = self.api.get() else {
            EsCounters::inc(&self.counters.undelivered);
            return false;
        };
        let kind = view.kind();
        if view.any_path_truncated() {
            EsCounters::inc(&self.counters.truncated_paths);
            let verdict = (self.fallback)(kind);
            return responder::answer(
                &**api,
                &msg,
                kind,
                Answer {
                    verdict,
                    cache: false,
                },
            )
            .is_ok();
        }
        let deadline = match api.timebase() {
            Some(tb) => {
                convert::deadline_instant(received, api.now_ticks(), view.deadline_ticks, &tb)
            }
            None => received + UNKNOWN_DEADLINE,
        };
        let event = view.to_event();
        let responder = EsResponder::new(Arc::clone(api), msg, kind, event.process.pid);
        (self.sink)(Delivery {
            event,
            deadline,
            received,
            file: None,
            responder,
        });
        true
    }
}
