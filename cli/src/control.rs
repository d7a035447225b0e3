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
    CONTROL_MAX_FRAME, ControlRequest, ControlResponse, LatencySummary, Role, StatsReport,
    StatusReport,
};

/// Default control socket: where this OS's extension binds it (shared/defaults).
pub const DEFAULT_CONTROL_SOCKET: &str = defaults::Os::HOST.paths().control_socket;

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct PolicyLoadArgs {
    pub file: PathBuf,
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum MuteCommand {
    Add(MuteArgs),
    Rm(MuteArgs),
    List(ReadArgs),
}

#[derive(Debug, Args)]
pub struct MuteArgs {
    /// The path to mute.
    pub path: String,
    /// Mute the event's target path instead of the acting process's executable.
    #[arg(long)]
    pub target: bool,
    /// Match as a prefix instead of literally.
    #[arg(long)]
    pub prefix: bool,
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Keep printing new events.
    #[arg(long)]
    pub follow: bool,
    #[arg(long, short = 'n', default_value_t = 20)]
    pub lines: u32,
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum HelperCommand {
    Ping(ReadArgs),
}

/// A connected, handshaken control session.
struct Session {
    stream: UnixStream,
}

impl Session {
    fn open(path: &Path) -> anyhow::Result<Session> {
        let mut stream = UnixStream::connect(path).with_context(|| {
            format!(
                "cannot connect to the extension's control socket {}; is gatehouse-extension running, and are you root?",
                path.display()
            )
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
            .context("sending the request to the extension failed")?;
        let resp = protocol::frame::read_frame(&mut self.stream, CONTROL_MAX_FRAME)
            .context("reading the extension's answer failed")?;
        match resp {
            ControlResponse::Error { message } => bail!("the extension refused: {message}"),
            other => Ok(other),
        }
    }
}

fn ask(path: &Path, req: &ControlRequest) -> anyhow::Result<ControlResponse> {
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

/// Human form of a duration in milliseconds.
fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..60 => format!("{s} s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
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
        s.policy_origin,
        if s.helper_connected {
            "connected"
        } else {
            "NOT connected (analysis requests get the policy's fallback)"
        },
    )
}

fn counter(s: &StatsReport, name: &str) -> u64 {
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
            "kernel cache:      {} failed clears, {} retries, {} given up\n",
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

pub fn status(a: ReadArgs) -> anyhow::Result<ExitCode> {
    match ask(&a.control_socket, &ControlRequest::Status)? {
        ControlResponse::Status(s) if a.json => print_json(&s),
        ControlResponse::Status(s) => {
            print!("{}", format_status(&s));
            // The events log's state travels with the counters (no status field for it).
            if let Ok(ControlResponse::Stats(st)) = ask(&a.control_socket, &ControlRequest::Stats) {
                println!("events log:   {}", events_log_state(&st));
            }
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected("status", &other)),
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
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read policy file {}", a.file.display()))?;
    let origin = a.file.display().to_string();
    match ask(
        &a.control_socket,
        &ControlRequest::PolicyLoad { origin, text },
    )? {
        ControlResponse::PolicyLoaded { version } => {
            println!("loaded {} as policy version {version}", a.file.display());
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected("policy load", &other)),
    }
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
        m.path
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

/// Lines of `new` after the last line we printed (`new` is a window over the same log).
pub fn unseen<'a>(last_printed: Option<&str>, new: &'a [String]) -> &'a [String] {
    match last_printed.and_then(|l| new.iter().rposition(|n| n == l)) {
        Some(i) => &new[i + 1..],
        None => new,
    }
}

fn print_event(line: &str, json: bool) {
    if json {
        println!("{line}");
        return;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        println!("{line}");
        return;
    };
    if let Some(n) = v.get("gap") {
        println!("-- {n} events not logged (log channel full) --");
        return;
    }
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_owned();
    let reason = match v.get("reason").and_then(|x| x.as_str()) {
        Some("fallback") => format!("fallback ({})", s("why")),
        Some("rule") => format!(
            "rule {}",
            v.pointer("/rule/name")
                .and_then(|x| x.as_str())
                .unwrap_or("?")
        ),
        Some(r) => r.to_owned(),
        None => "?".to_owned(),
    };
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
    let exe = v
        .pointer("/event/process/executable/path")
        .and_then(|x| x.as_str())
        .unwrap_or("?");
    println!(
        "{} {:<6} {:<5} pid {pid} ({exe}): {reason}{flags}",
        v.get("time_ms").and_then(|x| x.as_u64()).unwrap_or(0),
        s("kind"),
        s("verdict"),
    );
}

/// Follows the extension's in-memory events tail over the control socket. It reads no file, so
/// following the log raises no fanotify event of its own: a follower that re-opened a protected
/// events log would log its own open, and then read that line, and so on.
pub struct EventFollower {
    socket: PathBuf,
    window: u32,
    last: Option<String>,
}

impl EventFollower {
    /// Up to `window` of the newest lines are fetched per poll; more new lines than that
    /// between two polls are skipped (the extension's log file still has them).
    pub fn new(socket: &Path, window: u32) -> Self {
        Self {
            socket: socket.to_owned(),
            window: window.max(1),
            last: None,
        }
    }

    /// Lines logged since the previous poll, oldest first. Each poll is its own short
    /// connection: the control server serves one client at a time, so a follower that kept its
    /// session open would lock every other `gatehouse` command out.
    pub fn poll(&mut self) -> anyhow::Result<Vec<String>> {
        let lines = match ask(
            &self.socket,
            &ControlRequest::EventsTail { max: self.window },
        )? {
            ControlResponse::Events(l) => l,
            other => return Err(unexpected("events tail", &other)),
        };
        let new = unseen(self.last.as_deref(), &lines).to_vec();
        if let Some(l) = lines.last() {
            self.last = Some(l.clone());
        }
        Ok(new)
    }
}

impl std::fmt::Debug for EventFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFollower")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

pub fn events(c: EventsCommand) -> anyhow::Result<ExitCode> {
    let EventsCommand::Tail(a) = c;
    let mut follower = EventFollower::new(&a.control_socket, a.lines);
    loop {
        for l in follower.poll()? {
            print_event(&l, a.json);
        }
        if !a.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn helper(c: HelperCommand) -> anyhow::Result<ExitCode> {
    let HelperCommand::Ping(a) = c;
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
                    Some(us) => println!("helper answered in {us} us: {detail}"),
                    None => println!("helper did not answer: {detail}"),
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
    fn unseen_table() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: Vec<(Option<&str>, Vec<String>, Vec<String>)> = vec![
            (None, w(&["a", "b"]), w(&["a", "b"])),
            (Some("a"), w(&["a", "b", "c"]), w(&["b", "c"])),
            (Some("c"), w(&["a", "b", "c"]), w(&[])),
            // Scrolled past what we printed: print the whole window.
            (Some("z"), w(&["a", "b"]), w(&["a", "b"])),
            (Some("a"), w(&["a", "x", "a", "y"]), w(&["y"])),
        ];
        for (last, new, want) in cases {
            assert_eq!(unseen(last, &new), want.as_slice(), "{last:?} {new:?}");
        }
    }

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
            "2 failed clears, 2 retries, 0 given up",
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
}
