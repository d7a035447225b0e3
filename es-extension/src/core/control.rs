//! The control server: `gatehouse` CLI requests on a root-only Unix socket (mode 0600, peer uid
//! 0 or our own, checked from the kernel's peer credentials), and the operations behind them
//! (policy load, mutes, stats). Everything here runs off the delivery thread, so it may make
//! system calls and call [`KernelControl`](crate::backend::KernelControl).
//!
//! # Threads (fixed: invariant `bounded`)
//! One accept thread and `control_handlers` handler threads, joined by a bounded channel of
//! accepted connections. The accept thread never blocks on a client: it checks the peer's uid (a
//! `getsockopt`) and hands the connection over with `try_send`; when every handler is busy and
//! `control_backlog` connections already wait, the connection is refused at once (a best-effort
//! `Rejected` hello reply, then close) and counted in `control_refused_busy`. A handler gives a
//! peer `control_handshake_timeout` in total to send its hello and `control_idle_timeout` to
//! send each request, as deadlines rather than per-read timeouts, so a silent or trickling
//! client holds a handler only briefly.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use model::MuteSpec;
use protocol::bounded::POLICY_MAX_BYTES;
use protocol::{
    CONTROL_MAX_FRAME, ControlRequest, ControlResponse, HelloReply, HelperResponse,
    POLICY_INLINE_MAX, PROTOCOL_VERSION, Role, RuleCount, StatsReport, StatusDetail, StatusReport,
};

use super::helper_client::{HelperClient, WorkItem};
use super::metrics::Metrics;
use super::mutes::{MuteError, MuteSet};
use super::{CoreError, Shared};
use crate::backend::{BackendError, Responder};

/// How often a waiting thread (accept, or a handler in a socket read) looks at the stop signal.
const POLL: Duration = Duration::from_millis(100);
/// A handshake reply is tiny (the protocol's hello limit).
const HELLO_MAX_FRAME: u32 = 1024;
/// Longest policy origin (a file's path) a client may name: Linux's `PATH_MAX`. The origin is
/// echoed in `status` and `policy show`, whose answers must fit their frames.
const ORIGIN_MAX: usize = 4096;

/// The control server's counters, gauges and update lock, shared with [`Core`](super::Core).
#[derive(Debug, Default)]
pub(crate) struct ControlState {
    /// Serializes every change to the policy or the mute lists (policy loads from any handler
    /// or [`Core::load_policy`](super::Core::load_policy), mute add/remove, the initial mute
    /// push), so that their kernel pushes and cache clears never interleave. Never taken by
    /// the delivery thread (invariant `delivery-never-blocks`), which only reads arc-swapped
    /// snapshots; it may therefore be held across kernel calls.
    update: Mutex<()>,
    /// Connections refused because every handler was busy and the backlog was full.
    pub refused_busy: AtomicU64,
    /// Connections from a peer whose uid is neither root nor ours.
    pub refused_peer: AtomicU64,
    /// Peers that did not complete the hello within the handshake deadline.
    pub handshake_timeouts: AtomicU64,
    /// Sessions closed because no request came within the idle deadline.
    pub idle_closed: AtomicU64,
    /// Handlers serving a connection now (gauge).
    pub busy: AtomicU64,
    /// Accepted connections waiting for a handler now (gauge).
    pub queued: AtomicU64,
    /// Connections served or waiting (`busy + queued`, kept as one count for admission).
    admitted: AtomicU64,
}

impl ControlState {
    /// Hold while changing the policy or the mutes. A poisoned lock only means an earlier
    /// update panicked; the state it guards is in the arc-swapped snapshots, intact.
    pub fn update_lock(&self) -> MutexGuard<'_, ()> {
        self.update
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Named as `gatehouse stats` shows them.
    pub fn counters(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        [
            ("control_refused_busy", &self.refused_busy),
            ("control_refused_peer", &self.refused_peer),
            ("control_handshake_timeouts", &self.handshake_timeouts),
            ("control_idle_closed", &self.idle_closed),
            ("control_handlers_busy", &self.busy),
            ("control_queued", &self.queued),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c.load(Ordering::Relaxed)))
    }
}

/// Bind the control socket, replacing a stale one, with mode 0600. Anything at `path` that is
/// not a socket (a regular file, a symlink, a directory) is refused, never deleted: a mistyped
/// `--control-socket` must not cost someone their file.
pub fn bind(path: &Path) -> Result<UnixListener, CoreError> {
    let err = |source| CoreError::ControlSocket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(CoreError::NotASocket(path.to_owned()));
        }
        // A socket file left by a previous run refuses bind; a live server answers a connect
        // (and then bind fails, naming the address in use).
        Ok(_) => {
            if UnixStream::connect(path).is_err() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let l = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

/// Remove our socket at shutdown, only if `path` still is the socket we bound (same inode):
/// whatever replaced it meanwhile is not ours to delete.
fn remove_own_socket(path: &Path, bound: Option<(u64, u64)>) {
    if let (Ok(m), Some(ours)) = (std::fs::symlink_metadata(path), bound)
        && m.file_type().is_socket()
        && (m.dev(), m.ino()) == ours
    {
        let _ = std::fs::remove_file(path);
    }
}

/// Parse and swap in a new policy. A bad file changes nothing.
pub(crate) fn load_policy(
    shared: &Shared,
    origin: &str,
    text: &str,
) -> Result<u64, policy::PolicyError> {
    // For the OS the extension decides for (the policy it started with): the host's, except
    // for the Endpoint Security backend's logic run in the simulator on Linux.
    let os = shared.store.load().policy.os();
    let parsed = policy::Policy::parse_for(origin, text, os)?;
    // Held across the swap, cache clears and kernel pushes: two loads never interleave, so
    // each kernel mute diff starts from the previous load's result and each successful load
    // is exactly one version step.
    let _update = shared.control.update_lock();
    // The running local rules tier stays, below the new file's rules.
    let local = shared.store.load().policy.local_rules().cloned();
    Ok(install_locked(shared, parsed.with_local(local)))
}

/// Swap in `policy` with the update lock held: caches cleared, mutes re-mirrored and pushed,
/// the kernel cache cleared, followers told. Returns the new version.
fn install_locked(shared: &Shared, policy: policy::Policy) -> u64 {
    let before = shared.mutes.load().all();
    // Every policy reads the one transitive store (it ignores it unless transitive_rules).
    let policy = policy.with_transitive(Some(Arc::clone(&shared.transitive.store)));
    let version = shared.store.replace(policy);
    shared.cache.clear();
    shared.refresh_mutes();
    push_mutes(shared, &before, &shared.mutes.load().all());
    super::kernel_retry::clear_kernel_cache(shared);
    shared.notify_policy(version);
    version
}

/// The local rules file at `path` for `os`: `Ok(None)` when it does not exist (no local
/// rules), an error when it cannot be read or is invalid. Read with the bounded rules of every
/// operator-named file; never on the delivery thread.
pub(crate) fn read_local_rules(
    path: &Path,
    os: policy::Os,
) -> Result<Option<policy::LocalRules>, String> {
    if !path.is_absolute() {
        return Err(format!(
            "local rules path {} is not absolute; the extension does not share the client's \
             working directory: give an absolute path",
            path.display()
        ));
    }
    let text = match protocol::bounded::read_text(path, policy::local::LOCAL_RULES_MAX_BYTES) {
        Ok(t) => t,
        Err(protocol::bounded::InputError::Open { source, .. })
            if source.kind() == io::ErrorKind::NotFound =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e.to_string()),
    };
    policy::LocalRules::parse_for(&path.display().to_string(), &text, os)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Replace the running local rules tier with the file at `path` (missing: no local rules),
/// keeping the running policy file's rules above it. A bad file changes nothing.
pub(crate) fn load_local_rules(shared: &Shared, path: &Path) -> Result<u64, String> {
    let _update = shared.control.update_lock();
    let current = shared.store.load();
    let local = read_local_rules(path, current.policy.os())?;
    // The static tier recompiles from its own text, which parsed when it was loaded.
    let base = policy::Policy::parse_for(
        current.policy.origin(),
        current.policy.source(),
        current.policy.os(),
    )
    .map_err(|e| format!("the running policy no longer compiles: {e}"))?;
    Ok(install_locked(shared, base.with_local(local)))
}

/// Bytes of entries one `TransitiveList` answer carries, under the control frame's limit.
const TRANSITIVE_LIST_BUDGET: usize = 7 * 1024 * 1024;

/// The store's entries for the wire, oldest first. At the store's bound with every path at
/// its longest they could exceed one control frame: then the newest that fit are sent (the
/// store and its file still hold every entry).
fn transitive_list(
    entries: &[policy::transitive::TransitiveEntry],
) -> Vec<protocol::TransitiveAllow> {
    let mut budget = TRANSITIVE_LIST_BUDGET;
    let mut out: Vec<protocol::TransitiveAllow> = entries
        .iter()
        .rev()
        .map_while(|e| {
            let cost = 64 + e.path.len() + e.compiler_rule.len() + 32;
            budget = budget.checked_sub(cost)?;
            Some(protocol::TransitiveAllow {
                sha256: e.sha256.to_hex(),
                path: e.path.clone(),
                compiler_rule: e.compiler_rule.clone(),
                added_ms: e.added_ms,
            })
        })
        .collect();
    out.reverse();
    out
}

/// The text of the policy file at `path`, for [`ControlRequest::PolicyLoadPath`]: an absolute
/// path (ours is not the client's working directory), a regular file, at most
/// [`POLICY_MAX_BYTES`], under the same rules as every CLI input (`protocol::bounded`: a FIFO or
/// device fails at once instead of holding this handler).
///
/// This reads with the extension's privileges (root) on the peer's behalf. That grants nothing:
/// [`admit`] lets only root or our own uid connect, who can read the file themselves, and the
/// text is shown back (`policy show`) only to those same peers. Runs on a control handler
/// thread, never the delivery thread (invariant `delivery-never-blocks`).
fn read_policy_path(path: &str) -> Result<String, String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!(
            "policy path {path:?} is not absolute; the extension does not share the client's \
             working directory: give an absolute path"
        ));
    }
    protocol::bounded::read_text(p, POLICY_MAX_BYTES).map_err(|e| e.to_string())
}

/// Persist `next`'s runtime mutes (when the extension keeps a mutes file), with the update lock
/// held, before `next` goes into force.
fn save_runtime_mutes(shared: &Shared, next: &MuteSet) -> Result<(), MuteError> {
    match &shared.config.mutes_file {
        None => Ok(()),
        Some(path) => super::mute_file::write(path, &next.runtime()).map_err(|e| {
            Metrics::inc(&shared.metrics.mutes_file_errors);
            MuteError::NotSaved(e)
        }),
    }
}

/// Tell the kernel about mute changes from `before` to `after`. `Unsupported` is fine: the
/// in-process mirror already applies them.
pub(crate) fn push_mutes(shared: &Shared, before: &[MuteSpec], after: &[MuteSpec]) {
    let note = |r: Result<(), BackendError>| match r {
        Ok(()) | Err(BackendError::Unsupported(_)) => {}
        Err(e) => {
            Metrics::inc(&shared.metrics.kernel_control_errors);
            tracing::warn!(error = %e, "kernel mute update failed; the in-process mute still applies");
        }
    };
    // Set lookups: a policy with thousands of mutes must not make a load quadratic.
    let (b, a): (HashSet<&MuteSpec>, HashSet<&MuteSpec>) =
        (before.iter().collect(), after.iter().collect());
    for m in before.iter().filter(|m| !a.contains(m)) {
        note(shared.kernel.unmute_path(m));
    }
    for m in after.iter().filter(|m| !b.contains(m)) {
        note(shared.kernel.mute_path(m));
    }
}

pub(crate) fn stats_report<R: Responder>(
    shared: &Shared,
    helper: &HelperClient<R>,
    queue: &Sender<WorkItem<R>>,
) -> StatsReport {
    let mut counters = shared.metrics.counters();
    counters.extend(helper.breaker_counters());
    counters.extend(shared.control.counters());
    counters.extend(shared.config.trusted.counters());
    counters.extend(backend_counters(shared.kernel.counters()));
    StatsReport {
        counters,
        latencies: shared.metrics.latencies(),
        queue_depth: queue.len() as u64,
        queue_capacity: queue.capacity().unwrap_or(0) as u64,
    }
}

/// The backend's counters under `backend.` (a name that already has the prefix keeps it).
pub(crate) fn backend_counters(raw: Vec<(String, u64)>) -> impl Iterator<Item = (String, u64)> {
    raw.into_iter().map(|(name, v)| {
        if name.starts_with("backend.") {
            (name, v)
        } else {
            (format!("backend.{name}"), v)
        }
    })
}

pub(crate) fn status_report<R: Responder>(
    shared: &Shared,
    helper: &HelperClient<R>,
) -> StatusReport {
    let snap = shared.store.load();
    StatusReport {
        agent: format!("gatehouse-extension/{}", env!("CARGO_PKG_VERSION")),
        pid: std::process::id(),
        backend: shared.config.backend_name.clone(),
        uptime_ms: shared.started.elapsed().as_millis() as u64,
        mode: match snap.policy.mode() {
            policy::Mode::Monitor => "monitor".to_owned(),
            policy::Mode::Enforce => "enforce".to_owned(),
        },
        policy_version: snap.version,
        policy_origin: snap.policy.origin().to_owned(),
        helper_connected: helper.connected(),
    }
}

/// SHA-256 of `text`, in hex.
fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn status_detail<R: Responder>(
    shared: &Shared,
    helper: &HelperClient<R>,
) -> StatusDetail {
    let snap = shared.store.load();
    let p = &snap.policy;
    let local = p.local_rules();
    let mutes = shared.mutes.load();
    StatusDetail {
        status: status_report(shared, helper),
        policy_sha256: sha256_hex(p.source()),
        local_rules_origin: local.map(|l| l.origin().to_owned()),
        local_rules_sha256: local.map(|l| sha256_hex(l.source())),
        rules: p
            .rule_counts()
            .into_iter()
            .map(|(tier, kind, count)| RuleCount {
                tier: tier.as_str().to_owned(),
                kind,
                count: count as u64,
            })
            .collect(),
        scopes: shared.kernel.scopes(),
        watched_paths: p.watched_paths().len() as u64,
        mutes_policy: p.mutes().len() as u64,
        mutes_runtime: mutes.runtime_len() as u64,
        mutes_file: shared
            .config
            .mutes_file
            .as_ref()
            .map(|f| f.display().to_string()),
        helper_breaker_open: helper.breaker_open(),
        policy_loaded_unix_ms: snap
            .installed
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    }
}

/// The accept thread: checks each peer's uid and hands the connection to the handlers through
/// the bounded `handlers` channel, refusing it at once when every handler is busy and the
/// backlog is full. Never waits on a client. Removes the socket file when it stops.
pub(crate) fn accept_loop(
    shared: &Shared,
    listener: UnixListener,
    handlers: Sender<UnixStream>,
    stop: Receiver<()>,
) {
    {
        let _update = shared.control.update_lock();
        push_mutes(shared, &[], &shared.mutes.load().all());
    }
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_owned));
    let bound = path
        .as_deref()
        .and_then(|p| std::fs::symlink_metadata(p).ok())
        .map(|m| (m.dev(), m.ino()));
    let me = own_uid();
    loop {
        match listener.accept() {
            Ok((stream, _)) => admit(shared, me, stream, &handlers),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stop.recv_timeout(POLL).is_err_and(|e| e.is_disconnected()) {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                if stop.recv_timeout(POLL).is_err_and(|e| e.is_disconnected()) {
                    break;
                }
            }
        }
        if shared.shutting_down.load(Ordering::Acquire) {
            break;
        }
    }
    if let Some(p) = path {
        remove_own_socket(&p, bound);
    }
}

/// Peer check (before any byte is read), then `try_send` to the handlers or refuse.
fn admit(shared: &Shared, me: u32, stream: UnixStream, handlers: &Sender<UnixStream>) {
    let st = &shared.control;
    match protocol::unix::peer_credentials(&stream) {
        Ok(c) if c.uid == 0 || c.uid == me => {}
        Ok(c) => {
            Metrics::inc(&st.refused_peer);
            tracing::warn!(
                uid = c.uid,
                pid = c.pid,
                "refused control connection from a non-root peer"
            );
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, "control peer credentials unavailable; connection dropped");
            return;
        }
    }
    // Admission counts connections being served or waiting, not the channel's fill: a burst
    // that arrives before idle handlers wake up is queued, not refused. Only this thread
    // increments `admitted`, so the check cannot be overtaken by another admission.
    let limit = shared.config.control_handlers + shared.config.control_backlog;
    if st.admitted.load(Ordering::Acquire) >= limit as u64 {
        let n = st.refused_busy.fetch_add(1, Ordering::Relaxed) + 1;
        // A flood logs a handful of lines, not one per connection.
        if n.is_power_of_two() {
            tracing::warn!(
                refused = n,
                handlers = shared.config.control_handlers,
                backlog = shared.config.control_backlog,
                "control server busy: connection refused"
            );
        }
        refuse_busy(&stream, shared.config.control_handlers);
        return;
    }
    st.admitted.fetch_add(1, Ordering::AcqRel);
    st.queued.fetch_add(1, Ordering::Relaxed);
    // The channel holds `limit` connections, so only a stopped server refuses the send.
    if handlers.try_send(stream).is_err() {
        st.queued.fetch_sub(1, Ordering::Relaxed);
        st.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Tell a refused client why, without ever blocking the accept thread: the socket is made
/// non-blocking, and a fresh socket's buffer has room for this small frame. Closed on return.
fn refuse_busy(stream: &UnixStream, handlers: usize) {
    if stream.set_nonblocking(true).is_ok() {
        let reply = HelloReply::Rejected {
            reason: format!(
                "the extension's control server is busy ({handlers} sessions in progress and \
                 its backlog is full); retry in a moment"
            ),
            supported: PROTOCOL_VERSION,
        };
        let _ = protocol::frame::write_frame(&mut &*stream, &reply, HELLO_MAX_FRAME);
    }
}

/// Reads and writes on a control connection under one deadline, waited for in slices of
/// [`POLL`] so that shutdown is seen promptly. A slice that times out has consumed nothing, so
/// retrying it inside `read_exact` loses no bytes; a peer that trickles a byte at a time still
/// runs into the deadline, which a per-read socket timeout alone would keep extending.
struct Deadline<'a> {
    stream: &'a UnixStream,
    until: Instant,
    stop: &'a AtomicBool,
    /// The deadline passed (as opposed to the peer closing or misbehaving).
    expired: bool,
}

impl<'a> Deadline<'a> {
    fn new(stream: &'a UnixStream, budget: Duration, stop: &'a AtomicBool) -> Self {
        Self {
            stream,
            until: Instant::now() + budget,
            stop,
            expired: false,
        }
    }

    fn slice<T>(
        &mut self,
        set_timeout: fn(&UnixStream, Option<Duration>) -> io::Result<()>,
        mut op: impl FnMut(&UnixStream) -> io::Result<T>,
    ) -> io::Result<T> {
        loop {
            if self.stop.load(Ordering::Acquire) {
                // Not `Interrupted`: `read_exact` and `write_all` would retry that.
                return Err(io::Error::other("the extension is shutting down"));
            }
            let left = self.until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.expired = true;
                return Err(io::ErrorKind::TimedOut.into());
            }
            set_timeout(self.stream, Some(left.min(POLL)))?;
            match op(self.stream) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                r => return r,
            }
        }
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.slice(UnixStream::set_read_timeout, |mut s| s.read(buf))
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.slice(UnixStream::set_write_timeout, |mut s| s.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a control handler thread needs to answer requests.
pub(crate) struct Server<R: Responder> {
    pub shared: Arc<Shared>,
    pub helper: Arc<HelperClient<R>>,
    pub queue: Sender<WorkItem<R>>,
}

impl<R: Responder> Server<R> {
    /// One handler thread: serve connections from the accept thread until it stops. A panic
    /// while serving closes that connection only, so the number of handlers stays fixed.
    pub fn run_handler(&self, conns: Receiver<UnixStream>) {
        let st = &self.shared.control;
        // Ends when the accept thread, which holds the only sender, stops; connections still
        // waiting then are dropped (closed) unserved.
        while let Ok(stream) = conns.recv() {
            st.queued.fetch_sub(1, Ordering::Relaxed);
            st.busy.fetch_add(1, Ordering::Relaxed);
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.serve(&stream);
            }));
            st.busy.fetch_sub(1, Ordering::Relaxed);
            st.admitted.fetch_sub(1, Ordering::AcqRel);
            if served.is_err() {
                tracing::error!("a control request panicked; its connection was closed");
            }
        }
    }

    /// One CLI connection (its peer uid already checked): handshake within the handshake
    /// deadline, then request/response, each request within the idle deadline, until it
    /// closes. Any error closes this connection only.
    fn serve(&self, stream: &UnixStream) {
        let s = &*self.shared;
        let cfg = &s.config;
        // Accepted sockets inherit O_NONBLOCK from the listener on some systems (BSD, macOS).
        if stream.set_nonblocking(false).is_err() {
            return;
        }
        let agent = format!("gatehouse-extension/{}", env!("CARGO_PKG_VERSION"));
        let mut io = Deadline::new(stream, cfg.control_handshake_timeout, &s.shutting_down);
        if protocol::handshake::server(&mut io, &[Role::Cli], &agent).is_err() {
            if io.expired {
                Metrics::inc(&s.control.handshake_timeouts);
                tracing::debug!("dropped a control client that sent no hello in time");
            }
            return;
        }
        loop {
            let mut io = Deadline::new(stream, cfg.control_idle_timeout, &s.shutting_down);
            let req = match protocol::frame::read_frame::<_, ControlRequest>(
                &mut io,
                CONTROL_MAX_FRAME,
            ) {
                Ok(req) => req,
                Err(_) => {
                    if io.expired {
                        Metrics::inc(&s.control.idle_closed);
                    }
                    return;
                }
            };
            let resp = self.handle(req);
            // A client that does not read its answer is dropped after the same deadline.
            let mut io = Deadline::new(stream, cfg.control_idle_timeout, &s.shutting_down);
            if protocol::frame::write_frame(&mut io, &resp, CONTROL_MAX_FRAME).is_err() {
                return;
            }
        }
    }

    pub fn handle(&self, req: ControlRequest) -> ControlResponse {
        let s = &*self.shared;
        match req {
            ControlRequest::Status => ControlResponse::Status(status_report(s, &self.helper)),
            ControlRequest::StatusDetail => {
                ControlResponse::StatusDetail(status_detail(s, &self.helper))
            }
            ControlRequest::Stats => {
                ControlResponse::Stats(stats_report(s, &self.helper, &self.queue))
            }
            ControlRequest::PolicyShow => {
                let snap = s.store.load();
                let (origin, text) = (snap.policy.origin(), snap.policy.source());
                // A policy loaded by path may not fit the answer's frame; a frame that cannot
                // be written would only close the connection, unexplained.
                if text.len() > POLICY_INLINE_MAX {
                    return ControlResponse::Error {
                        message: format!(
                            "the running policy (version {}, {} bytes) is larger than the {} \
                             bytes a control answer carries; read the file it was loaded from: {}",
                            snap.version,
                            text.len(),
                            POLICY_INLINE_MAX,
                            origin
                        ),
                    };
                }
                ControlResponse::Policy {
                    origin: snap.policy.origin().to_owned(),
                    version: snap.version,
                    text: snap.policy.source().to_owned(),
                }
            }
            ControlRequest::PolicyLoad { origin, .. }
            | ControlRequest::PolicyLoadPath { path: origin }
            | ControlRequest::LocalRulesLoad { path: origin }
                if origin.len() > ORIGIN_MAX =>
            {
                ControlResponse::Error {
                    message: format!(
                        "policy not loaded, the running policy is unchanged: its path is {} \
                         bytes long, over the {ORIGIN_MAX}-byte limit",
                        origin.len()
                    ),
                }
            }
            ControlRequest::PolicyLoad { origin, text } => match load_policy(s, &origin, &text) {
                Ok(version) => ControlResponse::PolicyLoaded { version },
                Err(e) => ControlResponse::Error {
                    message: format!("policy not loaded, the running policy is unchanged: {e}"),
                },
            },
            ControlRequest::PolicyLoadPath { path } => {
                let loaded = read_policy_path(&path)
                    .and_then(|text| load_policy(s, &path, &text).map_err(|e| e.to_string()));
                match loaded {
                    Ok(version) => ControlResponse::PolicyLoaded { version },
                    Err(e) => ControlResponse::Error {
                        message: format!("policy not loaded, the running policy is unchanged: {e}"),
                    },
                }
            }
            ControlRequest::LocalRulesLoad { path } => {
                match load_local_rules(s, Path::new(&path)) {
                    Ok(version) => ControlResponse::PolicyLoaded { version },
                    Err(e) => ControlResponse::Error {
                        message: format!(
                            "local rules not loaded, the running rules are unchanged: {e}"
                        ),
                    },
                }
            }
            ControlRequest::MuteAdd(spec) => {
                // Copy-on-write under the update lock: O(log n) whatever the number of mutes,
                // and only the one new mute is pushed to the kernel.
                let _update = s.control.update_lock();
                let mut next = (**s.mutes.load()).clone();
                match next
                    .add_runtime(&spec)
                    .and_then(|added| save_runtime_mutes(s, &next).map(|()| added))
                {
                    Ok(added) => {
                        s.mutes.store(Arc::new(next));
                        if added {
                            push_mutes(s, &[], std::slice::from_ref(&spec));
                        }
                        ControlResponse::Ok
                    }
                    Err(e) => ControlResponse::Error {
                        message: format!("mute not added: {e}"),
                    },
                }
            }
            ControlRequest::MuteRemove(spec) => {
                let _update = s.control.update_lock();
                let mut next = (**s.mutes.load()).clone();
                match next.remove_runtime(&spec) {
                    Some(lifted) => {
                        // Saved first: a mute the file still holds would come back at the
                        // next start, so a failed save leaves it in force and says so.
                        if let Err(e) = save_runtime_mutes(s, &next) {
                            return ControlResponse::Error {
                                message: format!("mute not removed: {e}"),
                            };
                        }
                        s.mutes.store(Arc::new(next));
                        if lifted {
                            push_mutes(s, std::slice::from_ref(&spec), &[]);
                        }
                        ControlResponse::Ok
                    }
                    None if next.in_policy(&spec) => ControlResponse::Error {
                        message: format!(
                            "{} is muted by the policy file; edit the policy and `gatehouse policy load` it",
                            spec.path
                        ),
                    },
                    None => ControlResponse::Error {
                        message: format!("{} is not muted (see `gatehouse mute list`)", spec.path),
                    },
                }
            }
            ControlRequest::MuteList => ControlResponse::Mutes(s.mutes.load().all()),
            ControlRequest::TransitiveList => ControlResponse::TransitiveList(
                transitive_list(&s.transitive.store.list())
                    .into_iter()
                    .map(Box::new)
                    .collect(),
            ),
            ControlRequest::TransitiveClear => {
                let removed = s.transitive.store.clear();
                // Nothing may keep serving a cleared allow: transitive allows are only ever in
                // the verdict cache (never kernel-cached), which this clears.
                s.transitive.changed(&s.cache);
                match s.transitive.save() {
                    Ok(()) => ControlResponse::TransitiveCleared {
                        removed: removed as u64,
                    },
                    Err(e) => {
                        Metrics::inc(&s.metrics.transitive_file_errors);
                        ControlResponse::Error {
                            message: format!(
                                "{removed} transitive allow(s) cleared for this run, but {e}; \
                                 they would come back at the next start"
                            ),
                        }
                    }
                }
            }
            ControlRequest::EventsTail { max } => {
                ControlResponse::Events(s.recent.tail(max.min(10_000) as usize))
            }
            ControlRequest::EventsSince { after, max } => {
                let got = s.recent.since(after, max.min(10_000) as usize);
                ControlResponse::EventsSince {
                    lines: got.lines,
                    skipped: got.skipped,
                    last: got.last,
                }
            }
            ControlRequest::HelperPing => match self.helper.ping(Duration::from_secs(2)) {
                Ok((
                    HelperResponse::Pong {
                        agent,
                        pid,
                        uptime_ms,
                    },
                    rtt,
                )) => ControlResponse::HelperPong {
                    connected: true,
                    round_trip_us: Some(rtt.as_micros() as u64),
                    detail: format!("{agent} (pid {pid}, up {} s)", uptime_ms / 1000),
                },
                Ok((other, rtt)) => ControlResponse::HelperPong {
                    connected: true,
                    round_trip_us: Some(rtt.as_micros() as u64),
                    detail: format!("unexpected answer to ping: {other:?}"),
                },
                Err(detail) => ControlResponse::HelperPong {
                    connected: self.helper.connected(),
                    round_trip_us: None,
                    detail,
                },
            },
        }
    }
}

/// Our effective uid, from the peer credentials of a socket pair (no libc call needed).
fn own_uid() -> u32 {
    UnixStream::pair()
        .ok()
        .and_then(|(a, _b)| protocol::unix::peer_credentials(&a).ok())
        .map_or(0, |c| c.uid)
}
