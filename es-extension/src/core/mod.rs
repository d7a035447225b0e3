//! The platform-neutral core: the delivery path every backend calls, the slow-path workers and
//! helper connection, the watchdog, metrics, the events log and the control channel.
//!
//! # Threads (fixed at start, whatever the load)
//! - the backend's delivery thread calls [`Core::deliver`], which never blocks: mute check ->
//!   verdict cache -> policy on the message's own data -> answer now; or `try_send` to the
//!   bounded slow-path queue (full, or helper down: the policy's fallback now);
//! - `workers` slow-path workers send analysis requests to the helper over one pipelined
//!   connection, through a [`HelperTransport`] (Unix socket, macOS XPC, or a test's own);
//! - one helper thread runs the transport (connector with backoff, and reader where the
//!   transport has one); answers are matched by request id;
//! - one kernel-maintenance thread retries a failed kernel cache clear with backoff;
//! - one watchdog answers the fallback at `deadline - headroom`;
//! - one events-log writer;
//! - one transitive recorder ([`transitive`]): hashes the files compiler processes write,
//!   through the kernel's descriptor; and one saver, which writes the store's file;
//! - when a control socket is configured, one control accept thread and `control_handlers`
//!   control handlers (2 by default), so a silent or slow CLI client delays no other.

#![forbid(unsafe_code)]

pub mod control;
pub mod eventlog;
pub mod helper_client;
pub mod helper_link;
pub mod helper_unix;
#[cfg(target_os = "macos")]
pub mod helper_xpc;
pub mod kernel_retry;
pub mod metrics;
pub mod mute_file;
pub mod mutes;
pub mod notices;
pub mod pending;
pub mod startup_mounts;
pub mod transitive;
pub mod trusted;
pub mod watchdog;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use model::{Cacheability, Decision, Event, EventBody, FallbackReason, Outcome, Reason};
use policy::{Policy, PolicyStore, Snapshot, VerdictCache};

use crate::backend::{Delivery, KernelControl, Responder};
use helper_client::{HelperClient, WorkItem};
pub use helper_link::{HelperEndpoint, HelperTransport, LinkSink, PeerIdentity, TransportError};
pub use helper_unix::UnixTransport;
use metrics::Metrics;
pub use mutes::MuteSet;
use pending::Slot;
use watchdog::WatchdogHandle;

/// How the core is sized and wired. Start from [`CoreConfig::endpoint_security`] or
/// [`CoreConfig::fanotify`] and adjust fields.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Slow-path worker threads (default 2).
    pub workers: usize,
    /// Slow-path queue capacity; a full queue answers the fallback at once.
    pub queue_capacity: usize,
    /// Headroom clamp: the watchdog answers at `deadline - clamp(20% of time left, min, max)`.
    pub headroom_min: Duration,
    pub headroom_max: Duration,
    /// The helper's Unix socket; `None` (and no `helper_transport`) runs without a helper
    /// (every analysis: fallback).
    pub helper_socket: Option<PathBuf>,
    /// A transport the backend built (macOS: XPC), used instead of a Unix socket. Setting both
    /// this and `helper_socket` is a configuration error.
    pub helper_transport: Option<Arc<dyn HelperTransport>>,
    /// The events log; `None` keeps notable decisions in memory only (`events tail`).
    pub events_log: Option<PathBuf>,
    /// Rotate the events log before a line would take it past this size.
    pub events_log_max_bytes: u64,
    /// Rotated events-log files kept (`FILE.1` ..= `FILE.<n>`); the oldest is removed, counted
    /// (`log_rotated_out_files`, `log_rotated_out_records`). 0 keeps only the current file.
    pub events_log_keep: usize,
    /// After a failed events-log write (disk full), records are counted as lost without a
    /// write for this long, then writing is tried again.
    pub events_log_retry: Duration,
    /// Linux: also send every record to journald (native protocol, non-blocking datagrams from
    /// the writer thread; a record journald does not take is counted in `log_journal_failed`).
    pub journald: bool,
    /// Also send every record to this system log (macOS: the unified log), from the writer
    /// thread; counted in `log_unified_sent` / `log_unified_failed`. `None`: no such log.
    pub system_log: Option<Arc<dyn eventlog::SystemLog>>,
    /// Log records waiting for the writer; beyond this they are dropped and counted.
    pub log_channel_capacity: usize,
    /// Lines kept in memory for `events tail`.
    pub recent_lines: usize,
    /// The control socket (root only, mode 0600); `None` runs no control server.
    pub control_socket: Option<PathBuf>,
    /// Control handler threads (default 2): CLI connections served at once.
    pub control_handlers: usize,
    /// Accepted control connections waiting for a handler; beyond this a new connection is
    /// refused at once and counted (`control_refused_busy`). 0: refused unless a handler is idle.
    pub control_backlog: usize,
    /// A control client must complete its hello within this long of a handler taking it.
    pub control_handshake_timeout: Duration,
    /// A control session with no request (or an unread answer) for this long is closed.
    pub control_idle_timeout: Duration,
    /// Verdict cache entries.
    pub cache_capacity: usize,
    /// Requests outstanding at the helper at once.
    pub max_in_flight: usize,
    /// A helper that does not take a request within this long is treated as dead.
    pub helper_write_timeout: Duration,
    /// How long past its deadline a late helper answer is still awaited to fill the cache.
    pub late_answer_grace: Duration,
    /// Helper timeouts in a row (no answer in time) that open the circuit breaker: while open,
    /// analysis gets the `helper_unavailable` fallback at once. 0 never opens it.
    pub helper_breaker_threshold: u32,
    /// While the breaker is open, a Ping probes the helper this often (also how often an idle
    /// worker looks for timeouts)...
    pub helper_probe_interval: Duration,
    /// ... and must be answered within this long to close the breaker.
    pub helper_probe_timeout: Duration,
    /// Longest wait between helper reconnection attempts.
    pub reconnect_backoff_max: Duration,
    /// Named in `gatehouse status` ("endpoint-security", "fanotify", "test").
    pub backend_name: String,
    /// A failed kernel cache clear is retried after this long, then twice as long each time
    /// (at most 8 s between attempts)...
    pub kernel_retry_backoff: Duration,
    /// ... for at most this many attempts.
    pub kernel_retry_attempts: u32,
    /// The slow path's own dependencies, pinned by the backend at start-up: an exec of one is
    /// allowed on the fast path (`slow-path-never-gates-itself`). Endpoint Security: the macOS
    /// system daemons and our team's binaries ([`trusted::TrustedSet::macos`]); fanotify:
    /// empty until the Linux backend pins its files.
    pub trusted: Arc<trusted::TrustedSet>,
    /// The volumes mounted now, for the start-up pass over volumes mounted before we ran
    /// (`startup_mounts`; the policy's `mounted_at_start`). `None`: no such pass (Linux,
    /// whose kernel reports no mounts to fanotify).
    pub mounted_volumes: Option<startup_mounts::MountSource>,
    /// Hostname and machine id stamped on every events-log record.
    pub host: eventlog::HostIds,
    /// The local rules file (`gatehouse rule add`), composed below the policy at start: a
    /// missing file means no local rules; an unreadable or invalid one is logged and skipped,
    /// never a reason not to start. `None` reads none.
    pub local_rules: Option<PathBuf>,
    /// The runtime mutes file ([`mute_file`]): loaded at start, rewritten on every `mute add`
    /// or `remove`. `None` (the default, and every test's): runtime mutes last as long as the
    /// process. The binaries set it to [`defaults::Os::mutes_file`] or `--mutes-file`.
    pub mutes_file: Option<PathBuf>,
    /// How the backend pins compiler processes and names written files ([`transitive`]);
    /// `None`: no compiler is ever tracked (a backend without close-write events).
    pub transitive_backend: Option<transitive::TransitiveBackend>,
    /// The transitive allows file: loaded at start, rewritten after each burst of new allows
    /// and on `rule transitive clear`. `None` (the default, and every test's unless it sets
    /// one): they last as long as the process. The binaries set it to
    /// [`defaults::Os::transitive_file`] or `--transitive-file`.
    pub transitive_file: Option<PathBuf>,
    /// Most transitive allows kept (oldest evicted first, counted).
    pub transitive_capacity: usize,
}

impl CoreConfig {
    /// Endpoint Security: the kernel's deadlines are seconds long; headroom 1..5 s.
    pub fn endpoint_security() -> Self {
        Self {
            workers: 2,
            queue_capacity: 1024,
            headroom_min: Duration::from_secs(1),
            headroom_max: Duration::from_secs(5),
            helper_socket: None,
            helper_transport: None,
            events_log: None,
            events_log_max_bytes: 16 * 1024 * 1024,
            events_log_keep: 5,
            journald: false,
            system_log: None,
            events_log_retry: Duration::from_secs(1),
            log_channel_capacity: 4096,
            recent_lines: 1000,
            control_socket: None,
            control_handlers: 2,
            control_backlog: 4,
            control_handshake_timeout: Duration::from_secs(1),
            control_idle_timeout: Duration::from_secs(5),
            cache_capacity: 16_384,
            max_in_flight: 1024,
            helper_write_timeout: Duration::from_millis(250),
            late_answer_grace: Duration::from_secs(2),
            helper_breaker_threshold: 3,
            helper_probe_interval: Duration::from_millis(250),
            helper_probe_timeout: Duration::from_millis(200),
            reconnect_backoff_max: Duration::from_secs(1),
            backend_name: "endpoint-security".to_owned(),
            // es_clear_cache is rate-limited machine-wide: start near its one-second window.
            kernel_retry_backoff: Duration::from_millis(500),
            kernel_retry_attempts: 8,
            trusted: Arc::new(
                trusted::TrustedSet::macos(defaults::TEAM_ID)
                    .expect("the macOS set fits MAX_TRUSTED (tested)"),
            ),
            mounted_volumes: None,
            host: eventlog::HostIds::default(),
            local_rules: Some(PathBuf::from(defaults::Os::HOST.local_rules())),
            mutes_file: None,
            transitive_backend: None,
            transitive_file: None,
            transitive_capacity: policy::transitive::TRANSITIVE_MAX,
        }
    }

    /// fanotify: our own deadlines (the policy's per-kind `deadline_ms`); headroom 50..500 ms.
    pub fn fanotify() -> Self {
        Self {
            headroom_min: Duration::from_millis(50),
            headroom_max: Duration::from_millis(500),
            backend_name: "fanotify".to_owned(),
            trusted: Arc::new(trusted::TrustedSet::empty()),
            mounted_volumes: None,
            host: eventlog::HostIds::linux(),
            ..Self::endpoint_security()
        }
    }

    /// How the helper is reached. Errors when both a socket and a transport are set.
    pub fn helper_endpoint(&self) -> Result<HelperEndpoint, CoreError> {
        match (&self.helper_socket, &self.helper_transport) {
            (Some(_), Some(_)) => Err(CoreError::Config(
                "set either helper_socket or helper_transport, not both".to_owned(),
            )),
            (Some(p), None) => Ok(HelperEndpoint::Unix(p.clone())),
            (None, Some(t)) => Ok(HelperEndpoint::Custom(Arc::clone(t))),
            (None, None) => Ok(HelperEndpoint::None),
        }
    }

    /// Set the helper endpoint (the inverse of [`Self::helper_endpoint`]).
    pub fn with_helper(mut self, endpoint: HelperEndpoint) -> Self {
        (self.helper_socket, self.helper_transport) = match endpoint {
            HelperEndpoint::None => (None, None),
            HelperEndpoint::Unix(p) => (Some(p), None),
            HelperEndpoint::Custom(t) => (None, Some(t)),
        };
        self
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self::endpoint_security()
    }
}

/// Start-up failures: only local resources (threads, the control socket), never the helper.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("cannot start core thread {name}: {source}")]
    Spawn {
        name: &'static str,
        source: std::io::Error,
    },
    #[error(
        "cannot listen on control socket {path}: {source}; is another gatehouse-extension running, or is the directory missing?"
    )]
    ControlSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid core configuration: {0}")]
    Config(String),
    #[error(
        "{0} exists and is not a socket; refusing to replace it: remove it yourself or choose another control socket path"
    )]
    NotASocket(PathBuf),
}

/// State shared by every core thread. Nothing the delivery thread reads here is behind a lock.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: CoreConfig,
    pub store: PolicyStore,
    pub cache: VerdictCache,
    pub metrics: Metrics,
    pub log: eventlog::LogSender,
    pub recent: Arc<eventlog::RecentLines>,
    /// The policy's mutes plus the runtime ones; replaced only under the control update lock.
    pub mutes: ArcSwap<MuteSet>,
    pub pids: ArcSwap<Vec<u32>>,
    /// Serialises pid-mute updates (never held by the delivery thread, which only loads).
    pub pids_update: Mutex<()>,
    pub shutting_down: AtomicBool,
    pub started: Instant,
    pub kernel: Arc<dyn KernelControl>,
    /// Failed kernel cache clears waiting for the maintenance thread (capacity one).
    pub clear_retry: Sender<()>,
    /// Told the new version after each policy load (capacity one each; never blocks).
    pub policy_watchers: Mutex<Vec<Sender<u64>>>,
    /// The control server's counters and the lock serializing policy and mute updates.
    pub control: control::ControlState,
    /// Forced remounts for the remount thread (bounded; a full queue drops and counts).
    pub remounts: Sender<RemountJob>,
    /// Recent blocks for the person blocked (macOS: the host app's notifications).
    pub notices: Arc<notices::BlockNotices>,
    /// Compiler processes and the transitive allows store every policy reads.
    pub transitive: transitive::Recorder,
}

/// A denied mount or remount to perform again with a `remount` rule's flags.
#[derive(Debug, Clone)]
pub(crate) struct RemountJob {
    pub mount: model::MountInfo,
    pub forced: model::MountFlags,
}

/// Forced remounts waiting for the helper. Mounts are rare; a burst beyond this is dropped and
/// counted, and the dropped volume stays unmounted (the deny stands).
const REMOUNT_QUEUE: usize = 16;
/// How long the remount thread waits for the helper to say it started one.
const REMOUNT_TIMEOUT: Duration = Duration::from_secs(5);

impl std::fmt::Debug for dyn KernelControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelControl")
    }
}

impl Shared {
    /// Tell every [`Core::policy_changes`] receiver about `version`, dropping closed ones.
    pub fn notify_policy(&self, version: u64) {
        let mut w = self
            .policy_watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Full: an earlier notice is unread; the reader loads the newest policy anyway.
        w.retain(|tx| {
            !matches!(
                tx.try_send(version),
                Err(crossbeam_channel::TrySendError::Disconnected(_))
            )
        });
    }

    /// True once shutdown began.
    pub fn is_stopping(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Hand a denied mount to the remount thread (any thread, the delivery thread included:
    /// a `try_send`, never a wait).
    pub fn request_remount(&self, event: &Event, forced: model::MountFlags) {
        let (EventBody::Mount { mount } | EventBody::Remount { mount }) = &event.body else {
            return;
        };
        let job = RemountJob {
            mount: mount.clone(),
            forced,
        };
        match self.remounts.try_send(job) {
            Ok(()) => Metrics::inc(&self.metrics.remounts_requested),
            Err(_) => Metrics::inc(&self.metrics.remounts_dropped),
        }
    }

    /// Recompute the in-process mute mirror from the current policy, keeping the runtime
    /// mutes. Call at start-up or under the control update lock.
    pub fn refresh_mutes(&self) {
        let snap = self.store.load();
        let next = self.mutes.load().with_policy(snap.policy.mutes());
        self.mutes.store(Arc::new(next));
    }
}

#[cfg(test)]
pub(crate) fn test_shared(policy: Policy) -> Arc<Shared> {
    let (log, _rx, recent) = eventlog::channel(16, 16);
    Arc::new(Shared {
        config: CoreConfig::fanotify(),
        store: PolicyStore::new(policy),
        cache: VerdictCache::with_capacity(16),
        metrics: Metrics::default(),
        log,
        recent,
        mutes: ArcSwap::from_pointee(MuteSet::default()),
        pids: ArcSwap::from_pointee(vec![]),
        pids_update: Mutex::new(()),
        shutting_down: AtomicBool::new(false),
        started: Instant::now(),
        kernel: Arc::new(crate::test_backend::TestControl::default()),
        clear_retry: kernel_retry::channel().0,
        policy_watchers: Mutex::new(Vec::new()),
        control: control::ControlState::default(),
        remounts: crossbeam_channel::bounded(REMOUNT_QUEUE).0,
        notices: Arc::default(),
        transitive: transitive::Recorder::new(None, None, 16).0,
    })
}

/// The running core for backend responder type `R`.
pub struct Core<R: Responder> {
    shared: Arc<Shared>,
    queue_tx: Sender<WorkItem<R>>,
    queue_rx: Receiver<WorkItem<R>>,
    watchdog: WatchdogHandle<R>,
    helper: Arc<HelperClient<R>>,
    stop_tx: Mutex<Option<Sender<()>>>,
    log_stop_tx: Mutex<Option<Sender<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    log_thread: Mutex<Option<JoinHandle<()>>>,
    /// Starts the pass over volumes mounted before we started (once; capacity one).
    startup_tx: Sender<()>,
}

impl<R: Responder> std::fmt::Debug for Core<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("backend", &self.shared.config.backend_name)
            .field("queue_depth", &self.queue_tx.len())
            .field("helper", &self.helper)
            .finish_non_exhaustive()
    }
}

/// `policy` with the local rules file at `path` composed in. Start-up never fails on it: a
/// missing file is no local rules, a bad one a warning (the policy file's rules still apply).
fn with_local_rules_at_start(policy: Policy, path: Option<&std::path::Path>) -> Policy {
    let Some(path) = path else { return policy };
    match control::read_local_rules(path, policy.os()) {
        Ok(local) => policy.with_local(local),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "local rules not loaded; starting with the policy file's rules only (fix the \
                 file and run `gatehouse rule reload`)"
            );
            policy
        }
    }
}

/// The runtime mutes saved by an earlier run, put back before the first event (and before the
/// control thread pushes the mutes to the kernel). Like the local rules, a bad file never stops
/// the start: it is logged, and the mutes it holds are not in force until it is fixed.
fn restore_runtime_mutes(shared: &Shared) {
    let Some(path) = &shared.config.mutes_file else {
        return;
    };
    let parsed = match mute_file::read(path) {
        Ok(p) => p,
        Err(e) => {
            Metrics::inc(&shared.metrics.mutes_file_errors);
            tracing::warn!(
                error = %e,
                "runtime mutes not restored; starting without them (fix or remove the file; \
                 `gatehouse mute add` rewrites it)"
            );
            return;
        }
    };
    for why in &parsed.refused {
        Metrics::inc(&shared.metrics.mutes_file_errors);
        tracing::warn!("runtime mute not restored: {why}");
    }
    let mut set = (**shared.mutes.load()).clone();
    for m in &parsed.mutes {
        // Validated by the parser and bounded by it at MAX_RUNTIME_MUTES: cannot fail.
        let _ = set.add_runtime(m);
    }
    shared.mutes.store(Arc::new(set));
}

fn spawn(
    name: &'static str,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, CoreError> {
    std::thread::Builder::new()
        .name(format!("gh-{name}"))
        .spawn(f)
        .map_err(|source| CoreError::Spawn { name, source })
}

impl<R: Responder> Core<R> {
    /// Start the core's threads and return at once: nothing here waits for the helper (it is
    /// connected lazily, with backoff, by the reader thread).
    pub fn start(
        config: CoreConfig,
        policy: Policy,
        control: Arc<dyn KernelControl>,
    ) -> Result<Core<R>, CoreError> {
        if config.workers == 0 || config.queue_capacity == 0 {
            return Err(CoreError::Config(
                "workers and queue_capacity must be at least 1".to_owned(),
            ));
        }
        if config.control_socket.is_some() && config.control_handlers == 0 {
            return Err(CoreError::Config(
                "control_handlers must be at least 1 when a control socket is set".to_owned(),
            ));
        }
        let endpoint = config.helper_endpoint()?;
        let policy = with_local_rules_at_start(policy, config.local_rules.as_deref());
        let (log, log_rx, recent) =
            eventlog::channel(config.log_channel_capacity.max(1), config.recent_lines);
        let (clear_retry, clear_retry_rx) = kernel_retry::channel();
        let (remounts, remounts_rx) = crossbeam_channel::bounded::<RemountJob>(REMOUNT_QUEUE);
        let (startup_tx, startup_rx) = crossbeam_channel::bounded::<()>(1);
        let control_listener = match &config.control_socket {
            Some(path) => Some(control::bind(path)?),
            None => None,
        };
        let (transitive, transitive_rx, saver_rx) = transitive::Recorder::new(
            config.transitive_backend.clone(),
            config.transitive_file.clone(),
            config.transitive_capacity,
        );
        let policy = policy.with_transitive(Some(Arc::clone(&transitive.store)));
        let shared = Arc::new(Shared {
            transitive,
            store: PolicyStore::new(policy),
            cache: VerdictCache::with_capacity(config.cache_capacity),
            metrics: Metrics::default(),
            log,
            recent: Arc::clone(&recent),
            mutes: ArcSwap::from_pointee(MuteSet::default()),
            pids: ArcSwap::from_pointee(vec![std::process::id()]),
            pids_update: Mutex::new(()),
            shutting_down: AtomicBool::new(false),
            started: Instant::now(),
            kernel: control,
            clear_retry,
            policy_watchers: Mutex::new(Vec::new()),
            control: control::ControlState::default(),
            remounts,
            notices: Arc::default(),
            config,
        });
        restore_runtime_mutes(&shared);
        shared.transitive.restore(&shared.metrics);
        shared.refresh_mutes();
        let cfg = &shared.config;
        let (queue_tx, queue_rx) = crossbeam_channel::bounded::<WorkItem<R>>(cfg.queue_capacity);
        let (watchdog, watchdog_rx) =
            watchdog::channel::<R>(cfg.queue_capacity + cfg.max_in_flight + 64);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (log_stop_tx, log_stop_rx) = crossbeam_channel::bounded::<()>(0);
        let helper = Arc::new(HelperClient::<R>::new(Arc::clone(&shared), endpoint));

        let mut threads = Vec::new();
        let log_thread = {
            let s = Arc::clone(&shared);
            let setup = eventlog::WriterSetup {
                path: cfg.events_log.clone(),
                journald: cfg.journald,
                system_log: cfg.system_log.clone(),
                cfg: eventlog::WriterConfig {
                    max_bytes: cfg.events_log_max_bytes,
                    keep: cfg.events_log_keep,
                    retry: cfg.events_log_retry,
                },
            };
            spawn("eventlog", move || {
                eventlog::run_writer(log_rx, log_stop_rx, s, recent, setup);
            })?
        };
        {
            let prune_at = 4 * (cfg.queue_capacity + cfg.max_in_flight);
            let stop = stop_rx.clone();
            threads.push(spawn("watchdog", move || {
                watchdog::run(watchdog_rx, stop, prune_at);
            })?);
        }
        {
            let (h, stop) = (Arc::clone(&helper), stop_rx.clone());
            threads.push(spawn("helper", move || h.run_reader(stop))?);
        }
        {
            let (s, stop) = (Arc::clone(&shared), stop_rx.clone());
            threads.push(spawn("transitive", move || {
                transitive::run(s, transitive_rx, stop);
            })?);
        }
        {
            let (s, stop) = (Arc::clone(&shared), stop_rx.clone());
            threads.push(spawn("transitive-save", move || {
                transitive::run_saver(s, saver_rx, stop);
            })?);
        }
        {
            let (s, stop) = (Arc::clone(&shared), stop_rx.clone());
            threads.push(spawn("kernel", move || {
                kernel_retry::run(s, clear_retry_rx, stop);
            })?);
        }
        {
            let (h, stop) = (Arc::clone(&helper), stop_rx.clone());
            let (s, source) = (Arc::clone(&shared), cfg.mounted_volumes.clone());
            let startup = startup_rx;
            threads.push(spawn("remount", move || {
                loop {
                    crossbeam_channel::select! {
                        recv(remounts_rx) -> job => match job {
                            Ok(job) => h.remount(&job, REMOUNT_TIMEOUT),
                            Err(_) => break,
                        },
                        // Once, when the backend has its policy in force: volumes mounted
                        // before we started.
                        recv(startup) -> go => if go.is_ok()
                            && let Some(source) = &source {
                                startup_mounts::run(&s, &h, source, &stop);
                            },
                        recv(stop) -> _ => break,
                    }
                }
            })?);
        }
        for _ in 0..cfg.workers {
            let (h, rx, stop) = (Arc::clone(&helper), queue_rx.clone(), stop_rx.clone());
            threads.push(spawn("worker", move || {
                loop {
                    crossbeam_channel::select! {
                        recv(rx) -> item => match item {
                            Ok(item) => h.process(item),
                            Err(_) => break,
                        },
                        recv(stop) -> _ => break,
                        default(h.tick_interval()) => {}
                    }
                    // Helper timeouts and the breaker's probe (helper_client docs).
                    h.tick();
                }
                for item in rx.try_iter() {
                    item.slot.answer_fallback(FallbackReason::Shutdown);
                }
            })?);
        }
        if let Some(listener) = control_listener {
            // Fixed handlers fed by the accept thread through a bounded channel (`bounded`).
            let (conn_tx, conn_rx) =
                crossbeam_channel::bounded(cfg.control_handlers + cfg.control_backlog);
            let server = Arc::new(control::Server {
                shared: Arc::clone(&shared),
                helper: Arc::clone(&helper),
                queue: queue_tx.clone(),
            });
            for _ in 0..cfg.control_handlers {
                let (srv, rx) = (Arc::clone(&server), conn_rx.clone());
                threads.push(spawn("control-h", move || srv.run_handler(rx))?);
            }
            let (s, stop) = (Arc::clone(&shared), stop_rx.clone());
            threads.push(spawn("control", move || {
                control::accept_loop(&s, listener, conn_tx, stop);
            })?);
        } else {
            // Without a control thread, policy mutes still reach the kernel; off this thread.
            let s = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("gh-mute-push".into())
                .spawn(move || control::push_mutes(&s, &[], &s.mutes.load().all()))
                .map_err(|source| CoreError::Spawn {
                    name: "mute-push",
                    source,
                })?;
        }
        Ok(Core {
            startup_tx,
            shared,
            queue_tx,
            queue_rx,
            watchdog,
            helper,
            stop_tx: Mutex::new(Some(stop_tx)),
            log_stop_tx: Mutex::new(Some(log_stop_tx)),
            threads: Mutex::new(threads),
            log_thread: Mutex::new(Some(log_thread)),
        })
    }

    /// Decide or hand off one event. Called on the backend's delivery thread; never blocks,
    /// never does I/O, never logs synchronously. Every path ends in exactly one answer.
    pub fn deliver(&self, d: Delivery<R>) {
        let start = Instant::now();
        let Delivery {
            event,
            deadline,
            received,
            file,
            responder,
        } = d;
        let s = &*self.shared;
        let m = &s.metrics;
        let kind = event.kind();
        m.events[kind.index()].fetch_add(1, Ordering::Relaxed);
        let snapshot = s.store.load();
        let now_answer = |decision: Decision, responder: R, snapshot: &Snapshot| {
            pending::respond(
                s,
                responder,
                &decision,
                &event,
                received,
                deadline,
                snapshot.version,
            );
            m.fast_path.record(start.elapsed());
        };
        let fallback =
            |why: FallbackReason| Decision::fallback(snapshot.policy.fallback(kind, why), why);

        if s.shutting_down.load(Ordering::Acquire) {
            return now_answer(fallback(FallbackReason::Shutdown), responder, &snapshot);
        }
        if s.pids.load().contains(&event.process.pid) || s.mutes.load().matches(&event) {
            Metrics::inc(&m.muted);
            return now_answer(
                Decision::allow(Reason::Muted, Cacheability::Never),
                responder,
                &snapshot,
            );
        }
        // Before the cache and the policy: the helper's own launch must never wait for the
        // helper, whatever the policy says (`slow-path-never-gates-itself`).
        if s.config.trusted.matching(&event).is_some() {
            return now_answer(
                Decision::allow(Reason::SlowPathDependency, Cacheability::Kernel),
                responder,
                &snapshot,
            );
        }
        if let Some(key) = VerdictCache::key_for(&event) {
            if let Some(d) = s.cache.get(&key, start) {
                Metrics::inc(&m.cache_hits);
                return now_answer(d, responder, &snapshot);
            }
            Metrics::inc(&m.cache_misses);
        }
        let request = match snapshot.policy.decide(&event, &model::Facts::NONE) {
            Outcome::Decided(d) => {
                Metrics::inc(&m.fast_path_decided);
                return now_answer(d, responder, &snapshot);
            }
            Outcome::Analyze(req) => req,
        };
        // A stuck helper (breaker open) is answered exactly as a missing one: at once.
        if !self.helper.connected() || self.helper.fast_fail() {
            return now_answer(
                fallback(FallbackReason::HelperUnavailable),
                responder,
                &snapshot,
            );
        }
        let budget = watchdog::slow_path_budget(
            deadline.saturating_duration_since(start),
            s.config.headroom_min,
            s.config.headroom_max,
        );
        if budget.is_zero() {
            return now_answer(fallback(FallbackReason::Deadline), responder, &snapshot);
        }
        let fire_at = start + budget;
        let slot = Arc::new(Slot::new(
            Arc::clone(&self.shared),
            responder,
            event,
            received,
            deadline,
            Arc::clone(&snapshot),
        ));
        if !self.watchdog.register(fire_at, Arc::downgrade(&slot)) {
            Metrics::inc(&m.queue_full);
            slot.answer_fallback(FallbackReason::QueueFull);
            m.fast_path.record(start.elapsed());
            return;
        }
        let item = WorkItem {
            slot,
            request,
            file,
            fire_at,
        };
        match self.queue_tx.try_send(item) {
            Ok(()) => Metrics::inc(&m.analysed),
            Err(TrySendError::Full(item) | TrySendError::Disconnected(item)) => {
                Metrics::inc(&m.queue_full);
                item.slot.answer_fallback(FallbackReason::QueueFull);
            }
        }
        m.fast_path.record(start.elapsed());
    }

    /// Start the pass over volumes mounted before we started (`startup_mounts`), for the
    /// policy in force now: the backend calls this once its start-up policy load is done.
    /// Returns at once; the pass runs on the remount thread, after the helper is up.
    pub fn begin_startup_mounts(&self) {
        let _ = self.startup_tx.try_send(());
    }

    /// The current policy snapshot (lock-free).
    pub fn policy(&self) -> Arc<Snapshot> {
        self.shared.store.load()
    }

    /// The current policy's version (lock-free; 1 for the policy the core started with).
    pub fn policy_version(&self) -> u64 {
        self.shared.store.load().version
    }

    /// A receiver told the new version after every successful policy load, for backends that
    /// follow the policy (macOS: event subscriptions). Holds at most one unread notice: a
    /// reader that falls behind sees one notice and then loads the newest policy. Dropping the
    /// receiver unregisters it.
    pub fn policy_changes(&self) -> Receiver<u64> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.shared
            .policy_watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(tx);
        rx
    }

    /// Allow every event whose acting pid is `pid` at once, without analysis (our own pid is
    /// always muted; the Linux backend adds the helper's).
    pub fn mute_pid(&self, pid: u32) {
        let _g = self.shared.pids_update.lock();
        let cur = self.shared.pids.load_full();
        if !cur.contains(&pid) {
            let mut next = (*cur).clone();
            next.push(pid);
            self.shared.pids.store(Arc::new(next));
        }
    }

    /// Undo [`Core::mute_pid`]. Our own pid stays muted.
    pub fn unmute_pid(&self, pid: u32) {
        if pid == std::process::id() {
            return;
        }
        let _g = self.shared.pids_update.lock();
        let cur = self.shared.pids.load_full();
        if cur.contains(&pid) {
            let next: Vec<u32> = cur.iter().copied().filter(|p| *p != pid).collect();
            self.shared.pids.store(Arc::new(next));
        }
    }

    /// Muted pids and paths in force now.
    pub fn muted_pids(&self) -> Vec<u32> {
        (**self.shared.pids.load()).clone()
    }

    pub fn mutes(&self) -> MuteSet {
        (**self.shared.mutes.load()).clone()
    }

    /// Replace the policy as `gatehouse policy load` does: parse errors change nothing; success
    /// swaps the snapshot, clears the verdict cache, re-mirrors mutes and clears the kernel
    /// cache. Call off the delivery thread.
    pub fn load_policy(&self, origin: &str, text: &str) -> Result<u64, policy::PolicyError> {
        control::load_policy(&self.shared, origin, text)
    }

    /// Replace the local rules tier with the file at `path` as `gatehouse rule reload` does
    /// (missing: none); the policy file's rules stay above it. A bad file changes nothing.
    pub fn load_local_rules(&self, path: &std::path::Path) -> Result<u64, String> {
        control::load_local_rules(&self.shared, path)
    }

    /// A close-after-write of `file` by process `pid`, from the backend's delivery thread
    /// (Linux: `FAN_CLOSE_WRITE` with the kernel's descriptor). A non-compiler's descriptor
    /// closes here at once; never blocks ([`transitive::Recorder::file_written`]).
    pub fn file_written(&self, pid: u32, file: std::fs::File, path: Option<String>) {
        self.shared
            .transitive
            .file_written(&self.shared.metrics, pid, file, path);
    }

    /// A close of a modified file by process `pid` of `incarnation`, as Endpoint Security
    /// reports it (path and `stat`, no descriptor); from the delivery queue, never blocks
    /// ([`transitive::Recorder::file_closed`]).
    pub fn file_closed(&self, pid: u32, incarnation: u32, file: transitive::ReportedFile) {
        self.shared
            .transitive
            .file_closed(&self.shared.metrics, pid, incarnation, file);
    }

    /// A rename by process `pid` of `incarnation` (Endpoint Security); never blocks
    /// ([`transitive::Recorder::file_renamed`]).
    pub fn file_renamed(
        &self,
        pid: u32,
        incarnation: u32,
        from: transitive::ReportedFile,
        to: String,
    ) {
        self.shared
            .transitive
            .file_renamed(&self.shared.metrics, pid, incarnation, from, to);
    }

    /// Process `pid` of `incarnation` exited (Endpoint Security); never blocks
    /// ([`transitive::Recorder::process_exited`]).
    pub fn process_exited(&self, pid: u32, incarnation: u32) {
        self.shared
            .transitive
            .process_exited(&self.shared.metrics, pid, incarnation);
    }

    /// Whether process `pid` is a tracked compiler now (lock-free; any thread).
    pub fn is_compiler(&self, pid: u32) -> bool {
        self.shared.transitive.set.contains(pid)
    }

    /// Whether any compiler process is tracked now (lock-free): backends may skip the work of
    /// reporting close-writes while none is.
    pub fn compilers_tracked(&self) -> bool {
        self.shared.transitive.any_compiler()
    }

    /// The transitive allows store the running policy reads.
    pub fn transitive_store(&self) -> Arc<policy::transitive::TransitiveRules> {
        Arc::clone(&self.shared.transitive.store)
    }

    pub fn helper_connected(&self) -> bool {
        self.helper.connected()
    }

    /// The helper's pid on the current connection, when the transport knows it: the kernel's
    /// peer credentials at connect on a Unix socket, the helper's `Pong` over XPC. `None` while
    /// disconnected. Backends mute it ([`Core::mute_pid`] plus their kernel mute); a pid can be
    /// reused once the helper exits, so on Linux the backend still pins the helper with a pidfd
    /// (`sys::linux::selfmute`), and on macOS it mutes the audit token, which names one process
    /// incarnation.
    pub fn helper_pid(&self) -> Option<u32> {
        self.helper.peer_pid()
    }

    /// The helper's audit token as the kernel stamped it on the connection, where the
    /// transport has one (macOS: the backend mutes this token).
    pub fn helper_token(&self) -> Option<model::AuditToken> {
        self.helper.peer_token()
    }

    /// Counters and latency percentiles, as `gatehouse stats` shows them.
    pub fn stats(&self) -> protocol::StatsReport {
        control::stats_report(&self.shared, &self.helper, &self.queue_tx)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Recent blocks and the agents waiting for them (macOS: the host app's notifications,
    /// over the extension's XPC service).
    pub fn notices(&self) -> Arc<notices::BlockNotices> {
        Arc::clone(&self.shared.notices)
    }

    /// Notable decisions the events-log writer has processed, oldest first.
    pub fn recent_events(&self, max: usize) -> Vec<String> {
        self.shared.recent.tail(max)
    }

    /// Slow-path items waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.queue_tx.len()
    }

    /// Stop: every pending event is answered with its fallback before this returns. New
    /// deliveries after this point get the `Shutdown` fallback at once. Idempotent.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::Release);
        drop(
            self.stop_tx
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        self.helper.close();
        let threads: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
            .collect();
        for t in threads {
            let _ = t.join();
        }
        // A delivery that raced the flag may have queued after the workers left.
        for item in self.queue_rx.try_iter() {
            item.slot.answer_fallback(FallbackReason::Shutdown);
        }
        drop(
            self.log_stop_tx
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        if let Some(t) = self
            .log_thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            let _ = t.join();
        }
    }
}

impl<R: Responder> Drop for Core<R> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
