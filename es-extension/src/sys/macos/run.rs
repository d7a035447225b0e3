//! Start-up, the main thread's CFRunLoop, signals and clean shutdown of the macOS extension.
//!
//! Order (safe with `NSEndpointSecurityEarlyBoot`, which holds mounts and third-party execs
//! until our first subscription):
//! 1. `set_runtime_version` from the running OS (refuse below macOS 13);
//! 2. start the core with the embedded policy and the helper's XPC transport (threads only: no
//!    file; the transport greets the helper on the core's helper thread, lazily, with backoff);
//! 3. create the ES client, mute ourselves by audit token and the helper by executable path;
//! 4. subscribe, with the embedded policy's kinds: early boot is released here;
//! 5. then load the policy file and resync subscriptions. A missing helper degrades to
//!    fallbacks and never delays start-up; once it answers, the maintenance thread mutes its pid
//!    by audit token, and it resyncs subscriptions on every policy change the core announces;
//! 6. run the CFRunLoop on the main thread until SIGTERM/SIGINT (dispatch signal sources on the
//!    main queue), then unsubscribe, let the core answer every pending event, delete the client.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use block2::RcBlock;
use dispatch2::{DispatchObject, DispatchQueue, DispatchRetained, DispatchSource};
use endpoint_sec::AuditToken;
use model::{EventKind, MuteScope, MuteSpec};
use objc2_core_foundation::CFRunLoop;

use super::client::{ClientError, EsClient, Sink};
use super::control::EsControl;
use super::helper_xpc::{HELPER_SERVICE, XpcTransport};
use super::responder::EsResponder;
use crate::backend::KernelControl;
use crate::core::{Core, CoreConfig, CoreError, HelperEndpoint, HelperTransport};
use crate::sys::es_convert;

/// Where the packaged binaries and files live (docs/DESIGN.md 5).
pub const SUPPORT_DIR: &str = "/Library/Application Support/Gatehouse";

/// What `gatehouse-extension` needs on macOS.
#[derive(Debug, Clone)]
pub struct MacOptions {
    /// The policy file, loaded after the first subscription; `None` keeps the embedded default.
    pub policy: Option<PathBuf>,
    pub events_log: Option<PathBuf>,
    /// Events-log rotation size and rotated files kept (`CoreConfig::events_log_*`).
    pub events_log_max_bytes: u64,
    pub events_log_keep: usize,
    pub control_socket: Option<PathBuf>,
    /// The helper's mach service (`dev.gatehouse.helper`).
    pub helper_service: String,
    /// A code-signing requirement the helper must satisfy; `None` trusts launchd's system
    /// bootstrap alone (development builds).
    pub helper_requirement: Option<String>,
    /// The helper's executable, muted by literal path before the first subscription.
    pub helper_executable: PathBuf,
}

impl Default for MacOptions {
    fn default() -> Self {
        Self {
            policy: Some(PathBuf::from(format!("{SUPPORT_DIR}/policy.toml"))),
            events_log: Some(PathBuf::from("/var/log/gatehouse/events.jsonl")),
            events_log_max_bytes: CoreConfig::endpoint_security().events_log_max_bytes,
            events_log_keep: CoreConfig::endpoint_security().events_log_keep,
            control_socket: Some(PathBuf::from(format!("{SUPPORT_DIR}/control.sock"))),
            helper_service: HELPER_SERVICE.to_owned(),
            helper_requirement: None,
            helper_executable: PathBuf::from(format!("{SUPPORT_DIR}/gatehouse-helper")),
        }
    }
}

/// Why the extension could not start (or stop cleanly).
#[derive(Debug, thiserror::Error)]
pub enum MacError {
    #[error("cannot read the macOS version (sysctl kern.osproductversion): {0}")]
    OsVersion(String),
    #[error("macOS {0}.{1} is too old: Gatehouse needs macOS 13 or later")]
    TooOld(u64, u64),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("Endpoint Security: {0}")]
    Client(#[from] ClientError),
    #[error(
        "cannot mute our own process: task audit token for pid {pid} unavailable (kern_return {code})"
    )]
    SelfToken { pid: u32, code: i32 },
    #[error("cannot start the maintenance thread: {0}")]
    Spawn(std::io::Error),
}

fn os_version() -> Result<(u64, u64, u64), MacError> {
    let mut buf = [0u8; 64];
    let mut len = buf.len();
    // SAFETY: the name is a NUL-terminated C string; `buf`/`len` describe a writable buffer of
    // `len` bytes; no new value is set (NULL, 0).
    let rc = unsafe {
        libc::sysctlbyname(
            c"kern.osproductversion".as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return Err(MacError::OsVersion(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    let text = String::from_utf8_lossy(&buf[..len.min(buf.len())]).into_owned();
    es_convert::parse_os_version(&text).ok_or(MacError::OsVersion(format!("unparseable {text:?}")))
}

/// Ignore `signal`'s default action and deliver it to `on_signal` on the main queue (which the
/// main thread's CFRunLoop services). The returned source must be kept alive.
fn signal_source(signal: i32, on_signal: &RcBlock<dyn Fn()>) -> DispatchRetained<DispatchSource> {
    // SAFETY: setting SIG_IGN for SIGTERM/SIGINT is always valid; the dispatch source still
    // sees the signal (kqueue EVFILT_SIGNAL observes ignored signals).
    unsafe { libc::signal(signal, libc::SIG_IGN) };
    // SAFETY: the signal source type is a libdispatch static; handle is a signal number, mask 0,
    // and the main queue lives forever.
    let source = unsafe {
        DispatchSource::new(
            (&raw const dispatch2::_dispatch_source_type_signal).cast_mut(),
            signal as usize,
            0,
            Some(DispatchQueue::main()),
        )
    };
    // SAFETY: `source` is live; libdispatch copies the block (an RcBlock, so the copy is a
    // retain).
    unsafe { source.set_event_handler_with_block(RcBlock::as_ptr(on_signal)) };
    source.resume();
    source
}

/// Mute our own process by audit token (invariant 4: our own file access never enters the slow
/// path, nor waits on ourselves).
fn mute_self(client: &EsClient) -> Result<(), MacError> {
    let pid = std::process::id();
    let token =
        AuditToken::from_pid(pid as i32).map_err(|code| MacError::SelfToken { pid, code })?;
    client.mute_process(token.raw_token())?;
    Ok(())
}

/// Mute the helper by audit token and tell the core its pid, once it has said who it is.
fn mute_helper_pid(client: &EsClient, core: &Core<EsResponder>, pid: u32) {
    core.mute_pid(pid);
    match AuditToken::from_pid(pid as i32) {
        Ok(token) => {
            if let Err(e) = client.mute_process(token.raw_token()) {
                tracing::warn!(error = %e, pid, "muting the helper by audit token failed");
            }
        }
        Err(code) => tracing::warn!(code, pid, "no audit token for the helper"),
    }
}

fn sync_subscriptions(client: &EsClient, current: &mut Vec<EventKind>, policy: &policy::Policy) {
    let wanted = es_convert::subscription_kinds(policy);
    let (add, remove) = es_convert::subscription_changes(current, &wanted);
    // Subscribe first, unsubscribe after, so no kind is briefly unguarded when swapping.
    match client.subscribe(&add) {
        Ok(()) => current.extend(add),
        Err(e) => tracing::error!(error = %e, "subscribing to new event kinds failed"),
    }
    match client.unsubscribe(&remove) {
        Ok(()) => current.retain(|k| !remove.contains(k)),
        Err(e) => tracing::warn!(error = %e, "unsubscribing from unused event kinds failed"),
    }
}

/// Run the extension until SIGTERM or SIGINT. Must be called on the main thread.
pub fn run(opts: MacOptions) -> Result<(), MacError> {
    let (major, minor, patch) = os_version()?;
    if major < 13 {
        return Err(MacError::TooOld(major, minor));
    }
    endpoint_sec::version::set_runtime_version(major, minor, patch);

    let control = Arc::new(EsControl::new(true));
    let helper = match XpcTransport::new(&opts.helper_service, opts.helper_requirement.clone()) {
        Ok(t) => HelperEndpoint::Custom(t as Arc<dyn HelperTransport>),
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the helper XPC connection; analyses fall back");
            HelperEndpoint::None
        }
    };
    let config = CoreConfig {
        events_log: opts.events_log.clone(),
        events_log_max_bytes: opts.events_log_max_bytes,
        events_log_keep: opts.events_log_keep,
        control_socket: opts.control_socket.clone(),
        ..CoreConfig::endpoint_security()
    }
    .with_helper(helper);
    let kernel: Arc<dyn KernelControl> = control.clone();
    let core = Arc::new(Core::<EsResponder>::start(
        config,
        policy::Policy::embedded_default(),
        kernel,
    )?);
    // Before anything can load a policy, so no change is missed.
    let policy_changes = core.policy_changes();

    let sink_core = Arc::clone(&core);
    let sink: Sink = Arc::new(move |d| sink_core.deliver(d));
    let client = EsClient::new(sink, control.counters_handle())?;
    control.attach(Arc::clone(&client));
    mute_self(&client)?;
    let helper_path = opts.helper_executable.to_string_lossy().into_owned();
    if let Err(e) = control.mute_path(&MuteSpec {
        scope: MuteScope::Process,
        path: helper_path.clone(),
        prefix: false,
    }) {
        tracing::warn!(error = %e, path = %helper_path, "muting the helper's executable failed");
    }

    // First subscription, with the embedded policy: releases early boot.
    let mut subscribed = Vec::new();
    sync_subscriptions(&client, &mut subscribed, &core.policy().policy);
    if subscribed.is_empty() {
        return Err(MacError::Client(ClientError::Call {
            call: "es_subscribe",
            hint: " (no event kind could be subscribed)",
        }));
    }

    if let Some(path) = &opts.policy {
        match std::fs::read_to_string(path) {
            Ok(text) => match core.load_policy(&path.to_string_lossy(), &text) {
                Ok(v) => tracing::info!(version = v, path = %path.display(), "policy loaded"),
                Err(e) => {
                    tracing::error!(error = %e, "policy file rejected; keeping the embedded default")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "no policy file; using the embedded default");
            }
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "cannot read the policy file; using the embedded default")
            }
        }
        sync_subscriptions(&client, &mut subscribed, &core.policy().policy);
    }

    // Maintenance, off the delivery thread: subscription resync after policy changes, and
    // muting the helper by audit token once the core's transport knows its pid.
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let maint = {
        let (client, core) = (Arc::clone(&client), Arc::clone(&core));
        std::thread::Builder::new()
            .name("gh-es-maint".to_owned())
            .spawn(move || {
                let mut helper_pid: Option<u32> = None;
                loop {
                    crossbeam_channel::select! {
                        // A stop message or a dropped sender ends the loop.
                        recv(stop_rx) -> _ => break,
                        recv(policy_changes) -> v => if v.is_ok() {
                            sync_subscriptions(&client, &mut subscribed, &core.policy().policy);
                        },
                        default(Duration::from_secs(1)) => {}
                    }
                    let now = core.helper_pid();
                    if now != helper_pid {
                        if let Some(old) = helper_pid {
                            core.unmute_pid(old);
                        }
                        if let Some(pid) = now {
                            mute_helper_pid(&client, &core, pid);
                        }
                        helper_pid = now;
                    }
                }
            })
            .map_err(MacError::Spawn)?
    };

    let stop_block: RcBlock<dyn Fn()> = RcBlock::new(|| {
        if let Some(rl) = CFRunLoop::main() {
            rl.stop();
        }
    });
    let _term = signal_source(libc::SIGTERM, &stop_block);
    let _int = signal_source(libc::SIGINT, &stop_block);
    tracing::info!(kinds = ?core.policy().policy.mode(), "gatehouse-extension running");
    CFRunLoop::run();

    // Shutdown: no new events, every pending one answered with its fallback, then the client
    // goes (on this, the creating, thread).
    tracing::info!("stopping");
    if let Err(e) = client.unsubscribe_all() {
        tracing::warn!(error = %e, "unsubscribing at shutdown failed");
    }
    drop(stop_tx);
    let _ = maint.join();
    core.shutdown();
    client.delete()?;
    Ok(())
}
