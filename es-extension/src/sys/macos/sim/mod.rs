//! An Endpoint Security simulator: plays libEndpointSecurity's part for the backend logic on
//! every OS and enforces its contract, so a test of `session`/`handler`/`control` against it
//! fails the way a Mac would.
//!
//! Modelled: one serial delivery queue (thread) per client; every AUTH message answered
//! exactly once before its deadline, else the client is "killed" and [`EsSim::violations`]
//! names the message (a second answer gets `ERR_DUPLICATE_RESPONSE`, a flags answer to a
//! non-open `ERR_EVENT_TYPE`); AUTH_OPEN answered with flags; result caching (a cached allow
//! suppresses later identical events until `es_clear_cache`, which clears every client and is
//! rate-limited machine-wide); muting by audit token and by path (process and target, literal
//! and prefix, inversion, which ES refuses while a client has AUTH subscriptions) and a default
//! mute set; the early-boot hold (non-platform execs and mounts held until the first
//! subscription); `/tmp`, `/var`, `/etc` reported as `/private/...`; paths longer than
//! [`SimConfig::max_path`] truncated with `path_truncated` set; NOTIFY close, rename and exit
//! ([`EsSim::notify`]), delivered in order on the same queues, muted as AUTH events are, and
//! owed no answer.
//!
//! Not modelled: the kernel's real timing and queue depths, other NOTIFY events, per-event-type
//! process muting, the exact default mute set, message versions other than the one given,
//! and what happens to a real Mac when a client is killed (here: the event is allowed and the
//! client stops receiving).
//!
//! Built for tests (`cfg(test)`) and, for integration tests, behind the `es-sim` feature: the
//! simulator must see the crate's private seam (`EsApi`, `Handler`), and a separate crate could
//! not.
#![forbid(unsafe_code)]

pub mod system;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use model::EventKind;

use super::api::{ApiError, AuditToken, EsApi, NotifyKind, inversion};
use super::convert::{self, Timebase, mute_path_type};
use super::handler::Handler;
use super::message::{EsBody, EsDestination, EsFile, EsMessage, EsNotify, EsNotifyBody, EsProcess};
use super::session::EsConnect;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `es_respond_result_t` codes the simulator returns.
pub mod respond_code {
    pub const OK: u32 = 0;
    pub const ERR_NOT_FOUND: u32 = 3;
    pub const ERR_DUPLICATE_RESPONSE: u32 = 4;
    pub const ERR_EVENT_TYPE: u32 = 5;
}

/// `es_clear_cache_result_t` codes.
pub mod clear_code {
    pub const OK: u32 = 0;
    pub const THROTTLED: u32 = 2;
}

/// How the simulated machine behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Every message's deadline after it is raised (ES: tens of seconds; tests use less).
    pub deadline: Duration,
    /// Least time between two successful `es_clear_cache` calls, machine-wide.
    pub clear_cache_interval: Duration,
    /// Longest path ES copies whole; longer ones are cut and flagged `path_truncated`.
    pub max_path: usize,
    /// Booting with `NSEndpointSecurityEarlyBoot`: hold non-platform execs and mounts until
    /// the first subscription of any client.
    pub early_boot: bool,
    /// Process-path mutes every new client starts with (`(path, es_mute_path_type_t)`).
    pub default_mutes: Vec<(String, u32)>,
    /// `es_new_client` fails from this client number on (0-based), e.g. `Some(1)`: only one
    /// client can be created.
    pub client_limit: Option<usize>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(2),
            clear_cache_interval: Duration::from_millis(200),
            max_path: 1024,
            early_boot: false,
            default_mutes: vec![
                (
                    "/usr/libexec/endpointsecurityd".to_owned(),
                    mute_path_type::LITERAL,
                ),
                ("/usr/sbin/cfprefsd".to_owned(), mute_path_type::LITERAL),
            ],
            client_limit: None,
        }
    }
}

/// One answer as the simulator received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimAnswer {
    pub at: Instant,
    pub allow: bool,
    pub cache: bool,
}

/// One message delivered (or held back) for one client.
#[derive(Debug)]
pub struct Record {
    pub id: u64,
    pub client: usize,
    pub kind: EventKind,
    /// "exec /path by pid 12" for failure messages.
    pub what: String,
    pub deadline: Instant,
    key: CacheKey,
    answers: Mutex<Vec<SimAnswer>>,
    /// Set when the client was killed over this message (the simulator allowed it).
    killed: AtomicBool,
    done: Condvar,
}

impl Record {
    pub fn answers(&self) -> Vec<SimAnswer> {
        lock(&self.answers).clone()
    }

    /// Wait until answered (or its client was killed); the verdict, allow on a kill.
    fn wait(&self) -> bool {
        let mut a = lock(&self.answers);
        loop {
            if let Some(first) = a.first() {
                return first.allow;
            }
            if self.killed.load(Ordering::Acquire) {
                return true;
            }
            a = self
                .done
                .wait_timeout(a, Duration::from_millis(20))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// A retained simulated message.
#[derive(Debug, Clone)]
pub struct SimMsg(Arc<Record>);

impl SimMsg {
    pub fn record(&self) -> &Arc<Record> {
        &self.0
    }
}

/// What a cached result is keyed on here: the kind, the actor's and the targets' paths, and
/// whether any was truncated (ES keys on the files themselves; paths stand in for them).
type CacheKey = (EventKind, String, Vec<String>, bool);

#[derive(Debug)]
struct ClientState {
    subs: HashSet<EventKind>,
    notify_subs: HashSet<NotifyKind>,
    tokens: HashSet<AuditToken>,
    paths: Vec<(String, u32)>,
    inverted: [bool; 3],
    cache: HashSet<CacheKey>,
}

/// One message on a client's delivery queue.
#[derive(Debug)]
enum Queued {
    Auth(SimMsg, EsMessage),
    Notify(EsNotify),
}

/// One simulated `es_client_t`.
#[derive(Debug)]
pub struct SimClient {
    pub id: usize,
    sim: Weak<Inner>,
    queue: Mutex<Option<Sender<Queued>>>,
    st: Mutex<ClientState>,
    deleted: AtomicBool,
    killed: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    clients: Vec<Arc<SimClient>>,
    subscribed_once: bool,
    last_clear: Option<Instant>,
    records: Vec<Arc<Record>>,
    violations: Vec<String>,
    held: usize,
    next_id: u64,
}

#[derive(Debug)]
struct Inner {
    cfg: SimConfig,
    epoch: Instant,
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
    duplicates: AtomicU64,
}

/// The simulated Endpoint Security subsystem of one machine.
#[derive(Debug, Clone)]
pub struct EsSim {
    inner: Arc<Inner>,
}

/// What a raise produced: one record per client that received the message.
#[derive(Debug)]
pub struct Raised {
    pub records: Vec<Arc<Record>>,
    /// Answered from a client's cache without delivery.
    pub cached: usize,
}

impl Raised {
    /// Wait like the raising process does: until every receiving client answered (or was
    /// killed). True when the operation is allowed.
    pub fn wait(&self) -> bool {
        self.records.iter().all(|r| r.wait())
    }

    pub fn delivered(&self) -> bool {
        !self.records.is_empty()
    }
}

fn matches(path: &str, entry: &str, prefix: bool) -> bool {
    if prefix {
        path.starts_with(entry)
    } else {
        path == entry
    }
}

impl EsSim {
    pub fn new(cfg: SimConfig) -> Self {
        let inner = Arc::new(Inner {
            cfg,
            epoch: Instant::now(),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            duplicates: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        let reaper = std::thread::Builder::new()
            .name("es-sim-deadlines".to_owned())
            .spawn(move || reap(&weak))
            .expect("spawn the simulator's deadline thread");
        lock(&inner.threads).push(reaper);
        Self { inner }
    }

    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    /// Every broken contract so far: a message answered late or never (the client was
    /// killed), naming the message.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.inner.state).violations.clone()
    }

    /// Panics naming every violation (a test's last word).
    pub fn assert_no_violations(&self) {
        let v = self.violations();
        assert!(
            v.is_empty(),
            "Endpoint Security killed the client:\n{}",
            v.join("\n")
        );
    }

    /// Second answers to one message (each got `ERR_DUPLICATE_RESPONSE`).
    pub fn duplicate_answers(&self) -> u64 {
        self.inner.duplicates.load(Ordering::Relaxed)
    }

    /// Every record so far.
    pub fn records(&self) -> Vec<Arc<Record>> {
        lock(&self.inner.state).records.clone()
    }

    /// Raises held by the early-boot hold now.
    pub fn held(&self) -> usize {
        lock(&self.inner.state).held
    }

    pub fn clients(&self) -> Vec<Arc<SimClient>> {
        lock(&self.inner.state).clients.clone()
    }

    /// Records not answered yet.
    pub fn unanswered(&self) -> Vec<Arc<Record>> {
        self.records()
            .into_iter()
            .filter(|r| r.answers().is_empty() && !r.killed.load(Ordering::Acquire))
            .collect()
    }

    /// `es_new_client` with a handler on a fresh serial queue.
    pub fn new_client(&self, handler: Arc<Handler<SimClient>>) -> Result<Arc<SimClient>, ApiError> {
        let mut st = lock(&self.inner.state);
        let id = st.clients.len();
        if self.inner.cfg.client_limit.is_some_and(|n| id >= n) {
            return Err(ApiError::NewClient(convert::NewClientError::TooManyClients));
        }
        let (tx, rx): (Sender<Queued>, Receiver<_>) = crossbeam_channel::unbounded();
        let client = Arc::new(SimClient {
            id,
            sim: Arc::downgrade(&self.inner),
            queue: Mutex::new(Some(tx)),
            st: Mutex::new(ClientState {
                subs: HashSet::new(),
                notify_subs: HashSet::new(),
                tokens: HashSet::new(),
                paths: self.inner.cfg.default_mutes.clone(),
                inverted: [false; 3],
                cache: HashSet::new(),
            }),
            deleted: AtomicBool::new(false),
            killed: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&client);
        let queue = std::thread::Builder::new()
            .name(format!("es-sim-queue-{id}"))
            .spawn(move || {
                for queued in rx {
                    let (msg, view) = match queued {
                        Queued::Auth(msg, view) => (msg, view),
                        Queued::Notify(view) => {
                            // As the FFI block does: read only what a tracked compiler did.
                            if handler.wants_notify(view.process.token.pid()) {
                                handler.on_notify(&view);
                            }
                            continue;
                        }
                    };
                    let received = Instant::now();
                    if !handler.on_message(msg.clone(), &view, received) {
                        // As the FFI block does for a message the logic did not take.
                        if let Some(c) = weak.upgrade() {
                            let _ = c.answer(&msg, true, false, None);
                        }
                    }
                }
            })
            .map_err(|_| ApiError::Call {
                call: "es_new_client",
                hint: " (simulator: cannot spawn the delivery queue)",
            })?;
        lock(&self.inner.threads).push(queue);
        st.clients.push(Arc::clone(&client));
        Ok(client)
    }

    fn ticks(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.inner.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The path ES would report: `/private` resolved, truncated past `max_path`.
    fn es_file(&self, f: &EsFile) -> EsFile {
        let mut f = f.clone();
        for root in ["/tmp", "/var", "/etc"] {
            if f.path == root || f.path.starts_with(&format!("{root}/")) {
                f.path = format!("/private{}", f.path);
                break;
            }
        }
        let max = self.inner.cfg.max_path;
        if f.path.len() > max {
            let mut cut = max;
            while !f.path.is_char_boundary(cut) {
                cut -= 1;
            }
            f.path.truncate(cut);
            f.path_truncated = true;
        }
        f
    }

    /// A destination as ES would report it (its directory or file through [`EsSim::es_file`]).
    fn es_destination(&self, d: &EsDestination) -> EsDestination {
        match d {
            EsDestination::Existing(f) => EsDestination::Existing(self.es_file(f)),
            EsDestination::New {
                directory,
                filename,
            } => EsDestination::New {
                directory: self.es_file(directory),
                filename: filename.clone(),
            },
        }
    }

    fn es_process(&self, p: &EsProcess) -> EsProcess {
        EsProcess {
            executable: self.es_file(&p.executable),
            ..p.clone()
        }
    }

    fn es_body(&self, body: &EsBody) -> EsBody {
        match body {
            EsBody::Exec { target } => EsBody::Exec {
                target: Box::new(self.es_process(target)),
            },
            EsBody::Open { file, fflag } => EsBody::Open {
                file: self.es_file(file),
                fflag: *fflag,
            },
            EsBody::Mount(m) => EsBody::Mount(m.clone()),
            EsBody::Remount(m) => EsBody::Remount(m.clone()),
            EsBody::Rename {
                source,
                destination,
            } => EsBody::Rename {
                source: self.es_file(source),
                destination: self.es_destination(destination),
            },
            EsBody::Unlink { file } => EsBody::Unlink {
                file: self.es_file(file),
            },
            EsBody::Truncate { file } => EsBody::Truncate {
                file: self.es_file(file),
            },
            EsBody::Link {
                source,
                target_dir,
                target_filename,
            } => EsBody::Link {
                source: self.es_file(source),
                target_dir: self.es_file(target_dir),
                target_filename: target_filename.clone(),
            },
            EsBody::Create { destination } => EsBody::Create {
                destination: self.es_destination(destination),
            },
            EsBody::Clone {
                source,
                target_dir,
                target_name,
            } => EsBody::Clone {
                source: self.es_file(source),
                target_dir: self.es_file(target_dir),
                target_name: target_name.clone(),
            },
            EsBody::Copyfile {
                source,
                destination,
            } => EsBody::Copyfile {
                source: self.es_file(source),
                destination: self.es_destination(destination),
            },
            EsBody::Exchangedata { file1, file2 } => EsBody::Exchangedata {
                file1: self.es_file(file1),
                file2: self.es_file(file2),
            },
        }
    }

    /// A process `actor` attempts `body`: the kernel asks every subscribed, unmuted client.
    /// Returns at once (call [`Raised::wait`] to block like the actor does), except during the
    /// early-boot hold, which blocks here until the first subscription.
    pub fn raise(&self, actor: &EsProcess, body: EsBody) -> Raised {
        let actor = self.es_process(actor);
        let body = self.es_body(&body);
        let kind = body.kind();
        let mut st = lock(&self.inner.state);
        let holdable = match &body {
            EsBody::Exec { target } => !target.is_platform_binary,
            EsBody::Mount(_) => true,
            _ => false,
        };
        if self.inner.cfg.early_boot && holdable && !st.subscribed_once {
            st.held += 1;
            while !st.subscribed_once && !self.inner.stop.load(Ordering::Acquire) {
                st = self
                    .inner
                    .changed
                    .wait(st)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            st.held -= 1;
        }
        let targets = body.targets();
        let now = Instant::now();
        let deadline = now + self.inner.cfg.deadline;
        let msg = EsMessage {
            version: 8,
            deadline_ticks: self.ticks(deadline),
            process: actor.clone(),
            body,
        };
        let key: CacheKey = (
            kind,
            actor.executable.path.clone(),
            targets.clone(),
            msg.any_path_truncated(),
        );
        let what = format!(
            "{} {} by pid {} ({})",
            kind.as_str(),
            targets.join(" -> "),
            actor.token.pid(),
            actor.executable.path
        );
        let mut raised = Raised {
            records: Vec::new(),
            cached: 0,
        };
        let clients = st.clients.clone();
        for c in clients {
            if c.deleted.load(Ordering::Acquire) || c.killed.load(Ordering::Acquire) {
                continue;
            }
            let cs = lock(&c.st);
            if !cs.subs.contains(&kind) || is_muted(&cs, &actor, &targets) {
                continue;
            }
            if cs.cache.contains(&key) {
                raised.cached += 1;
                continue;
            }
            drop(cs);
            st.next_id += 1;
            let rec = Arc::new(Record {
                id: st.next_id,
                client: c.id,
                kind,
                what: what.clone(),
                deadline,
                key: key.clone(),
                answers: Mutex::new(Vec::new()),
                killed: AtomicBool::new(false),
                done: Condvar::new(),
            });
            st.records.push(Arc::clone(&rec));
            if let Some(q) = lock(&c.queue).as_ref() {
                let _ = q.send(Queued::Auth(SimMsg(Arc::clone(&rec)), msg.clone()));
            }
            raised.records.push(rec);
        }
        raised
    }

    /// The kernel reports `body`, done by `actor`, to every client subscribed to its NOTIFY
    /// kind and not muting it: queued behind whatever the client has not handled yet, and
    /// owed no answer. Returns how many clients it was delivered to.
    pub fn notify(&self, actor: &EsProcess, body: EsNotifyBody) -> usize {
        let body = match body {
            EsNotifyBody::Close { modified, target } => EsNotifyBody::Close {
                modified,
                target: self.es_file(&target),
            },
            EsNotifyBody::Rename {
                source,
                destination,
            } => EsNotifyBody::Rename {
                source: self.es_file(&source),
                destination: self.es_destination(&destination),
            },
            EsNotifyBody::Exit => EsNotifyBody::Exit,
        };
        let view = EsNotify {
            process: self.es_process(actor),
            body,
        };
        let targets = view.targets();
        let st = lock(&self.inner.state);
        let mut delivered = 0;
        for c in &st.clients {
            if c.deleted.load(Ordering::Acquire) || c.killed.load(Ordering::Acquire) {
                continue;
            }
            let cs = lock(&c.st);
            if !cs.notify_subs.contains(&view.kind()) || is_muted(&cs, &view.process, &targets) {
                continue;
            }
            drop(cs);
            if let Some(q) = lock(&c.queue).as_ref()
                && q.send(Queued::Notify(view.clone())).is_ok()
            {
                delivered += 1;
            }
        }
        delivered
    }

    /// Stop the simulator's threads (delivery queues end once their clients are deleted or
    /// the simulator is dropped).
    fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.changed.notify_all();
        for c in self.clients() {
            lock(&c.queue).take();
        }
    }
}

impl Drop for EsSim {
    fn drop(&mut self) {
        // Only the last handle stops the machine (the reaper holds a weak one).
        if Arc::strong_count(&self.inner) == 1 {
            self.shutdown();
        }
    }
}

/// ES's rule: muted by token or by process path (each invertible), or by target path. With
/// target muting inverted, only events with at least one selected target are delivered;
/// without, an event is muted when all its targets are.
fn is_muted(cs: &ClientState, actor: &EsProcess, targets: &[String]) -> bool {
    let by_token = cs.tokens.contains(&actor.token) != cs.inverted[inversion::PROCESS as usize];
    let exe = &actor.executable.path;
    let by_path = cs.paths.iter().any(|(p, t)| match *t {
        mute_path_type::PREFIX => matches(exe, p, true),
        mute_path_type::LITERAL => matches(exe, p, false),
        _ => false,
    }) != cs.inverted[inversion::PATH as usize];
    let target_hit = |t: &String| {
        cs.paths.iter().any(|(p, ty)| match *ty {
            mute_path_type::TARGET_PREFIX => matches(t, p, true),
            mute_path_type::TARGET_LITERAL => matches(t, p, false),
            _ => false,
        })
    };
    let by_target = if cs.inverted[inversion::TARGET_PATH as usize] {
        !targets.iter().any(target_hit)
    } else {
        !targets.is_empty() && targets.iter().all(target_hit)
    };
    by_token || by_path || by_target
}

impl Inner {
    /// A client subscribed to something (`any`): the first such ends the early-boot hold.
    fn first_subscription(&self, any: bool) {
        let mut st = lock(&self.state);
        if !st.subscribed_once && any {
            st.subscribed_once = true;
            self.changed.notify_all();
        }
    }
}

/// The deadline thread: a message unanswered at its deadline kills its client.
fn reap(inner: &Weak<Inner>) {
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let Some(inner) = inner.upgrade() else { return };
        if inner.stop.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let mut st = lock(&inner.state);
        let late: Vec<Arc<Record>> = st
            .records
            .iter()
            .filter(|r| {
                r.deadline <= now
                    && !r.killed.load(Ordering::Acquire)
                    && lock(&r.answers).is_empty()
            })
            .cloned()
            .collect();
        for r in late {
            r.killed.store(true, Ordering::Release);
            r.done.notify_all();
            if let Some(c) = st.clients.get(r.client).cloned() {
                if !c.killed.swap(true, Ordering::AcqRel) {
                    st.violations.push(format!(
                        "client {} killed: message {} ({}) not answered by its deadline",
                        r.client, r.id, r.what
                    ));
                }
                // A killed client's other messages are allowed with it.
                for other in st.records.iter().filter(|o| o.client == r.client) {
                    other.killed.store(true, Ordering::Release);
                    other.done.notify_all();
                }
            }
        }
    }
}

impl SimClient {
    fn sim(&self) -> Result<Arc<Inner>, ApiError> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(ApiError::Deleted);
        }
        self.sim.upgrade().ok_or(ApiError::Deleted)
    }

    /// Subscriptions now.
    pub fn subscriptions(&self) -> Vec<EventKind> {
        let mut v: Vec<_> = lock(&self.st).subs.iter().copied().collect();
        v.sort_by_key(|k| k.index());
        v
    }

    /// NOTIFY subscriptions now.
    pub fn notify_subscriptions(&self) -> Vec<NotifyKind> {
        let cs = lock(&self.st);
        NotifyKind::ALL
            .into_iter()
            .filter(|k| cs.notify_subs.contains(k))
            .collect()
    }

    /// Whether this client would receive `body` from `actor` now (subscribed and not muted).
    pub fn would_deliver(&self, sim: &EsSim, actor: &EsProcess, body: &EsBody) -> bool {
        let actor = sim.es_process(actor);
        let body = sim.es_body(body);
        let cs = lock(&self.st);
        cs.subs.contains(&body.kind()) && !is_muted(&cs, &actor, &body.targets())
    }

    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub fn target_muting_inverted(&self) -> bool {
        lock(&self.st).inverted[inversion::TARGET_PATH as usize]
    }

    pub fn muted_tokens(&self) -> Vec<AuditToken> {
        lock(&self.st).tokens.iter().copied().collect()
    }

    fn answer(&self, msg: &SimMsg, allow: bool, cache: bool, flags: Option<u32>) -> u32 {
        let rec = &msg.0;
        let is_open = rec.kind == EventKind::Open;
        if is_open != flags.is_some() {
            return respond_code::ERR_EVENT_TYPE;
        }
        let mut a = lock(&rec.answers);
        if !a.is_empty() {
            if let Some(inner) = self.sim.upgrade() {
                inner.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            return respond_code::ERR_DUPLICATE_RESPONSE;
        }
        if rec.killed.load(Ordering::Acquire) {
            return respond_code::ERR_NOT_FOUND;
        }
        // Cached before the answer is visible: the process the answer releases may repeat the
        // operation at once, and the kernel has the result cached by then.
        if allow && cache {
            lock(&self.st).cache.insert(rec.key.clone());
        }
        a.push(SimAnswer {
            at: Instant::now(),
            allow,
            cache,
        });
        drop(a);
        rec.done.notify_all();
        respond_code::OK
    }
}

impl EsApi for SimClient {
    type Msg = SimMsg;

    fn respond_auth(&self, msg: &SimMsg, result: u32, cache: bool) -> Result<u32, ApiError> {
        self.sim()?;
        Ok(self.answer(msg, result == convert::ES_AUTH_RESULT_ALLOW, cache, None))
    }

    fn respond_flags(&self, msg: &SimMsg, flags: u32, cache: bool) -> Result<u32, ApiError> {
        self.sim()?;
        // All bits allow (as we ask); anything less denies the open in this model.
        Ok(self.answer(
            msg,
            flags == convert::OPEN_ALLOW_ALL_FLAGS,
            cache,
            Some(flags),
        ))
    }

    fn subscribe(&self, kinds: &[EventKind]) -> Result<(), ApiError> {
        let sim = self.sim()?;
        lock(&self.st).subs.extend(kinds.iter().copied());
        sim.first_subscription(!kinds.is_empty());
        Ok(())
    }

    fn unsubscribe(&self, kinds: &[EventKind]) -> Result<(), ApiError> {
        self.sim()?;
        lock(&self.st).subs.retain(|k| !kinds.contains(k));
        Ok(())
    }

    fn unsubscribe_all(&self) -> Result<(), ApiError> {
        self.sim()?;
        let mut cs = lock(&self.st);
        cs.subs.clear();
        cs.notify_subs.clear();
        Ok(())
    }

    fn subscribe_notify(&self, kinds: &[NotifyKind]) -> Result<(), ApiError> {
        let sim = self.sim()?;
        lock(&self.st).notify_subs.extend(kinds.iter().copied());
        sim.first_subscription(!kinds.is_empty());
        Ok(())
    }

    fn unsubscribe_notify(&self, kinds: &[NotifyKind]) -> Result<(), ApiError> {
        self.sim()?;
        lock(&self.st).notify_subs.retain(|k| !kinds.contains(k));
        Ok(())
    }

    fn mute_process(&self, token: &AuditToken) -> Result<(), ApiError> {
        self.sim()?;
        lock(&self.st).tokens.insert(*token);
        Ok(())
    }

    fn mute_path(&self, path: &str, kind: u32, mute: bool) -> Result<(), ApiError> {
        self.sim()?;
        let mut cs = lock(&self.st);
        let entry = (path.to_owned(), kind);
        if mute {
            if !cs.paths.contains(&entry) {
                cs.paths.push(entry);
            }
            Ok(())
        } else if cs.paths.contains(&entry) {
            cs.paths.retain(|e| *e != entry);
            Ok(())
        } else {
            Err(ApiError::Call {
                call: "es_unmute_path",
                hint: " (unmuting a path that was never muted also fails)",
            })
        }
    }

    fn unmute_all_target_paths(&self) -> Result<(), ApiError> {
        self.sim()?;
        lock(&self.st).paths.retain(|(_, t)| {
            *t != mute_path_type::TARGET_PREFIX && *t != mute_path_type::TARGET_LITERAL
        });
        Ok(())
    }

    fn invert_muting(&self, kind: u32) -> Result<(), ApiError> {
        self.sim()?;
        let mut cs = lock(&self.st);
        if !cs.subs.is_empty() {
            return Err(ApiError::Call {
                call: "es_invert_muting",
                hint: " (ES refuses it while the client has AUTH subscriptions)",
            });
        }
        let i = usize::try_from(kind)
            .ok()
            .filter(|i| *i < 3)
            .ok_or(ApiError::Call {
                call: "es_invert_muting",
                hint: " (unknown inversion type)",
            })?;
        cs.inverted[i] = !cs.inverted[i];
        Ok(())
    }

    fn clear_cache(&self) -> Result<u32, ApiError> {
        let sim = self.sim()?;
        let mut st = lock(&sim.state);
        let now = Instant::now();
        if st
            .last_clear
            .is_some_and(|t| now.duration_since(t) < sim.cfg.clear_cache_interval)
        {
            return Ok(clear_code::THROTTLED);
        }
        st.last_clear = Some(now);
        for c in &st.clients {
            lock(&c.st).cache.clear();
        }
        Ok(clear_code::OK)
    }

    fn now_ticks(&self) -> u64 {
        self.sim
            .upgrade()
            .map_or(0, |s| EsSim { inner: s }.ticks(Instant::now()))
    }

    fn timebase(&self) -> Option<Timebase> {
        Timebase::new(1, 1)
    }

    fn delete(&self) -> Result<(), ApiError> {
        if self.deleted.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        lock(&self.queue).take();
        Ok(())
    }
}

/// The simulator as the session's [`EsConnect`]: clients, and our own token. The helper's
/// token comes from its transport (the XPC connection's kernel stamp; `SimHelper` here).
#[derive(Debug, Clone)]
pub struct SimConnect {
    pub sim: EsSim,
    pub self_token: AuditToken,
}

impl SimConnect {
    pub fn new(sim: &EsSim, self_token: AuditToken) -> Self {
        Self {
            sim: sim.clone(),
            self_token,
        }
    }
}

impl EsConnect for SimConnect {
    type Api = SimClient;

    fn new_client(&self, handler: Arc<Handler<SimClient>>) -> Result<Arc<SimClient>, ApiError> {
        self.sim.new_client(handler)
    }

    fn self_token(&self) -> Result<AuditToken, String> {
        Ok(self.self_token)
    }
}
