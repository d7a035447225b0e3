//! The control server: one thread serving `gatehouse` CLI requests on a root-only Unix socket
//! (mode 0600, peer uid 0 or our own, checked from the kernel's peer credentials), and the
//! operations behind them (policy load, mutes, stats). Everything here runs off the delivery
//! thread, so it may make system calls and call [`KernelControl`](crate::backend::KernelControl).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use model::MuteSpec;
use protocol::{
    CONTROL_MAX_FRAME, ControlRequest, ControlResponse, HelperResponse, Role, StatsReport,
    StatusReport,
};

use super::helper_client::{HelperClient, WorkItem};
use super::metrics::Metrics;
use super::{CoreError, Shared};
use crate::backend::{BackendError, Responder};

/// A CLI that connects and then says nothing is dropped after this long.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);

/// Bind the control socket, replacing a stale one, with mode 0600.
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
    // A socket file left by a previous run refuses bind; a live server would answer a connect.
    if UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

/// Parse and swap in a new policy. A bad file changes nothing.
pub(crate) fn load_policy(
    shared: &Shared,
    origin: &str,
    text: &str,
) -> Result<u64, policy::PolicyError> {
    let policy = policy::Policy::parse(origin, text)?;
    let before = shared.mutes.load().all();
    let version = shared.store.replace(policy);
    shared.cache.clear();
    shared.refresh_mutes();
    push_mutes(shared, &before, &shared.mutes.load().all());
    super::kernel_retry::clear_kernel_cache(shared);
    shared.notify_policy(version);
    Ok(version)
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
    for m in before.iter().filter(|m| !after.contains(m)) {
        note(shared.kernel.unmute_path(m));
    }
    for m in after.iter().filter(|m| !before.contains(m)) {
        note(shared.kernel.mute_path(m));
    }
}

pub(crate) fn stats_report<R: Responder>(
    shared: &Shared,
    _helper: &HelperClient<R>,
    queue: &Sender<WorkItem<R>>,
) -> StatsReport {
    let mut counters = shared.metrics.counters();
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

/// The control thread.
pub(crate) struct Server<R: Responder> {
    pub shared: Arc<Shared>,
    pub helper: Arc<HelperClient<R>>,
    pub queue: Sender<WorkItem<R>>,
}

impl<R: Responder> Server<R> {
    pub fn run(self, listener: UnixListener, stop: Receiver<()>) {
        push_mutes(&self.shared, &[], &self.shared.mutes.load().all());
        let path = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_owned));
        loop {
            match listener.accept() {
                Ok((stream, _)) => self.serve(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
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
            if self.shared.shutting_down.load(Ordering::Acquire) {
                break;
            }
        }
        if let Some(p) = path {
            let _ = std::fs::remove_file(p);
        }
    }

    /// One CLI connection: authenticate, handshake, then request/response until it closes.
    fn serve(&self, mut stream: UnixStream) {
        let ok = stream.set_nonblocking(false).is_ok()
            && stream.set_read_timeout(Some(CLIENT_TIMEOUT)).is_ok()
            && stream.set_write_timeout(Some(CLIENT_TIMEOUT)).is_ok();
        if !ok {
            return;
        }
        let me = nix_uid();
        match protocol::unix::peer_credentials(&stream) {
            Ok(c) if c.uid == 0 || c.uid == me => {}
            Ok(c) => {
                tracing::warn!(
                    uid = c.uid,
                    pid = c.pid,
                    "refused control connection from a non-root peer"
                );
                return;
            }
            Err(_) => return,
        }
        let agent = format!("gatehouse-extension/{}", env!("CARGO_PKG_VERSION"));
        if protocol::handshake::server(&mut stream, &[Role::Cli], &agent).is_err() {
            return;
        }
        while let Ok(req) =
            protocol::frame::read_frame::<_, ControlRequest>(&mut stream, CONTROL_MAX_FRAME)
        {
            let resp = self.handle(req);
            if protocol::frame::write_frame(&mut stream, &resp, CONTROL_MAX_FRAME).is_err() {
                break;
            }
        }
    }

    pub fn handle(&self, req: ControlRequest) -> ControlResponse {
        let s = &*self.shared;
        match req {
            ControlRequest::Status => ControlResponse::Status(status_report(s, &self.helper)),
            ControlRequest::Stats => {
                ControlResponse::Stats(stats_report(s, &self.helper, &self.queue))
            }
            ControlRequest::PolicyShow => {
                let snap = s.store.load();
                ControlResponse::Policy {
                    origin: snap.policy.origin().to_owned(),
                    version: snap.version,
                    text: snap.policy.source().to_owned(),
                }
            }
            ControlRequest::PolicyLoad { origin, text } => match load_policy(s, &origin, &text) {
                Ok(version) => ControlResponse::PolicyLoaded { version },
                Err(e) => ControlResponse::Error {
                    message: format!("policy not loaded, the running policy is unchanged: {e}"),
                },
            },
            ControlRequest::MuteAdd(spec) => {
                let before = s.mutes.load().all();
                {
                    let mut r = s.runtime_mutes.lock().unwrap_or_else(|e| e.into_inner());
                    if !r.contains(&spec) {
                        r.push(spec);
                    }
                }
                s.refresh_mutes();
                push_mutes(s, &before, &s.mutes.load().all());
                ControlResponse::Ok
            }
            ControlRequest::MuteRemove(spec) => {
                let before = s.mutes.load().all();
                let removed = {
                    let mut r = s.runtime_mutes.lock().unwrap_or_else(|e| e.into_inner());
                    let n = r.len();
                    r.retain(|m| *m != spec);
                    n != r.len()
                };
                if !removed {
                    let in_policy = s.store.load().policy.mutes().contains(&spec);
                    return ControlResponse::Error {
                        message: if in_policy {
                            format!(
                                "{} is muted by the policy file; edit the policy and `gatehouse policy load` it",
                                spec.path
                            )
                        } else {
                            format!("{} is not muted (see `gatehouse mute list`)", spec.path)
                        },
                    };
                }
                s.refresh_mutes();
                push_mutes(s, &before, &s.mutes.load().all());
                ControlResponse::Ok
            }
            ControlRequest::MuteList => ControlResponse::Mutes(s.mutes.load().all()),
            ControlRequest::EventsTail { max } => {
                ControlResponse::Events(s.recent.tail(max.min(10_000) as usize))
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
fn nix_uid() -> u32 {
    UnixStream::pair()
        .ok()
        .and_then(|(a, _b)| protocol::unix::peer_credentials(&a).ok())
        .map_or(0, |c| c.uid)
}
