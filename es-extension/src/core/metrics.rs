//! Counters and latency histograms, written from every core thread (the delivery thread
//! included) without a lock, and summarised for `gatehouse stats` on the control thread.
//!
//! Histograms are a fixed array of atomic log-linear buckets: recording is one relaxed
//! `fetch_add`, so the delivery thread can never wait on a reader. hdrhistogram is used on the
//! read side only, to turn the bucket counts into percentiles.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use model::{EventKind, FallbackReason, Verdict};
use protocol::LatencySummary;

/// Sub-buckets per power of two: 16 gives a worst-case bucket width of 1/16 (about 6%).
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Values are nanoseconds: `SUB` exact buckets, then `SUB` per power of two from 2^SUB_BITS
/// up to 2^63, which covers every `u64`.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// A lock-free latency histogram in nanoseconds.
#[derive(Debug)]
pub struct AtomicHistogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// Bucket index of `v`: values below `SUB` get exact buckets, above that the top `SUB_BITS`
/// bits after the leading one pick the sub-bucket.
fn bucket_of(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = (v >> (exp - SUB_BITS)) as usize & (SUB - 1);
    ((exp - SUB_BITS + 1) as usize) * SUB + sub
}

/// The smallest value that lands in bucket `i` (inverse of [`bucket_of`]).
fn bucket_low(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let exp = (i / SUB) as u32 + SUB_BITS - 1;
    let sub = (i % SUB) as u64;
    (1u64 << exp) | (sub << (exp - SUB_BITS))
}

impl AtomicHistogram {
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
    }

    /// Percentiles in microseconds. Each bucket is reported at its lower bound, so figures are
    /// at most one bucket width (about 6%) low.
    pub fn summary(&self, name: &str) -> LatencySummary {
        // 1 ns .. 1 hour at 2 significant figures; values above are clamped.
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 2)
            .expect("static histogram bounds are valid");
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            if n > 0 {
                let _ = h.record_n(bucket_low(i).clamp(1, h.high()), n);
            }
        }
        let us = |q: f64| h.value_at_quantile(q) / 1_000;
        LatencySummary {
            name: name.to_owned(),
            count: h.len(),
            p50_us: us(0.50),
            p90_us: us(0.90),
            p99_us: us(0.99),
            max_us: h.max() / 1_000,
        }
    }
}

/// Every counter the core keeps. All relaxed atomics: they are statistics, not synchronisation.
#[derive(Debug, Default)]
pub struct Metrics {
    pub events: [AtomicU64; EventKind::ALL.len()],
    /// Answers given, by kind and verdict (`[kind][0]` allow, `[kind][1]` deny).
    pub answers: [[AtomicU64; 2]; EventKind::ALL.len()],
    pub fallbacks: [AtomicU64; FallbackReason::ALL.len()],
    pub muted: AtomicU64,
    pub fast_path_decided: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub analysed: AtomicU64,
    pub helper_decided: AtomicU64,
    pub late_helper_answers: AtomicU64,
    pub deadline_misses: AtomicU64,
    pub duplicate_answers: AtomicU64,
    pub queue_full: AtomicU64,
    pub respond_errors: AtomicU64,
    /// Events-log records refused by the writer's full channel (never reached the writer).
    pub log_dropped: AtomicU64,
    /// Events-log records written to disk as whole lines.
    pub log_written: AtomicU64,
    /// Events-log records the writer could not write (disk full, I/O error, no file).
    pub log_write_failed: AtomicU64,
    /// Records sent to journald (`--journald`), and those it did not take (socket absent or
    /// full, record too large): each record is one or the other.
    pub log_journal_sent: AtomicU64,
    pub log_journal_failed: AtomicU64,
    /// Records sent to the system log (macOS: the unified log), and those it did not take.
    pub log_unified_sent: AtomicU64,
    pub log_unified_failed: AtomicU64,
    /// Failed events-log operations (open, write, truncate, rotate), however many records each
    /// cost.
    pub log_write_errors: AtomicU64,
    /// Events-log files removed by rotation (the oldest of `keep`), and the records they held.
    pub log_rotated_out_files: AtomicU64,
    pub log_rotated_out_records: AtomicU64,
    /// Gauge: 1 while the events log's last write failed with ENOSPC or EDQUOT.
    pub log_disk_full: AtomicU64,
    pub helper_connects: AtomicU64,
    pub helper_disconnects: AtomicU64,
    pub helper_protocol_errors: AtomicU64,
    pub helper_unmatched: AtomicU64,
    pub kernel_control_errors: AtomicU64,
    /// The runtime mutes file: unreadable at start, an entry in it refused, or a failed save
    /// (that mute change was refused).
    pub mutes_file_errors: AtomicU64,
    /// Failed kernel cache clears (the first call after a policy load, and each retry).
    pub cache_clear_failures: AtomicU64,
    /// Retry attempts of a failed kernel cache clear (maintenance thread).
    pub cache_clear_retries: AtomicU64,
    /// Retry runs that used every backed-off attempt without clearing. The clear is then
    /// escalated, never abandoned: the thread keeps trying every 8 s until it succeeds.
    pub cache_clear_abandoned: AtomicU64,
    /// Cacheable answers (kernel or verdict cache) that raced a policy swap and so asked for
    /// the cache to be cleared again.
    pub stale_cache_reclears: AtomicU64,
    /// Forced remounts (`remount` rules) handed to the remount thread after the deny.
    pub remounts_requested: AtomicU64,
    /// Forced remounts the helper started.
    pub remounts_started: AtomicU64,
    /// Forced remounts the helper refused or could not be asked for (the volume stays
    /// unmounted, which is the safe side).
    pub remounts_failed: AtomicU64,
    /// Forced remounts not requested because the remount queue was full.
    pub remounts_dropped: AtomicU64,
    /// Volumes mounted before start-up that the start-up pass decided.
    pub startup_mounts_checked: AtomicU64,
    /// Of those, unmounts (and remounts) the helper started.
    pub startup_unmounts_started: AtomicU64,
    /// Of those, unmounts the helper refused or could not be asked for.
    pub startup_unmounts_failed: AtomicU64,
    /// Transitive allowlisting (`core::transitive`): compiler processes put in the tracked
    /// set; compiler execs not tracked (the set's bucket full, no pidfd, or the recorder's
    /// queue full); tracked processes pruned after they exited.
    pub transitive_compilers_tracked: AtomicU64,
    pub transitive_compilers_untracked: AtomicU64,
    pub transitive_compilers_pruned: AtomicU64,
    /// Close-writes seen by the backend, those from a tracked compiler handed to the recorder,
    /// and those dropped because its queue was full.
    pub transitive_writes_seen: AtomicU64,
    pub transitive_writes_handed_off: AtomicU64,
    pub transitive_writes_dropped: AtomicU64,
    /// Transitive allows added to the store, evicted from it at capacity, files that could not
    /// be hashed through their descriptor (or were larger than the bound), and writes refused
    /// because the writer's pid was no longer the tracked compiler.
    pub transitive_added: AtomicU64,
    pub transitive_evicted: AtomicU64,
    pub transitive_hash_failures: AtomicU64,
    pub transitive_stale_writers: AtomicU64,
    /// Compiler files not recorded because they are not executable images (Santa records only
    /// `isExecutable` files), and re-opened paths (Endpoint Security) that no longer named the
    /// file the kernel reported, or files that changed while hashed.
    pub transitive_not_executable: AtomicU64,
    pub transitive_file_changed: AtomicU64,
    /// The persisted store: failed saves, and a file (or entries in it) refused at start.
    pub transitive_file_errors: AtomicU64,
    pub fast_path: AtomicHistogram,
    pub helper_round_trip: AtomicHistogram,
    pub event_to_answer: AtomicHistogram,
}

/// Index of a verdict in [`Metrics::answers`].
pub fn verdict_index(v: Verdict) -> usize {
    match v {
        Verdict::Allow => 0,
        Verdict::Deny => 1,
    }
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn fallback(&self, why: FallbackReason) {
        let i = FallbackReason::ALL
            .iter()
            .position(|r| *r == why)
            .unwrap_or(0);
        self.fallbacks[i].fetch_add(1, Relaxed);
    }

    pub fn fallback_count(&self, why: FallbackReason) -> u64 {
        FallbackReason::ALL
            .iter()
            .position(|r| *r == why)
            .map_or(0, |i| self.fallbacks[i].load(Relaxed))
    }

    pub fn answers_total(&self) -> u64 {
        self.answers
            .iter()
            .flat_map(|k| k.iter())
            .map(|c| c.load(Relaxed))
            .sum()
    }

    /// Named counters, in a stable order, for `gatehouse stats`.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let total: u64 = self.events.iter().map(|c| c.load(Relaxed)).sum();
        out.push(("events".to_owned(), total));
        for k in EventKind::ALL {
            out.push((
                format!("events.{}", k.as_str()),
                self.events[k.index()].load(Relaxed),
            ));
        }
        let (mut allow, mut deny) = (0, 0);
        for k in EventKind::ALL {
            let a = self.answers[k.index()][0].load(Relaxed);
            let d = self.answers[k.index()][1].load(Relaxed);
            allow += a;
            deny += d;
            out.push((format!("answers.{}.allow", k.as_str()), a));
            out.push((format!("answers.{}.deny", k.as_str()), d));
        }
        out.push(("answers.allow".to_owned(), allow));
        out.push(("answers.deny".to_owned(), deny));
        for why in FallbackReason::ALL {
            out.push((
                format!("fallbacks.{}", why.as_str()),
                self.fallback_count(why),
            ));
        }
        let named: [(&str, &AtomicU64); 54] = [
            ("muted", &self.muted),
            ("fast_path_decided", &self.fast_path_decided),
            ("cache_hits", &self.cache_hits),
            ("cache_misses", &self.cache_misses),
            ("analysed", &self.analysed),
            ("helper_decided", &self.helper_decided),
            ("late_helper_answers", &self.late_helper_answers),
            ("deadline_misses", &self.deadline_misses),
            ("duplicate_answers", &self.duplicate_answers),
            ("queue_full", &self.queue_full),
            ("respond_errors", &self.respond_errors),
            ("log_dropped", &self.log_dropped),
            ("log_written", &self.log_written),
            ("log_write_failed", &self.log_write_failed),
            ("log_journal_sent", &self.log_journal_sent),
            ("log_journal_failed", &self.log_journal_failed),
            ("log_unified_sent", &self.log_unified_sent),
            ("log_unified_failed", &self.log_unified_failed),
            ("log_write_errors", &self.log_write_errors),
            ("log_rotated_out_files", &self.log_rotated_out_files),
            ("log_rotated_out_records", &self.log_rotated_out_records),
            ("log_disk_full", &self.log_disk_full),
            ("helper_connects", &self.helper_connects),
            ("helper_disconnects", &self.helper_disconnects),
            ("helper_protocol_errors", &self.helper_protocol_errors),
            ("helper_unmatched", &self.helper_unmatched),
            ("kernel_control_errors", &self.kernel_control_errors),
            ("mutes_file_errors", &self.mutes_file_errors),
            ("cache_clear_failures", &self.cache_clear_failures),
            ("cache_clear_retries", &self.cache_clear_retries),
            ("cache_clear_abandoned", &self.cache_clear_abandoned),
            ("stale_cache_reclears", &self.stale_cache_reclears),
            ("remounts_requested", &self.remounts_requested),
            ("remounts_started", &self.remounts_started),
            ("remounts_failed", &self.remounts_failed),
            ("remounts_dropped", &self.remounts_dropped),
            ("startup_mounts_checked", &self.startup_mounts_checked),
            ("startup_unmounts_started", &self.startup_unmounts_started),
            ("startup_unmounts_failed", &self.startup_unmounts_failed),
            (
                "transitive_compilers_tracked",
                &self.transitive_compilers_tracked,
            ),
            (
                "transitive_compilers_untracked",
                &self.transitive_compilers_untracked,
            ),
            (
                "transitive_compilers_pruned",
                &self.transitive_compilers_pruned,
            ),
            ("transitive_writes_seen", &self.transitive_writes_seen),
            (
                "transitive_writes_handed_off",
                &self.transitive_writes_handed_off,
            ),
            ("transitive_writes_dropped", &self.transitive_writes_dropped),
            ("transitive_added", &self.transitive_added),
            ("transitive_evicted", &self.transitive_evicted),
            ("transitive_hash_failures", &self.transitive_hash_failures),
            ("transitive_stale_writers", &self.transitive_stale_writers),
            ("transitive_not_executable", &self.transitive_not_executable),
            ("transitive_file_changed", &self.transitive_file_changed),
            ("transitive_file_errors", &self.transitive_file_errors),
            ("answers", &AtomicU64::new(self.answers_total())),
            (
                "fallbacks",
                &AtomicU64::new(self.fallbacks.iter().map(|c| c.load(Relaxed)).sum()),
            ),
        ];
        out.extend(
            named
                .iter()
                .map(|(n, c)| ((*n).to_owned(), c.load(Relaxed))),
        );
        out
    }

    pub fn latencies(&self) -> Vec<LatencySummary> {
        vec![
            self.fast_path.summary("fast_path"),
            self.helper_round_trip.summary("helper_round_trip"),
            self.event_to_answer.summary("event_to_answer"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_table() {
        // (value, bucket lower bound it must land on)
        let cases: &[(u64, u64)] = &[
            (0, 0),
            (15, 15),
            (16, 16),
            (17, 17),
            (31, 31),
            (32, 32),
            (33, 32),
            (1_000, 992),
            (1_000_000, 983_040),
            (u64::MAX, bucket_low(BUCKETS - 1)),
        ];
        for &(v, low) in cases {
            let b = bucket_of(v);
            assert!(b < BUCKETS, "{v}");
            assert_eq!(bucket_low(b), low, "{v}");
            assert!(bucket_low(b) <= v, "{v}");
            if b + 1 < BUCKETS {
                assert!(bucket_low(b + 1) > v, "{v}");
            }
        }
    }

    #[test]
    fn percentiles_are_within_a_bucket() {
        let h = AtomicHistogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary("t");
        assert_eq!(s.count, 1000);
        for (got, want) in [
            (s.p50_us, 500),
            (s.p90_us, 900),
            (s.p99_us, 990),
            (s.max_us, 1000),
        ] {
            assert!(
                got <= want && got * 100 >= want * 92,
                "got {got} want ~{want}"
            );
        }
    }
}
