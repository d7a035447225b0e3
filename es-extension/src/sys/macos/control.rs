//! The `KernelControl` for ES: path mutes (process and, on macOS 13+, target paths), the
//! file-access client's watched targets (inverted target-path muting, issue 10 item 5) and
//! cache clears. Called off the delivery thread (control thread, start-up, maintenance).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use model::{MuteScope, MuteSpec};
use policy::WatchedPath;

use super::api::{EsApi, inversion};
use super::convert::{self, ClearCacheOutcome, mute_path_type};
use crate::backend::{BackendError, KernelControl};

/// The ES backend's counters (`backend.<name>` in `gatehouse stats`). Relaxed atomics, bumped
/// by the ES handler and the control calls.
#[derive(Debug, Default)]
pub struct EsCounters {
    /// AUTH messages the handler could not convert or hand on, answered allow at once.
    pub undelivered: AtomicU64,
    /// Panics caught in the handler (the message was answered allow at once).
    pub handler_panics: AtomicU64,
    /// Messages with a truncated path, answered with the policy's fallback at once.
    pub truncated_paths: AtomicU64,
    pub clear_cache_ok: AtomicU64,
    /// `es_clear_cache` refused by ES's machine-wide rate limit (the core retries).
    pub clear_cache_throttled: AtomicU64,
    pub clear_cache_errors: AtomicU64,
    pub mutes_pushed: AtomicU64,
    pub unmutes_pushed: AtomicU64,
    pub mute_errors: AtomicU64,
    /// Watched target paths selected on the file-access client (inverted muting).
    pub watch_paths_pushed: AtomicU64,
    pub watch_errors: AtomicU64,
    /// NOTIFY messages on a client with no use for them (never expected; counted, not acted
    /// on).
    pub notify_unexpected: AtomicU64,
}

impl EsCounters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<(String, u64)> {
        [
            ("undelivered", &self.undelivered),
            ("handler_panics", &self.handler_panics),
            ("truncated_paths", &self.truncated_paths),
            ("clear_cache_ok", &self.clear_cache_ok),
            ("clear_cache_throttled", &self.clear_cache_throttled),
            ("clear_cache_errors", &self.clear_cache_errors),
            ("mutes_pushed", &self.mutes_pushed),
            ("unmutes_pushed", &self.unmutes_pushed),
            ("mute_errors", &self.mute_errors),
            ("watch_paths_pushed", &self.watch_paths_pushed),
            ("watch_errors", &self.watch_errors),
            ("notify_unexpected", &self.notify_unexpected),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c.load(Ordering::Relaxed)))
        .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The ES clients, attached once they exist (the core starts first, so the handlers have
/// somewhere to deliver as soon as they subscribe).
#[derive(Debug)]
struct Clients<A> {
    /// Exec and mounts: every process event, no target selection.
    process: Arc<A>,
    /// File access with inverted target-path muting, or `None` when it could not be created
    /// (the process client then carries the file kinds, unselected).
    files: Option<Arc<A>>,
    /// NOTIFY close, rename and exit for transitive recording, or `None` when it could not be
    /// created (nothing is recorded then). Muted like the others (ourselves, the helper).
    recorder: Option<Arc<A>>,
}

/// Kernel controls for the ES clients.
#[derive(Debug)]
pub struct EsControl<A: EsApi> {
    clients: OnceLock<Clients<A>>,
    /// Target-path muting (`ES_MUTE_PATH_TYPE_TARGET_*`) exists from macOS 13.
    target_muting: bool,
    counters: Arc<EsCounters>,
    /// The ES paths selected on the file-access client now, and whether inversion is on.
    watched: Mutex<Watched>,
}

#[derive(Debug, Default)]
struct Watched {
    inverted: bool,
    /// `(es path, prefix)`.
    paths: Vec<(String, bool)>,
}

impl<A: EsApi> EsControl<A> {
    pub fn new(target_muting: bool) -> Self {
        Self {
            clients: OnceLock::new(),
            target_muting,
            counters: Arc::new(EsCounters::default()),
            watched: Mutex::new(Watched::default()),
        }
    }

    /// The counters, shared with the ES handlers.
    pub fn counters_handle(&self) -> Arc<EsCounters> {
        Arc::clone(&self.counters)
    }

    pub fn attach(&self, process: Arc<A>, files: Option<Arc<A>>, recorder: Option<Arc<A>>) {
        let _ = self.clients.set(Clients {
            process,
            files,
            recorder,
        });
    }

    fn clients(&self, call: &'static str) -> Result<&Clients<A>, BackendError> {
        self.clients.get().ok_or(BackendError::Control {
            call,
            detail: "the ES client is not connected yet".to_owned(),
        })
    }

    /// Every attached client (process first).
    fn all(&self, call: &'static str) -> Result<Vec<&Arc<A>>, BackendError> {
        let c = self.clients(call)?;
        Ok(std::iter::once(&c.process)
            .chain(c.files.as_ref())
            .chain(c.recorder.as_ref())
            .collect())
    }

    /// Mute a process incarnation on every client (ourselves, the helper).
    pub fn mute_process(&self, token: &super::api::AuditToken) -> Result<(), BackendError> {
        for api in self.all("es_mute_process")? {
            api.mute_process(token).map_err(|e| {
                EsCounters::inc(&self.counters.mute_errors);
                BackendError::Control {
                    call: "es_mute_process",
                    detail: format!("pid {}: {e}", token.pid()),
                }
            })?;
        }
        Ok(())
    }

    /// Select exactly `watched` (plus their `/private` forms) as the file-access client's
    /// targets: only opens, renames, ... of those paths reach us (Santa's file-access client).
    /// `all_paths` (a `processes_with_allowed_paths` rule, which needs every file) selects
    /// `/` as a prefix instead, so the client stays inverted for good: ES allows inverting only
    /// while a client has no AUTH subscription, which the first call (before the first
    /// subscription) honours. New paths are selected before old ones are dropped, so no
    /// watched path is ever unselected in between (invariant 8).
    pub fn set_watched_targets(
        &self,
        watched: &[WatchedPath],
        all_paths: bool,
    ) -> Result<(), BackendError> {
        let Some(files) = &self.clients("es_invert_muting")?.files else {
            return Ok(());
        };
        if !self.target_muting {
            return Ok(());
        }
        let c = &self.counters;
        let fail = |call: &'static str, e: super::api::ApiError| {
            EsCounters::inc(&c.watch_errors);
            BackendError::Control {
                call,
                detail: e.to_string(),
            }
        };
        let mut cur = lock(&self.watched);
        if !cur.inverted {
            // Any target mute present now would be selected by the inversion.
            files
                .unmute_all_target_paths()
                .map_err(|e| fail("es_unmute_all_target_paths", e))?;
            files
                .invert_muting(inversion::TARGET_PATH)
                .map_err(|e| fail("es_invert_muting", e))?;
            cur.inverted = true;
        }
        let wanted: Vec<(String, bool)> = if all_paths {
            vec![("/".to_owned(), true)]
        } else {
            watched
                .iter()
                .flat_map(|w| {
                    convert::es_path_forms(&w.path)
                        .into_iter()
                        .map(move |p| (p, w.prefix))
                })
                .collect()
        };
        let ty = |prefix: bool| {
            if prefix {
                mute_path_type::TARGET_PREFIX
            } else {
                mute_path_type::TARGET_LITERAL
            }
        };
        for (path, prefix) in &wanted {
            if cur.paths.contains(&(path.clone(), *prefix)) {
                continue;
            }
            files
                .mute_path(path, ty(*prefix), true)
                .map_err(|e| fail("es_mute_path", e))?;
            EsCounters::inc(&c.watch_paths_pushed);
            cur.paths.push((path.clone(), *prefix));
        }
        let stale: Vec<(String, bool)> = cur
            .paths
            .iter()
            .filter(|p| !wanted.contains(p))
            .cloned()
            .collect();
        for (path, prefix) in stale {
            files
                .mute_path(&path, ty(prefix), false)
                .map_err(|e| fail("es_unmute_path", e))?;
            cur.paths.retain(|p| *p != (path.clone(), prefix));
        }
        Ok(())
    }

    fn set_mute(&self, spec: &MuteSpec, mute: bool) -> Result<(), BackendError> {
        if spec.scope == MuteScope::Target && !self.target_muting {
            return Err(BackendError::Unsupported(
                "target-path muting before macOS 13",
            ));
        }
        let call = if mute {
            "es_mute_path"
        } else {
            "es_unmute_path"
        };
        let c = &self.counters;
        let clients = self.clients(call)?;
        // A target mute on the file-access client would *select* the path (its target muting
        // is inverted): target mutes go to the process client only and stay mirrored
        // in-process for file events.
        let targets: Vec<&Arc<A>> = match spec.scope {
            MuteScope::Target => vec![&clients.process],
            MuteScope::Process => std::iter::once(&clients.process)
                .chain(clients.files.as_ref())
                .chain(clients.recorder.as_ref())
                .collect(),
        };
        for api in targets {
            if let Err(e) = api.mute_path(&spec.path, convert::mute_path_type(spec), mute) {
                EsCounters::inc(&c.mute_errors);
                return Err(BackendError::Control {
                    call,
                    detail: format!("{}: {e}", spec.path),
                });
            }
        }
        EsCounters::inc(if mute {
            &c.mutes_pushed
        } else {
            &c.unmutes_pushed
        });
        Ok(())
    }
}

impl<A: EsApi> KernelControl for EsControl<A> {
    fn mute_path(&self, spec: &MuteSpec) -> Result<(), BackendError> {
        self.set_mute(spec, true)
    }

    fn unmute_path(&self, spec: &MuteSpec) -> Result<(), BackendError> {
        self.set_mute(spec, false)
    }

    /// `es_clear_cache` clears the cached results of every client on the machine, so one
    /// call covers both of ours; it is rate-limited machine-wide. A throttled call is reported
    /// as an error: the core retries it with backoff off every hot thread
    /// (`core::kernel_retry`).
    fn clear_cache(&self) -> Result<(), BackendError> {
        self.clear_one(&*self.clients("es_clear_cache")?.process)
    }

    fn counters(&self) -> Vec<(String, u64)> {
        self.counters.snapshot()
    }
}

impl<A: EsApi> EsControl<A> {
    fn clear_one(&self, api: &A) -> Result<(), BackendError> {
        let c = &self.counters;
        let code = api.clear_cache().map_err(|e| {
            EsCounters::inc(&c.clear_cache_errors);
            BackendError::Control {
                call: "es_clear_cache",
                detail: e.to_string(),
            }
        })?;
        match convert::clear_cache_outcome(code) {
            ClearCacheOutcome::Cleared => {
                EsCounters::inc(&c.clear_cache_ok);
                Ok(())
            }
            ClearCacheOutcome::Throttled => {
                EsCounters::inc(&c.clear_cache_throttled);
                Err(BackendError::Control {
                    call: "es_clear_cache",
                    detail:
                        "throttled by Endpoint Security's machine-wide rate limit; retried later"
                            .to_owned(),
                })
            }
            ClearCacheOutcome::Internal => {
                EsCounters::inc(&c.clear_cache_errors);
                Err(BackendError::Control {
                    call: "es_clear_cache",
                    detail: "internal Endpoint Security error; retried later".to_owned(),
                })
            }
            ClearCacheOutcome::Unknown(code) => {
                EsCounters::inc(&c.clear_cache_errors);
                Err(BackendError::Control {
                    call: "es_clear_cache",
                    detail: format!("unknown result code {code}"),
                })
            }
        }
    }
}
