//! The `KernelControl` for ES: path mutes (process and, on macOS 13+, target paths) and cache
//! clears. Called off the delivery thread (control thread, start-up, maintenance).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use model::{MuteScope, MuteSpec};

use super::client::EsClient;
use crate::backend::{BackendError, KernelControl};
use crate::sys::es_convert::{self, ClearCacheOutcome};

/// Kernel controls; the client is attached once it exists (the core starts first, so the ES
/// handler has somewhere to deliver as soon as it subscribes).
#[derive(Debug)]
pub struct EsControl {
    client: OnceLock<Arc<EsClient>>,
    /// Target-path muting (`ES_MUTE_PATH_TYPE_TARGET_*`) exists from macOS 13.
    target_muting: bool,
    /// A throttled `es_clear_cache` waits here for the maintenance thread to retry it.
    clear_pending: AtomicBool,
}

impl EsControl {
    pub fn new(target_muting: bool) -> Self {
        Self {
            client: OnceLock::new(),
            target_muting,
            clear_pending: AtomicBool::new(false),
        }
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
        self.client(call)?
            .mute_path(&spec.path, es_convert::mute_path_type(spec), mute)
            .map_err(|e| BackendError::Control {
                call,
                detail: format!("{}: {e}", spec.path),
            })
    }

    /// Retry a throttled cache clear; called by the maintenance thread. True when nothing is
    /// left pending.
    pub fn retry_pending_clear(&self) -> bool {
        if !self.clear_pending.load(Ordering::Acquire) {
            return true;
        }
        match self.clear_cache() {
            Ok(()) => !self.clear_pending.load(Ordering::Acquire),
            Err(e) => {
                tracing::warn!(error = %e, "retrying es_clear_cache failed");
                false
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
    /// throttled call is not an error here: it is marked pending and the maintenance thread
    /// retries it about once a second until it goes through.
    fn clear_cache(&self) -> Result<(), BackendError> {
        let code =
            self.client("es_clear_cache")?
                .clear_cache()
                .map_err(|e| BackendError::Control {
                    call: "es_clear_cache",
                    detail: e.to_string(),
                })?;
        match es_convert::clear_cache_outcome(code) {
            ClearCacheOutcome::Cleared => {
                self.clear_pending.store(false, Ordering::Release);
                Ok(())
            }
            ClearCacheOutcome::Throttled => {
                self.clear_pending.store(true, Ordering::Release);
                Ok(())
            }
            ClearCacheOutcome::Internal => {
                self.clear_pending.store(true, Ordering::Release);
                Err(BackendError::Control {
                    call: "es_clear_cache",
                    detail: "internal Endpoint Security error; will retry".to_owned(),
                })
            }
            ClearCacheOutcome::Unknown(c) => Err(BackendError::Control {
                call: "es_clear_cache",
                detail: format!("unknown result code {c}"),
            }),
        }
    }
}
