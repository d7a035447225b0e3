//! Retrying a failed kernel cache clear off every hot thread. After a policy load the kernel's
//! cached allows must go (`KernelControl::clear_cache`); the call can fail transiently (ES
//! rate-limits `es_clear_cache` machine-wide), so a failure is handed to this one thread, which
//! retries with doubling backoff, then at a bounded rate, until it succeeds. This is the only
//! retry mechanism: backends report a throttled clear as an error and leave the retry to the core.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::Shared;
use super::metrics::Metrics;

/// Longest wait between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// Clear the kernel cache now (the caller's thread: control or start-up, never delivery); on
/// failure, count it and hand the retry to the maintenance thread.
pub(crate) fn clear_kernel_cache(shared: &Shared) {
    let m = &shared.metrics;
    match shared.kernel.clear_cache() {
        Ok(()) => {}
        Err(e) => {
            Metrics::inc(&m.kernel_control_errors);
            Metrics::inc(&m.cache_clear_failures);
            tracing::warn!(error = %e, "kernel cache clear failed after a policy load; retrying with backoff");
            // Full: a retry is already scheduled and runs after this load, so it covers it.
            // Disconnected: the core is stopping.
            let _ = shared.clear_retry.try_send(());
        }
    }
}

/// The retry channel: capacity one, so any number of failed loads coalesce into one retry run.
pub(crate) fn channel() -> (Sender<()>, Receiver<()>) {
    crossbeam_channel::bounded(1)
}

/// Wait `d` unless `stop` is disconnected first; true when stopping.
fn sleep_or_stop(stop: &Receiver<()>, d: Duration) -> bool {
    stop.recv_timeout(d).is_err_and(|e| e.is_disconnected())
}

/// The maintenance thread's body: one retry run per request, until the clear succeeds or the
/// core stops. The first `attempts` calls wait `first`, then twice as long each time (at most
/// [`BACKOFF_MAX`]); if all fail the run is counted as escalated (`cache_clear_abandoned`,
/// logged once) and goes on every [`BACKOFF_MAX`]: until the cache is cleared the kernel may
/// still hold allows the current policy refuses (invariant 8), so giving up is never safe.
pub(crate) fn run(shared: Arc<Shared>, requests: Receiver<()>, stop: Receiver<()>) {
    let m = &shared.metrics;
    let (first, attempts) = (
        shared.config.kernel_retry_backoff,
        shared.config.kernel_retry_attempts,
    );
    loop {
        crossbeam_channel::select! {
            recv(requests) -> r => if r.is_err() { return },
            recv(stop) -> _ => return,
        }
        let mut wait = first;
        let mut attempt: u32 = 0;
        loop {
            if sleep_or_stop(&stop, wait) {
                return;
            }
            attempt = attempt.saturating_add(1);
            wait = if attempt >= attempts {
                BACKOFF_MAX
            } else {
                (wait * 2).min(BACKOFF_MAX)
            };
            Metrics::inc(&m.cache_clear_retries);
            match shared.kernel.clear_cache() {
                Ok(()) => {
                    tracing::info!(attempt, "kernel cache cleared on retry");
                    break;
                }
                Err(e) => {
                    Metrics::inc(&m.cache_clear_failures);
                    tracing::debug!(attempt, error = %e, "kernel cache clear retry failed");
                    if attempt == attempts {
                        Metrics::inc(&m.cache_clear_abandoned);
                        tracing::error!(
                            attempts,
                            error = %e,
                            "kernel cache still not cleared; kernel-cached allows may persist until it is, retrying every {BACKOFF_MAX:?}"
                        );
                    }
                }
            }
        }
    }
}
