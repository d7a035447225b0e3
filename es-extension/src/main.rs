//! `gatehouse-extension`: parses arguments, loads the policy, and runs the core on this OS's
//! backend (fanotify on Linux, Endpoint Security on macOS).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// This OS's defaults: a macOS system extension is started with no arguments, so these must be
/// right on their own (and the Linux ones must never leak into a macOS build).
const PATHS: &defaults::Paths = defaults::Os::HOST.paths();

#[cfg(target_os = "linux")]
const HELPER_SOCKET: &str = match defaults::Os::Linux.paths().helper_socket {
    Some(s) => s,
    None => "",
};

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse-extension",
    version,
    about = "Gatehouse's never-blocking authorization client"
)]
struct Args {
    /// Policy file (TOML). Linux: without it, or while it is missing or invalid, the embedded
    /// default (monitor mode, self-protection on) applies; SIGHUP reads it again.
    /// macOS: `/Library/Application Support/Gatehouse/policy.toml` when omitted, read after the
    /// first subscription; while it is missing or invalid the embedded default applies.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The analysis helper's Unix socket (Linux; macOS reaches the helper over XPC).
    #[cfg(target_os = "linux")]
    #[arg(long, default_value = HELPER_SOCKET)]
    helper_socket: PathBuf,
    /// Code-signing requirement the helper's XPC service must satisfy (macOS). Without it the
    /// requirement compiled in from `GATEHOUSE_TEAM_ID` applies (Developer ID, our team,
    /// identifier `dev.gatehouse.helper`); a build without a team trusts launchd's system
    /// bootstrap alone.
    #[cfg(target_os = "macos")]
    #[arg(long, value_name = "REQ")]
    helper_requirement: Option<String>,
    /// The control socket the `gatehouse` CLI talks to (created root-only). On macOS its
    /// directory must exist (the installer creates it); without it the socket is off.
    #[arg(long, default_value = PATHS.control_socket)]
    control_socket: PathBuf,
    /// JSON-lines log of denies, fallbacks and would-denies (rotated by size). On macOS its
    /// directory must exist (the installer creates it); without it the log is off.
    #[arg(long, default_value = PATHS.events_log)]
    events_log: PathBuf,
    /// Rotate the events log before it would pass this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(4096..))]
    events_log_max_bytes: u64,
    /// Rotated events-log files kept (`FILE.1` ..= `FILE.N`); the oldest is then removed and
    /// counted in `log_rotated_out_files` / `log_rotated_out_records`. Disk use is at most
    /// about max-bytes x (N + 1).
    #[arg(long, value_name = "N", default_value_t = 5)]
    events_log_keep: usize,
    /// The runtime mutes file: `gatehouse mute add|remove` rewrite it atomically and the
    /// extension restores it at start, so runtime mutes survive restarts. On macOS its
    /// directory must exist (the installer creates it); without it runtime mutes last until
    /// the extension stops.
    #[arg(long, value_name = "PATH", default_value = defaults::Os::HOST.mutes_file())]
    mutes_file: PathBuf,
    /// The transitive allows file (files written by processes a compiler rule allowed, with
    /// `transitive_rules = true`): rewritten atomically as allows are added and on `gatehouse
    /// rule transitive clear`, read back at start, so they survive restarts.
    #[arg(long, value_name = "PATH", default_value = defaults::Os::HOST.transitive_file())]
    transitive_file: PathBuf,
    /// Linux: also send every events-log record to journald (fields SYSLOG_IDENTIFIER,
    /// PRIORITY, GATEHOUSE_VERDICT, GATEHOUSE_KIND, GATEHOUSE_RULE, MESSAGE = the JSON line),
    /// without blocking; records journald does not take are counted in `log_journal_failed`.
    #[cfg(target_os = "linux")]
    #[arg(long)]
    journald: bool,
    /// macOS: do not send events-log records to the unified log (by default every record is
    /// also one unified-log entry of this process, a deny at warning level; see them with
    /// `log show --predicate 'process == "gatehouse-extension"'`). The extension's own log
    /// lines go to the unified log either way unless stderr is a terminal.
    #[cfg(target_os = "macos")]
    #[arg(long)]
    no_unified_log: bool,
    /// Filesystems whose execs are authorized (fanotify filesystem marks), repeatable; `/` when
    /// omitted. Bind mounts of a marked filesystem are covered.
    #[cfg(target_os = "linux")]
    #[arg(long, value_name = "PATH")]
    scope: Vec<PathBuf>,
    /// The helper's executable, pinned at start so that restarting the helper never waits for
    /// the helper (its exec is allowed on the fast path while the file is unchanged);
    /// `gatehouse-helper` next to this executable when omitted.
    #[cfg(target_os = "linux")]
    #[arg(long, value_name = "PATH")]
    helper_binary: Option<PathBuf>,
    /// The `gatehouse` CLI's executable, pinned like the helper's; `gatehouse` next to this
    /// executable, else `/usr/bin/gatehouse` or `/usr/local/bin/gatehouse`, when omitted.
    #[cfg(target_os = "linux")]
    #[arg(long, value_name = "PATH")]
    cli_binary: Option<PathBuf>,
}

/// The policy to start with. A `--policy` file that is missing, unreadable or invalid does not
/// stop the extension: exiting would leave the machine with no agent at all while the service
/// manager restarts it in a loop. It starts with the embedded default instead (monitor mode,
/// self-protection on), says so loudly, and `status` shows the embedded origin until a SIGHUP or
/// `gatehouse policy load` brings a valid file.
#[cfg(target_os = "linux")]
fn load_policy(path: Option<&std::path::Path>) -> policy::Policy {
    let Some(path) = path else {
        return policy::Policy::embedded_default();
    };
    // Bounded like every policy input: a FIFO or device here must not hang start-up.
    let loaded = protocol::bounded::read_text(path, protocol::bounded::POLICY_MAX_BYTES)
        .map_err(|e| e.to_string())
        .and_then(|text| {
            policy::Policy::parse(&path.display().to_string(), &text)
                .map_err(|e| format!("policy file is invalid: {e}"))
        });
    match loaded {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "gatehouse-extension: POLICY FILE NOT LOADED: {e}; running the embedded default policy (monitor mode, self-protection on) until a valid file is loaded: fix {} (check it with `gatehouse policy check`), then `systemctl reload gatehouse-extension` (SIGHUP) or `gatehouse policy load`",
                path.display()
            );
            policy::Policy::embedded_default()
        }
    }
}

#[cfg(target_os = "linux")]
fn run(args: Args) -> anyhow::Result<()> {
    use es_extension::core::CoreConfig;
    let policy = load_policy(args.policy.as_deref());
    let config = CoreConfig {
        helper_socket: Some(args.helper_socket),
        control_socket: Some(args.control_socket),
        events_log: Some(args.events_log),
        events_log_max_bytes: args.events_log_max_bytes,
        events_log_keep: args.events_log_keep,
        journald: args.journald,
        mutes_file: Some(args.mutes_file),
        transitive_file: Some(args.transitive_file),
        ..CoreConfig::fanotify()
    };
    // The Linux backend (issue 6) owns the delivery thread, signals and shutdown.
    let mut options = es_extension::sys::linux::LinuxOptions {
        policy_path: args.policy.clone(),
        ..Default::default()
    };
    if !args.scope.is_empty() {
        options.scope = args.scope;
    }
    options.pin = Some(es_extension::sys::linux::trusted_ids::PinSources {
        own_exe: true,
        helper: args.helper_binary,
        cli: args.cli_binary,
    });
    es_extension::sys::linux::run(config, policy, options)
}

/// `path` if the extension may write there on macOS, else `None` with the reason on stderr:
/// a missing directory degrades (no socket, no log) instead of exiting, because an exit before
/// `es_new_client` means launchd restarts us in a loop and nothing is protected.
#[cfg(target_os = "macos")]
fn usable(what: &'static str, path: PathBuf) -> Option<PathBuf> {
    match defaults::check_parent(defaults::Os::Macos, what, &path, std::path::Path::is_dir) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::error!("{e}");
            None
        }
    }
}

#[cfg(target_os = "macos")]
fn run(args: Args) -> anyhow::Result<()> {
    // The macOS backend (issue 7) subscribes with the embedded policy first, then loads the
    // file (NSEndpointSecurityEarlyBoot), so the file is passed through rather than read here.
    let helper_requirement = args
        .helper_requirement
        .or_else(defaults::helper_requirement);
    if helper_requirement.is_none() {
        tracing::warn!(
            "no helper code-signing requirement (built without GATEHOUSE_TEAM_ID, no \
             --helper-requirement): any process launchd registers as dev.gatehouse.helper is trusted"
        );
    }
    let opts = es_extension::sys::macos::MacOptions {
        policy: args.policy.or_else(|| PATHS.policy.map(PathBuf::from)),
        events_log: usable("events log", args.events_log),
        events_log_max_bytes: args.events_log_max_bytes,
        events_log_keep: args.events_log_keep,
        control_socket: usable("control socket", args.control_socket),
        mutes_file: usable("runtime mutes file", args.mutes_file),
        unified_log: !args.no_unified_log,
        transitive_file: usable("transitive allows file", args.transitive_file),
        helper_requirement,
        ..es_extension::sys::macos::MacOptions::default()
    };
    // The helper is the XPC service on macOS (`core::helper_xpc::XpcTransport`).
    es_extension::sys::macos::run(opts).map_err(anyhow::Error::from)
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!(
        "no kernel backend for this operating system (Linux fanotify or macOS Endpoint Security)"
    )
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Under `gatehouse run`/`demo`: die with it, before any thread or mark exists.
    #[cfg(target_os = "linux")]
    if let Err(e) = es_extension::sys::linux::supervise::die_with_parent() {
        eprintln!("gatehouse-extension: error: prctl(PR_SET_PDEATHSIG) failed: {e}");
        return ExitCode::FAILURE;
    }
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    // macOS: a system extension's stderr goes nowhere, so its log lines go to the unified log
    // (one entry per line, at the line's level), unless someone runs it from a terminal.
    #[cfg(target_os = "macos")]
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        tracing_subscriber::fmt()
            .log_internal_errors(false)
            .with_ansi(false)
            .without_time()
            .with_env_filter(filter())
            .with_writer(es_extension::sys::macos::ffi::unified_log::MakeUnifiedLogWriter)
            .init();
        return match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("gatehouse-extension: error: {e:#}");
                eprintln!("gatehouse-extension: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        // A closed stderr must not panic the process (tracing would report the failed write
        // on stderr itself, and that panics).
        .log_internal_errors(false)
        .with_env_filter(filter())
        // Colours only for a person at a terminal: a pipe (`gatehouse demo`, a log file,
        // journald) must get plain text, not escape codes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse-extension: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
