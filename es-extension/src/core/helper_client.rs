//! The helper connection: request ids, in-flight matching and fallbacks over one pipelined
//! [`HelperTransport`] (a Unix socket, XPC on macOS, or a test's own), fed by the slow-path
//! workers; the transport's `run` owns the helper thread and (re)connects with backoff.
//!
//! Nothing here runs on the delivery thread, and start-up never waits for it: while there is no
//! connection, `connected()` is false and the delivery thread answers the fallback at once.
//! Requests in flight on a connection that dies get the fallback; answers that arrive after the
//! watchdog already answered still fill the verdict cache but do not answer twice.
//!
//! # Circuit breaker
//! A helper that is connected but stuck would cost every event its whole slow-path budget. So
//! the client counts requests whose watchdog time passed with no answer from the helper; after
//! `helper_breaker_threshold` in a row (an answer in time resets the count) the breaker
//! *opens*: [`HelperClient::fast_fail`] is true and the delivery thread answers the
//! `helper_unavailable` fallback at once, exactly as while disconnected. While open, an idle
//! slow-path worker (never the delivery thread) sends one Ping with a short budget every
//! `helper_probe_interval` (*half-open*); the answer *closes* the breaker on the same
//! connection. A reconnect also starts closed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
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
        /// The watchdog's time for this event: an answer after it is a helper timeout.
        fire_at: Instant,
    },
    Ping {
        reply: Sender<HelperResponse>,
        sent: Instant,
    },
}

/// Requests at the helper, and when each one's watchdog fires (to count helper timeouts).
struct Outstanding<R: Responder> {
    map: HashMap<u64, InFlight<R>>,
    /// `(fire_at, id)` of every Analyze sent; popped once its time passes. An id no longer in
    /// `map` by then was answered (or failed) in time.
    expiries: BinaryHeap<Reverse<(Instant, u64)>>,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The breaker's state and counters (see the module docs).
#[derive(Debug, Default)]
struct Breaker {
    /// `CLOSED`, `OPEN` or `HALF_OPEN` (a probe in flight). Read on the delivery thread.
    state: AtomicU8,
    /// Helper timeouts since the last answer in time.
    consecutive: AtomicU64,
    /// When the next probe may go, as nanoseconds since `HelperClient::epoch`.
    next_probe_ns: AtomicU64,
    opens: AtomicU64,
    fast_failed: AtomicU64,
    probes: AtomicU64,
    timeouts: AtomicU64,
}

/// The shared state of the helper connection.
pub struct HelperClient<R: Responder> {
    shared: Arc<Shared>,
    /// `None`: no helper configured; every analysis gets the fallback.
    transport: Option<Arc<dyn HelperTransport>>,
    max_in_flight: usize,
    late_grace: Duration,
    in_flight: Mutex<Outstanding<R>>,
    next_id: AtomicU64,
    breaker: Breaker,
    /// Consecutive timeouts that open the breaker; 0 never opens it.
    breaker_threshold: u64,
    probe_interval: Duration,
    probe_timeout: Duration,
    epoch: Instant,
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
            breaker_threshold: u64::from(c.helper_breaker_threshold),
            probe_interval: c.helper_probe_interval.max(Duration::from_millis(1)),
            probe_timeout: c.helper_probe_timeout,
            shared,
            in_flight: Mutex::new(Outstanding {
                map: HashMap::new(),
                expiries: BinaryHeap::new(),
            }),
            next_id: AtomicU64::new(1),
            breaker: Breaker::default(),
            epoch: Instant::now(),
        }
    }

    /// Lock-free (one atomic load): read on the delivery thread. True while the breaker is
    /// open or probing: a connected helper that stopped answering gets no new requests, and
    /// the caller answers the `helper_unavailable` fallback now, counted here.
    pub fn fast_fail(&self) -> bool {
        if self.breaker.state.load(Ordering::Acquire) == CLOSED {
            return false;
        }
        Metrics::inc(&self.breaker.fast_failed);
        true
    }

    /// Whether the breaker is open (or probing) now.
    pub fn breaker_open(&self) -> bool {
        self.breaker.state.load(Ordering::Acquire) != CLOSED
    }

    /// How long an idle worker waits before calling [`Self::tick`] again.
    pub fn tick_interval(&self) -> Duration {
        self.probe_interval
    }

    /// Named as `gatehouse stats` shows them.
    pub fn breaker_counters(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        let b = &self.breaker;
        [
            ("helper_timeouts", b.timeouts.load(Ordering::Relaxed)),
            ("helper_breaker_opens", b.opens.load(Ordering::Relaxed)),
            ("helper_breaker_open", u64::from(self.breaker_open())),
            ("helper_fast_failed", b.fast_failed.load(Ordering::Relaxed)),
            ("helper_probes", b.probes.load(Ordering::Relaxed)),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
    }

    fn since_epoch(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// A worker's periodic duty (after each item, and when idle for [`Self::tick_interval`]):
    /// count helper timeouts, open the breaker past the threshold, and probe while it is open.
    /// The probe blocks this worker for at most `helper_probe_timeout`; while the breaker is
    /// open no new work reaches the workers, so nothing waits behind it.
    pub fn tick(&self) {
        let now = Instant::now();
        let timed_out = {
            let mut o = lock(&self.in_flight);
            let mut n = 0u64;
            while let Some(Reverse((at, id))) = o.expiries.peek().copied() {
                if at > now {
                    break;
                }
                o.expiries.pop();
                if matches!(o.map.get(&id), Some(InFlight::Analyze { .. })) {
                    n += 1;
                }
            }
            n
        };
        self.note_timeouts(timed_out, now);
        let b = &self.breaker;
        if b.state.load(Ordering::Acquire) == OPEN
            && self.since_epoch(now) >= b.next_probe_ns.load(Ordering::Acquire)
            && b.state
                .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            Metrics::inc(&b.probes);
            let answered = matches!(
                self.ping(self.probe_timeout),
                Ok((HelperResponse::Pong { .. }, _))
            );
            if answered {
                b.consecutive.store(0, Ordering::Release);
                // Only from HALF_OPEN: a reconnect meanwhile already reset it.
                if b.state
                    .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    tracing::info!("the helper answered a probe; analysis resumes");
                }
            } else {
                b.next_probe_ns.store(
                    self.since_epoch(Instant::now() + self.probe_interval),
                    Ordering::Release,
                );
                let _ =
                    b.state
                        .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire);
            }
        }
    }

    /// `n` more requests passed their watchdog time with no answer from the helper.
    fn note_timeouts(&self, n: u64, now: Instant) {
        let b = &self.breaker;
        if n == 0 {
            return;
        }
        b.timeouts.fetch_add(n, Ordering::Relaxed);
        let run = b.consecutive.fetch_add(n, Ordering::AcqRel) + n;
        if self.breaker_threshold > 0
            && run >= self.breaker_threshold
            && self.connected()
            && b.state
                .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            Metrics::inc(&b.opens);
            b.next_probe_ns.store(
                self.since_epoch(now + self.probe_interval),
                Ordering::Release,
            );
            tracing::warn!(
                consecutive_timeouts = run,
                "the helper stopped answering in time; failing fast with the helper_unavailable fallback until it answers a probe"
            );
        }
    }

    /// A new or lost connection starts the breaker afresh.
    fn reset_breaker(&self) {
        self.breaker.consecutive.store(0, Ordering::Release);
        self.breaker.state.store(CLOSED, Ordering::Release);
    }

    /// Lock-free (the transport's atomic): read on the delivery thread.
    pub fn connected(&self) -> bool {
        self.transport.as_ref().is_some_and(|t| t.connected())
    }

    /// The helper's pid on the current connection, when the transport knows it.
    pub fn peer_pid(&self) -> Option<u32> {
        self.transport.as_ref().and_then(|t| t.peer_pid())
    }

    /// The helper's kernel-stamped audit token on the current connection (XPC only).
    pub fn peer_token(&self) -> Option<model::AuditToken> {
        self.transport.as_ref().and_then(|t| t.peer_token())
    }

    pub fn in_flight(&self) -> usize {
        lock(&self.in_flight).map.len()
    }

    /// Drop entries whose event is answered and whose late-answer grace has passed, so a helper
    /// that never answers cannot grow the map (nor the expiry heap).
    fn prune(&self, o: &mut Outstanding<R>, now: Instant) {
        let grace = self.late_grace;
        o.map.retain(|_, e| match e {
            InFlight::Analyze { slot, .. } => !(slot.is_answered() && now > slot.deadline + grace),
            InFlight::Ping { sent, .. } => now < *sent + grace,
        });
        let map = &o.map;
        o.expiries.retain(|Reverse((_, id))| map.contains_key(id));
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
        if !self.connected() || self.fast_fail() {
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
            let mut o = lock(&self.in_flight);
            if o.map.len() >= self.max_in_flight || o.expiries.len() >= 2 * self.max_in_flight {
                self.prune(&mut o, now);
            }
            if o.map.len() >= self.max_in_flight {
                drop(o);
                Metrics::inc(&self.shared.metrics.queue_full);
                slot.answer_fallback(FallbackReason::QueueFull);
                return;
            }
            o.map.insert(
                id,
                InFlight::Analyze {
                    slot: Arc::clone(&slot),
                    sent: now,
                    fire_at,
                },
            );
            o.expiries.push(Reverse((fire_at, id)));
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
            if lock(&self.in_flight).map.remove(&id).is_some() {
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
        self.call(HelperRequest::Ping, timeout)
    }

    /// Ask the helper to remount a denied volume with a rule's flags (the remount thread; never
    /// the delivery thread). The helper starts the mount and answers at once, so this waits at
    /// most `timeout` for that answer, never for the mount.
    pub(crate) fn remount(&self, job: &super::RemountJob, timeout: Duration) {
        let m = &self.shared.metrics;
        let body = HelperRequest::Remount {
            mount: job.mount.clone(),
            forced: job.forced,
        };
        match self.call(body, timeout) {
            Ok((HelperResponse::RemountStarted { arguments }, _)) => {
                Metrics::inc(&m.remounts_started);
                tracing::info!(
                    mount_point = %job.mount.mount_point,
                    arguments = %arguments.join(","),
                    "forced remount started"
                );
            }
            Ok((other, _)) => {
                Metrics::inc(&m.remounts_failed);
                tracing::warn!(mount_point = %job.mount.mount_point, answer = ?other,
                    "the helper did not remount the denied volume; it stays unmounted");
            }
            Err(e) => {
                Metrics::inc(&m.remounts_failed);
                tracing::warn!(mount_point = %job.mount.mount_point, error = %e,
                    "could not ask the helper to remount the denied volume; it stays unmounted");
            }
        }
    }

    /// One request and its answer, outside the analysis path (ping, remount, the start-up
    /// pass over mounted volumes). Never called on the delivery thread.
    pub(crate) fn call(
        &self,
        body: HelperRequest,
        timeout: Duration,
    ) -> Result<(HelperResponse, Duration), String> {
        if !self.connected() {
            return Err(match &self.transport {
                Some(t) => format!("not connected to the helper at {}", t.describe()),
                None => "no helper configured".to_owned(),
            });
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        lock(&self.in_flight)
            .map
            .insert(id, InFlight::Ping { reply: tx, sent });
        let req = Request {
            id,
            budget_us: timeout.as_micros() as u64,
            body,
        };
        if let Err(e) = self.send(&req, None) {
            lock(&self.in_flight).map.remove(&id);
            return Err(format!(
                "sending the request failed ({e}); the helper connection was reset"
            ));
        }
        match rx.recv_timeout(timeout) {
            Ok(resp) => Ok((resp, sent.elapsed())),
            Err(_) => {
                lock(&self.in_flight).map.remove(&id);
                Err(format!("the helper did not answer within {timeout:?}"))
            }
        }
    }

    /// Handle one response from the helper (the transport's thread or queue).
    fn response(&self, resp: Response<HelperResponse>) {
        let entry = lock(&self.in_flight).map.remove(&resp.id);
        let m = &self.shared.metrics;
        match entry {
            None => Metrics::inc(&m.helper_unmatched),
            Some(InFlight::Ping { reply, .. }) => {
                let _ = reply.try_send(resp.body);
            }
            Some(InFlight::Analyze {
                slot,
                sent,
                fire_at,
            }) => {
                let now = Instant::now();
                m.helper_round_trip
                    .record(now.saturating_duration_since(sent));
                if now < fire_at {
                    self.breaker.consecutive.store(0, Ordering::Release);
                }
                let facts = match resp.body {
                    HelperResponse::Analysis { facts, .. } => facts,
                    _ => {
                        slot.answer_fallback(FallbackReason::HelperError);
                        return;
                    }
                };
                let snapshot = self.shared.store.load();
                // Read before deciding: the transitive store can change under the decision.
                let generation = self.shared.transitive.generation();
                match snapshot.policy.decide(&slot.event, &facts) {
                    Outcome::Decided(d) => {
                        if d.cacheable != model::Cacheability::Never
                            && let Some(key) = policy::VerdictCache::key_for(&slot.event)
                            && self.shared.store.load().version == snapshot.version
                        {
                            self.shared.cache.insert(key, &d, Instant::now());
                            // A policy swapped (or a transitive allow added or cleared) while
                            // we decided must not inherit this verdict: if it moved between
                            // the check and the insert, the clear may already have run, so
                            // clear again.
                            if self.shared.store.load().version != snapshot.version
                                || self.shared.transitive.generation() != generation
                            {
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
        let drained: Vec<_> = {
            let mut o = lock(&self.in_flight);
            o.expiries.clear();
            o.map.drain().collect()
        };
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
        self.reset_breaker();
        Metrics::inc(&self.shared.metrics.helper_connects);
    }

    fn on_response(&self, resp: Response<HelperResponse>) {
        self.response(resp);
    }

    fn on_failed(&self, id: u64, why: FallbackReason) {
        let entry = lock(&self.in_flight).map.remove(&id);
        if let Some(InFlight::Analyze { slot, .. }) = entry {
            // A transport with its own reply timeout (XPC) reports the helper's timeouts here.
            if why == FallbackReason::Deadline {
                self.note_timeouts(1, Instant::now());
            }
            slot.answer_fallback(self.why(why));
        }
    }

    fn on_disconnected(&self, why: FallbackReason) {
        Metrics::inc(&self.shared.metrics.helper_disconnects);
        self.reset_breaker();
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
