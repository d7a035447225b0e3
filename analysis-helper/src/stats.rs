//! The helper's counters, exported by `Stats` requests and `gatehouse stats`.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Monotonic counters; relaxed atomics, since each is read on its own.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl Stats {
            /// Every counter by name, in declaration order.
            pub fn snapshot(&self) -> Vec<(String, u64)> {
                vec![$((stringify!($name).to_owned(), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Connections that passed authentication and the handshake.
    connections_accepted,
    /// Connections refused: wrong uid, unexpected executable, or over the connection limit.
    connections_refused,
    /// Connections whose handshake failed (bad magic, version or role).
    handshake_failures,
    /// Frames that did not decode; each closed its connection.
    malformed_frames,
    /// Frames over the size limit; each closed its connection.
    oversized_frames,
    requests_ping,
    requests_stats,
    requests_analyze,
    requests_remount,
    requests_unmount,
    /// Start-up unmounts started (DiskArbitration accepted the request).
    unmounts_started,
    /// Start-up unmounts that could not start.
    unmounts_failed,
    /// Forced remounts started (DiskArbitration accepted the request).
    remounts_started,
    /// Forced remounts that could not start (DiskArbitration's later refusals are logged).
    remounts_failed,
    /// Requests whose budget ran out (before starting or while working).
    timeouts,
    /// Requests refused because the worker queue or the connection's in-flight limit was full.
    busy,
    /// Requests refused as inconsistent (role, missing fd, missing subject).
    bad_requests,
    /// Analyzer panics caught and answered `Internal`.
    panics,
    cache_hits,
    cache_misses,
    /// Answers that could not be delivered (peer gone or not reading before the deadline).
    responses_dropped,
    /// Connections closed because the peer did not complete its hello within the deadline.
    hello_timeouts,
    /// Connections closed because no request came within the idle limit.
    idle_closed,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_every_counter() {
        let s = Stats::default();
        Stats::bump(&s.timeouts);
        Stats::bump(&s.timeouts);
        let snap = s.snapshot();
        assert_eq!(snap.len(), 23);
        assert!(snap.contains(&("timeouts".to_owned(), 2)));
        assert!(snap.contains(&("cache_hits".to_owned(), 0)));
    }
}
