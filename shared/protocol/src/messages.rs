//! The typed messages of both channels: extension <-> helper, and CLI <-> extension (control).
//!
//! Every request travels in a [`Request`] envelope with an id (answers may come back out of
//! order) and the time budget left before its event's deadline; the receiver drops work whose
//! budget has run out rather than finishing it.

use serde::{Deserialize, Serialize};

pub use model::{AnalysisRequest, Facts, MountFlags, MountInfo, MuteScope, MuteSpec, Needs};

/// Who is connecting; the server refuses roles that do not belong on its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Extension,
    Cli,
    Helper,
}

/// First frame from the connecting side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 4],
    pub version: u16,
    pub role: Role,
    /// The sender's program name and version, for logs.
    pub agent: String,
}

/// The server's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Accepted { version: u16, agent: String },
    Rejected { reason: String, supported: u16 },
}

/// A request envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request<T> {
    pub id: u64,
    /// Microseconds left before the caller stops waiting. Relative, because the two processes
    /// need not share a clock epoch; the receiver turns it into its own deadline on arrival.
    pub budget_us: u64,
    pub body: T,
}

/// A response envelope; `id` is the request's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response<T> {
    pub id: u64,
    pub body: T,
}

/// Extension -> helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelperRequest {
    Ping,
    /// Supply `request.needs` about `request.file` / `request.mount`. When `fd_attached`, the
    /// file's descriptor rides along (SCM_RIGHTS) and the helper must read through it, never
    /// re-open the path.
    Analyze {
        request: AnalysisRequest,
        fd_attached: bool,
    },
    Stats,
    /// Mount `mount`'s volume again with `forced` added to its own flags, after the extension
    /// denied a mount or remount under a `remount` rule (as Santa's device manager does). The
    /// helper starts the mount and answers at once; it never waits for the mount to finish,
    /// since finishing raises a mount event that the extension may need the helper to decide.
    Remount {
        mount: MountInfo,
        forced: MountFlags,
    },
    /// Start-up (Santa's `OnStartUSBOptions`): unmount a volume that was mounted before the
    /// extension ran and that the mount rules deny (`force`: even if busy), then, with
    /// `remount`, mount it again with those flags added to its own. Started and answered at
    /// once, like [`HelperRequest::Remount`].
    Unmount {
        mount: MountInfo,
        force: bool,
        remount: Option<MountFlags>,
    },
}

/// Why the helper could not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelperErrorKind {
    /// The budget ran out; the work was dropped.
    DeadlineExceeded,
    /// This platform has no such analysis (e.g. code signing on Linux).
    Unsupported,
    /// The request was malformed or inconsistent (e.g. `fd_attached` with no fd).
    BadRequest,
    /// The worker pool and its queue are full.
    Busy,
    /// Reading the file or system data failed.
    Io,
    /// An analyzer panicked (caught) or failed unexpectedly.
    Internal,
}

/// Helper -> extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelperResponse {
    Pong {
        agent: String,
        pid: u32,
        uptime_ms: u64,
    },
    /// The facts it could establish. A fact it could not establish is `None` and explained in
    /// `errors`.
    Analysis {
        facts: Facts,
        errors: Vec<(HelperErrorKind, String)>,
    },
    Stats {
        counters: Vec<(String, u64)>,
    },
    Error {
        kind: HelperErrorKind,
        message: String,
    },
    /// The remount was started with these mount arguments (`mount -o` words).
    RemountStarted {
        arguments: Vec<String>,
    },
    /// The unmount was started; once it succeeds the volume is mounted again with these
    /// arguments, if any.
    UnmountStarted {
        then_mount_with: Option<Vec<String>>,
    },
}

/// Largest policy text that travels inline, in a [`ControlRequest::PolicyLoad`] or a
/// [`ControlResponse::Policy`]: the control frame less 64 KiB for the origin (a path) and the
/// envelope. A larger policy is loaded with [`ControlRequest::PolicyLoadPath`].
pub const POLICY_INLINE_MAX: usize = crate::CONTROL_MAX_FRAME as usize - 64 * 1024;

/// CLI -> extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    Status,
    Stats,
    PolicyShow,
    /// Replace the policy with `text` (TOML). `origin` names the file for error messages.
    PolicyLoad {
        origin: String,
        text: String,
    },
    MuteAdd(MuteSpec),
    MuteRemove(MuteSpec),
    MuteList,
    /// The last `max` lines of the events log (JSON objects), oldest first.
    EventsTail {
        max: u32,
    },
    HelperPing,
    /// Replace the policy with the file at `path` (absolute), read by the extension's control
    /// thread under the same rules as the CLI's inputs (regular file, size limit). For a policy
    /// too large to travel inline in one control frame. Appended last: variant indices are the
    /// wire format.
    PolicyLoadPath {
        path: String,
    },
    /// Replace the local rules tier (`gatehouse rule add|remove`) with the file at `path`
    /// (absolute), read like `PolicyLoadPath`; the extension composes it below the running
    /// policy file's rules. Answered with `PolicyLoaded`. Appended last.
    LocalRulesLoad {
        path: String,
    },
    /// Up to `max` events-log lines after sequence number `after` (0: from the oldest held),
    /// for `events tail --follow`, which never skips silently. Appended last.
    EventsSince {
        after: u64,
        max: u32,
    },
    /// `gatehouse status`'s details beyond [`StatusReport`]: content hashes, rule counts,
    /// scopes, mutes, the helper's breaker. Answered with [`ControlResponse::StatusDetail`].
    /// Appended last.
    StatusDetail,
    /// `gatehouse rule transitive list`: the transitive allows in force, oldest first.
    /// Answered with [`ControlResponse::TransitiveList`]. Appended last.
    TransitiveList,
    /// `gatehouse rule transitive clear`: remove every transitive allow (and from the file the
    /// extension keeps them in). Answered with [`ControlResponse::TransitiveCleared`].
    /// Appended last.
    TransitiveClear,
}

/// One transitive allow: a file a compiler process wrote, allowed by its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitiveAllow {
    /// Lower-case hex.
    pub sha256: String,
    /// Where it was written (informational: the hash is what is allowed).
    pub path: String,
    /// The compiler rule whose process wrote it.
    pub compiler_rule: String,
    /// Unix time (ms) it was recorded.
    pub added_ms: u64,
}

/// Summary of one latency histogram, in microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub name: String,
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// `gatehouse status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub agent: String,
    pub pid: u32,
    pub backend: String,
    pub uptime_ms: u64,
    pub mode: String,
    pub policy_version: u64,
    pub policy_origin: String,
    pub helper_connected: bool,
}

/// How many rules of one type one tier holds (`gatehouse status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCount {
    /// `static` (the policy file) or `local` (`gatehouse rule add`).
    pub tier: String,
    /// `exec sha256`, `exec signing_id`, `exec_path prefix`, `watch`, `mount`, ...
    pub kind: String,
    pub count: u64,
}

/// `gatehouse status`'s details ([`ControlRequest::StatusDetail`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDetail {
    pub status: StatusReport,
    /// SHA-256 (hex) of the running policy file's text: the same file gives the same hash on
    /// every machine and across restarts, unlike `policy_version`, which counts loads.
    pub policy_sha256: String,
    /// The local rules file composed in, and the SHA-256 of its text; `None` without one.
    pub local_rules_origin: Option<String>,
    pub local_rules_sha256: Option<String>,
    /// Rules by tier and type, in rule order of first appearance.
    pub rules: Vec<RuleCount>,
    /// What the kernel backend authorizes: the filesystems marked (fanotify `--scope`); empty
    /// for Endpoint Security, which sees the whole machine.
    pub scopes: Vec<String>,
    /// Paths protected by watch items (literal paths, prefixes and globs).
    pub watched_paths: u64,
    pub mutes_policy: u64,
    pub mutes_runtime: u64,
    /// The runtime mutes file, if the extension keeps one.
    pub mutes_file: Option<String>,
    /// The helper circuit breaker is open: analyses get the fallback at once.
    pub helper_breaker_open: bool,
    /// Unix time (ms) at which the running policy was installed.
    pub policy_loaded_unix_ms: u64,
}

/// `gatehouse stats`: named counters and latency percentiles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    pub counters: Vec<(String, u64)>,
    pub latencies: Vec<LatencySummary>,
    pub queue_depth: u64,
    pub queue_capacity: u64,
}

/// Extension -> CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    Status(StatusReport),
    Stats(StatsReport),
    Policy {
        origin: String,
        version: u64,
        text: String,
    },
    PolicyLoaded {
        version: u64,
    },
    Mutes(Vec<MuteSpec>),
    Events(Vec<String>),
    HelperPong {
        connected: bool,
        round_trip_us: Option<u64>,
        detail: String,
    },
    Ok,
    Error {
        message: String,
    },
    /// Answer to [`ControlRequest::EventsSince`]: the lines, how many lines after the cursor
    /// were no longer in memory (they are in the log file), and the new cursor.
    EventsSince {
        lines: Vec<String>,
        skipped: u64,
        last: u64,
    },
    /// Answer to [`ControlRequest::StatusDetail`]. Appended last.
    StatusDetail(StatusDetail),
    /// Answer to [`ControlRequest::TransitiveList`]. Appended last.
    /// Boxed: a decoded sequence preallocates up to one element per unread byte, so every
    /// sequence element must be at most 64 bytes (`codec::max_decode_allocation`); the box is
    /// invisible on the wire.
    TransitiveList(
        #[expect(
            clippy::vec_box,
            reason = "the box keeps a decoded sequence's preallocation within the codec's bound"
        )]
        Vec<Box<TransitiveAllow>>,
    ),
    /// Answer to [`ControlRequest::TransitiveClear`]: how many were removed. Appended last.
    TransitiveCleared {
        removed: u64,
    },
}

/// One block, as the person blocked is told it (macOS: the host app's notification; Santa's
/// block notification). Extension -> notifier agent, inside a [`NoticeBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockNotice {
    /// Increasing per extension run (1, 2, ...): the agent's cursor.
    pub seq: u64,
    pub time_unix_ms: u64,
    /// The event kind (`exec`, `open`, ...).
    pub kind: String,
    /// What was blocked: the program for an exec, the file for a file access.
    pub target: String,
    /// The program that was stopped (for an exec, the one that tried to start `target`).
    pub process: String,
    pub pid: u32,
    pub uid: u32,
    /// The deciding rule's name, when a rule decided.
    pub rule: Option<String>,
    /// The rule's `message`, when it has one.
    pub message: Option<String>,
}

/// Notifier agent -> extension: "send me the blocks after `after`" (a long poll: the extension
/// answers when there is one, or with an empty batch before [`NOTICE_WAIT_MAX_MS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRequest {
    /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) of the agent.
    pub version: u16,
    /// The last `seq` the agent has seen; 0 at its start, or a cursor from an earlier run of
    /// the extension, means from now on (the backlog is not replayed).
    pub after: u64,
}

/// Extension -> notifier agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeBatch {
    /// Boxed for the codec's allocation bound, as in [`ControlResponse::TransitiveList`].
    #[expect(
        clippy::vec_box,
        reason = "the box keeps a decoded sequence's preallocation within the codec's bound"
    )]
    pub notices: Vec<Box<BlockNotice>>,
    /// Blocks after the cursor that had already left the extension's bounded window, or that
    /// did not fit this batch: counted, never silently dropped.
    pub missed: u64,
    /// The cursor to send next.
    pub next: u64,
}

/// The longest the extension holds a [`NoticeRequest`] before answering it empty; an agent
/// waits a little longer than this for its reply.
pub const NOTICE_WAIT_MAX_MS: u64 = 20_000;
/// Frames on the notice channel are at most this large.
pub const NOTICE_MAX_FRAME: u32 = 64 * 1024;
