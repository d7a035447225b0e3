//! Recording transitive allows (Santa's ALLOWLIST_COMPILER / ALLOWLIST_TRANSITIVE), the
//! extension side: which processes are compilers, and hashing what they write.
//!
//! - An exec allowed by a compiler rule (`Policy::is_compiler_rule`, only with
//!   `transitive_rules` on) puts the process in [`CompilerSet`] *before* the allow is sent, so
//!   the compiler cannot write anything we have not started tracking. That happens in
//!   `pending::respond`, on whichever thread answers (the delivery thread included), so the
//!   set is a fixed array of atomics: insert, lookup and removal are lock-free, never allocate.
//! - The backend reports every close-after-write it sees, on the delivery thread: with the
//!   kernel's descriptor ([`Recorder::file_written`], Linux) or with the path and the `stat`
//!   the kernel reported ([`Recorder::file_closed`], Endpoint Security, whose NOTIFY_CLOSE
//!   carries no descriptor), and renames ([`Recorder::file_renamed`]) and exits
//!   ([`Recorder::process_exited`]). A writer not in the set costs one lookup (a descriptor is
//!   closed at once); a compiler's file goes to the recorder thread through a bounded queue
//!   (full: counted, the file is not recorded, nothing waits).
//! - The recorder thread reads the file through the kernel's descriptor, or re-opens the path
//!   and proves it is the file the kernel reported (device, inode, size, modification and
//!   change times, before and after hashing: [`open_reported`]); a path that names another
//!   file now is refused and counted, never hashed in its place. Only executable images are
//!   recorded, as Santa's `SNTFileInfo isExecutable` ([`executable_image`]). It adds a
//!   [`TransitiveEntry`] to the store the running policy reads, bumps the store's generation
//!   and clears the verdict cache (a cached deny of a file with that content is stale now),
//!   and saves the store. A verdict decided while the store changed is cleared again by the
//!   thread that cached it (the generation, as policy versions are). Transitive allows are
//!   never kernel-cached, so no kernel ignore mark can outlive a `clear` or an eviction.
//!
//! # Pid reuse
//! The set holds pids. With each tracked pid the recorder keeps a [`ProcessPin`] (Linux: a
//! pidfd opened when the compiler exec was allowed), which says whether *that* process has
//! exited. A pid whose pinned process is alive cannot have been reused. Once the pinned
//! process has exited, its close-writes may still be queued behind it (a compiler writes,
//! closes and exits at once), so the recorder keeps accepting writes from that pid for
//! [`EXITED_GRACE`] after it first saw the exit, then drops the pid from the set; writes that
//! arrive later are refused and counted (`transitive_stale_writers`). A reused pid can
//! therefore pass as the compiler only if the kernel hands the same number to a new process
//! within that grace, which with sequential pid allocation needs the whole pid space
//! (`pid_max`, 4,194,304 by default on 64-bit Linux) to wrap in under a second. We accept that
//! rather than read procfs (start times) on the delivery thread.
//!
//! Endpoint Security names a process incarnation exactly (the audit token's pid version,
//! which exec renews), so there the recorder also refuses a write whose incarnation is not
//! the tracked compiler's, and NOTIFY_EXIT ends the tracking at once (it is queued behind the
//! process's last writes, so none is lost).
//!
//! The exec is tracked when it is allowed, before the kernel runs it: an exec that then fails
//! (a bad image) leaves the old image of that process tracked as a compiler until it exits.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use model::{FileIdentity, Sha256};
use policy::transitive::{TRANSITIVE_MAX, TransitiveEntry, TransitiveRules};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::Shared;
use super::metrics::Metrics;

/// Slots in the compiler set (pids tracked at once): 8 per bucket, a pid's bucket by hash.
pub const COMPILER_SLOTS: usize = 4096;
const BUCKET: usize = 8;
/// Compiler files waiting for the recorder; beyond this a write is dropped and counted. Each
/// holds a descriptor: the Linux delivery loop sizes every read by the descriptors actually
/// free (the extension raises its limit to at least 65,536), so a full queue only narrows its
/// reads. Measured on a busy 2-core machine, a compiler's `cp -r` of 2,000 small files: the
/// recorder thread barely runs during the burst (the compiler and the delivery thread hold
/// both cores), so the queue is the whole buffer: 1,024 dropped 0 to 975 of the 2,000 across
/// runs; 8,192 (about 1 MiB of jobs) dropped none.
pub const RECORD_QUEUE: usize = 8192;
/// Largest file hashed; a larger one is counted as a hash failure and not allowed.
pub const MAX_HASH_BYTES: u64 = 1 << 30;
/// How long writes from a tracked pid are still accepted after its process exited.
pub const EXITED_GRACE: Duration = Duration::from_secs(1);
/// How often the recorder looks for exited compilers.
const PRUNE_EVERY: Duration = Duration::from_millis(500);
/// Longest path kept in an entry (the path is informational; the hash is what allows).
pub const MAX_ENTRY_PATH: usize = 1024;
/// Largest store file read at start: every entry at its longest path, with room for the keys.
pub const STORE_FILE_MAX_BYTES: u64 = (TRANSITIVE_MAX * (MAX_ENTRY_PATH + 512)) as u64;

/// A bounded set of pids, lock-free on every operation. Pid 0 is never a process we see, so
/// 0 marks a free slot.
#[derive(Debug)]
pub struct CompilerSet {
    slots: Box<[AtomicU32]>,
}

/// What [`CompilerSet::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Added,
    AlreadyThere,
    /// The pid's bucket is full (at most [`BUCKET`] pids hash alike); not tracked.
    Full,
}

impl CompilerSet {
    /// `slots` rounded up to whole buckets.
    pub fn with_slots(slots: usize) -> CompilerSet {
        let n = slots.max(BUCKET).div_ceil(BUCKET) * BUCKET;
        CompilerSet {
            slots: (0..n).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn bucket(&self, pid: u32) -> &[AtomicU32] {
        // Fibonacci hashing spreads consecutive pids (a build's processes) over buckets.
        let buckets = self.slots.len() / BUCKET;
        let h = (u64::from(pid).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % buckets;
        &self.slots[h * BUCKET..(h + 1) * BUCKET]
    }

    pub fn contains(&self, pid: u32) -> bool {
        pid != 0
            && self
                .bucket(pid)
                .iter()
                .any(|s| s.load(Ordering::Acquire) == pid)
    }

    pub fn insert(&self, pid: u32) -> Inserted {
        if pid == 0 {
            return Inserted::Full;
        }
        let bucket = self.bucket(pid);
        if bucket.iter().any(|s| s.load(Ordering::Acquire) == pid) {
            return Inserted::AlreadyThere;
        }
        for s in bucket {
            match s.compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Inserted::Added,
                // Another thread put the same pid in meanwhile.
                Err(v) if v == pid => return Inserted::AlreadyThere,
                Err(_) => {}
            }
        }
        Inserted::Full
    }

    pub fn remove(&self, pid: u32) -> bool {
        if pid == 0 {
            return false;
        }
        self.bucket(pid).iter().any(|s| {
            s.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }

    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) != 0)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Says whether one process incarnation has exited (Linux: a pidfd, which names the process,
/// not its number).
pub trait ProcessPin: Send {
    fn exited(&self) -> bool;
}

/// Pins the process `pid` (with its incarnation, where the platform names one: the exec
/// target's audit-token pid version on macOS) the moment its compiler exec is allowed; `None`
/// when it cannot be pinned (then it is not tracked, and counted). Called on the answering
/// thread: must not block (Linux: one `pidfd_open`; macOS: no call at all).
pub type PinFn = Arc<dyn Fn(u32, Option<u32>) -> Option<Box<dyn ProcessPin>> + Send + Sync>;

/// A process named by its pid and audit-token incarnation (Endpoint Security). Whether it has
/// exited is `kill(pid, 0)` (ESRCH), asked only by the recorder thread, and only a fallback:
/// NOTIFY_EXIT normally ends the tracking first. A reused pid reads as alive, which is safe:
/// writes are matched by incarnation, so the new process's are refused.
#[derive(Debug)]
pub struct TokenPin {
    pub pid: u32,
}

impl ProcessPin for TokenPin {
    fn exited(&self) -> bool {
        let Ok(pid) = i32::try_from(self.pid) else {
            return true;
        };
        matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        )
    }
}

impl TransitiveBackend {
    /// The Endpoint Security backend's: processes by audit token, paths from the message.
    pub fn audit_tokens() -> TransitiveBackend {
        TransitiveBackend {
            pin: Arc::new(|pid, _incarnation| {
                Some(Box::new(TokenPin { pid }) as Box<dyn ProcessPin>)
            }),
            path_of: Arc::new(|_f: &File| String::new()),
        }
    }
}

/// A file as the kernel reported it in a close or rename (Endpoint Security's `es_file_t`):
/// its path and the `stat` taken with the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedFile {
    pub path: String,
    pub identity: FileIdentity,
}

/// Santa's compiler controller ignores files under `/dev/` (`kIgnoredCompilerProcessPathPrefix`).
pub const IGNORED_PREFIX: &str = "/dev/";

/// The file a descriptor is open on, for the entry's path (Linux: `/proc/self/fd/N`).
pub type PathOfFn = Arc<dyn Fn(&File) -> String + Send + Sync>;

/// How the backend plugs in.
#[derive(Clone)]
pub struct TransitiveBackend {
    pub pin: PinFn,
    pub path_of: PathOfFn,
}

impl std::fmt::Debug for TransitiveBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransitiveBackend")
    }
}

enum Job {
    Track {
        pid: u32,
        incarnation: Option<u32>,
        pin: Box<dyn ProcessPin>,
        rule: String,
    },
    Written {
        pid: u32,
        incarnation: Option<u32>,
        source: Source,
    },
    Exited {
        pid: u32,
        incarnation: Option<u32>,
    },
}

/// Where the recorder finds a written file's content.
enum Source {
    /// The kernel's own descriptor (Linux), and the path if the backend knew it.
    Descriptor { file: File, path: Option<String> },
    /// Closed after writing: re-open the path, which must still be that file (ctime included).
    Closed(ReportedFile),
    /// Renamed: the file at its old path or, that failing, at `to` (ctime excluded: a rename
    /// changes it), as Santa tries the rename's source and then its destination.
    Renamed { from: ReportedFile, to: String },
}

/// The compiler set, the store and the recorder's queue (shared by every core thread).
pub struct Recorder {
    pub set: CompilerSet,
    pub store: Arc<TransitiveRules>,
    backend: Option<TransitiveBackend>,
    tx: Sender<Job>,
    /// Serialises saves of the store file (the recorder's and `rule transitive clear`'s), so
    /// the file always ends up holding the newest list. Never taken on the delivery thread.
    save_lock: Mutex<()>,
    file: Option<PathBuf>,
    evicted_seen: AtomicU64,
    /// Bumped after every change of the store (adds, clear), before the verdict cache is
    /// cleared: a thread that caches a verdict reads it before deciding and, if it moved by
    /// the time the verdict is in the cache, clears the cache again (as for policy versions).
    generation: AtomicU64,
    save_tx: Sender<()>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("tracked", &self.set.len())
            .field("entries", &self.store.len())
            .finish_non_exhaustive()
    }
}

/// The recorder thread's half.
pub struct RecorderRx(Receiver<Job>);

/// The saver thread's half (capacity one: a pending request covers later ones).
#[derive(Debug)]
pub struct SaverRx(Receiver<()>);

impl std::fmt::Debug for RecorderRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecorderRx")
            .field("queued", &self.0.len())
            .finish()
    }
}

impl Recorder {
    /// `backend: None` (a backend without close-write events, or tests) tracks nothing.
    pub fn new(
        backend: Option<TransitiveBackend>,
        file: Option<PathBuf>,
        capacity: usize,
    ) -> (Recorder, RecorderRx, SaverRx) {
        let (tx, rx) = crossbeam_channel::bounded(RECORD_QUEUE);
        let (save_tx, save_rx) = crossbeam_channel::bounded(1);
        (
            Recorder {
                set: CompilerSet::with_slots(COMPILER_SLOTS),
                store: TransitiveRules::new(capacity),
                backend,
                tx,
                save_lock: Mutex::new(()),
                file,
                evicted_seen: AtomicU64::new(0),
                generation: AtomicU64::new(0),
                save_tx,
            },
            RecorderRx(rx),
            SaverRx(save_rx),
        )
    }

    /// The store's generation ([`Recorder::changed`] bumps it).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The store changed: bump the generation, then clear the verdict cache (a cached deny or
    /// allow of a file whose hash was just added or removed is stale). Any thread but the
    /// delivery thread.
    pub(crate) fn changed(&self, cache: &policy::VerdictCache) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        cache.clear();
    }

    /// Whether close-writes are worth reporting at all (any compiler tracked now). Lock-free.
    pub fn any_compiler(&self) -> bool {
        self.set
            .slots
            .iter()
            .any(|s| s.load(Ordering::Relaxed) != 0)
    }

    /// An exec of `pid` that the compiler rule `rule` allowed, called before the allow is
    /// sent. Never blocks.
    pub(crate) fn compiler_exec(
        &self,
        m: &Metrics,
        pid: u32,
        incarnation: Option<u32>,
        rule: &str,
    ) {
        let Some(backend) = &self.backend else {
            return;
        };
        let Some(pin) = (backend.pin)(pid, incarnation) else {
            Metrics::inc(&m.transitive_compilers_untracked);
            return;
        };
        let added = match self.set.insert(pid) {
            Inserted::Full => {
                Metrics::inc(&m.transitive_compilers_untracked);
                return;
            }
            i => i == Inserted::Added,
        };
        let job = Job::Track {
            pid,
            incarnation,
            pin,
            rule: rule.to_owned(),
        };
        match self.tx.try_send(job) {
            Ok(()) => Metrics::inc(&m.transitive_compilers_tracked),
            Err(_) => {
                if added {
                    self.set.remove(pid);
                }
                Metrics::inc(&m.transitive_compilers_untracked);
            }
        }
    }

    /// A close-after-write by process `pid` of the file open as `file` (the kernel's own
    /// descriptor). Called on the delivery thread: a non-compiler's descriptor is closed here
    /// at once; a compiler's goes to the recorder, or is dropped and counted when its queue is
    /// full. Never blocks.
    pub fn file_written(&self, m: &Metrics, pid: u32, file: File, path: Option<String>) {
        Metrics::inc(&m.transitive_writes_seen);
        if !self.set.contains(pid) {
            return;
        }
        self.hand_off(m, pid, None, Source::Descriptor { file, path });
    }

    /// A close of a file that was modified, by process `pid` of `incarnation`, as Endpoint
    /// Security reports it (path and `stat`, no descriptor). On the delivery queue; never
    /// blocks. The recorder re-opens the path and refuses it unless it is still that file.
    pub fn file_closed(&self, m: &Metrics, pid: u32, incarnation: u32, file: ReportedFile) {
        Metrics::inc(&m.transitive_writes_seen);
        if !self.set.contains(pid) || file.path.starts_with(IGNORED_PREFIX) {
            return;
        }
        self.hand_off(m, pid, Some(incarnation), Source::Closed(file));
    }

    /// A rename by process `pid` of `incarnation` (Santa records what a compiler renames as
    /// well as what it closes: a compiler that writes a temporary file and renames it is
    /// recorded even if the close was missed). On the delivery queue; never blocks.
    pub fn file_renamed(
        &self,
        m: &Metrics,
        pid: u32,
        incarnation: u32,
        from: ReportedFile,
        to: String,
    ) {
        Metrics::inc(&m.transitive_writes_seen);
        if !self.set.contains(pid) || from.path.starts_with(IGNORED_PREFIX) {
            return;
        }
        self.hand_off(m, pid, Some(incarnation), Source::Renamed { from, to });
    }

    /// Process `pid` of `incarnation` exited (Endpoint Security's NOTIFY_EXIT): a tracked
    /// compiler stops being one once its queued writes are recorded. Never blocks; if the
    /// queue is full the recorder's own liveness check ends the tracking later.
    pub fn process_exited(&self, m: &Metrics, pid: u32, incarnation: u32) {
        if !self.set.contains(pid) {
            return;
        }
        if self
            .tx
            .try_send(Job::Exited {
                pid,
                incarnation: Some(incarnation),
            })
            .is_err()
        {
            Metrics::inc(&m.transitive_writes_dropped);
        }
    }

    fn hand_off(&self, m: &Metrics, pid: u32, incarnation: Option<u32>, source: Source) {
        match self.tx.try_send(Job::Written {
            pid,
            incarnation,
            source,
        }) {
            Ok(()) => Metrics::inc(&m.transitive_writes_handed_off),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                Metrics::inc(&m.transitive_writes_dropped);
            }
        }
    }

    /// Ask the saver thread to save the store (never waits; a pending request covers this one).
    pub(crate) fn request_save(&self) {
        let _ = self.save_tx.try_send(());
    }

    /// Save the store to its file, if it has one (atomically; any thread but the delivery
    /// thread).
    pub(crate) fn save(&self) -> Result<(), String> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let _g = self.save_lock.lock().unwrap_or_else(|e| e.into_inner());
        let text = render(&self.store.list());
        protocol::bounded::write_atomic(path, text.as_bytes(), 0o600).map_err(|e| {
            format!(
                "cannot save the transitive allows to {}: {e}; check the directory exists and \
                 is writable by root",
                path.display()
            )
        })
    }

    /// Read the store file at start (missing: nothing). Bounded; each entry validated.
    pub(crate) fn restore(&self, m: &Metrics) {
        let Some(path) = &self.file else { return };
        let text = match protocol::bounded::read_text(path, STORE_FILE_MAX_BYTES) {
            Ok(t) => t,
            Err(protocol::bounded::InputError::Open { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return;
            }
            Err(e) => {
                Metrics::inc(&m.transitive_file_errors);
                tracing::warn!(error = %e, "transitive allows not restored; starting without them (fix or remove the file; `gatehouse rule transitive clear` rewrites it)");
                return;
            }
        };
        match parse(&path.display().to_string(), &text) {
            Ok(entries) => {
                // One copy of the store for the whole file (an add each is O(n) per entry).
                self.store.add_all(entries);
                self.evicted_seen
                    .store(self.store.evicted(), Ordering::Relaxed);
            }
            Err(e) => {
                Metrics::inc(&m.transitive_file_errors);
                tracing::warn!(error = %e, "transitive allows not restored; starting without them (fix or remove the file; `gatehouse rule transitive clear` rewrites it)");
            }
        }
    }

    /// Count evictions the store made since the last look.
    fn note_evictions(&self, m: &Metrics) {
        let now = self.store.evicted();
        let before = self.evicted_seen.swap(now, Ordering::Relaxed);
        m.transitive_evicted
            .fetch_add(now.saturating_sub(before), Ordering::Relaxed);
    }
}

/// The saver thread: saves the store whenever asked (requests coalesce: each save writes the
/// store as it is then, so one save covers every request made before it), and once more at
/// stop if a request is pending.
pub(crate) fn run_saver(shared: Arc<Shared>, rx: SaverRx, stop: Receiver<()>) {
    let rec = &shared.transitive;
    let save = || {
        if let Err(e) = rec.save() {
            Metrics::inc(&shared.metrics.transitive_file_errors);
            tracing::warn!(error = %e, "transitive allows not saved; they stay in force until restart");
        }
    };
    loop {
        crossbeam_channel::select! {
            recv(rx.0) -> r => match r { Ok(()) => save(), Err(_) => return },
            recv(stop) -> _ => {
                if rx.0.try_recv().is_ok() {
                    save();
                }
                return;
            }
        }
    }
}

/// One tracked compiler, as the recorder thread knows it.
struct Tracked {
    pin: Box<dyn ProcessPin>,
    incarnation: Option<u32>,
    rule: String,
    /// When the recorder first saw the pinned process gone.
    exited_at: Option<Instant>,
}

/// The recorder thread: until `stop` (or every sender is gone).
pub(crate) fn run(shared: Arc<Shared>, rx: RecorderRx, stop: Receiver<()>) {
    let rec = &shared.transitive;
    let m = &shared.metrics;
    let mut tracked: HashMap<u32, Tracked> = HashMap::new();
    let mut last_prune = Instant::now();
    loop {
        let job = crossbeam_channel::select! {
            recv(rx.0) -> j => match j { Ok(j) => Some(j), Err(_) => return },
            recv(stop) -> _ => return,
            default(PRUNE_EVERY) => None,
        };
        let mut added: Vec<TransitiveEntry> = Vec::new();
        let mut jobs: Vec<Job> = job.into_iter().collect();
        // Everything queued now, so one burst of writes costs one cache clear and one save.
        jobs.extend(rx.0.try_iter().take(RECORD_QUEUE));
        for job in jobs {
            match job {
                Job::Track {
                    pid,
                    incarnation,
                    pin,
                    rule,
                } => {
                    // A newer exec of the same pid (re-exec, or a reused pid): the newest pin.
                    tracked.insert(
                        pid,
                        Tracked {
                            pin,
                            incarnation,
                            rule,
                            exited_at: None,
                        },
                    );
                    // The pid may have left the set since the exec put it there (the previous
                    // incarnation's exit or prune, handled just before this job): back in.
                    if rec.set.insert(pid) == Inserted::Full {
                        tracked.remove(&pid);
                        Metrics::inc(&m.transitive_compilers_untracked);
                    }
                }
                Job::Exited { pid, incarnation } => {
                    let ends = tracked
                        .get(&pid)
                        .is_some_and(|t| same_incarnation(t.incarnation, incarnation));
                    if ends {
                        tracked.remove(&pid);
                        rec.set.remove(pid);
                        Metrics::inc(&m.transitive_compilers_pruned);
                    }
                }
                Job::Written {
                    pid,
                    incarnation,
                    source,
                } => {
                    let Some(t) = tracked.get_mut(&pid) else {
                        Metrics::inc(&m.transitive_stale_writers);
                        continue;
                    };
                    if !same_incarnation(t.incarnation, incarnation) {
                        Metrics::inc(&m.transitive_stale_writers);
                        continue;
                    }
                    if t.pin.exited() {
                        let at = *t.exited_at.get_or_insert_with(Instant::now);
                        if at.elapsed() > EXITED_GRACE {
                            Metrics::inc(&m.transitive_stale_writers);
                            continue;
                        }
                    }
                    let rule = t.rule.clone();
                    if let Some(entry) = record(&shared, source, rule) {
                        added.push(entry);
                    }
                }
            }
        }
        if !added.is_empty() {
            // One copy of the store for the whole burst (an add per file is O(n) each).
            Metrics::add(&m.transitive_added, added.len() as u64);
            rec.store.add_all(added);
            // A cached deny of a file with a now-allowed hash is stale (and a cached allow of
            // an evicted one). Transitive allows are never kernel-cached (policy crate).
            rec.changed(&shared.cache);
            rec.note_evictions(m);
            // Saved by the saver thread: an fsync here was measured to stall this thread long
            // enough for a compiler writing 2,000 small files to overflow the queue.
            rec.request_save();
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            tracked.retain(|pid, t| {
                if !t.pin.exited() {
                    return true;
                }
                let at = *t.exited_at.get_or_insert_with(Instant::now);
                if at.elapsed() <= EXITED_GRACE {
                    return true;
                }
                rec.set.remove(*pid);
                Metrics::inc(&m.transitive_compilers_pruned);
                false
            });
        }
    }
}

/// Both incarnations known and different: another process image than the tracked one.
fn same_incarnation(tracked: Option<u32>, writer: Option<u32>) -> bool {
    match (tracked, writer) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// Why a written file was not recorded (each counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not a regular, non-empty executable image (Santa records only `isExecutable` files).
    NotExecutable,
    /// The path no longer names the file the kernel reported, or it changed while hashed.
    Changed,
    /// Unreadable, or over [`MAX_HASH_BYTES`].
    Unhashable,
}

/// A written file, open: the path to keep, and for a re-opened path the identity it must
/// still have after hashing (and whether its change time counts).
struct Opened {
    file: File,
    path: String,
    recheck: Option<(FileIdentity, bool)>,
}

/// The file a [`Source`] names, opened.
fn open_source(source: Source) -> Result<Opened, Skip> {
    match source {
        Source::Descriptor { file, path } => Ok(Opened {
            file,
            path: path.unwrap_or_default(),
            recheck: None,
        }),
        Source::Closed(f) => Ok(Opened {
            file: open_reported(&f.path, &f.identity, true)?,
            path: f.path,
            recheck: Some((f.identity, true)),
        }),
        Source::Renamed { from, to } => {
            let (file, path) = match open_reported(&from.path, &from.identity, false) {
                Ok(file) => (file, from.path),
                Err(_) => (open_reported(&to, &from.identity, false)?, to),
            };
            Ok(Opened {
                file,
                path,
                recheck: Some((from.identity, false)),
            })
        }
    }
}

/// Open `path` without following a final symlink and without blocking on a FIFO, and prove it
/// is the file the kernel reported: same device and inode, size and modification time, and
/// (`ctime`) change time, which no process can set back. Anything else (gone, replaced, a
/// symlink now, written again since) is [`Skip::Changed`]: a file at that path now is not the
/// file the compiler closed, and hashing it would allow whatever was put there. A path that
/// cannot be opened for another reason (permissions) is [`Skip::Unhashable`].
pub fn open_reported(path: &str, want: &FileIdentity, ctime: bool) -> Result<File, Skip> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            // Gone, or a symlink now: not the file reported. Anything else (no permission,
            // say) is a file we could not read.
            if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) {
                Skip::Changed
            } else {
                Skip::Unhashable
            }
        })?;
    let meta = file.metadata().map_err(|_| Skip::Unhashable)?;
    if !meta.is_file() {
        return Err(Skip::NotExecutable);
    }
    if !same_file(&FileIdentity::from(&meta), want, ctime) {
        return Err(Skip::Changed);
    }
    Ok(file)
}

fn same_file(got: &FileIdentity, want: &FileIdentity, ctime: bool) -> bool {
    got.dev == want.dev
        && got.ino == want.ino
        && got.size == want.size
        && got.mtime_ns == want.mtime_ns
        && (!ctime || got.ctime_ns == want.ctime_ns)
}

/// Hash a written file: the entry to add, or `None` (counted by why).
fn record(shared: &Shared, source: Source, rule: String) -> Option<TransitiveEntry> {
    let rec = &shared.transitive;
    let m = &shared.metrics;
    let outcome = open_source(source).and_then(
        |Opened {
             file,
             path,
             recheck,
         }| {
            let meta = file.metadata().map_err(|_| Skip::Unhashable)?;
            if !meta.is_file() || meta.len() == 0 || !executable_image(&file) {
                return Err(Skip::NotExecutable);
            }
            let sha256 = hash_file(&file).ok_or(Skip::Unhashable)?;
            if let Some((want, ctime)) = recheck {
                let after = file.metadata().map_err(|_| Skip::Changed)?;
                if !same_file(&FileIdentity::from(&after), &want, ctime) {
                    return Err(Skip::Changed);
                }
            }
            let path = if path.is_empty() {
                rec.backend
                    .as_ref()
                    .map(|b| (b.path_of)(&file))
                    .unwrap_or_default()
            } else {
                path
            };
            Ok((sha256, path))
        },
    );
    let (sha256, path) = match outcome {
        Ok(v) => v,
        Err(skip) => {
            Metrics::inc(match skip {
                Skip::NotExecutable => &m.transitive_not_executable,
                Skip::Changed => &m.transitive_file_changed,
                Skip::Unhashable => &m.transitive_hash_failures,
            });
            return None;
        }
    };
    let added_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Some(TransitiveEntry {
        sha256,
        path: clip(path),
        compiler_rule: rule,
        added_ms,
    })
}

/// Bytes of a file's start [`executable_image`] reads at most at one offset.
const HEADER_BYTES: usize = 64;
/// Santa's `kMaxFatArchCount`: most architectures read from a universal header.
const MAX_FAT_ARCHS: u32 = 64;

/// Whether `file` is an executable image: what Santa's `SNTFileInfo isExecutable` accepts
/// (the first Mach-O header, of a thin file or a universal one's first architecture, has file
/// type `MH_EXECUTE`), and on Linux an ELF image of type `ET_EXEC` or `ET_DYN` (a
/// position-independent executable is `ET_DYN` to its header, as shared objects are).
/// Objects, dylibs, bundles, scripts and data are not. Reads through the descriptor.
pub fn executable_image(file: &File) -> bool {
    use std::os::unix::fs::FileExt;
    is_executable_image(&|off, buf: &mut [u8]| {
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], off + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        got
    })
}

/// [`executable_image`] over `read_at(offset, buf) -> bytes read` (short at the end).
pub fn is_executable_image(read_at: &dyn Fn(u64, &mut [u8]) -> usize) -> bool {
    const MH_EXECUTE: u32 = 2;
    const ET_EXEC: u16 = 2;
    const ET_DYN: u16 = 3;
    let mut head = [0u8; HEADER_BYTES];
    let n = read_at(0, &mut head);
    let head = &head[..n];
    let u32_at = |b: &[u8], at: usize, big: bool| -> Option<u32> {
        let w: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        })
    };
    // A thin Mach-O header's byte order, from its magic (`MH_MAGIC[_64]` / `MH_CIGAM[_64]`).
    let thin_order = |b: &[u8]| -> Option<bool> {
        match b.get(..4)? {
            [0xce | 0xcf, 0xfa, 0xed, 0xfe] => Some(false),
            [0xfe, 0xed, 0xfa, 0xce | 0xcf] => Some(true),
            _ => None,
        }
    };
    if let Some(big) = thin_order(head) {
        return u32_at(head, 12, big) == Some(MH_EXECUTE);
    }
    match head.get(..4) {
        // Universal: `fat_header` and `fat_arch[_64]` are big-endian on disk.
        Some([0xca, 0xfe, 0xba, wide @ (0xbe | 0xbf)]) => {
            let wide = *wide == 0xbf;
            let Some(count) = u32_at(head, 4, true) else {
                return false;
            };
            if count == 0 || count > MAX_FAT_ARCHS {
                return false;
            }
            // The first fat_arch starts at byte 8: cputype, cpusubtype, then the offset
            // (u32, or u64 in fat_arch_64).
            let offset = if wide {
                head.get(16..24)
                    .and_then(|w| <[u8; 8]>::try_from(w).ok())
                    .map(u64::from_be_bytes)
            } else {
                u32_at(head, 16, true).map(u64::from)
            };
            let Some(offset) = offset.filter(|o| *o > 0) else {
                return false;
            };
            let mut slice = [0u8; 16];
            let got = read_at(offset, &mut slice);
            let slice = &slice[..got];
            thin_order(slice).is_some_and(|big| u32_at(slice, 12, big) == Some(MH_EXECUTE))
        }
        Some([0x7f, b'E', b'L', b'F']) => {
            // e_ident[EI_DATA] (byte 5) is the byte order; e_type is the u16 at byte 16.
            let big = match head.get(5) {
                Some(1) => false,
                Some(2) => true,
                _ => return false,
            };
            let Some(w) = head.get(16..18).and_then(|w| <[u8; 2]>::try_from(w).ok()) else {
                return false;
            };
            let e_type = if big {
                u16::from_be_bytes(w)
            } else {
                u16::from_le_bytes(w)
            };
            e_type == ET_EXEC || e_type == ET_DYN
        }
        _ => false,
    }
}

/// SHA-256 of everything readable through `file` from its start, bounded by
/// [`MAX_HASH_BYTES`]. Reads through the descriptor (pread from offset 0), never the path.
pub fn hash_file(file: &File) -> Option<Sha256> {
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_HASH_BYTES {
        return None;
    }
    hash_contents(file)
}

/// [`hash_file`] without its type and size check (the caller made them).
fn hash_contents(file: &File) -> Option<Sha256> {
    use std::os::unix::fs::FileExt;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    loop {
        let n = match file.read_at(&mut buf, off) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        };
        off += n as u64;
        if off > MAX_HASH_BYTES {
            return None;
        }
        h.update(&buf[..n]);
    }
    Some(Sha256(h.finalize().into()))
}

fn clip(mut p: String) -> String {
    if p.len() > MAX_ENTRY_PATH {
        let mut cut = MAX_ENTRY_PATH;
        while !p.is_char_boundary(cut) {
            cut -= 1;
        }
        p.truncate(cut);
    }
    p
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    version: i64,
    #[serde(default)]
    entries: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    sha256: String,
    path: String,
    compiler_rule: String,
    added_ms: u64,
}

/// The store file's text for `entries` (oldest first). JSON: one document, written whole.
pub fn render(entries: &[TransitiveEntry]) -> String {
    let doc = Doc {
        version: 1,
        entries: entries
            .iter()
            .map(|e| FileEntry {
                sha256: e.sha256.to_hex(),
                path: e.path.clone(),
                compiler_rule: e.compiler_rule.clone(),
                added_ms: e.added_ms,
            })
            .collect(),
    };
    // Strings and integers only: serializing cannot fail.
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

/// Parse a store file named `origin`: at most [`TRANSITIVE_MAX`] entries, each with a valid
/// SHA-256 and bounded strings. Any invalid entry refuses the whole file (it is ours alone;
/// a damaged one is not half-trusted).
pub fn parse(origin: &str, text: &str) -> Result<Vec<TransitiveEntry>, String> {
    let doc: Doc = serde_json::from_str(text).map_err(|e| {
        format!("{origin}: not a transitive allows file ({e}); remove it or run `gatehouse rule transitive clear`")
    })?;
    if doc.version != 1 {
        return Err(format!(
            "{origin}: version {} is not 1; this extension reads version 1 only",
            doc.version
        ));
    }
    if doc.entries.len() > TRANSITIVE_MAX {
        return Err(format!(
            "{origin}: {} entries, more than the {TRANSITIVE_MAX} the store holds",
            doc.entries.len()
        ));
    }
    doc.entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let sha256 = e
                .sha256
                .parse::<Sha256>()
                .map_err(|err| format!("{origin}: entry {}: sha256: {err}", i + 1))?;
            if e.path.len() > MAX_ENTRY_PATH || e.compiler_rule.len() > MAX_ENTRY_PATH {
                return Err(format!(
                    "{origin}: entry {}: path or compiler_rule longer than {MAX_ENTRY_PATH} bytes",
                    i + 1
                ));
            }
            Ok(TransitiveEntry {
                sha256,
                path: e.path,
                compiler_rule: e.compiler_rule,
                added_ms: e.added_ms,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiler_set_table() {
        // (operation, pid, expected) applied in order to one small set (2 buckets of 8).
        enum Op {
            Insert(Inserted),
            Contains(bool),
            Remove(bool),
        }
        let set = CompilerSet::with_slots(16);
        let steps: &[(Op, u32)] = &[
            (Op::Contains(false), 42),
            (Op::Insert(Inserted::Added), 42),
            (Op::Insert(Inserted::AlreadyThere), 42),
            (Op::Contains(true), 42),
            (Op::Contains(false), 43),
            (Op::Insert(Inserted::Full), 0),
            (Op::Contains(false), 0),
            (Op::Remove(true), 42),
            (Op::Remove(false), 42),
            (Op::Contains(false), 42),
        ];
        for (i, (op, pid)) in steps.iter().enumerate() {
            match op {
                Op::Insert(want) => assert_eq!(set.insert(*pid), *want, "step {i}"),
                Op::Contains(want) => assert_eq!(set.contains(*pid), *want, "step {i}"),
                Op::Remove(want) => assert_eq!(set.remove(*pid), *want, "step {i}"),
            }
        }
        assert!(set.is_empty());
    }

    #[test]
    fn compiler_set_is_bounded() {
        let set = CompilerSet::with_slots(16);
        let added = (1..=1000u32)
            .filter(|p| set.insert(*p) == Inserted::Added)
            .count();
        assert_eq!(added, 16, "never more pids than slots");
        assert_eq!(set.len(), 16);
    }

    #[test]
    fn store_file_round_trip_and_refusals() {
        let e = TransitiveEntry {
            sha256: Sha256([7; 32]),
            path: "/tmp/out".into(),
            compiler_rule: "cc".into(),
            added_ms: 5,
        };
        let text = render(std::slice::from_ref(&e));
        assert_eq!(parse("f", &text).unwrap(), vec![e]);
        let long = "x".repeat(MAX_ENTRY_PATH + 1);
        // (file text, a fragment the error must contain)
        let bad: &[(String, &str)] = &[
            ("nope".into(), "not a transitive allows file"),
            (r#"{"version":2,"entries":[]}"#.into(), "version 2"),
            (
                r#"{"version":1,"entries":[{"sha256":"zz","path":"p","compiler_rule":"c","added_ms":1}]}"#.into(),
                "entry 1: sha256",
            ),
            (
                format!(
                    r#"{{"version":1,"entries":[{{"sha256":"{}","path":"{long}","compiler_rule":"c","added_ms":1}}]}}"#,
                    "ab".repeat(32)
                ),
                "longer than",
            ),
            (r#"{"version":1,"extra":1}"#.into(), "not a transitive allows file"),
        ];
        for (text, want) in bad {
            let err = parse("f", text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn hashes_through_the_descriptor_not_the_path() {
        let dir = std::env::temp_dir().join(format!("gh-transitive-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("out");
        std::fs::write(&p, b"first").unwrap();
        let f = File::open(&p).unwrap();
        // The path now names another file; the descriptor still names the first.
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"second").unwrap();
        let want: [u8; 32] = sha2::Sha256::digest(b"first").into();
        assert_eq!(hash_file(&f), Some(Sha256(want)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A 64-bit thin Mach-O header of file type `filetype`, big- or little-endian.
    fn macho(filetype: u32, big: bool) -> Vec<u8> {
        let word = |v: u32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut v = Vec::new();
        v.extend_from_slice(&word(0xfeed_facf));
        v.extend_from_slice(&word(0x0100_000c)); // cputype arm64
        v.extend_from_slice(&word(0));
        v.extend_from_slice(&word(filetype));
        v.resize(32, 0);
        v
    }

    /// A universal file: `count` architectures, the first at `at`, holding `slice` there.
    fn fat(wide: bool, count: u32, at: u64, slice: &[u8]) -> Vec<u8> {
        let mut v = if wide {
            vec![0xca, 0xfe, 0xba, 0xbf]
        } else {
            vec![0xca, 0xfe, 0xba, 0xbe]
        };
        v.extend_from_slice(&count.to_be_bytes());
        v.extend_from_slice(&0x0100_000cu32.to_be_bytes());
        v.extend_from_slice(&0u32.to_be_bytes());
        if wide {
            v.extend_from_slice(&at.to_be_bytes());
        } else {
            v.extend_from_slice(&(at as u32).to_be_bytes());
        }
        v.resize(at as usize, 0);
        v.extend_from_slice(slice);
        v
    }

    fn elf(e_type: u16, big: bool) -> Vec<u8> {
        let mut v = b"\x7fELF\x02".to_vec();
        v.push(if big { 2 } else { 1 });
        v.resize(16, 0);
        v.extend_from_slice(&if big {
            e_type.to_be_bytes()
        } else {
            e_type.to_le_bytes()
        });
        v.resize(64, 0);
        v
    }

    /// Santa `SNTFileInfo.mm`: `isExecutable` is `machFileType == MH_EXECUTE` of the first Mach
    /// header (thin, or a universal file's first architecture, at most `kMaxFatArchCount` = 64
    /// read); dylibs (`MH_DYLIB` 6), bundles (8), objects (`MH_OBJECT` 1) and scripts are not.
    /// ELF (`ET_EXEC` 2, `ET_DYN` 3) is Linux's counterpart.
    #[test]
    fn executable_image_table() {
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("thin MH_EXECUTE", macho(2, false), true),
            ("thin MH_EXECUTE, big-endian", macho(2, true), true),
            ("thin MH_OBJECT", macho(1, false), false),
            ("thin MH_DYLIB", macho(6, false), false),
            ("thin MH_BUNDLE", macho(8, false), false),
            (
                "universal, first MH_EXECUTE",
                fat(false, 2, 4096, &macho(2, false)),
                true,
            ),
            (
                "universal 64, first MH_EXECUTE",
                fat(true, 1, 16384, &macho(2, false)),
                true,
            ),
            (
                "universal, first MH_DYLIB",
                fat(false, 2, 4096, &macho(6, false)),
                false,
            ),
            (
                "universal, no architectures",
                fat(false, 0, 4096, &macho(2, false)),
                false,
            ),
            (
                "universal, 65 architectures",
                fat(false, 65, 4096, &macho(2, false)),
                false,
            ),
            (
                "universal, slice past the end",
                fat(false, 1, 4096, &[]),
                false,
            ),
            // A Java class file shares the universal magic; its "slice" is no Mach-O.
            (
                "Java class",
                fat(false, 52, 4096, b"not mach-o at all"),
                false,
            ),
            ("ELF ET_EXEC", elf(2, false), true),
            ("ELF ET_DYN (PIE)", elf(3, false), true),
            ("ELF ET_EXEC, big-endian", elf(2, true), true),
            ("ELF ET_REL (object)", elf(1, false), false),
            ("ELF ET_CORE", elf(4, false), false),
            ("script", b"#!/bin/sh\necho hi\n".to_vec(), false),
            (
                "truncated Mach-O header",
                macho(2, false)[..10].to_vec(),
                false,
            ),
            ("empty", Vec::new(), false),
        ];
        for (what, bytes, want) in cases {
            let read_at = |off: u64, buf: &mut [u8]| {
                let off = usize::try_from(off).unwrap_or(usize::MAX);
                let Some(rest) = bytes.get(off..) else {
                    return 0;
                };
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                n
            };
            assert_eq!(is_executable_image(&read_at), want, "{what}");
        }
        // The same through a real descriptor.
        let dir = tempfile_dir("image");
        let p = dir.join("fat");
        std::fs::write(&p, fat(false, 2, 4096, &macho(2, false))).unwrap();
        assert!(executable_image(&File::open(&p).unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gh-transitive-{what}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn identity(p: &std::path::Path) -> FileIdentity {
        FileIdentity::from(&std::fs::symlink_metadata(p).unwrap())
    }

    /// Re-opening a reported path (Endpoint Security's close carries no descriptor) yields the
    /// file only if it is still the one the kernel reported.
    #[test]
    fn open_reported_table() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir("reopen");
        let p = dir.join("out");
        type Setup = fn(&std::path::Path);
        // (what, change made after the report, check ctime, outcome)
        let cases: [(&str, Setup, bool, Result<(), Skip>); 8] = [
            ("unchanged", |_| {}, true, Ok(())),
            (
                "replaced by another file",
                |p| {
                    std::fs::remove_file(p).unwrap();
                    std::fs::write(p, b"other contents!").unwrap();
                },
                true,
                Err(Skip::Changed),
            ),
            (
                "written again",
                |p| std::fs::write(p, b"longer contents than before").unwrap(),
                true,
                Err(Skip::Changed),
            ),
            (
                "mode changed (ctime only)",
                |p| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap(),
                true,
                Err(Skip::Changed),
            ),
            (
                "mode changed, ctime not checked (a rename's report)",
                |p| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap(),
                false,
                Ok(()),
            ),
            (
                "removed",
                |p| std::fs::remove_file(p).unwrap(),
                true,
                Err(Skip::Changed),
            ),
            (
                "a symlink to the same file now",
                |p| {
                    let real = p.with_extension("real");
                    std::fs::rename(p, &real).unwrap();
                    std::os::unix::fs::symlink(&real, p).unwrap();
                },
                false,
                Err(Skip::Changed),
            ),
            (
                "a FIFO now (opened without blocking)",
                |p| {
                    std::fs::remove_file(p).unwrap();
                    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                        .unwrap();
                },
                true,
                Err(Skip::NotExecutable),
            ),
        ];
        for (what, change, ctime, want) in cases {
            let _ = std::fs::remove_file(&p);
            let _ = std::fs::remove_file(p.with_extension("real"));
            std::fs::write(&p, b"compiled").unwrap();
            let reported = identity(&p);
            // Change and modification times are kept in nanoseconds: let the clock move.
            std::thread::sleep(Duration::from_millis(5));
            change(&p);
            let got = open_reported(p.to_str().unwrap(), &reported, ctime).map(|_| ());
            assert_eq!(got, want, "{what}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn token_pin_says_when_the_process_is_gone() {
        let me = TokenPin {
            pid: std::process::id(),
        };
        assert!(!me.exited(), "this process is alive");
        // (A reaped child's pid is not asserted on: it may be reused at once under load, which
        // reads as alive, and is safe because writes are matched by incarnation.)
        assert!(TokenPin { pid: u32::MAX }.exited(), "not a pid at all");
        assert!(TokenPin { pid: 0x3fff_fff0 }.exited(), "beyond pid_max");
    }

    #[test]
    fn same_incarnation_table() {
        let cases = [
            (None, None, true),
            (Some(3), None, true),
            (None, Some(3), true),
            (Some(3), Some(3), true),
            (Some(3), Some(4), false),
        ];
        for (tracked, writer, want) in cases {
            assert_eq!(
                same_incarnation(tracked, writer),
                want,
                "{tracked:?} {writer:?}"
            );
        }
    }
}
