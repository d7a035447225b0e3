//! Tail latency of decide(): every call timed on its own and recorded in an HDR histogram, so
//! the p99 and p99.9 that divan's medians do not show are measured (goal: p99 under 1 µs with
//! 10,000 rules, docs/DESIGN.md 7). Timing each call adds one clock read (~20-30 ns) to every sample,
//! so the figures are an upper bound.

use std::hint::black_box;
use std::time::Instant;

mod support;

use support::{EVENTS, SIZES, events, policy};

const CALLS: u64 = 200_000;

fn main() {
    let names: Vec<_> = events().into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(
        names, EVENTS,
        "support::EVENTS is out of step with support::events()"
    );
    println!(
        "{:<24} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "event", "rules", "p50 ns", "p99 ns", "p99.9 ns", "max ns"
    );
    for rules in SIZES {
        let p = policy(rules);
        for (name, ev, facts) in events() {
            let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("valid precision");
            // Warm the caches and branch predictors, as a long-running agent would be.
            for _ in 0..10_000 {
                black_box(p.decide(black_box(&ev), black_box(&facts)));
            }
            for _ in 0..CALLS {
                let t = Instant::now();
                black_box(p.decide(black_box(&ev), black_box(&facts)));
                h.saturating_record(t.elapsed().as_nanos() as u64);
            }
            println!(
                "{name:<24} {rules:>7} {:>9} {:>9} {:>9} {:>9}",
                h.value_at_quantile(0.50),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            );
        }
    }
}
