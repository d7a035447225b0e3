//! `gatehouse-extension` on Linux: wires the fanotify backend into the core and runs until
//! SIGINT/SIGTERM, then stops cleanly (marks removed, every pending event answered, group
//! closed); SIGHUP reloads the policy file.
//!
//! Start-up order matters: signals are blocked before any thread exists (so `sigwait` on the
//! main thread sees them); the group is created after the helper exists (the helper is spawned
//! by systemd or `gatehouse run`, never by us, and the group fd is `FAN_CLOEXEC` anyway); the
//! delivery thread runs before the first mark, so no event ever waits for a reader to start.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use anyhow::Context;
use model::EventKind;
use nix::sys::signal::{SigSet, Signal};
use policy::Policy;

use super::cache::{self, KeeperCounters};
use super::delivery::{DeliveryLoop, Sink, StallKnob, Waker};
use super::fanotify::{Groups, WriteGroup};
use super::follow::Follower;
use super::liveness::{Liveness, LivenessConfig, Progress, kill_self};
use super::marks::{self, MarkPlan, MarkReport, OpenMark};
use super::responder::{FanotifyResponder, Shared};
use super::selfmute::Muted;
use super::supervise::{self, Heartbeat, Notifier};
use crate::backend::{BackendError, Delivery, KernelControl};
use crate::core::transitive::{ProcessPin, TransitiveBackend};
use crate::core::{Core, CoreConfig};

/// Linux-only settings on top of [`CoreConfig`].
#[derive(Debug, Clone)]
pub struct LinuxOptions {
    /// Filesystems (any path on each) whose execs are authorized. Protected paths of the policy
    /// are marked only when they live on one of these filesystems. Production: `/` (and any
    /// other local filesystem holding executables).
    pub scope: Vec<PathBuf>,
    /// Most evictable inode ignore marks (kernel-cached allows) at once.
    pub ignore_budget: u64,
    /// Liveness guard limit; `None`: twice the policy's largest deadline (at least 2 s).
    pub liveness_limit: Option<Duration>,
    /// Test knob: stop reading after this many permission events (the guard must then fire).
    pub test_stall_after: Option<u64>,
    /// Print a one-line status on start and counters on exit (stdout).
    pub status_line: bool,
    /// The policy file SIGHUP reloads (`None`: the embedded policy, nothing to reload).
    pub policy_path: Option<PathBuf>,
    /// The executables whose exec is allowed on the fast path, pinned at start-up
    /// (`slow-path-never-gates-itself`); `None` pins nothing.
    pub pin: Option<super::trusted_ids::PinSources>,
}

impl Default for LinuxOptions {
    fn default() -> Self {
        Self {
            scope: vec![PathBuf::from("/")],
            ignore_budget: 10_000,
            liveness_limit: None,
            test_stall_after: None,
            status_line: true,
            policy_path: None,
            pin: Some(super::trusted_ids::PinSources::default()),
        }
    }
}

type LinuxCore = Core<FanotifyResponder>;

impl Sink for Arc<LinuxCore> {
    fn deliver(&self, d: Delivery<FanotifyResponder>) {
        LinuxCore::deliver(self, d);
    }

    fn written(&self, pid: i32, fd: std::os::fd::OwnedFd) {
        let pid = u32::try_from(pid).unwrap_or(0);
        LinuxCore::file_written(self, pid, std::fs::File::from(fd), None);
    }
}

/// A compiler process pinned by a pidfd (`core::transitive`'s pid-reuse guard).
struct PidfdPin(std::os::fd::OwnedFd);

impl ProcessPin for PidfdPin {
    fn exited(&self) -> bool {
        !super::selfmute::pidfd_alive(&self.0)
    }
}

/// How the core pins compiler processes and names written files on Linux. The exec event's
/// pid is the exec'ing thread's id (the permission groups report thread ids); `pidfd_open`
/// accepts only a thread-group leader, which is every single-threaded `fork` + `exec` (the way
/// builds start compilers). An exec from another thread of a threaded process is therefore not
/// tracked, and counted (`transitive_compilers_untracked`): finding its process id would need a
/// procfs read on the delivery thread.
fn transitive_backend() -> TransitiveBackend {
    TransitiveBackend {
        pin: Arc::new(|pid, _incarnation| {
            let pid = i32::try_from(pid).ok()?;
            let fd = super::selfmute::pidfd_open(pid).ok()?;
            Some(Box::new(PidfdPin(fd)) as Box<dyn ProcessPin>)
        }),
        // Off the delivery thread (the recorder): the path the kernel resolved for our fd.
        path_of: Arc::new(|f: &std::fs::File| super::convert::fd_path(std::os::fd::AsFd::as_fd(f))),
    }
}

/// Add or remove the write group's close-write marks so they are in place exactly while
/// `policy` can record transitive allows. Returns whether they are in place now.
fn apply_write_marks(
    writes: &WriteGroup,
    scope: &[PathBuf],
    policy: &Policy,
    marked: bool,
) -> bool {
    let want = policy.records_transitive();
    if want == marked {
        return marked;
    }
    for fs in scope {
        if let Err(e) = writes.mark_filesystem(fs, want) {
            eprintln!(
                "gatehouse-extension: warning: close-write mark {} on {} failed: {e}; files \
                 compilers write there are not recorded as transitive allows",
                if want { "add" } else { "removal" },
                fs.display()
            );
        }
    }
    want
}

/// What the marks cover now (gauges, replaced on every (re-)application).
#[derive(Debug, Default)]
struct MarkGauges {
    filesystems: AtomicU64,
    files: AtomicU64,
    directories: AtomicU64,
    truncated: AtomicU64,
    missing: AtomicU64,
}

impl MarkGauges {
    fn set(&self, r: &MarkReport, filesystems: Option<usize>) {
        if let Some(f) = filesystems {
            self.filesystems.store(f as u64, Ordering::Relaxed);
        }
        self.files.store(r.files as u64, Ordering::Relaxed);
        self.directories
            .store(r.directories as u64, Ordering::Relaxed);
        self.truncated.store(r.truncated as u64, Ordering::Relaxed);
        self.missing
            .store(r.missing.len() as u64, Ordering::Relaxed);
    }
}

/// The kernel side the core drives: cache clears (ignore marks) on policy change, counters.
struct FanotifyControl {
    shared: Arc<Shared>,
    follower: Arc<Follower>,
    gauges: MarkGauges,
    keeper: Arc<KeeperCounters>,
    scope: Vec<PathBuf>,
    core: OnceLock<Weak<LinuxCore>>,
    /// The open marks in place (the policy's, not the follower's), and the lock that
    /// serialises mark rebuilds (control thread only; never the delivery thread).
    rebuild: Mutex<Vec<OpenMark>>,
}

impl KernelControl for FanotifyControl {
    fn mute_path(&self, _spec: &model::MuteSpec) -> Result<(), BackendError> {
        // fanotify has no path mutes; the core's in-process mirror applies them.
        Err(BackendError::Unsupported("fanotify path mutes"))
    }

    fn unmute_path(&self, _spec: &model::MuteSpec) -> Result<(), BackendError> {
        Err(BackendError::Unsupported("fanotify path mutes"))
    }

    /// On a policy change: the open marks move to the new policy's protected set (new ones
    /// added before old ones go, so a path both protect is never unmarked), then the exec
    /// allow cache is flushed. Open marks are never flushed.
    fn clear_cache(&self) -> Result<(), BackendError> {
        let mut current = self
            .rebuild
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(core) = self.core.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let plan = plan_for(&core.policy().policy, &self.scope);
        let mut old = current.clone();
        old.extend(self.follower.followed());
        let mut report = MarkReport::default();
        let updated = marks::update_open(&self.shared.groups, &plan, &old, &mut report);
        if updated.is_ok() {
            *current = std::mem::take(&mut report.open_marks);
            self.gauges.set(&report, None);
            self.follower.reset(&report.marked_dirs);
        } else {
            // Nothing was removed: keep every mark known, old and new.
            current.extend(std::mem::take(&mut report.open_marks));
        }
        let before = self.shared.ignore_marks.load(Ordering::Acquire);
        let flushed = marks::clear_cache(&self.shared.groups);
        if flushed.is_ok() {
            let _ =
                self.shared
                    .ignore_marks
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        Some(n.saturating_sub(before))
                    });
            self.shared
                .counters
                .cache_clears
                .fetch_add(1, Ordering::Relaxed);
        }
        updated.map_err(|e| BackendError::Control {
            call: "fanotify_mark(FAN_MARK_ADD) for a protected path",
            detail: e.to_string(),
        })?;
        flushed.map_err(|e| BackendError::Control {
            call: "fanotify_mark(FAN_MARK_FLUSH) of the exec allow cache",
            detail: e.to_string(),
        })
    }

    fn scopes(&self) -> Vec<String> {
        self.scope.iter().map(|p| p.display().to_string()).collect()
    }

    fn counters(&self) -> Vec<(String, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut v = self.shared.counters.snapshot();
        let p = &self.shared.progress;
        let f = &self.follower.counters;
        let m = &self.gauges;
        v.extend([
            (
                "fanotify.ignore_marks_live".into(),
                g(&self.shared.ignore_marks),
            ),
            ("fanotify.ignore_budget".into(), self.shared.ignore_budget),
            (
                "fanotify.ignore_budget_flushes".into(),
                g(&self.keeper.budget_flushes),
            ),
            (
                "fanotify.ignore_flush_errors".into(),
                g(&self.keeper.flush_errors),
            ),
            ("marks.filesystems".into(), g(&m.filesystems)),
            ("marks.files".into(), g(&m.files)),
            ("marks.directories".into(), g(&m.directories)),
            ("marks.truncated".into(), g(&m.truncated)),
            ("marks.missing".into(), g(&m.missing)),
            ("follow.subdir_marks_added".into(), g(&f.subdir_marks_added)),
            (
                "follow.subdir_marks_over_budget".into(),
                g(&f.subdir_marks_over_budget),
            ),
            ("follow.subdir_mark_errors".into(), g(&f.subdir_mark_errors)),
            ("follow.notify_overflows".into(), g(&f.notify_overflows)),
            ("liveness.received".into(), g(&p.received)),
            ("liveness.answered".into(), g(&p.answered)),
            ("liveness.pending".into(), p.pending()),
            ("liveness.heartbeat".into(), g(&p.heartbeat)),
            ("liveness.process_stalls".into(), g(&p.process_stalls)),
            (
                "liveness.process_stall_max_ms".into(),
                g(&p.process_stall_max_ms),
            ),
            (
                "liveness.no_progress_max_ms".into(),
                g(&p.no_progress_max_ms),
            ),
        ]);
        v
    }
}

fn device_of(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.dev())
}

/// The nearest existing ancestor's device (a protected path may not exist yet).
fn device_of_nearest(p: &Path) -> Option<u64> {
    p.ancestors().find_map(device_of)
}

/// What to mark for `policy` within `scope`: exec on each scope filesystem; open on the
/// watched paths that live on a scope filesystem (others are out of scope and not marked).
pub fn plan_for(policy: &Policy, scope: &[PathBuf]) -> MarkPlan {
    let devs: Vec<u64> = scope.iter().filter_map(|p| device_of(p)).collect();
    let mut protected = Vec::new();
    if policy.watches_kind(EventKind::Open) {
        for w in policy.watched_paths() {
            let p = PathBuf::from(&w.path);
            if !device_of_nearest(&p).is_some_and(|d| devs.contains(&d)) {
                continue;
            }
            // A string prefix that is not a directory ("/usr/local/bin/gatehouse" matching
            // "gatehouse-helper") is covered by marking its parent's children.
            let is_dir_prefix = w.path.ends_with('/') || p.is_dir();
            let target = if w.prefix && !is_dir_prefix {
                p.parent().map(Path::to_owned).unwrap_or(p)
            } else {
                p
            };
            if !protected.contains(&target) {
                protected.push(target);
            }
        }
    }
    MarkPlan {
        exec_filesystems: scope.to_vec(),
        protected,
    }
}

/// Find the pid of the process listening on the Unix socket at `socket` (the helper), from
/// `/proc/net/unix` and the `/proc/<pid>/fd` links. Off the delivery thread only.
pub fn listener_pid(socket: &Path) -> Option<i32> {
    let want = socket.to_string_lossy();
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    // Num RefCount Protocol Flags Type St Inode Path; __SO_ACCEPTCON (0x10000) = listening.
    let inode = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
        (f.get(7).copied() == Some(&*want) && flags & 0x10000 != 0).then(|| f[6].to_owned())
    })?;
    let link = format!("socket:[{inode}]");
    let me = std::process::id() as i32;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == link.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The descriptor limit we ask for at start: every pending event holds an fd (the core bounds
/// them by its queue and in-flight limits, a few thousand), plus sockets and logs.
pub const MIN_NOFILE: u64 = 65_536;

/// Raise the soft descriptor limit to the hard one, and the hard one to [`MIN_NOFILE`] when it
/// is lower (root has `CAP_SYS_RESOURCE`; without it the hard limit stays). Returns the soft
/// limit in force. The delivery loop still sizes every read by the headroom left.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct through a valid, exclusive pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(MIN_NOFILE);
    if lim.rlim_max < MIN_NOFILE {
        let want = libc::rlimit {
            rlim_cur: MIN_NOFILE.min(nr_open),
            rlim_max: MIN_NOFILE.min(nr_open),
        };
        // SAFETY: setrlimit reads one rlimit struct through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return want.rlim_cur;
        }
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads one rlimit struct through a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        return lim.rlim_cur;
    }
    // SAFETY: as above.
    let _ = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur
}

/// Pin the slow path's dependencies, reporting what was pinned (stdout) and what could not be
/// (stderr; the exec of such a file then goes through the policy).
fn pin_trusted(
    sources: &super::trusted_ids::PinSources,
    print: bool,
) -> anyhow::Result<crate::core::trusted::TrustedSet> {
    let (set, errors) =
        super::trusted_ids::pin_all(sources).context("pinning the slow path's dependencies")?;
    for e in &errors {
        eprintln!(
            "gatehouse-extension: warning: {e}; its exec will need the helper like any other"
        );
    }
    if print {
        for (dep, _) in set.entries() {
            super::supervise::print_line(format!(
                "gatehouse-extension: pinned slow-path dependency {dep}"
            ));
        }
    }
    Ok(set)
}

/// Run the fanotify backend under the core until SIGINT or SIGTERM; SIGHUP reloads the policy.
pub fn run(mut config: CoreConfig, policy: Policy, opts: LinuxOptions) -> anyhow::Result<()> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    // Before any thread exists, so every thread inherits the mask and only sigwait sees them.
    signals.thread_block().context("blocking SIGINT/SIGTERM")?;
    let nofile = raise_nofile();

    let max_deadline = EventKind::ALL
        .iter()
        .map(|k| policy.deadline(*k))
        .max()
        .unwrap_or(Duration::from_secs(5));
    let liveness_limit = opts
        .liveness_limit
        .unwrap_or((max_deadline * 2).max(Duration::from_secs(2)));
    let helper_socket = config.helper_socket.clone();

    // Before the group exists: our own reads raise no events, and nothing here waits on a daemon.
    if let Some(sources) = &opts.pin {
        config.trusted = Arc::new(pin_trusted(sources, opts.status_line)?);
    }

    let groups = Arc::new(Groups::new().context(
        "fanotify_init(FAN_CLASS_CONTENT) failed: needs root (CAP_SYS_ADMIN) and a kernel with fanotify permission events",
    )?);
    // Transitive allowlisting: a failure here costs only the recording, never protection.
    let writes = match WriteGroup::new() {
        Ok(w) => Some(Arc::new(w)),
        Err(e) => {
            eprintln!(
                "gatehouse-extension: warning: fanotify_init(FAN_CLASS_NOTIF) for close-write \
                 events failed: {e}; no transitive allows will be recorded"
            );
            None
        }
    };
    if writes.is_some() {
        config.transitive_backend = Some(transitive_backend());
    }
    let progress = Arc::new(Progress::default());
    let shared = Arc::new(Shared::new(
        Arc::clone(&groups),
        Arc::clone(&progress),
        opts.ignore_budget,
    ));
    let muted = Arc::new(Muted::new());
    let follower = Follower::new(Arc::clone(&groups)).context("inotify_init1 for the follower")?;
    let keeper = Arc::new(KeeperCounters::default());
    let control = Arc::new(FanotifyControl {
        shared: Arc::clone(&shared),
        follower: Arc::clone(&follower),
        gauges: MarkGauges::default(),
        keeper: Arc::clone(&keeper),
        scope: opts.scope.clone(),
        core: OnceLock::new(),
        rebuild: Mutex::new(Vec::new()),
    });
    let core = Arc::new(
        Core::<FanotifyResponder>::start(
            config,
            policy,
            Arc::clone(&control) as Arc<dyn KernelControl>,
        )
        .context("starting the core")?,
    );
    let _ = control.core.set(Arc::downgrade(&core));

    let waker = Waker::new().context("eventfd")?;
    let stall = Arc::new(StallKnob::default());
    if let Some(n) = opts.test_stall_after {
        stall.0.store(n, Ordering::Relaxed);
    }
    let delivery = {
        let dl = DeliveryLoop {
            shared: Arc::clone(&shared),
            muted: Arc::clone(&muted),
            sink: Arc::clone(&core),
            deadline: {
                let core = Arc::clone(&core);
                Box::new(move |k| core.policy().policy.deadline(k))
            },
            flags_matter: {
                let core = Arc::clone(&core);
                Box::new(move || core.policy().policy.open_flags_matter())
            },
            waker: waker.clone(),
            stall,
            writes: writes.clone(),
        };
        std::thread::Builder::new()
            .name("gh-delivery".into())
            .spawn(move || dl.run())
            .context("spawning the delivery thread")?
    };
    let guard = Liveness::start(
        Arc::clone(&groups),
        Arc::clone(&progress),
        LivenessConfig {
            limit: liveness_limit,
            tick: Duration::from_millis(100),
        },
        Box::new(kill_self),
    )
    .context("spawning the liveness guard")?;
    // Supervision from outside (systemd or `gatehouse run`): heartbeats only while the
    // delivery loop progresses, so a stopped or stuck extension gets killed from outside.
    let notifier = match Notifier::from_env() {
        Some(Ok(n)) => Some(Arc::new(n)),
        Some(Err(e)) => {
            eprintln!(
                "gatehouse-extension: NOTIFY_SOCKET unusable ({e}); no supervisor notifications"
            );
            None
        }
        None => None,
    };
    let _heartbeat = match (&notifier, supervise::watchdog_from_env()) {
        (Some(n), Some(w)) => Some(
            Heartbeat::start(
                Arc::clone(n),
                Arc::clone(&groups),
                Arc::clone(&progress),
                supervise::heartbeat_period(w),
            )
            .context("spawning the watchdog heartbeat")?,
        ),
        _ => None,
    };

    // The helper's pid, re-resolved whenever it is unknown or gone (restarts).
    let resolver_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(sock) = helper_socket {
        let (m, stop) = (Arc::clone(&muted), Arc::clone(&resolver_stop));
        std::thread::Builder::new()
            .name("gh-helper-pid".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if m.helper_pid().is_none()
                        && let Some(pid) = listener_pid(&sock)
                    {
                        let _ = m.set_helper(pid);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .context("spawning the helper-pid resolver")?;
    }

    let keeper_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keeper_thread = cache::spawn(Arc::clone(&shared), keeper, Arc::clone(&keeper_stop))
        .context("spawning the kernel cache keeper")?;

    // The rebuild lock orders this first application against a concurrent policy load.
    let mut rebuild = control
        .rebuild
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let plan = plan_for(&core.policy().policy, &opts.scope);
    let mut report = match marks::apply(&groups, &plan) {
        Ok(r) => r,
        Err(e) => {
            drop(rebuild);
            marks::remove_all(&groups);
            keeper_stop.store(true, Ordering::Release);
            waker.stop();
            let _ = delivery.join();
            core.shutdown();
            return Err(e).context("marking the filesystems in scope");
        }
    };
    control.gauges.set(&report, Some(report.filesystems));
    follower.reset(&report.marked_dirs);
    *rebuild = std::mem::take(&mut report.open_marks);
    drop(rebuild);
    let follow_thread = follower
        .spawn()
        .context("spawning the subdirectory follower")?;
    // The close-write marks follow the policy: in place only while it can record transitive
    // allows (every close-write on a marked filesystem costs the kernel an open for us).
    let writes_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(w) = &writes {
        let changes = core.policy_changes();
        let mut marked = apply_write_marks(w, &opts.scope, &core.policy().policy, false);
        let (w, core, scope, stop) = (
            Arc::clone(w),
            Arc::downgrade(&core),
            opts.scope.clone(),
            Arc::clone(&writes_stop),
        );
        std::thread::Builder::new()
            .name("gh-write-marks".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if changes.recv_timeout(Duration::from_millis(200)).is_err() {
                        continue;
                    }
                    let Some(core) = core.upgrade() else { break };
                    marked = apply_write_marks(&w, &scope, &core.policy().policy, marked);
                }
                if marked {
                    for fs in &scope {
                        let _ = w.mark_filesystem(fs, false);
                    }
                }
            })
            .context("spawning the close-write mark follower")?;
    }
    if opts.status_line {
        let snap = core.policy();
        supervise::print_line(format!(
            "gatehouse-extension: fanotify on {} filesystem(s) ({}), {} protected file(s), {} directory mark(s) (new subdirectories followed); policy {} v{} ({:?} mode); liveness {:?}; nofile {}; pid {}",
            report.filesystems,
            opts.scope
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            report.files,
            report.directories,
            snap.policy.origin(),
            snap.version,
            snap.policy.mode(),
            liveness_limit,
            nofile,
            std::process::id(),
        ));
    }
    if let Some(n) = &notifier {
        let _ = n.send("READY=1");
    }

    // SIGHUP reloads the policy file; SIGINT/SIGTERM stop.
    let sig = loop {
        let sig = signals.wait().context("sigwait")?;
        if sig != Signal::SIGHUP {
            break sig;
        }
        supervise::reload(opts.policy_path.as_deref(), notifier.as_deref(), |o, t| {
            core.load_policy(o, t)
        });
    };
    if let Some(n) = &notifier {
        let _ = n.send("STOPPING=1");
    }

    // Clean stop: no new marks, no new events, stop reading, answer everything pending, close
    // the group.
    follower.stop();
    let _ = follow_thread.join();
    writes_stop.store(true, Ordering::Release);
    marks::remove_all(&groups);
    waker.stop();
    let delivered = delivery.join();
    core.shutdown();
    resolver_stop.store(true, Ordering::Release);
    keeper_stop.store(true, Ordering::Release);
    let _ = keeper_thread.join();
    drop(guard);
    if opts.status_line {
        let c = control.counters();
        let mut line: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // The latency percentiles too, so a benchmark driving this backend in-process reads
        // the figures `gatehouse stats` would show without a control socket.
        for l in core.metrics().latencies() {
            line.push(format!(
                "latency.{n}.count={} latency.{n}.p50_us={} latency.{n}.p99_us={}",
                l.count,
                l.p50_us,
                l.p99_us,
                n = l.name
            ));
        }
        supervise::print_line(format!(
            "gatehouse-extension: stopped on {sig:?}; pending={} {}",
            progress.pending(),
            line.join(" ")
        ));
    }
    match delivered {
        Ok(r) => r.context("the fanotify delivery loop failed")?,
        Err(_) => anyhow::bail!("the delivery thread panicked"),
    }
    Ok(())
}
