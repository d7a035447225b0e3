//! The helper connection: one pipelined Unix-socket connection with request ids, fed by the
//! slow-path workers and read by one reader thread that also (re)connects with backoff.
//!
//! Nothing here runs on the delivery thread, and start-up never waits for it: while there is no
//! connection, `connected()` is false and the delivery thread answers the fallback at once.
//! Requests in flight on a connection that dies get the fallback; answers that arrive after the
//! watchdog already answered still fill the verdict cache but do not answer twice.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use model::{AnalysisRequest, FallbackReason, Outcome};
use protocol::{HELPER_MAX_FRAME, HelperRequest, HelperResponse, Request, Response, Role};

use super::Shared;
use super::metrics::Metrics;
use super::pending::Slot;
use crate::backend::Responder;

/// Handshake and connect must not hang the connector on a wedged helper.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(25);

/// One handed-off event on its way to a worker.
pub struct WorkItem<R: Responder> {
    pub slot: Arc<Slot<R>>,
    pub request: AnalysisRequest,
    pub file: Option<OwnedFd>,
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
    path: Option<PathBuf>,
    write_timeout: Duration,
    backoff_max: Duration,
    max_in_flight: usize,
    late_grace: Duration,
    connected: AtomicBool,
    /// The current connection. Locked only to clone or replace the `Arc` (never across a
    /// system call), so `close` can always reach a socket a worker is blocked writing to.
    conn: Mutex<Option<Arc<UnixStream>>>,
    /// Held by a worker across one `sendmsg` so frames never interleave. The delivery thread
    /// never touches it.
    write_lock: Mutex<()>,
    in_flight: Mutex<HashMap<u64, InFlight<R>>>,
    next_id: AtomicU64,
}

impl<R: Responder> std::fmt::Debug for HelperClient<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HelperClient")
            .field("path", &self.path)
            .field("connected", &self.connected())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<R: Responder> HelperClient<R> {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let c = &shared.config;
        Self {
            path: c.helper_socket.clone(),
            write_timeout: c.helper_write_timeout,
            backoff_max: c.reconnect_backoff_max,
            max_in_flight: c.max_in_flight,
            late_grace: c.late_answer_grace,
            shared,
            connected: AtomicBool::new(false),
            conn: Mutex::new(None),
            write_lock: Mutex::new(()),
            in_flight: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Lock-free: read on the delivery thread.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
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

    /// Send one request on the current connection. On failure the connection is torn down (a
    /// partial frame would desynchronise it) and the caller gets the error.
    fn send(&self, req: &Request<HelperRequest>, fd: Option<&OwnedFd>) -> Result<(), ()> {
        let _w = lock(&self.write_lock);
        let Some(stream) = lock(&self.conn).clone() else {
            return Err(());
        };
        let fds: Vec<_> = fd.iter().map(|f| f.as_fd()).collect();
        match protocol::unix::send_frame(&stream, req, &fds, HELPER_MAX_FRAME) {
            Ok(()) => Ok(()),
            Err(e) => {
                if !self.shared.shutting_down.load(Ordering::Acquire) {
                    tracing::warn!(error = %e, "sending to the helper failed; reconnecting");
                }
                // Wakes the reader, which fails everything in flight and reconnects.
                let _ = stream.shutdown(std::net::Shutdown::Both);
                let mut c = lock(&self.conn);
                if c.as_ref().is_some_and(|s| Arc::ptr_eq(s, &stream)) {
                    *c = None;
                    self.connected.store(false, Ordering::Release);
                }
                Err(())
            }
        }
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
        if self.send(&req, file.as_ref()).is_err() {
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
            return Err(match &self.path {
                Some(p) => format!("not connected to the helper at {}", p.display()),
                None => "no helper socket configured".to_owned(),
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
        if self.send(&req, None).is_err() {
            lock(&self.in_flight).remove(&id);
            return Err("sending the ping failed; the helper connection was reset".to_owned());
        }
        match rx.recv_timeout(timeout) {
            Ok(resp) => Ok((resp, sent.elapsed())),
            Err(_) => {
                lock(&self.in_flight).remove(&id);
                Err(format!("the helper did not answer within {timeout:?}"))
            }
        }
    }

    /// Handle one response from the helper (reader thread).
    fn on_response(&self, resp: Response<HelperResponse>) {
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
                            // A policy swapped while we decided must not inherit this verdict.
                            && self.shared.store.load().version == snapshot.version
                        {
                            self.shared.cache.insert(key, &d, Instant::now());
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

    fn connect(&self, path: &PathBuf) -> Result<UnixStream, String> {
        let mut s = UnixStream::connect(path).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .and_then(|()| s.set_write_timeout(Some(HANDSHAKE_TIMEOUT)))
            .map_err(|e| e.to_string())?;
        let agent = format!("gatehouse-extension/{}", env!("CARGO_PKG_VERSION"));
        protocol::handshake::client(&mut s, Role::Extension, &agent).map_err(|e| e.to_string())?;
        s.set_read_timeout(None)
            .and_then(|()| s.set_write_timeout(Some(self.write_timeout)))
            .map_err(|e| e.to_string())?;
        Ok(s)
    }

    /// Wake a reader blocked on the current connection (shutdown).
    pub fn close(&self) {
        let current = lock(&self.conn).take();
        if let Some(s) = current {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.connected.store(false, Ordering::Release);
    }

    /// The connector/reader thread's body.
    pub fn run_reader(&self, stop: Receiver<()>) {
        let Some(path) = self.path.clone() else {
            // No helper configured: stay disconnected, every analysis gets the fallback.
            let _ = stop.recv();
            return;
        };
        let stopped = || {
            matches!(
                stop.try_recv(),
                Err(crossbeam_channel::TryRecvError::Disconnected)
            )
        };
        let mut backoff = BACKOFF_START;
        let mut logged = false;
        while !stopped() {
            let stream = match self.connect(&path) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    if !logged {
                        tracing::info!(path = %path.display(), error = %e, "helper not reachable; retrying with backoff");
                        logged = true;
                    }
                    if stop
                        .recv_timeout(backoff)
                        .is_err_and(|e| e.is_disconnected())
                    {
                        break;
                    }
                    backoff = (backoff * 2).min(self.backoff_max);
                    continue;
                }
            };
            logged = false;
            *lock(&self.conn) = Some(Arc::clone(&stream));
            self.connected.store(true, Ordering::Release);
            Metrics::inc(&self.shared.metrics.helper_connects);
            if stopped() {
                self.close();
                break;
            }
            let why = loop {
                match protocol::unix::recv_frame::<Response<HelperResponse>>(
                    &stream,
                    HELPER_MAX_FRAME,
                ) {
                    Ok((resp, _fds)) => {
                        // A helper that answers is healthy: reconnect quickly next time.
                        backoff = BACKOFF_START;
                        self.on_response(resp);
                    }
                    Err(protocol::ProtocolError::Decode(e)) => {
                        tracing::warn!(error = %e, "malformed frame from the helper; reconnecting");
                        Metrics::inc(&self.shared.metrics.helper_protocol_errors);
                        break FallbackReason::HelperError;
                    }
                    Err(protocol::ProtocolError::FrameTooLarge { .. }) => {
                        Metrics::inc(&self.shared.metrics.helper_protocol_errors);
                        break FallbackReason::HelperError;
                    }
                    Err(_) => break FallbackReason::HelperUnavailable,
                }
            };
            let _ = stream.shutdown(std::net::Shutdown::Both);
            {
                let mut w = lock(&self.conn);
                if w.as_ref().is_some_and(|s| Arc::ptr_eq(s, &stream)) {
                    *w = None;
                }
            }
            self.connected.store(false, Ordering::Release);
            Metrics::inc(&self.shared.metrics.helper_disconnects);
            let why = if self.shared.shutting_down.load(Ordering::Acquire) {
                FallbackReason::Shutdown
            } else {
                why
            };
            self.fail_in_flight(why);
            // A helper that dies on every connection must not make us spin.
            if stop
                .recv_timeout(backoff)
                .is_err_and(|e| e.is_disconnected())
            {
                break;
            }
            backoff = (backoff * 2).min(self.backoff_max);
        }
        self.close();
        self.fail_in_flight(FallbackReason::Shutdown);
    }
}
