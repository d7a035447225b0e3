//! The `KernelControl` for ES: path mutes (process and, on macOS 13+, target paths) and cache
//! clears. Called off the delivery thread (control thread, start-up, maintenance).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use model::{MuteScope, MuteSpec};

use super::client::EsClient;
use crate::backend::{BackendError, KernelControl};
use crate::sys::es_convert::{self, ClearCacheOutcome};

/// The ES backend's counters (`backend.<name>` in `gatehouse stats`). Relaxed atomics, bumped
/// by the ES handler and the control calls.
#[derive(Debug, Default)]
pub struct EsCounters {
    /// AUTH messages the handler could not convert or hand on, answered allow at once.
    pub undelivered: AtomicU64,
    /// Panics caught in the handler (the message was answered allow at once).
    pub handler_panics: AtomicU64,
    pub clear_cache_ok: AtomicU64,
    /// `es_clear_cache` refused by ES's machine-wide rate limit (the core retries).
    pub clear_cache_throttled: AtomicU64,
    pub clear_cache_errors: AtomicU64,
    pub mutes_pushed: AtomicU64,
    pub unmutes_pushed: AtomicU64,
    pub mute_errors: AtomicU64,
}

impl EsCounters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<(String, u64)> {
        [
            ("undelivered", &self.undelivered),
            ("handler_panics", &self.handler_panics),
            ("clear_cache_ok", &self.clear_cache_ok),
            ("clear_cache_throttled", &self.clear_cache_throttled),
            ("clear_cache_errors", &self.clear_cache_errors),
            ("mutes_pushed", &self.mutes_pushed),
            ("unmutes_pushed", &self.unmutes_pushed),
            ("mute_errors", &self.mute_errors),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c.load(Ordering::Relaxed)))
        .collect()
    }
}

/// Kernel controls; the client is attached once it exists (the core starts first, so the ES
/// handler has somewhere to deliver as soon as it subscribes).
#[derive(Debug)]
pub struct EsControl {
    client: OnceLock<Arc<EsClient>>,
    /// Target-path muting (`ES_MUTE_PATH_TYPE_TARGET_*`) exists from macOS 13.
    target_muting: bool,
    counters: Arc<EsCounters>,
}

impl EsControl {
    pub fn new(target_muting: bool) -> Self {
        Self {
            client: OnceLock::new(),
            target_muting,
            counters: Arc::new(EsCounters::default()),
        }
    }

    /// The counters, shared with the ES handler.
    pub fn counters_handle(&self) -> Arc<EsCounters> {
        Arc::clone(&self.counters)
    }

    pub fn attach(&self, client: Arc<EsClient>) {
        let _ = self.client.set(client);
    }

    fn client(&self, call: &'static str) -> Result<&Arc<EsClient>, BackendError> {
        self.client.get().ok_or(BackendError::Control {
            call,
            detail: "the ES client is not connected yet".to_owned(),
        })
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
        match self
            .client(call)?
            .mute_path(&spec.path, es_convert::mute_path_type(spec), mute)
        {
            Ok(()) => {
                EsCounters::inc(if mute {
                    &c.mutes_pushed
                } else {
                    &c.unmutes_pushed
                });
                Ok(())
            }
            Err(e) => {
                EsCounters::inc(&c.mute_errors);
                Err(BackendError::Control {
                    call,
                    detail: format!("{}: {e}", spec.path),
                })
            }
        }
    }
}

impl KernelControl for EsControl {
    fn mute_path(&self, spec: &MuteSpec) -> Result<(), BackendError> {
        self.set_mute(spec, true)
    }

    fn unmute_path(&self, spec: &MuteSpec) -> Result<(), BackendError> {
        self.set_mute(spec, false)
    }

    /// `es_clear_cache` is shared by every ES client on the machine and rate-limited. A
    /// throttled call is reported as an error: the core retries it with backoff off every hot
    /// thread (`core::kernel_retry`), the one retry mechanism.
    fn clear_cache(&self) -> Result<(), BackendError> {
        let c = &self.counters;
        let code = self.client("es_clear_cache")?.clear_cache().map_err(|e| {
            EsCounters::inc(&c.clear_cache_errors);
            BackendError::Control {
                call: "es_clear_cache",
                detail: e.to_string(),
            }
        })?;
        match es_convert::clear_cache_outcome(code) {
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

    fn counters(&self) -> Vec<(String, u64)> {
        self.counters.snapshot()
    }
}
