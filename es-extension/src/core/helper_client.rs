//! The helper connection: request ids, in-flight matching and fallbacks over one pipelined
//! [`HelperTransport`] (a Unix socket, XPC on macOS, or a test's own), fed by the slow-path
//! workers; the transport's `run` owns the helper thread and (re)connects with backoff.
//!
//! Nothing here runs on the delivery thread, and start-up never waits for it: while there is no
//! connection, `connected()` is false and the delivery thread answers the fallback at once.
//! Requests in flight on a connection that dies get the fallback; answers that arrive after the
//! watchdog already answered still fill the verdict cache but do not answer twice.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use model::{AnalysisRequest, FallbackReason, Outcome};
use protocol::{HelperRequest, HelperResponse, Request, Response};

use super::Shared;
use super::helper_link::{HelperEndpoint, HelperTransport, LinkEvents, LinkSink};
use super::helper_unix::UnixTransport;
use super::metrics::Metrics;
use super::pending::Slot;
use crate::backend::{Responder, SubjectFd};

/// One handed-off event on its way to a worker.
pub struct WorkItem<R: Responder> {
    pub slot: Arc<Slot<R>>,
    pub request: AnalysisRequest,
    /// The subject file's descriptor, held until the request frame is sent, then dropped.
    pub file: Option<SubjectFd>,
    /// When the watchdog answers; the helper gets the time until then as its budget.
    pub fire_at: Instant,
}

impl<R: Responder> std::fmt::Debug for WorkItem<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkItem")
            .field("slot", &self.slot)
            .field("fd", &self.file.is_some())
            .finish_non_exhaustive()
    }
}

enum InFlight<R: Responder> {
    Analyze {
        slot: Arc<Slot<R>>,
        sent: Instant,
    },
    Ping {
        reply: Sender<HelperResponse>,
        sent: Instant,
    },
}

/// The shared state of the helper connection.
pub struct HelperClient<R: Responder> {
    shared: Arc<Shared>,
    /// `None`: no helper configured; every analysis gets the fallback.
    transport: Option<Arc<dyn HelperTransport>>,
    max_in_flight: usize,
    late_grace: Duration,
    in_flight: Mutex<HashMap<u64, InFlight<R>>>,
    next_id: AtomicU64,
}

impl<R: Responder> std::fmt::Debug for HelperClient<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HelperClient")
            .field("transport", &self.transport)
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<R: Responder> HelperClient<R> {
    pub(crate) fn new(shared: Arc<Shared>, endpoint: HelperEndpoint) -> Self {
        let c = &shared.config;
        let transport: Option<Arc<dyn HelperTransport>> = match endpoint {
            HelperEndpoint::None => None,
            HelperEndpoint::Unix(path) => Some(Arc::new(UnixTransport::new(
                path,
                c.helper_write_timeout,
                c.reconnect_backoff_max,
            ))),
            HelperEndpoint::Custom(t) => Some(t),
        };
        Self {
            transport,
            max_in_flight: c.max_in_flight,
            late_grace: c.late_answer_grace,
            shared,
            in_flight: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Lock-free (the transport's atomic): read on the delivery thread.
    pub fn connected(&self) -> bool {
        self.transport.as_ref().is_some_and(|t| t.connected())
    }

    /// The helper's pid on the current connection, when the transport knows it.
    pub fn peer_pid(&self) -> Option<u32> {
        self.transport.as_ref().and_then(|t| t.peer_pid())
    }

    pub fn in_flight(&self) -> usize {
        lock(&self.in_flight).len()
    }

    /// Drop entries whose event is answered and whose late-answer grace has passed, so a helper
    /// that never answers cannot grow the map.
    fn prune(&self, map: &mut HashMap<u64, InFlight<R>>, now: Instant) {
        let grace = self.late_grace;
        map.retain(|_, e| match e {
            InFlight::Analyze { slot, .. } => !(slot.is_answered() && now > slot.deadline + grace),
            InFlight::Ping { sent, .. } => now < *sent + grace,
        });
    }

    /// Hand one request to the transport; `Err` means it was not sent.
    fn send(&self, req: &Request<HelperRequest>, fd: Option<BorrowedFd<'_>>) -> Result<(), String> {
        let Some(t) = &self.transport else {
            return Err("no helper configured".to_owned());
        };
        t.send(req, fd).map_err(|e| e.to_string())
    }

    /// A worker's handling of one item: send it to the helper, or answer the fallback.
    pub fn process(&self, item: WorkItem<R>) {
        let WorkItem {
            slot,
            request,
            file,
            fire_at,
        } = item;
        if slot.is_answered() {
            return;
        }
        if self.shared.shutting_down.load(Ordering::Acquire) {
            slot.answer_fallback(FallbackReason::Shutdown);
            return;
        }
        if !self.connected() {
            slot.answer_fallback(FallbackReason::HelperUnavailable);
            return;
        }
        let now = Instant::now();
        let budget = fire_at.saturating_duration_since(now);
        if budget.is_zero() {
            slot.answer_fallback(FallbackReason::Deadline);
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut map = lock(&self.in_flight);
            if map.len() >= self.max_in_flight {
                self.prune(&mut map, now);
            }
            if map.len() >= self.max_in_flight {
                drop(map);
                Metrics::inc(&self.shared.metrics.queue_full);
                slot.answer_fallback(FallbackReason::QueueFull);
                return;
            }
            map.insert(
                id,
                InFlight::Analyze {
                    slot: Arc::clone(&slot),
                    sent: now,
                },
            );
        }
        let req = Request {
            id,
            budget_us: budget.as_micros() as u64,
            body: HelperRequest::Analyze {
                request,
                fd_attached: file.is_some(),
            },
        };
        let sent = self.send(&req, file.as_ref().map(AsFd::as_fd));
        // The frame (and the descriptor's copy in it) is out, or will never be: this item's
        // share of the descriptor is no longer needed. The responder keeps its own.
        drop(file);
        if sent.is_err() {
            // Only answer if the reader has not already failed it with the connection.
            if lock(&self.in_flight).remove(&id).is_some() {
                slot.answer_fallback(if self.shared.shutting_down.load(Ordering::Acquire) {
                    FallbackReason::Shutdown
                } else {
                    FallbackReason::HelperUnavailable
                });
            }
        }
    }

    /// `gatehouse helper ping`: round trip of one Ping, from the control thread.
    pub fn ping(&self, timeout: Duration) -> Result<(HelperResponse, Duration), String> {
        if !self.connected() {
            return Err(match &self.transport {
                Some(t) => format!("not connected to the helper at {}", t.describe()),
                None => "no helper configured".to_owned(),
            });
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        lock(&self.in_flight).insert(id, InFlight::Ping { reply: tx, sent });
        let req = Request {
            id,
            budget_us: timeout.as_micros() as u64,
            body: HelperRequest::Ping,
        };
        if let Err(e) = self.send(&req, None) {
            lock(&self.in_flight).remove(&id);
            return Err(format!(
                "sending the ping failed ({e}); the helper connection was reset"
            ));
        }
        match rx.recv_timeout(timeout) {
            Ok(resp) => Ok((resp, sent.elapsed())),
            Err(_) => {
                lock(&self.in_flight).remove(&id);
                Err(format!("the helper did not answer within {timeout:?}"))
            }
        }
    }

    /// Handle one response from the helper (the transport's thread or queue).
    fn response(&self, resp: Response<HelperResponse>) {
        let entry = lock(&self.in_flight).remove(&resp.id);
        let m = &self.shared.metrics;
        match entry {
            None => Metrics::inc(&m.helper_unmatched),
            Some(InFlight::Ping { reply, .. }) => {
                let _ = reply.try_send(resp.body);
            }
            Some(InFlight::Analyze { slot, sent }) => {
                m.helper_round_trip.record(sent.elapsed());
                let facts = match resp.body {
                    HelperResponse::Analysis { facts, .. } => facts,
                    _ => {
                        slot.answer_fallback(FallbackReason::HelperError);
                        return;
                    }
                };
                let snapshot = self.shared.store.load();
                match snapshot.policy.decide(&slot.event, &facts) {
                    Outcome::Decided(d) => {
                        if d.cacheable != model::Cacheability::Never
                            && let Some(key) = policy::VerdictCache::key_for(&slot.event)
                            && self.shared.store.load().version == snapshot.version
                        {
                            self.shared.cache.insert(key, &d, Instant::now());
                            // A policy swapped while we decided must not inherit this verdict:
                            // if it moved between the check and the insert, the control
                            // thread's clear may already have run, so clear again.
                            if self.shared.store.load().version != snapshot.version {
                                Metrics::inc(&m.stale_cache_reclears);
                                self.shared.cache.clear();
                            }
                        }
                        if slot.answer(&d) {
                            Metrics::inc(&m.helper_decided);
                        } else {
                            Metrics::inc(&m.late_helper_answers);
                        }
                    }
                    Outcome::Analyze(_) => {
                        slot.answer_fallback(FallbackReason::HelperError);
                    }
                }
            }
        }
    }

    /// Fail everything in flight (the connection it was sent on is gone).
    fn fail_in_flight(&self, why: FallbackReason) {
        let drained: Vec<_> = lock(&self.in_flight).drain().collect();
        for (_, e) in drained {
            if let InFlight::Analyze { slot, .. } = e {
                slot.answer_fallback(why);
            }
        }
    }

    /// Wake the transport (shutdown).
    pub fn close(&self) {
        if let Some(t) = &self.transport {
            t.close();
        }
    }

    /// The helper thread's body: the transport connects, reads and reconnects until `stop`.
    pub fn run_reader(self: &Arc<Self>, stop: Receiver<()>) {
        match &self.transport {
            Some(t) => {
                let events: Arc<dyn LinkEvents> = Arc::clone(self) as Arc<dyn LinkEvents>;
                let weak: Weak<dyn LinkEvents> = Arc::downgrade(&events);
                drop(events);
                t.run(LinkSink::new(weak), &stop);
                t.close();
            }
            // No helper configured: stay disconnected, every analysis gets the fallback.
            None => {
                let _ = stop.recv();
            }
        }
        self.fail_in_flight(FallbackReason::Shutdown);
    }
}

impl<R: Responder> LinkEvents for HelperClient<R> {
    fn on_connected(&self) {
        Metrics::inc(&self.shared.metrics.helper_connects);
    }

    fn on_response(&self, resp: Response<HelperResponse>) {
        self.response(resp);
    }

    fn on_failed(&self, id: u64, why: FallbackReason) {
        let entry = lock(&self.in_flight).remove(&id);
        if let Some(InFlight::Analyze { slot, .. }) = entry {
            slot.answer_fallback(self.why(why));
        }
    }

    fn on_disconnected(&self, why: FallbackReason) {
        Metrics::inc(&self.shared.metrics.helper_disconnects);
        self.fail_in_flight(self.why(why));
    }

    fn on_protocol_error(&self) {
        Metrics::inc(&self.shared.metrics.helper_protocol_errors);
    }
}

impl<R: Responder> HelperClient<R> {
    /// During shutdown every failure is reported as `Shutdown`.
    fn why(&self, why: FallbackReason) -> FallbackReason {
        if self.shared.shutting_down.load(Ordering::Acquire) {
            FallbackReason::Shutdown
        } else {
            why
        }
    }
}
