//! The in-process verdict cache: a fixed array of two-way associative slots, each an
//! `ArcSwapOption`, so reads are lock-free loads, writes are single atomic swaps, and the size
//! never exceeds the capacity chosen at start-up (architecture invariant: everything bounded).
//!
//! Entries hold no strings: a hit comes back as a [`Decision`] with [`Reason::Cached`], so a
//! lookup on the delivery thread never allocates.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use model::{Cacheability, Decision, Event, EventBody, EventKind, Reason, Verdict};

/// How long a cached deny stands: long enough to absorb a retry storm, short enough that a
/// fixed file or an added rule takes effect at once for a person trying again.
pub const DENY_TTL: Duration = Duration::from_millis(1500);

/// Capacity of [`VerdictCache::default`].
const DEFAULT_CAPACITY: usize = 16 * 1024;

/// What a cached verdict is keyed by: the kernel-vouched CDHash, else the file's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheKey {
    CdHash(EventKind, model::CdHash),
    File(EventKind, model::FileIdentity),
}

#[derive(Debug)]
struct Entry {
    key: CacheKey,
    verdict: Verdict,
    cacheable: Cacheability,
    would_deny: bool,
    audit_only: bool,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| now < t)
    }
}

/// Bounded verdict cache; `get` never waits on `insert`.
#[derive(Debug)]
pub struct VerdictCache {
    slots: Box<[ArcSwapOption<Entry>]>,
    occupied: AtomicUsize,
    evictions: AtomicUsize,
    hasher: RandomState,
}

impl Default for VerdictCache {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl VerdictCache {
    /// A cache of at most `entries` entries (at least two).
    pub fn with_capacity(entries: usize) -> Self {
        let n = entries.max(2);
        Self {
            slots: (0..n).map(|_| ArcSwapOption::empty()).collect(),
            occupied: AtomicUsize::new(0),
            evictions: AtomicUsize::new(0),
            hasher: RandomState::new(),
        }
    }

    /// The key an event's answer is cached under: exec by the new image's CDHash when the
    /// kernel enforces it, else by the subject file's identity; `None` when the event has no
    /// identity (mounts, creates, files the backend could not stat).
    pub fn key_for(event: &Event) -> Option<CacheKey> {
        let kind = event.kind();
        if let EventBody::Exec { target } = &event.body
            && let Some(cd) = target.signing.trusted_cdhash()
        {
            return Some(CacheKey::CdHash(kind, cd));
        }
        let id = event.subject_file()?.identity?;
        Some(CacheKey::File(kind, id))
    }

    fn slots_for(&self, key: &CacheKey) -> [usize; 2] {
        let h = self.hasher.hash_one(key);
        let n = self.slots.len() as u64;
        let a = h % n;
        let mut b = (h.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15) % n;
        if b == a {
            b = (a + 1) % n;
        }
        // Both indexes are < n, which came from a usize.
        [a as usize, b as usize]
    }

    /// A live cached decision for `key`, with [`Reason::Cached`].
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<Decision> {
        for i in self.slots_for(key) {
            let guard = self.slots[i].load();
            if let Some(e) = guard.as_deref()
                && e.key == *key
            {
                if !e.live(now) {
                    return None;
                }
                return Some(Decision {
                    verdict: e.verdict,
                    reason: Reason::Cached,
                    cacheable: e.cacheable,
                    would_deny: e.would_deny,
                    audit_only: e.audit_only,
                    // Mount decisions are never cached, so no cached one remounts.
                    remount: None,
                });
            }
        }
        None
    }

    /// Remembers `decision` for `key` unless it is [`Cacheability::Never`]. Denies expire after
    /// [`DENY_TTL`]. A full pair of slots evicts one entry.
    pub fn insert(&self, key: CacheKey, decision: &Decision, now: Instant) {
        if decision.cacheable == Cacheability::Never {
            return;
        }
        let expires = (decision.verdict == Verdict::Deny).then(|| now + DENY_TTL);
        let entry = std::sync::Arc::new(Entry {
            key,
            verdict: decision.verdict,
            cacheable: decision.cacheable,
            would_deny: decision.would_deny,
            audit_only: decision.audit_only,
            expires,
        });
        let [a, b] = self.slots_for(&key);
        let usable = |i: usize| {
            self.slots[i]
                .load()
                .as_deref()
                .is_none_or(|e| e.key == key || !e.live(now))
        };
        let slot = if usable(a) {
            a
        } else if usable(b) {
            b
        } else {
            // Both taken by other live keys: evict them in turn.
            if self.evictions.fetch_add(1, Ordering::Relaxed) & 1 == 0 {
                a
            } else {
                b
            }
        };
        if self.slots[slot].swap(Some(entry)).is_none() {
            self.occupied.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops every entry (policy change).
    pub fn clear(&self) {
        for s in self.slots.iter() {
            if s.swap(None).is_some() {
                self.occupied.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Occupied slots, including expired denies not yet overwritten.
    pub fn len(&self) -> usize {
        self.occupied.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries this cache holds.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}
