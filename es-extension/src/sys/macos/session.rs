//! Start-up order, subscriptions, muting and shutdown of the ES clients, generic over
//! [`EsConnect`] so the simulator runs exactly this code.
//!
//! Three clients (Santa's split, one per concern): the *process* client takes exec and mounts
//! for every process; the *files* client takes the file-access kinds with inverted target-path
//! muting, so only events on watched paths reach us (issue 10 item 5); the *recorder* client
//! takes NOTIFY close, rename and exit while the policy records transitive allows
//! (`convert::notify_kinds`), on a delivery queue of its own so a flood of closes never delays
//! an exec. If the files client cannot be created, the process client takes the file kinds
//! too, unselected (correct, only slower); if the recorder cannot, nothing is recorded.
//!
//! Order (safe with `NSEndpointSecurityEarlyBoot`, which holds mounts and third-party execs
//! until our first subscription):
//! 1. the core is already running (threads only; a missing helper degrades, never delays);
//! 2. create the clients, mute ourselves by audit token and the helper by executable path;
//! 3. subscribe with the embedded policy's kinds: early boot is released here;
//! 4. load the policy file and resync (targets selected before kinds subscribed);
//! 5. a maintenance thread resyncs on every policy change and mutes the helper's audit token
//!    once its transport knows it;
//! 6. [`Session::stop`]: unsubscribe, let the core answer every pending event, delete.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use model::{EventKind, FallbackReason, MuteScope, MuteSpec};

use super::api::{ApiError, AuditToken, EsApi, NotifyKind};
use super::control::EsControl;
use super::convert;
use super::handler::{Fallback, Handler, NotifyFilter, NotifySink, Sink};
use super::message::Recording;
use super::responder::EsResponder;
use crate::backend::KernelControl;
use crate::core::Core;

/// Creates ES clients and names processes by audit token (the FFI, or the simulator).
pub trait EsConnect: Send + Sync + 'static {
    type Api: EsApi;
    /// `es_new_client` with `handler` on the new client's delivery queue.
    fn new_client(&self, handler: Arc<Handler<Self::Api>>) -> Result<Arc<Self::Api>, ApiError>;
    /// Our own process's audit token.
    fn self_token(&self) -> Result<AuditToken, String>;
}

/// The kinds the files client takes (everything but exec and mounts).
pub fn is_file_kind(kind: EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Exec | EventKind::Mount | EventKind::Remount
    )
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("Endpoint Security: {0}")]
    Client(#[from] ApiError),
    #[error("cannot mute our own process: {0}")]
    SelfMute(String),
    #[error("es_subscribe: no event kind could be subscribed")]
    NothingSubscribed,
    #[error("cannot start the maintenance thread: {0}")]
    Spawn(std::io::Error),
}

/// What a session needs beyond the core.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// The helper's executable, muted by literal path before the first subscription.
    pub helper_executable: String,
    /// The policy file's origin and text (or why it could not be read), loaded after the
    /// first subscription; `None` keeps the embedded default.
    pub policy: Option<(String, Result<String, String>)>,
    /// How often the maintenance thread looks for a new helper connection.
    pub helper_poll: Option<Duration>,
}

type EsCore<A> = Core<EsResponder<A>>;

struct Subscriptions<A: EsApi> {
    process: Arc<A>,
    files: Option<Arc<A>>,
    recorder: Option<Arc<A>>,
    on_process: Vec<EventKind>,
    on_files: Vec<EventKind>,
    on_recorder: Vec<NotifyKind>,
}

impl<A: EsApi> Subscriptions<A> {
    fn sync(&mut self, control: &EsControl<A>, policy: &policy::Policy) {
        let wanted = convert::subscription_kinds(policy);
        let (wanted_files, wanted_process): (Vec<_>, Vec<_>) = match &self.files {
            Some(_) => wanted.iter().partition(|k| is_file_kind(**k)),
            None => (Vec::new(), wanted.clone()),
        };
        let selected = match &self.files {
            Some(_) => {
                control.set_watched_targets(policy.watched_paths(), policy.watches_all_paths())
            }
            None => Ok(()),
        };
        if let Err(e) = selected {
            // A half-made selection could leave a watched path unselected: take every file
            // event instead (slower, never a lapse).
            tracing::error!(error = %e, "selecting watched paths failed; taking every file event");
            if let Err(e) = control.set_watched_targets(&[], true) {
                tracing::error!(error = %e, "undoing the watched-path selection failed");
            }
        }
        sync_one(&*self.process, &mut self.on_process, &wanted_process);
        if let Some(files) = &self.files {
            sync_one(&**files, &mut self.on_files, &wanted_files);
        }
        if let Some(recorder) = &self.recorder {
            let wanted = convert::notify_kinds(policy);
            let (add, remove) = convert::subscription_changes(&self.on_recorder, &wanted);
            if !add.is_empty() {
                match recorder.subscribe_notify(&add) {
                    Ok(()) => self.on_recorder.extend(add),
                    Err(e) => {
                        tracing::error!(error = %e, "subscribing to close, rename and exit failed; no transitive allows are recorded")
                    }
                }
            }
            if !remove.is_empty() {
                match recorder.unsubscribe_notify(&remove) {
                    Ok(()) => self.on_recorder.retain(|k| !remove.contains(k)),
                    Err(e) => {
                        tracing::warn!(error = %e, "unsubscribing from close, rename and exit failed")
                    }
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.on_process.is_empty() && self.on_files.is_empty()
    }
}

fn sync_one<A: EsApi>(api: &A, current: &mut Vec<EventKind>, wanted: &[EventKind]) {
    let (add, remove) = convert::subscription_changes(current, wanted);
    // Subscribe first, unsubscribe after, so no kind is briefly unguarded when swapping.
    if !add.is_empty() {
        match api.subscribe(&add) {
            Ok(()) => current.extend(add),
            Err(e) => tracing::error!(error = %e, "subscribing to new event kinds failed"),
        }
    }
    if !remove.is_empty() {
        match api.unsubscribe(&remove) {
            Ok(()) => current.retain(|k| !remove.contains(k)),
            Err(e) => tracing::warn!(error = %e, "unsubscribing from unused event kinds failed"),
        }
    }
}

/// The running ES clients.
pub struct Session<C: EsConnect> {
    process: Arc<C::Api>,
    files: Option<Arc<C::Api>>,
    recorder: Option<Arc<C::Api>>,
    core: Arc<EsCore<C::Api>>,
    stop_tx: Option<Sender<()>>,
    maint: Option<JoinHandle<()>>,
}

impl<C: EsConnect> std::fmt::Debug for Session<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("files_client", &self.files.is_some())
            .field("recorder_client", &self.recorder.is_some())
            .finish_non_exhaustive()
    }
}

impl<C: EsConnect> Session<C> {
    /// Steps 2 to 5 of the start-up order. `core` must already run with `control` as its
    /// kernel control. On macOS this runs on the main thread, which must also call
    /// [`Session::stop`] (clients are deleted on their creating thread).
    pub fn start(
        connect: Arc<C>,
        core: Arc<EsCore<C::Api>>,
        control: Arc<EsControl<C::Api>>,
        opts: SessionOptions,
    ) -> Result<Self, SessionError> {
        // Before anything can load a policy, so no change is missed.
        let policy_changes = core.policy_changes();
        let handler = || {
            let sink_core = Arc::clone(&core);
            let sink: Sink<C::Api> = Arc::new(move |d| sink_core.deliver(d));
            let fb_core = Arc::clone(&core);
            // A truncated path is the policy's `fallback` case (the message is unusable), as
            // for a dropped responder.
            let fallback: Fallback = Arc::new(move |kind| {
                fb_core
                    .policy()
                    .policy
                    .fallback(kind, FallbackReason::Dropped)
            });
            Handler::new(sink, fallback, control.counters_handle())
        };
        let h = Arc::new(handler());
        let process = connect.new_client(Arc::clone(&h))?;
        h.attach(Arc::clone(&process));
        let files = {
            let h = Arc::new(handler());
            match connect.new_client(Arc::clone(&h)) {
                Ok(api) => {
                    h.attach(Arc::clone(&api));
                    Some(api)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no file-access ES client; file events go unselected");
                    None
                }
            }
        };
        let recorder = {
            let rec_core = Arc::clone(&core);
            let notify: NotifySink = Arc::new(move |r| match r {
                Recording::Closed {
                    pid,
                    incarnation,
                    file,
                } => rec_core.file_closed(pid, incarnation, file),
                Recording::Renamed {
                    pid,
                    incarnation,
                    from,
                    to,
                } => rec_core.file_renamed(pid, incarnation, from, to),
                Recording::Exited { pid, incarnation } => {
                    rec_core.process_exited(pid, incarnation);
                }
                Recording::Nothing => {}
            });
            let filter_core = Arc::clone(&core);
            let filter: NotifyFilter = Arc::new(move |pid| filter_core.is_compiler(pid));
            let h = Arc::new(handler().with_notify(filter, notify));
            match connect.new_client(Arc::clone(&h)) {
                Ok(api) => {
                    h.attach(Arc::clone(&api));
                    Some(api)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no recorder ES client; transitive allows are not recorded");
                    None
                }
            }
        };
        control.attach(Arc::clone(&process), files.clone(), recorder.clone());
        let me = connect.self_token().map_err(SessionError::SelfMute)?;
        control
            .mute_process(&me)
            .map_err(|e| SessionError::SelfMute(e.to_string()))?;
        if let Err(e) = control.mute_path(&MuteSpec {
            scope: MuteScope::Process,
            path: opts.helper_executable.clone(),
            prefix: false,
        }) {
            tracing::warn!(error = %e, path = %opts.helper_executable, "muting the helper's executable failed");
        }

        // First subscription, with the embedded policy: releases early boot.
        let mut subs = Subscriptions {
            process: Arc::clone(&process),
            files: files.clone(),
            recorder: recorder.clone(),
            on_process: Vec::new(),
            on_files: Vec::new(),
            on_recorder: Vec::new(),
        };
        subs.sync(&control, &core.policy().policy);
        if subs.is_empty() {
            return Err(SessionError::NothingSubscribed);
        }

        if let Some((origin, text)) = &opts.policy {
            match text {
                Ok(text) => match core.load_policy(origin, text) {
                    Ok(v) => tracing::info!(version = v, %origin, "policy loaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "policy file rejected; keeping the embedded default")
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, %origin, "cannot read the policy file; using the embedded default")
                }
            }
            subs.sync(&control, &core.policy().policy);
        }
        // Volumes mounted before we started, under the policy now in force (never waited for).
        core.begin_startup_mounts();

        // Maintenance, off the delivery queues: resync after policy changes, and mute the
        // helper by the audit token the kernel stamped on its connection, once the core's
        // transport knows it (never by a pid: that names whoever holds it later).
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let poll = opts.helper_poll.unwrap_or(Duration::from_secs(1));
        let maint = {
            let core = Arc::clone(&core);
            std::thread::Builder::new()
                .name("gh-es-maint".to_owned())
                .spawn(move || {
                    let mut helper: (Option<u32>, Option<AuditToken>) = (None, None);
                    loop {
                        crossbeam_channel::select! {
                            // A stop message or a dropped sender ends the loop.
                            recv(stop_rx) -> _ => break,
                            recv(policy_changes) -> v => if v.is_ok() {
                                subs.sync(&control, &core.policy().policy);
                            },
                            default(poll) => {}
                        }
                        let now = (core.helper_pid(), core.helper_token());
                        if now != helper {
                            if let Some(old) = helper.0 {
                                core.unmute_pid(old);
                            }
                            if let Some(pid) = now.0 {
                                core.mute_pid(pid);
                            }
                            match now.1 {
                                Some(token) => {
                                    if let Err(e) = control.mute_process(&token) {
                                        tracing::warn!(error = %e, pid = token.pid(), "muting the helper by audit token failed");
                                    }
                                }
                                None if now.0.is_some() => tracing::warn!(
                                    pid = now.0,
                                    "no kernel audit token for the helper's connection; muted by path only"
                                ),
                                None => {}
                            }
                            helper = now;
                        }
                    }
                })
                .map_err(SessionError::Spawn)?
        };
        Ok(Self {
            process,
            files,
            recorder,
            core,
            stop_tx: Some(stop_tx),
            maint: Some(maint),
        })
    }

    pub fn core(&self) -> &Arc<EsCore<C::Api>> {
        &self.core
    }

    /// Shutdown: no new events, every pending one answered with its fallback, then the
    /// clients go. Idempotent.
    pub fn stop(&mut self) -> Result<(), ApiError> {
        let Some(stop_tx) = self.stop_tx.take() else {
            return Ok(());
        };
        for api in std::iter::once(&self.process)
            .chain(self.files.as_ref())
            .chain(self.recorder.as_ref())
        {
            if let Err(e) = api.unsubscribe_all() {
                tracing::warn!(error = %e, "unsubscribing at shutdown failed");
            }
        }
        drop(stop_tx);
        if let Some(m) = self.maint.take() {
            let _ = m.join();
        }
        self.core.shutdown();
        let mut first_err = None;
        for api in std::iter::once(&self.process)
            .chain(self.files.as_ref())
            .chain(self.recorder.as_ref())
        {
            if let Err(e) = api.delete() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl<C: EsConnect> Drop for Session<C> {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
