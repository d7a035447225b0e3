//! The macOS extension's process: OS version check, the helper's XPC transport, the core, then
//! `Session` (start-up order, subscriptions, muting: see `session`), and the main thread's
//! CFRunLoop until SIGTERM/SIGINT (dispatch signal sources on the main queue), then
//! `Session::stop` on this, the creating, thread.

use std::path::PathBuf;
use std::sync::Arc;

use block2::RcBlock;
use dispatch2::{DispatchObject, DispatchQueue, DispatchRetained, DispatchSource};
use objc2_core_foundation::CFRunLoop;

use super::client::FfiClient;
use super::{read, token};
use crate::backend::KernelControl;
use crate::core::helper_xpc::{HELPER_SERVICE, XpcTransport};
use crate::core::{Core, CoreConfig, CoreError, HelperEndpoint, HelperTransport};
use crate::sys::macos::api::{ApiError, AuditToken};
use crate::sys::macos::control::EsControl;
use crate::sys::macos::convert;
use crate::sys::macos::handler::Handler;
use crate::sys::macos::responder::EsResponder;
use crate::sys::macos::session::{EsConnect, Session, SessionError, SessionOptions};

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
    /// The runtime mutes file (`CoreConfig::mutes_file`).
    pub mutes_file: Option<PathBuf>,
    /// Also send every events-log record to the unified log (`CoreConfig::system_log`).
    pub unified_log: bool,
    /// The transitive allows file (`CoreConfig::transitive_file`).
    pub transitive_file: Option<PathBuf>,
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
            mutes_file: Some(PathBuf::from(defaults::Os::Macos.mutes_file())),
            unified_log: true,
            transitive_file: Some(PathBuf::from(defaults::Os::Macos.transitive_file())),
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
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("Endpoint Security: {0}")]
    Client(#[from] ApiError),
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
    convert::parse_os_version(&text).ok_or(MacError::OsVersion(format!("unparseable {text:?}")))
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

/// The real clients and tokens.
struct FfiConnect;

impl EsConnect for FfiConnect {
    type Api = FfiClient;

    fn new_client(&self, handler: Arc<Handler<FfiClient>>) -> Result<Arc<FfiClient>, ApiError> {
        FfiClient::new(handler)
    }

    fn self_token(&self) -> Result<AuditToken, String> {
        let pid = std::process::id();
        token::for_pid(pid).map_err(|code| {
            format!("task audit token for pid {pid} unavailable (kern_return {code})")
        })
    }
}

/// The volumes mounted now (`getfsstat`, at most `MAX_STARTUP_MOUNTS`), for the start-up pass
/// over volumes mounted before we ran. The disposition is unknown (no ES message), so mount
/// rules ask the helper about removability and bus.
fn mounted_volumes() -> Vec<model::MountInfo> {
    use crate::core::startup_mounts::MAX_STARTUP_MOUNTS;
    // SAFETY: a NULL buffer with size 0 asks only for the number of mounted filesystems.
    let n = unsafe { libc::getfsstat(std::ptr::null_mut(), 0, libc::MNT_NOWAIT) };
    let Ok(n) = usize::try_from(n) else {
        return Vec::new();
    };
    let cap = n.min(MAX_STARTUP_MOUNTS);
    let mut buf: Vec<libc::statfs> = Vec::with_capacity(cap);
    let Ok(bytes) = libc::c_int::try_from(cap * std::mem::size_of::<libc::statfs>()) else {
        return Vec::new();
    };
    // SAFETY: `buf` has room for `cap` entries, which `bytes` states; the kernel writes at
    // most that many and returns how many it wrote.
    let got = unsafe { libc::getfsstat(buf.as_mut_ptr(), bytes, libc::MNT_NOWAIT) };
    let Ok(got) = usize::try_from(got) else {
        return Vec::new();
    };
    // SAFETY: the kernel initialised the first `got` (<= cap) entries.
    unsafe { buf.set_len(got.min(cap)) };
    buf.iter()
        .map(|s| {
            let m = read::statfs_mount(s);
            crate::sys::macos::convert::mount_info(
                &crate::sys::macos::convert::RawStatfs {
                    mntfromname: m.mntfromname.as_bytes(),
                    mntonname: m.mntonname.as_bytes(),
                    fstypename: m.fstypename.as_bytes(),
                    f_flags: m.f_flags,
                },
                crate::sys::macos::convert::MOUNT_DISPOSITION_MIN_VERSION,
                None,
            )
        })
        .collect()
}

/// Run the extension until SIGTERM or SIGINT. Must be called on the main thread.
pub fn run(opts: MacOptions) -> Result<(), MacError> {
    let (major, minor, patch) = os_version()?;
    if major < 13 {
        return Err(MacError::TooOld(major, minor));
    }
    endpoint_sec::version::set_runtime_version(major, minor, patch);

    let control = Arc::new(EsControl::<FfiClient>::new(true));
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
        mutes_file: opts.mutes_file.clone(),
        system_log: opts.unified_log.then(|| {
            Arc::new(super::unified_log::UnifiedLog) as Arc<dyn crate::core::eventlog::SystemLog>
        }),
        transitive_file: opts.transitive_file.clone(),
        // Compilers by audit token; their files by the path and stat in NOTIFY_CLOSE, re-opened
        // and checked off the delivery queue (`core::transitive::open_reported`).
        transitive_backend: Some(crate::core::transitive::TransitiveBackend::audit_tokens()),
        mounted_volumes: Some(crate::core::startup_mounts::MountSource(Arc::new(
            mounted_volumes,
        ))),
        ..CoreConfig::endpoint_security()
    }
    .with_helper(helper);
    let kernel: Arc<dyn KernelControl> = control.clone();
    let core = Arc::new(Core::<EsResponder<FfiClient>>::start(
        config,
        policy::Policy::embedded_default(),
        kernel,
    )?);
    // Block notices for the host app's notifier agents; none is no reason not to protect.
    let _notices = match super::notify::listen(core.notices()) {
        None => {
            tracing::info!(
                "a build without a team serves no block notices (the service name needs it)"
            );
            None
        }
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot listen for the host app's notifier; blocks are not shown to users");
            None
        }
    };
    let policy = opts.policy.as_ref().and_then(|path| {
        let origin = path.to_string_lossy().into_owned();
        match std::fs::read_to_string(path) {
            Ok(text) => Some((origin, Ok(text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "no policy file; using the embedded default");
                None
            }
            Err(e) => Some((origin, Err(e.to_string()))),
        }
    });
    let mut session = Session::start(
        Arc::new(FfiConnect),
        Arc::clone(&core),
        control,
        SessionOptions {
            helper_executable: opts.helper_executable.to_string_lossy().into_owned(),
            policy,
            helper_poll: None,
        },
    )?;

    let stop_block: RcBlock<dyn Fn()> = RcBlock::new(|| {
        if let Some(rl) = CFRunLoop::main() {
            rl.stop();
        }
    });
    let _term = signal_source(libc::SIGTERM, &stop_block);
    let _int = signal_source(libc::SIGINT, &stop_block);
    tracing::info!(mode = ?core.policy().policy.mode(), "gatehouse-extension running");
    CFRunLoop::run();

    tracing::info!("stopping");
    session.stop()?;
    Ok(())
}
