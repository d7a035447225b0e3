//! Commands that talk to the running extension over its control socket (root only): status,
//! stats, policy load/show, mutes, events tail and helper ping. Read commands take `--json`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use model::{MuteScope, MuteSpec};
use protocol::{
    CONTROL_MAX_FRAME, ControlRequest, ControlResponse, LatencySummary, POLICY_INLINE_MAX, Role,
    RuleCount, StatsReport, StatusDetail, StatusReport,
};

/// Default control socket: where this OS's extension binds it (shared/defaults).
pub const DEFAULT_CONTROL_SOCKET: &str = defaults::Os::HOST.paths().control_socket;

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
    /// The extension's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

/// A policy up to the control frame's inline limit (about 8 MiB) is sent as text; a larger one
/// (up to 16 MiB) is sent by path, automatically, and the extension reads the file itself.
#[derive(Debug, Args)]
pub struct PolicyLoadArgs {
    /// The policy (TOML; a regular file of at most 16 MiB). Sent as text when it fits one
    /// control frame (8 MiB less 64 KiB), else by path automatically (see --by-path).
    pub file: PathBuf,
    /// Send only the file's absolute path and let the extension read it (regular files only,
    /// at most 16 MiB), whatever its size. Chosen automatically for a policy too large to send
    /// inline.
    #[arg(long)]
    pub by_path: bool,
    /// The extension's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum MuteCommand {
    /// Stop deciding events for a path; kept in the extension's runtime mutes file, so it
    /// survives restarts (the policy's `[mute]` lists are separate).
    Add(MuteArgs),
    /// Undo `mute add` for the same path, scope and prefix (removed from the mutes file too).
    Rm(MuteArgs),
    /// The mutes in force: the policy's and the runtime ones.
    List(ReadArgs),
}

#[derive(Debug, Args)]
pub struct MuteArgs {
    /// The absolute path: an executable (process mute, the default) or a target file.
    pub path: String,
    /// Mute the event's target path instead of the acting process's executable.
    #[arg(long)]
    pub target: bool,
    /// Match as a prefix instead of literally.
    #[arg(long)]
    pub prefix: bool,
    /// The extension's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// The last recorded decisions (denies, fallbacks, would-denies, audit-only matches).
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Keep printing new records as they are logged; none is skipped silently (a line says
    /// how many fell out of the extension's memory, which the log file still has).
    #[arg(long)]
    pub follow: bool,
    /// The events log file, read when the extension is not running.
    #[arg(long, value_name = "PATH", default_value = defaults::Os::HOST.paths().events_log)]
    pub log_file: PathBuf,
    /// How many records to print.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub lines: u32,
    /// Print each record as the JSON object it was logged as.
    #[arg(long)]
    pub json: bool,
    /// The extension's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum HelperCommand {
    /// Ping the analysis helper: through the extension (is it connected, and the round trip),
    /// or with --direct on the helper's own socket, with no extension needed.
    Ping(HelperPingArgs),
}

#[derive(Debug, Args)]
pub struct HelperPingArgs {
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
    /// The extension's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Talk to the helper's socket directly (Linux), not through the extension: checks the
    /// helper when the extension is down.
    #[arg(long)]
    pub direct: bool,
    /// The helper's socket, for --direct.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_HELPER_SOCKET)]
    pub helper_socket: PathBuf,
}

/// Where this OS's helper listens (Linux; macOS uses XPC and has no socket).
pub const DEFAULT_HELPER_SOCKET: &str = match defaults::Os::HOST.paths().helper_socket {
    Some(p) => p,
    None => "/run/gatehouse/helper.sock",
};

/// `helper ping --direct`: a ping on the helper's own socket, as the CLI role (which may only
/// ping and read stats).
pub fn ping_helper_directly(socket: &Path) -> anyhow::Result<(String, u32, u64, Duration)> {
    use protocol::{HELPER_MAX_FRAME, HelperRequest, HelperResponse, Request, Response};
    let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            anyhow::anyhow!(
                "the helper is not running: nothing listens on {} ({e}); start it (systemctl \
                 start gatehouse-helper), or pass --helper-socket",
                socket.display()
            )
        }
        _ => anyhow::anyhow!("cannot connect to the helper at {}: {e}", socket.display()),
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let agent = format!("gatehouse/{}", env!("CARGO_PKG_VERSION"));
    protocol::handshake::client(&mut &stream, Role::Cli, &agent)
        .map_err(timed_out)
        .with_context(|| format!("handshake with the helper at {} failed", socket.display()))?;
    let sent = std::time::Instant::now();
    let req = Request {
        id: 1,
        budget_us: 5_000_000,
        body: HelperRequest::Ping,
    };
    protocol::unix::send_frame(&stream, &req, &[], HELPER_MAX_FRAME)
        .map_err(timed_out)
        .context("sending the ping to the helper failed")?;
    let (resp, _fds): (Response<HelperResponse>, _) =
        protocol::unix::recv_frame(&stream, HELPER_MAX_FRAME)
            .map_err(timed_out)
            .context("reading the helper's answer failed")?;
    match resp.body {
        HelperResponse::Pong {
            agent,
            pid,
            uptime_ms,
        } => Ok((agent, pid, uptime_ms, sent.elapsed())),
        other => bail!("unexpected answer to ping from the helper: {other:?}"),
    }
}

/// A connected, handshaken control session.
struct Session {
    stream: UnixStream,
}

impl Session {
    fn open(path: &Path) -> anyhow::Result<Session> {
        let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                anyhow::Error::new(NotRunning {
                    path: path.to_owned(),
                    why: e.to_string(),
                })
            }
            _ => anyhow::anyhow!(
                "cannot connect to the extension's control socket {}: {e}; the socket is \
                 root's: run as root",
                path.display()
            ),
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let agent = format!("gatehouse/{}", env!("CARGO_PKG_VERSION"));
        protocol::handshake::client(&mut stream, Role::Cli, &agent)
            .with_context(|| format!("handshake on {} failed", path.display()))?;
        Ok(Session { stream })
    }

    fn ask(&mut self, req: &ControlRequest) -> anyhow::Result<ControlResponse> {
        protocol::frame::write_frame(&mut self.stream, req, CONTROL_MAX_FRAME)
            .map_err(timed_out)
            .context("sending the request to the extension failed")?;
        let resp = protocol::frame::read_frame(&mut self.stream, CONTROL_MAX_FRAME)
            .map_err(timed_out)
            .context("reading the extension's answer failed")?;
        match resp {
            ControlResponse::Error { message } => bail!("the extension refused: {message}"),
            other => Ok(other),
        }
    }
}

/// The extension is not running: nothing listens on its control socket. The CLI exits with
/// [`EXIT_NOT_RUNNING`] for it, so scripts can tell "not running" from "refused".
#[derive(Debug)]
pub struct NotRunning {
    pub path: PathBuf,
    pub why: String,
}

impl std::fmt::Display for NotRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the extension is not running: nothing listens on {} ({}); start it (systemctl start \
             gatehouse-extension, or gatehouse run), or pass --control-socket",
            self.path.display(),
            self.why
        )
    }
}

impl std::error::Error for NotRunning {}

/// Exit code when the extension is not running (documented in `gatehouse --help`).
pub const EXIT_NOT_RUNNING: u8 = 3;

/// A socket timeout reads as "Resource temporarily unavailable"; say what it means.
fn timed_out(e: protocol::ProtocolError) -> anyhow::Error {
    match &e {
        protocol::ProtocolError::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            anyhow::anyhow!("the extension did not answer within 10 s")
        }
        _ => anyhow::Error::new(e),
    }
}

pub(crate) fn ask(path: &Path, req: &ControlRequest) -> anyhow::Result<ControlResponse> {
    Session::open(path)?.ask(req)
}

fn unexpected(what: &str, resp: &ControlResponse) -> anyhow::Error {
    anyhow::anyhow!(
        "unexpected answer to {what}: {resp:?}; are the CLI and extension the same version?"
    )
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(ExitCode::SUCCESS)
}

/// Human form of a duration in milliseconds: below a second in ms, else whole seconds and up
/// (`5m 3s`, `2h 1m 7s`).
fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms} ms");
    }
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

pub fn format_status(s: &StatusReport) -> String {
    format!(
        "agent:        {} (pid {}, backend {})\n\
         uptime:       {}\n\
         mode:         {}\n\
         policy:       version {} from {}\n\
         helper:       {}\n",
        s.agent,
        s.pid,
        s.backend,
        human_ms(s.uptime_ms),
        s.mode,
        s.policy_version,
        // A path the operator chose, possibly with control characters in it.
        escape_controls(&s.policy_origin),
        helper_line(s.helper_connected, None),
    )
}

/// The helper's state in one line, with its own answer to a ping when there was one.
fn helper_line(connected: bool, pong: Option<&HelperPong>) -> String {
    match (connected, pong) {
        (true, Some(p)) => format!(
            "connected: {} (pid {}, up {}), answered a ping in {} us",
            escape_controls(&p.agent),
            p.pid,
            human_ms(p.uptime_ms),
            p.round_trip_us
        ),
        (true, None) => "connected".to_owned(),
        (false, _) => "NOT connected (analysis requests get the policy's fallback)".to_owned(),
    }
}

/// The helper's answer to the extension's ping, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HelperPong {
    pub agent: String,
    pub pid: u32,
    pub uptime_ms: u64,
    pub round_trip_us: u64,
}

/// Rule counts as `3 exec sha256, 1 watch` for one tier.
fn rule_counts(d: &StatusDetail, tier: &str) -> Option<String> {
    let parts: Vec<String> = d
        .rules
        .iter()
        .filter(|r| r.tier == tier)
        .map(|r| format!("{} {}", r.count, r.kind))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// `gatehouse status`: everything the extension reports, its counters' view of the marks,
/// the breaker and the events log, and the helper's own answer.
pub fn format_status_detail(
    d: &StatusDetail,
    stats: Option<&StatsReport>,
    pong: Option<&HelperPong>,
) -> String {
    let s = &d.status;
    let loaded = std::time::UNIX_EPOCH + Duration::from_millis(d.policy_loaded_unix_ms);
    let mut out = format!(
        "agent:        {} (pid {}, backend {})\n\
         uptime:       {}\n\
         mode:         {}\n\
         policy:       {}\n\
         \x20             sha256 {}\n\
         \x20             version {} (loads since start), in force since {}\n",
        s.agent,
        s.pid,
        s.backend,
        human_ms(s.uptime_ms),
        s.mode,
        // A path the operator chose, possibly with control characters in it.
        escape_controls(&s.policy_origin),
        d.policy_sha256,
        s.policy_version,
        humantime::format_rfc3339_seconds(loaded),
    );
    out += &match (&d.local_rules_origin, &d.local_rules_sha256) {
        (Some(o), Some(h)) => format!(
            "local rules:  {}\n              sha256 {h}\n",
            escape_controls(o)
        ),
        _ => "local rules:  none\n".to_owned(),
    };
    out += &format!(
        "rules:        static: {}; local: {}\n",
        rule_counts(d, "static").unwrap_or_else(|| "none".to_owned()),
        rule_counts(d, "local").unwrap_or_else(|| "none".to_owned()),
    );
    let scope = if d.scopes.is_empty() {
        "the whole machine".to_owned()
    } else {
        d.scopes
            .iter()
            .map(|p| escape_controls(p))
            .collect::<Vec<_>>()
            .join(", ")
    };
    out += &format!("scope:        {scope}; {} watched paths\n", d.watched_paths);
    if let Some(st) = stats
        && let Some(fs) = find_counter(st, "backend.marks.filesystems")
    {
        let c = |n: &str| counter(st, n);
        out += &format!(
            "marks:        {fs} filesystems, {} files, {} directories{}\n",
            c("backend.marks.files"),
            c("backend.marks.directories"),
            match c("backend.marks.missing") {
                0 => String::new(),
                n => format!(" ({n} protected paths missing)"),
            }
        );
    }
    out += &format!(
        "mutes:        {} from the policy, {} runtime{}\n",
        d.mutes_policy,
        d.mutes_runtime,
        match &d.mutes_file {
            Some(f) => format!(" (kept in {})", escape_controls(f)),
            None => " (not kept across restarts)".to_owned(),
        }
    );
    out += &format!("helper:       {}\n", helper_line(s.helper_connected, pong));
    if let Some(st) = stats {
        if let Some(b) = breaker_state(st) {
            out += &format!("breaker:      {b}\n");
        }
        out += &format!("events log:   {}\n", events_log_state(st));
    }
    out
}

pub(crate) fn counter(s: &StatsReport, name: &str) -> u64 {
    s.counters
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, v)| *v)
}

/// The events log's health in one line, from the `log_*` counters: a full disk first, then
/// every kind of record loss (each counted by the extension, none silent).
pub fn events_log_state(s: &StatsReport) -> String {
    let c = |n: &str| counter(s, n);
    let mut out = if c("log_disk_full") > 0 {
        format!(
            "DISK FULL: records are not being written ({} so far, counted; a gap line follows when space returns)",
            c("log_write_failed")
        )
    } else {
        format!("ok, {} records written", c("log_written"))
    };
    let mut lost = Vec::new();
    if c("log_dropped") > 0 {
        lost.push(format!("{} dropped (queue full)", c("log_dropped")));
    }
    if c("log_disk_full") == 0 && c("log_write_failed") > 0 {
        lost.push(format!("{} not written", c("log_write_failed")));
    }
    if c("log_rotated_out_files") > 0 {
        lost.push(format!(
            "{} rotated out in {} old files",
            c("log_rotated_out_records"),
            c("log_rotated_out_files")
        ));
    }
    if !lost.is_empty() {
        out += &format!("; {}", lost.join(", "));
    }
    out
}

fn latency_line(l: &LatencySummary) -> String {
    format!(
        "  {:<18} {:>10} {:>9} {:>9} {:>9} {:>9}\n",
        l.name,
        l.count,
        format!("{}us", l.p50_us),
        format!("{}us", l.p90_us),
        format!("{}us", l.p99_us),
        format!("{}us", l.max_us),
    )
}

pub fn format_stats(s: &StatsReport) -> String {
    let c = |n: &str| counter(s, n);
    let hits = c("cache_hits");
    let lookups = hits + c("cache_misses");
    let hit_rate = if lookups == 0 {
        "n/a".to_owned()
    } else {
        format!("{:.1}%", hits as f64 * 100.0 / lookups as f64)
    };
    let mut out = String::new();
    out += &format!(
        "events:            {} (allowed {}, denied {})\n",
        c("events"),
        c("answers.allow"),
        c("answers.deny")
    );
    out += &format!(
        "decided:           {} fast path, {} by the helper, {} muted\n",
        c("fast_path_decided"),
        c("helper_decided"),
        c("muted")
    );
    out += &format!("verdict cache:     {hit_rate} hit rate ({hits} of {lookups} lookups)\n");
    out += &format!(
        "slow path queue:   {} / {} (full {} times)\n",
        s.queue_depth,
        s.queue_capacity,
        c("queue_full")
    );
    out += &format!(
        "deadline misses:   {}\nduplicate answers: {}\nevents log:        {}\n",
        c("deadline_misses"),
        c("duplicate_answers"),
        events_log_state(s)
    );
    out += &format!("fallbacks:         {}\n", c("fallbacks"));
    for (name, v) in &s.counters {
        if let Some(why) = name.strip_prefix("fallbacks.")
            && *v > 0
        {
            out += &format!("  {why:<18} {v}\n");
        }
    }
    out += "by kind:\n";
    for (name, v) in &s.counters {
        if let Some(kind) = name.strip_prefix("events.")
            && *v > 0
        {
            out += &format!(
                "  {kind:<18} {v} (allowed {}, denied {})\n",
                c(&format!("answers.{kind}.allow")),
                c(&format!("answers.{kind}.deny"))
            );
        }
    }
    if c("cache_clear_failures") > 0 {
        out += &format!(
            "kernel cache:      {} failed clears, {} retries, {} escalated to retries every 8 s\n",
            c("cache_clear_failures"),
            c("cache_clear_retries"),
            c("cache_clear_abandoned")
        );
    }
    let backend: Vec<_> = s
        .counters
        .iter()
        .filter_map(|(n, v)| n.strip_prefix("backend.").map(|n| (n, *v)))
        .collect();
    if !backend.is_empty() {
        out += "backend:\n";
        for (name, v) in backend {
            out += &format!("  {name:<22} {v}\n");
        }
    }
    out += &format!(
        "latency:\n  {:<18} {:>10} {:>9} {:>9} {:>9} {:>9}\n",
        "", "count", "p50", "p90", "p99", "max"
    );
    for l in &s.latencies {
        out += &latency_line(l);
    }
    out
}

/// `status --json`: the extension's [`StatusReport`] fields, in order, then the fields the CLI
/// adds from the counters and the details (appended, so existing consumers keep working; `null`
/// when the extension did not report them).
#[derive(Debug, serde::Serialize)]
pub struct StatusJson<'a> {
    #[serde(flatten)]
    pub status: &'a StatusReport,
    /// The helper circuit breaker is open (or probing): analysis requests get the policy's
    /// fallback at once instead of waiting for a helper that keeps timing out.
    pub helper_breaker_open: Option<bool>,
    /// How many times the breaker has opened since the extension started.
    pub helper_breaker_opens: Option<u64>,
    /// [`StatusDetail`]'s own fields.
    #[serde(flatten)]
    pub detail: Option<DetailJson<'a>>,
    /// The helper's answer to a ping through the extension.
    pub helper: Option<&'a HelperPong>,
}

/// [`StatusDetail`] without the report it carries (already flattened into [`StatusJson`]).
#[derive(Debug, serde::Serialize)]
pub struct DetailJson<'a> {
    pub policy_sha256: &'a str,
    pub local_rules_origin: Option<&'a str>,
    pub local_rules_sha256: Option<&'a str>,
    pub rules: &'a [RuleCount],
    pub scopes: &'a [String],
    pub watched_paths: u64,
    pub mutes_policy: u64,
    pub mutes_runtime: u64,
    pub mutes_file: Option<&'a str>,
    pub policy_loaded_unix_ms: u64,
    /// The backend's mark gauges (`backend.marks.*`), fanotify only.
    pub marks: Option<MarksJson>,
}

/// The fanotify marks in place, from the backend's gauges.
#[derive(Debug, serde::Serialize)]
pub struct MarksJson {
    pub filesystems: u64,
    pub files: u64,
    pub directories: u64,
    pub missing: u64,
}

fn find_counter(s: &StatsReport, name: &str) -> Option<u64> {
    s.counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

pub fn status_json<'a>(
    status: &'a StatusReport,
    stats: Option<&StatsReport>,
    detail: Option<&'a StatusDetail>,
    pong: Option<&'a HelperPong>,
) -> StatusJson<'a> {
    StatusJson {
        status,
        helper_breaker_open: stats
            .and_then(|s| find_counter(s, "helper_breaker_open"))
            .map(|v| v != 0),
        helper_breaker_opens: stats.and_then(|s| find_counter(s, "helper_breaker_opens")),
        detail: detail.map(|d| DetailJson {
            policy_sha256: &d.policy_sha256,
            local_rules_origin: d.local_rules_origin.as_deref(),
            local_rules_sha256: d.local_rules_sha256.as_deref(),
            rules: &d.rules,
            scopes: &d.scopes,
            watched_paths: d.watched_paths,
            mutes_policy: d.mutes_policy,
            mutes_runtime: d.mutes_runtime,
            mutes_file: d.mutes_file.as_deref(),
            policy_loaded_unix_ms: d.policy_loaded_unix_ms,
            marks: stats.and_then(|st| {
                Some(MarksJson {
                    filesystems: find_counter(st, "backend.marks.filesystems")?,
                    files: counter(st, "backend.marks.files"),
                    directories: counter(st, "backend.marks.directories"),
                    missing: counter(st, "backend.marks.missing"),
                })
            }),
        }),
        helper: pong,
    }
}

/// The breaker in one line, from the `helper_breaker_*` counters; `None` when not reported.
pub fn breaker_state(s: &StatsReport) -> Option<String> {
    let open = find_counter(s, "helper_breaker_open")?;
    let opens = find_counter(s, "helper_breaker_opens").unwrap_or(0);
    Some(if open != 0 {
        format!(
            "OPEN (the helper kept timing out: analysis requests get the policy's fallback at \
             once while it is probed; opened {opens} times)"
        )
    } else {
        format!("closed (opened {opens} times)")
    })
}

/// The helper's answer to a ping through the extension (bounded by the extension's 2 s), or
/// `None` when it did not answer.
pub(crate) fn helper_pong(socket: &Path) -> Option<HelperPong> {
    match ask(socket, &ControlRequest::HelperPing).ok()? {
        ControlResponse::HelperPong {
            round_trip_us: Some(round_trip_us),
            detail,
            ..
        } => parse_pong_detail(&detail, round_trip_us),
        _ => None,
    }
}

/// The extension's pong detail, `AGENT (pid N, up S s)`.
fn parse_pong_detail(detail: &str, round_trip_us: u64) -> Option<HelperPong> {
    let (agent, rest) = detail.split_once(" (pid ")?;
    let (pid, rest) = rest.split_once(", up ")?;
    let secs = rest.strip_suffix(" s)")?;
    Some(HelperPong {
        agent: agent.to_owned(),
        pid: pid.parse().ok()?,
        uptime_ms: secs.parse::<u64>().ok()?.saturating_mul(1000),
        round_trip_us,
    })
}

pub fn status(a: ReadArgs) -> anyhow::Result<ExitCode> {
    let s = fetch_status(&a.control_socket)?;
    // The events log's, the marks' and the breaker's states travel with the counters (no
    // status fields for them on the wire).
    let stats = match ask(&a.control_socket, &ControlRequest::Stats) {
        Ok(ControlResponse::Stats(st)) => Some(st),
        _ => None,
    };
    // An older extension cannot answer the detail request: the report alone.
    let detail = match ask(&a.control_socket, &ControlRequest::StatusDetail) {
        Ok(ControlResponse::StatusDetail(d)) => Some(d),
        _ => None,
    };
    let pong = s
        .helper_connected
        .then(|| helper_pong(&a.control_socket))
        .flatten();
    if a.json {
        return print_json(&status_json(
            &s,
            stats.as_ref(),
            detail.as_ref(),
            pong.as_ref(),
        ));
    }
    match &detail {
        Some(d) => print!("{}", format_status_detail(d, stats.as_ref(), pong.as_ref())),
        None => {
            print!("{}", format_status(&s));
            if let Some(st) = &stats {
                if let Some(b) = breaker_state(st) {
                    println!("breaker:      {b}");
                }
                println!("events log:   {}", events_log_state(st));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The extension's status and its details (for `gatehouse doctor`).
pub fn fetch_status_detail(path: &Path) -> anyhow::Result<StatusDetail> {
    match ask(path, &ControlRequest::StatusDetail)? {
        ControlResponse::StatusDetail(d) => Ok(d),
        other => Err(unexpected("status", &other)),
    }
}

/// The extension's own status (`gatehouse status`; `gatehouse demo`: its pid and whether it
/// reaches the helper).
pub fn fetch_status(path: &Path) -> anyhow::Result<StatusReport> {
    match ask(path, &ControlRequest::Status)? {
        ControlResponse::Status(s) => Ok(s),
        other => Err(unexpected("status", &other)),
    }
}

/// The extension's counters and latencies (for `gatehouse metrics`).
pub fn fetch_stats(path: &Path) -> anyhow::Result<StatsReport> {
    match ask(path, &ControlRequest::Stats)? {
        ControlResponse::Stats(s) => Ok(s),
        other => Err(unexpected("stats", &other)),
    }
}

pub fn stats(a: ReadArgs) -> anyhow::Result<ExitCode> {
    match ask(&a.control_socket, &ControlRequest::Stats)? {
        ControlResponse::Stats(s) if a.json => print_json(&s),
        ControlResponse::Stats(s) => {
            print!("{}", format_stats(&s));
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected("stats", &other)),
    }
}

pub fn policy_load(a: PolicyLoadArgs) -> anyhow::Result<ExitCode> {
    let (req, how) = policy_load_request(&a.file, a.by_path)?;
    match ask(&a.control_socket, &req)? {
        ControlResponse::PolicyLoaded { version } => {
            println!(
                "loaded {}{how} as policy version {version}",
                a.file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected("policy load", &other)),
    }
}

/// Inline text when it fits a control frame, else (or when asked) the file's absolute path;
/// with a note on how it was sent, for the success line.
fn policy_load_request(file: &Path, by_path: bool) -> anyhow::Result<(ControlRequest, String)> {
    let by_path_request = |note: String| -> anyhow::Result<(ControlRequest, String)> {
        let abs = std::path::absolute(file)
            .with_context(|| format!("cannot make {} an absolute path", file.display()))?;
        let path = abs
            .to_str()
            .with_context(|| {
                format!(
                    "{} is not valid UTF-8; the control protocol carries paths as text: rename it",
                    abs.display()
                )
            })?
            .to_owned();
        Ok((ControlRequest::PolicyLoadPath { path }, note))
    };
    if by_path {
        return by_path_request(" by path".to_owned());
    }
    let text = crate::input::policy_text(file)?;
    if text.len() > POLICY_INLINE_MAX {
        return by_path_request(format!(
            " by path ({} bytes is over the {POLICY_INLINE_MAX} bytes sent inline)",
            text.len()
        ));
    }
    let origin = file.display().to_string();
    Ok((ControlRequest::PolicyLoad { origin, text }, String::new()))
}

pub fn policy_show(a: ReadArgs) -> anyhow::Result<ExitCode> {
    match ask(&a.control_socket, &ControlRequest::PolicyShow)? {
        ControlResponse::Policy {
            origin,
            version,
            text,
        } => {
            if a.json {
                return print_json(&serde_json::json!({
                    "origin": origin, "version": version, "text": text
                }));
            }
            println!("# policy version {version} from {origin}");
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected("policy show", &other)),
    }
}

fn spec(m: &MuteArgs) -> MuteSpec {
    MuteSpec {
        scope: if m.target {
            MuteScope::Target
        } else {
            MuteScope::Process
        },
        path: m.path.clone(),
        prefix: m.prefix,
    }
}

pub fn format_mute(m: &MuteSpec) -> String {
    format!(
        "{:<8} {:<8} {}",
        match m.scope {
            MuteScope::Process => "process",
            MuteScope::Target => "target",
        },
        if m.prefix { "prefix" } else { "literal" },
        escape_controls(&m.path)
    )
}

pub fn mute(c: MuteCommand) -> anyhow::Result<ExitCode> {
    match c {
        MuteCommand::Add(m) => {
            let s = spec(&m);
            match ask(&m.control_socket, &ControlRequest::MuteAdd(s.clone()))? {
                ControlResponse::Ok => {
                    println!("muted: {}", format_mute(&s));
                    Ok(ExitCode::SUCCESS)
                }
                other => Err(unexpected("mute add", &other)),
            }
        }
        MuteCommand::Rm(m) => {
            let s = spec(&m);
            match ask(&m.control_socket, &ControlRequest::MuteRemove(s.clone()))? {
                ControlResponse::Ok => {
                    println!("unmuted: {}", format_mute(&s));
                    Ok(ExitCode::SUCCESS)
                }
                other => Err(unexpected("mute rm", &other)),
            }
        }
        MuteCommand::List(a) => match ask(&a.control_socket, &ControlRequest::MuteList)? {
            ControlResponse::Mutes(list) if a.json => print_json(&list),
            ControlResponse::Mutes(list) => {
                if list.is_empty() {
                    println!("no muted paths");
                }
                for m in &list {
                    println!("{}", format_mute(m));
                }
                Ok(ExitCode::SUCCESS)
            }
            other => Err(unexpected("mute list", &other)),
        },
    }
}

/// `s` safe to print on a terminal: every C0 control, DEL and C1 control (U+0080..U+009F), and
/// the Unicode line separators and bidirectional overrides, written as a visible escape (`\n`,
/// `\e`, `\x7f`, `\u{9b}`), and `\` as `\\` so an escape cannot be forged either. A path
/// named with a newline and ESC cannot start a fake line or drive the terminal.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| {
        c.is_control()
            || c == '\\'
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(bad) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{1b}' => out.push_str("\\e"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if bad(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.into()
}

/// A JSON line as `--json` prints it: control characters other than those serde already
/// escapes (DEL, C1; and any C0, should a line not come from serde) as `\u00XX`. Outside a
/// string JSON text is ASCII without controls, so this changes no value, only its spelling.
pub fn escape_json_line(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.chars().any(char::is_control) {
        return line.into();
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// One events-log line as `events tail` prints it: the JSON line itself (escaped) with
/// `--json`, else one human line in which every field is escaped ([`escape_controls`]).
pub fn format_event(line: &str, json: bool) -> String {
    if json {
        return escape_json_line(line).into_owned();
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return escape_controls(line).into_owned();
    };
    if let Some(n) = v.get("skipped") {
        return format!(
            "-- {} records not shown: no longer in the extension's memory (they are in the events \
             log file) --",
            escape_controls(&n.to_string())
        );
    }
    if let Some(n) = v.get("gap") {
        let n = n.to_string();
        return format!(
            "-- {} events not logged (log channel full) --",
            escape_controls(&n)
        );
    }
    let s =
        |k: &str| escape_controls(v.get(k).and_then(|x| x.as_str()).unwrap_or("?")).into_owned();
    let at = |p: &str| v.pointer(p).and_then(|x| x.as_str());
    let reason = match v.get("reason").and_then(|x| x.as_str()) {
        Some("fallback") => format!("fallback ({})", s("why")),
        Some("rule") => format!("rule {}", escape_controls(at("/rule/name").unwrap_or("?"))),
        Some(r) => escape_controls(r).into_owned(),
        None => "?".to_owned(),
    };
    let message = v
        .get("message")
        .and_then(|x| x.as_str())
        .map(|m| format!(": \"{}\"", escape_controls(m)))
        .unwrap_or_default();
    let flags = match (
        v.get("would_deny").and_then(|x| x.as_bool()),
        v.get("audit_only").and_then(|x| x.as_bool()),
    ) {
        (Some(true), _) => " [would deny]",
        (_, Some(true)) => " [audit only]",
        _ => "",
    };
    let pid = v
        .pointer("/event/process/pid")
        .and_then(|x| x.as_u64())
        .unwrap_or(0);
    let exe = escape_controls(at("/event/process/executable/path").unwrap_or("?"));
    // What the event acted on, by kind (the model's JSON form: the body is flattened).
    let e = |p: &str| at(&format!("/event{p}")).map(|t| escape_controls(t).into_owned());
    let target = match s("kind").as_str() {
        "exec" => e("/target/executable/path"),
        "open" | "unlink" | "truncate" => e("/file/path"),
        "mount" | "remount" => e("/mount/mount_point"),
        "create" => e("/destination"),
        "exchangedata" => e("/file1/path")
            .zip(e("/file2/path"))
            .map(|(a, b)| format!("{a} <-> {b}")),
        _ => e("/source/path")
            .zip(e("/destination"))
            .map(|(a, b)| format!("{a} -> {b}")),
    }
    .unwrap_or_else(|| "?".to_owned());
    let time = match v.get("time").and_then(|x| x.as_str()) {
        Some(t) => escape_controls(t).into_owned(),
        None => v
            .get("time_ms")
            .and_then(|x| x.as_u64())
            .map_or_else(|| "?".to_owned(), |ms| format!("{ms} ms")),
    };
    format!(
        "{time} {:<5} {:<6} {target} by pid {pid} ({exe}): {reason}{message}{flags}",
        s("verdict"),
        s("kind"),
    )
}

/// Follows the extension's in-memory events tail over the control socket. It reads no file, so
/// following the log raises no fanotify event of its own: a follower that re-opened a protected
/// events log would log its own open, and then read that line, and so on.
pub struct EventFollower {
    socket: PathBuf,
    window: u32,
    /// The sequence number of the last line printed; `None` before the first poll.
    cursor: Option<u64>,
}

impl EventFollower {
    /// The first poll returns the newest `window` lines; every later one returns every line
    /// since, and says how many were no longer in memory rather than skipping them silently.
    pub fn new(socket: &Path, window: u32) -> Self {
        Self {
            socket: socket.to_owned(),
            window: window.max(1),
            cursor: None,
        }
    }

    /// Lines logged since the previous poll, oldest first (a `{"skipped":N}` line first when
    /// some were lost from memory). Each poll is its own short connection: the control server
    /// serves few clients at a time, so a follower that kept its session open would hold one.
    pub fn poll(&mut self) -> anyhow::Result<Vec<String>> {
        let after = self.cursor.unwrap_or(0);
        let (mut lines, skipped, last) = match ask(
            &self.socket,
            &ControlRequest::EventsSince { after, max: 10_000 },
        )? {
            ControlResponse::EventsSince {
                lines,
                skipped,
                last,
            } => (lines, skipped, last),
            other => return Err(unexpected("events tail", &other)),
        };
        if self.cursor.is_none() {
            let keep = self.window as usize;
            lines = lines.split_off(lines.len().saturating_sub(keep));
        } else if skipped > 0 {
            lines.insert(0, format!("{{\"skipped\":{skipped}}}"));
        }
        self.cursor = Some(last);
        Ok(lines)
    }
}

impl std::fmt::Debug for EventFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFollower")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// The last `n` lines of the events log file, read once (the extension is down, so nothing
/// is logging, and nothing decides our open either). At most the last 1 MiB is read.
fn file_tail(path: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 1 << 20;
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("cannot read the events log {}", path.display()))?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let start = meta.len().saturating_sub(MAX);
    f.seek(SeekFrom::Start(start))?;
    let mut text = String::new();
    f.take(MAX)
        .read_to_string(&mut text)
        .with_context(|| format!("the events log {} is not UTF-8 text", path.display()))?;
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        // The first line was cut by the seek.
        lines.remove(0);
    }
    let from = lines.len().saturating_sub(n);
    Ok(lines[from..].iter().map(|l| (*l).to_owned()).collect())
}

pub fn events(c: EventsCommand) -> anyhow::Result<ExitCode> {
    let EventsCommand::Tail(a) = c;
    let mut follower = EventFollower::new(&a.control_socket, a.lines);
    let first = match follower.poll() {
        Err(e) if e.downcast_ref::<NotRunning>().is_some() && !a.follow => {
            eprintln!(
                "gatehouse: the extension is not running; the last records of {}:",
                a.log_file.display()
            );
            for l in file_tail(&a.log_file, a.lines as usize)? {
                println!("{}", format_event(&l, a.json));
            }
            return Ok(ExitCode::SUCCESS);
        }
        other => other?,
    };
    for l in first {
        println!("{}", format_event(&l, a.json));
    }
    loop {
        if !a.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_millis(500));
        for l in follower.poll()? {
            println!("{}", format_event(&l, a.json));
        }
    }
}

pub fn helper(c: HelperCommand) -> anyhow::Result<ExitCode> {
    let HelperCommand::Ping(a) = c;
    if a.direct {
        let (agent, pid, uptime_ms, rtt) = ping_helper_directly(&a.helper_socket)?;
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        if a.json {
            return print_json(&serde_json::json!({
                "connected": true, "round_trip_us": us, "agent": agent, "pid": pid,
                "uptime_ms": uptime_ms,
            }));
        }
        println!(
            "helper {} (pid {pid}, up {}) answered in {us} us",
            escape_controls(&agent),
            human_ms(uptime_ms)
        );
        return Ok(ExitCode::SUCCESS);
    }
    match ask(&a.control_socket, &ControlRequest::HelperPing)? {
        ControlResponse::HelperPong {
            connected,
            round_trip_us,
            detail,
        } => {
            if a.json {
                print_json(&serde_json::json!({
                    "connected": connected, "round_trip_us": round_trip_us, "detail": detail
                }))?;
            } else {
                match round_trip_us {
                    Some(us) => {
                        println!("helper answered in {us} us: {}", escape_controls(&detail))
                    }
                    None => println!("helper did not answer: {}", escape_controls(&detail)),
                }
            }
            Ok(if round_trip_us.is_some() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        other => Err(unexpected("helper ping", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_show_rates_queue_and_percentiles() {
        let s = StatsReport {
            counters: vec![
                ("events".into(), 10),
                ("events.exec".into(), 10),
                ("answers.exec.allow".into(), 7),
                ("answers.exec.deny".into(), 3),
                ("cache_hits".into(), 3),
                ("cache_misses".into(), 1),
                ("fallbacks".into(), 2),
                ("fallbacks.deadline".into(), 2),
                ("fallbacks.queue_full".into(), 0),
                ("cache_clear_failures".into(), 2),
                ("cache_clear_retries".into(), 2),
                ("cache_clear_abandoned".into(), 0),
                ("backend.clear_cache_throttled".into(), 2),
            ],
            latencies: vec![LatencySummary {
                name: "fast_path".into(),
                count: 10,
                p50_us: 1,
                p90_us: 2,
                p99_us: 5,
                max_us: 9,
            }],
            queue_depth: 4,
            queue_capacity: 1024,
        };
        let out = format_stats(&s);
        for want in [
            "75.0% hit rate (3 of 4 lookups)",
            "4 / 1024",
            "deadline           2",
            "exec               10 (allowed 7, denied 3)",
            "fast_path",
            "5us",
            "2 failed clears, 2 retries, 0 escalated to retries every 8 s",
            "backend:\n  clear_cache_throttled  2\n",
        ] {
            assert!(out.contains(want), "missing {want:?} in:\n{out}");
        }
        assert!(
            !out.contains("queue_full  "),
            "zero fallbacks are not listed:\n{out}"
        );
        let quiet = format_stats(&StatsReport {
            counters: vec![("events".into(), 1)],
            ..s
        });
        for absent in ["kernel cache:", "backend:"] {
            assert!(
                !quiet.contains(absent),
                "{absent} shown with nothing to say:\n{quiet}"
            );
        }
    }

    #[test]
    fn events_log_state_table() {
        let cases: &[(&[(&str, u64)], &str)] = &[
            (&[("log_written", 5)], "ok, 5 records written"),
            (
                &[
                    ("log_written", 5),
                    ("log_dropped", 2),
                    ("log_write_failed", 3),
                ],
                "ok, 5 records written; 2 dropped (queue full), 3 not written",
            ),
            (
                &[("log_disk_full", 1), ("log_write_failed", 7)],
                "DISK FULL: records are not being written (7 so far",
            ),
            (
                &[
                    ("log_written", 9),
                    ("log_rotated_out_files", 2),
                    ("log_rotated_out_records", 40),
                ],
                "ok, 9 records written; 40 rotated out in 2 old files",
            ),
        ];
        for (counters, want) in cases {
            let s = StatsReport {
                counters: counters
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), *v))
                    .collect(),
                latencies: Vec::new(),
                queue_depth: 0,
                queue_capacity: 0,
            };
            let got = events_log_state(&s);
            assert!(got.starts_with(want), "{counters:?}: {got:?}");
            assert!(format_stats(&s).contains(want), "{counters:?}");
        }
    }

    #[test]
    fn mute_format_table() {
        let cases = [
            (
                MuteScope::Process,
                false,
                "/usr/bin/a",
                "process  literal  /usr/bin/a",
            ),
            (MuteScope::Target, true, "/var/", "target   prefix   /var/"),
        ];
        for (scope, prefix, path, want) in cases {
            let m = MuteSpec {
                scope,
                path: path.into(),
                prefix,
            };
            assert_eq!(format_mute(&m), want);
        }
    }

    #[test]
    fn escape_controls_table() {
        let cases = [
            ("/usr/bin/ls", "/usr/bin/ls"),
            ("a\nb", "a\\nb"),
            ("a\r\tb", "a\\r\\tb"),
            ("\u{1b}[2J", "\\e[2J"),
            ("\u{7}\u{0}\u{7f}", "\\x07\\x00\\x7f"),
            ("\u{9b}31m\u{85}", "\\u{9b}31m\\u{85}"),
            ("x\u{2028}y\u{202e}z", "x\\u{2028}y\\u{202e}z"),
            // A literal backslash-n in a name stays distinguishable from a newline.
            ("a\\nb", "a\\\\nb"),
            ("caf\u{e9} \u{1f600}", "caf\u{e9} \u{1f600}"),
        ];
        for (raw, want) in cases {
            assert_eq!(escape_controls(raw), want, "{raw:?}");
        }
    }

    /// A forged executable name must not start a second line or reach the terminal raw, in
    /// any field of the human form, nor DEL/C1 in the JSON form.
    #[test]
    fn events_tail_escapes_forged_names() {
        let forged =
            "/tmp/x\n1700000000000 exec   allow pid 1 (/bin/login): rule trusted\u{1b}[1A\u{9b}2K";
        let line = |exe: &str, rule: &str, kind: &str| {
            serde_json::json!({
                "time_ms": 1, "kind": kind, "verdict": "deny", "reason": "rule",
                "rule": { "name": rule },
                "event": { "process": { "pid": 7, "executable": { "path": exe } } },
            })
            .to_string()
        };
        let cases = [
            line(forged, "r", "exec"),
            line("/bin/ok", forged, "exec"),
            line("/bin/ok", "r", forged),
            // Not JSON at all: printed escaped as it is.
            forged.to_owned(),
        ];
        for l in &cases {
            for json in [false, true] {
                let out = format_event(l, json);
                assert!(
                    !out.chars().any(char::is_control),
                    "raw control in {out:?} (json {json})"
                );
                if !json {
                    assert!(out.contains("\\n1700000000000"), "{out}");
                    assert!(out.contains("\\e[1A\\u{9b}2K"), "{out}");
                }
            }
        }
        // The JSON form still decodes to the same value.
        let out = format_event(&cases[0], true);
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back["event"]["process"]["executable"]["path"], forged);
    }

    #[test]
    fn status_shows_the_breaker() {
        let st = StatusReport {
            agent: "gatehouse-extension/0".into(),
            pid: 1,
            backend: "fanotify".into(),
            uptime_ms: 5,
            mode: "enforce".into(),
            policy_version: 3,
            policy_origin: "/p.toml".into(),
            helper_connected: true,
        };
        let stats = |open: u64, opens: u64| StatsReport {
            counters: vec![
                ("helper_breaker_opens".into(), opens),
                ("helper_breaker_open".into(), open),
            ],
            latencies: Vec::new(),
            queue_depth: 0,
            queue_capacity: 0,
        };
        let cases = [
            (
                Some(stats(0, 2)),
                Some(false),
                Some(2),
                Some("closed (opened 2 times)"),
            ),
            (Some(stats(1, 3)), Some(true), Some(3), Some("OPEN (")),
            (None, None, None, None),
        ];
        for (stats, open, opens, human) in cases {
            let v = serde_json::to_value(status_json(&st, stats.as_ref(), None, None)).unwrap();
            assert_eq!(v["helper_breaker_open"].as_bool(), open, "{v}");
            assert_eq!(v["helper_breaker_opens"].as_u64(), opens, "{v}");
            assert_eq!(v["policy_version"], 3, "the report's own fields stay: {v}");
            let h = stats.as_ref().and_then(breaker_state);
            match human {
                Some(w) => assert!(h.as_deref().is_some_and(|h| h.starts_with(w)), "{h:?}"),
                None => assert_eq!(h, None),
            }
        }
        // Appended: the report's fields come first, in their order.
        let text = serde_json::to_string(&status_json(&st, None, None, None)).unwrap();
        assert!(text.starts_with("{\"agent\":"), "{text}");
        assert!(
            text.ends_with(
                "\"helper_breaker_open\":null,\"helper_breaker_opens\":null,\"helper\":null}"
            ),
            "{text}"
        );
    }

    #[test]
    fn pong_details_parse_or_are_none() {
        let cases = [
            (
                "gatehouse-helper/0.1.0 (pid 42, up 7 s)",
                Some(("gatehouse-helper/0.1.0", 42, 7000)),
            ),
            ("odd (pid x, up 1 s)", None),
            ("unexpected answer to ping: Stats", None),
            ("", None),
        ];
        for (detail, want) in cases {
            let got = parse_pong_detail(detail, 9);
            assert_eq!(
                got.as_ref().map(|p| (p.agent.as_str(), p.pid, p.uptime_ms)),
                want,
                "{detail}"
            );
        }
    }

    #[test]
    fn status_detail_shows_hashes_counts_scopes_marks_mutes_and_helper() {
        let status = StatusReport {
            agent: "gatehouse-extension/0".into(),
            pid: 1,
            backend: "fanotify".into(),
            uptime_ms: 125_000,
            mode: "enforce".into(),
            policy_version: 2,
            policy_origin: "/etc/gatehouse/policy.toml".into(),
            helper_connected: true,
        };
        let rc = |tier: &str, kind: &str, count| RuleCount {
            tier: tier.into(),
            kind: kind.into(),
            count,
        };
        let d = StatusDetail {
            status,
            policy_sha256: "ab".repeat(32),
            local_rules_origin: None,
            local_rules_sha256: None,
            rules: vec![rc("static", "exec sha256", 3), rc("static", "watch", 1)],
            scopes: vec!["/".into()],
            watched_paths: 4,
            mutes_policy: 2,
            mutes_runtime: 1,
            mutes_file: Some("/etc/gatehouse/mutes.toml".into()),
            helper_breaker_open: false,
            policy_loaded_unix_ms: 1_764_720_000_000,
        };
        let stats = StatsReport {
            counters: vec![
                ("backend.marks.filesystems".into(), 1),
                ("backend.marks.files".into(), 3),
                ("backend.marks.directories".into(), 1),
                ("backend.marks.missing".into(), 0),
                ("helper_breaker_open".into(), 0),
                ("helper_breaker_opens".into(), 0),
                ("log_written".into(), 5),
            ],
            latencies: Vec::new(),
            queue_depth: 0,
            queue_capacity: 0,
        };
        let pong = HelperPong {
            agent: "gatehouse-helper/0".into(),
            pid: 7,
            uptime_ms: 61_000,
            round_trip_us: 150,
        };
        let text = format_status_detail(&d, Some(&stats), Some(&pong));
        for want in [
            "uptime:       2m 5s\n",
            &format!("sha256 {}\n", "ab".repeat(32)),
            "version 2 (loads since start), in force since 2025-12-03T00:00:00Z\n",
            "local rules:  none\n",
            "rules:        static: 3 exec sha256, 1 watch; local: none\n",
            "scope:        /; 4 watched paths\n",
            "marks:        1 filesystems, 3 files, 1 directories\n",
            "mutes:        2 from the policy, 1 runtime (kept in /etc/gatehouse/mutes.toml)\n",
            "helper:       connected: gatehouse-helper/0 (pid 7, up 1m 1s), answered a ping in 150 us\n",
            "breaker:      closed (opened 0 times)\n",
            "events log:   ok, 5 records written\n",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
        let v = serde_json::to_value(status_json(&d.status, Some(&stats), Some(&d), Some(&pong)))
            .unwrap();
        assert_eq!(v["policy_sha256"], "ab".repeat(32), "{v}");
        assert_eq!(v["rules"][0]["kind"], "exec sha256", "{v}");
        assert_eq!(v["marks"]["files"], 3, "{v}");
        assert_eq!(v["helper"]["pid"], 7, "{v}");
        assert_eq!(v["policy_version"], 2, "{v}");
        // Endpoint Security sees the whole machine, and has no mark gauges.
        let es = StatusDetail {
            scopes: vec![],
            ..d.clone()
        };
        let text = format_status_detail(&es, None, None);
        assert!(text.contains("scope:        the whole machine;"), "{text}");
        assert!(!text.contains("marks:"), "{text}");
        assert!(text.contains("helper:       connected\n"), "{text}");
    }

    #[test]
    fn policy_load_sends_large_policies_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.toml");
        std::fs::write(&small, "version = 1\n").unwrap();
        let large = dir.path().join("large.toml");
        let mut text = "version = 1\n".to_owned();
        text += &"#".repeat(POLICY_INLINE_MAX);
        std::fs::write(&large, &text).unwrap();
        let abs = |p: &Path| p.to_str().unwrap().to_owned();
        // Ok(None): sent inline; Ok(Some(path)): sent by path.
        type Want = Result<Option<String>, String>;
        let cases: [(&PathBuf, bool, Want); 4] = [
            (&small, false, Ok(None)),
            (&small, true, Ok(Some(abs(&small)))),
            (&large, false, Ok(Some(abs(&large)))),
            (&large, true, Ok(Some(abs(&large)))),
        ];
        for (file, by_path, want) in cases {
            let got = policy_load_request(file, by_path).map(|(r, _)| match r {
                ControlRequest::PolicyLoadPath { path } => Some(path),
                ControlRequest::PolicyLoad { .. } => None,
                other => panic!("{other:?}"),
            });
            assert_eq!(
                got.map_err(|e: anyhow::Error| e.to_string()),
                want,
                "{file:?} {by_path}"
            );
        }
        let err = policy_load_request(Path::new("/dev/zero"), false).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
