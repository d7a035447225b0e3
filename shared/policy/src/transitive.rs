//! Transitive allowlisting (Santa's `ALLOWLIST_COMPILER` and `ALLOWLIST_TRANSITIVE`): files
//! written by a process that an exec rule with `compiler = true` allowed become allowed by
//! SHA-256. The store is bounded (oldest evicted first, counted), read lock-free by `decide`
//! (an arc-swapped snapshot) and written copy-on-write under one lock that readers never take.
//! Transitive allows rank below every other identifier rule of both tiers.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use model::Sha256;

/// Default bound of the store.
pub const TRANSITIVE_MAX: usize = 10_000;

/// One transitive allow: the file's SHA-256, where it was written, which compiler rule's
/// process wrote it and when (ms since the Unix epoch, as the caller measures).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransitiveEntry {
    pub sha256: Sha256,
    pub path: String,
    pub compiler_rule: String,
    pub added_ms: u64,
}

#[derive(Debug, Default)]
struct Snapshot {
    by_hash: HashMap<[u8; 32], TransitiveEntry>,
    /// Insertion order, for eviction.
    order: VecDeque<[u8; 32]>,
}

/// The bounded store of transitive allows.
#[derive(Debug)]
pub struct TransitiveRules {
    current: arc_swap::ArcSwap<Snapshot>,
    writer: std::sync::Mutex<()>,
    capacity: usize,
    evicted: AtomicU64,
}

impl TransitiveRules {
    pub fn new(capacity: usize) -> Arc<TransitiveRules> {
        Arc::new(TransitiveRules {
            current: arc_swap::ArcSwap::from_pointee(Snapshot::default()),
            writer: std::sync::Mutex::new(()),
            capacity: capacity.max(1),
            evicted: AtomicU64::new(0),
        })
    }

    /// Lock-free: whether `sha256` is transitively allowed.
    pub fn contains(&self, sha256: &[u8; 32]) -> bool {
        self.current.load().by_hash.contains_key(sha256)
    }

    pub fn is_empty(&self) -> bool {
        self.current.load().by_hash.is_empty()
    }

    pub fn len(&self) -> usize {
        self.current.load().by_hash.len()
    }

    /// Adds (or refreshes) an entry; at capacity the oldest entry goes first. Returns the
    /// evicted entry, if any. Copy-on-write: O(n) per add, for n at most the capacity; writes
    /// are rare (a compiler's output files), reads never wait.
    pub fn add(&self, entry: TransitiveEntry) -> Option<TransitiveEntry> {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.current.load();
        let mut by_hash = cur.by_hash.clone();
        let mut order = cur.order.clone();
        let key = entry.sha256.0;
        if by_hash.insert(key, entry).is_some() {
            order.retain(|k| *k != key);
        }
        order.push_back(key);
        let mut evicted = None;
        if order.len() > self.capacity
            && let Some(old) = order.pop_front()
        {
            evicted = by_hash.remove(&old);
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        self.current.store(Arc::new(Snapshot { by_hash, order }));
        evicted
    }

    /// Adds (or refreshes) every entry of `entries` in order with one copy of the store, as
    /// [`TransitiveRules::add`] would one by one; returns how many were evicted. A burst of a
    /// compiler's output files costs one O(n) copy instead of one per file.
    pub fn add_all(&self, entries: Vec<TransitiveEntry>) -> usize {
        if entries.is_empty() {
            return 0;
        }
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.current.load();
        let mut by_hash = cur.by_hash.clone();
        let mut order = cur.order.clone();
        let mut refreshed = std::collections::HashSet::new();
        for entry in entries {
            let key = entry.sha256.0;
            if by_hash.insert(key, entry).is_some() {
                refreshed.insert(key);
            }
            order.push_back(key);
        }
        // A refreshed key keeps only its newest position.
        if !refreshed.is_empty() {
            let mut seen = std::collections::HashSet::new();
            let mut kept: VecDeque<[u8; 32]> = order
                .into_iter()
                .rev()
                .filter(|k| !refreshed.contains(k) || seen.insert(*k))
                .collect();
            kept.make_contiguous().reverse();
            order = kept;
        }
        let mut evicted = 0;
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                by_hash.remove(&old);
                evicted += 1;
            }
        }
        self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
        self.current.store(Arc::new(Snapshot { by_hash, order }));
        evicted
    }

    /// Every entry, oldest first (`gatehouse rule transitive list`).
    pub fn list(&self) -> Vec<TransitiveEntry> {
        let cur = self.current.load();
        cur.order
            .iter()
            .filter_map(|k| cur.by_hash.get(k).cloned())
            .collect()
    }

    /// Removes every entry; returns how many went. Callers clear verdict caches afterwards.
    pub fn clear(&self) -> usize {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.current.load().by_hash.len();
        self.current.store(Arc::new(Snapshot::default()));
        n
    }

    /// Entries evicted at capacity since the store was made.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}
