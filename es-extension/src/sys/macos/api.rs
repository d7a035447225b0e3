//! The seam between the Endpoint Security backend's logic and libEndpointSecurity: the
//! [`EsApi`] trait (what the logic may ask of one ES client) and the plain-data types it speaks
//! in. `ffi::FfiClient` implements it on macOS; the simulator (`sim`) implements it everywhere,
//! so every decision above this line is tested on Linux.
#![forbid(unsafe_code)]

use model::EventKind;

use super::convert::{NewClientError, Timebase};

/// A failed ES client call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    NewClient(#[from] NewClientError),
    #[error("{call} failed (ES_RETURN_ERROR){hint}")]
    Call {
        call: &'static str,
        hint: &'static str,
    },
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("the ES client was already deleted")]
    Deleted,
}

/// The kernel's `audit_token_t` (shared with the model: events carry it to the helper).
pub use model::AuditToken;

/// `es_mute_inversion_type_t` (macOS 13).
pub mod inversion {
    pub const PROCESS: u32 = 0;
    pub const PATH: u32 = 1;
    pub const TARGET_PATH: u32 = 2;
}

/// The NOTIFY events the recorder client takes (transitive allowlisting: Santa's compiler
/// controller reads the same three).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyKind {
    /// `ES_EVENT_TYPE_NOTIFY_CLOSE`.
    Close,
    /// `ES_EVENT_TYPE_NOTIFY_RENAME`.
    Rename,
    /// `ES_EVENT_TYPE_NOTIFY_EXIT`.
    Exit,
}

impl NotifyKind {
    pub const ALL: [NotifyKind; 3] = [NotifyKind::Close, NotifyKind::Rename, NotifyKind::Exit];
}

/// What the backend logic may ask of one ES client. Every call is a short, thread-safe C call
/// on macOS; none may be made while holding a lock another thread needs on the delivery queue.
///
/// The client's delivery queue calls the handler it was created with
/// (`handler::Handler::on_message`, `on_notify` for NOTIFY events), serially, one message at a
/// time.
pub trait EsApi: std::fmt::Debug + Send + Sync + 'static {
    /// A retained message, answerable from any thread until it is dropped.
    type Msg: std::fmt::Debug + Send + 'static;

    /// `es_respond_auth_result`; the raw `es_respond_result_t`.
    fn respond_auth(&self, msg: &Self::Msg, result: u32, cache: bool) -> Result<u32, ApiError>;
    /// `es_respond_flags_result` (AUTH_OPEN only); the raw `es_respond_result_t`.
    fn respond_flags(&self, msg: &Self::Msg, flags: u32, cache: bool) -> Result<u32, ApiError>;

    fn subscribe(&self, kinds: &[EventKind]) -> Result<(), ApiError>;
    fn unsubscribe(&self, kinds: &[EventKind]) -> Result<(), ApiError>;
    fn unsubscribe_all(&self) -> Result<(), ApiError>;
    /// `es_subscribe` / `es_unsubscribe` for NOTIFY events (no answer is owed for them).
    fn subscribe_notify(&self, kinds: &[NotifyKind]) -> Result<(), ApiError>;
    fn unsubscribe_notify(&self, kinds: &[NotifyKind]) -> Result<(), ApiError>;

    /// `es_mute_process`: every event of this process incarnation.
    fn mute_process(&self, token: &AuditToken) -> Result<(), ApiError>;
    /// `es_mute_path` / `es_unmute_path` with an `es_mute_path_type_t` number.
    fn mute_path(&self, path: &str, kind: u32, mute: bool) -> Result<(), ApiError>;
    /// `es_unmute_all_target_paths`.
    fn unmute_all_target_paths(&self) -> Result<(), ApiError>;
    /// `es_invert_muting` for an [`inversion`] type: flips that type's muting between "mute
    /// these" and "deliver only these". ES refuses it while the client has AUTH subscriptions.
    fn invert_muting(&self, kind: u32) -> Result<(), ApiError>;
    /// `es_clear_cache`; the raw `es_clear_cache_result_t`.
    fn clear_cache(&self) -> Result<u32, ApiError>;

    /// Mach absolute time now, and the timebase (`None` if the kernel could not say).
    fn now_ticks(&self) -> u64;
    fn timebase(&self) -> Option<Timebase>;

    /// `es_delete_client`; afterwards every call fails with [`ApiError::Deleted`].
    fn delete(&self) -> Result<(), ApiError>;
}
