//! `gatehouse-extension`: parses arguments, loads the policy, and runs the core on this OS's
//! backend (fanotify on Linux, Endpoint Security on macOS).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse-extension",
    version,
    about = "Gatehouse's never-blocking authorization client"
)]
struct Args {
    /// Policy file (TOML); without it the embedded default (monitor mode) applies.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The analysis helper's Unix socket (Linux; macOS reaches the helper over XPC).
    #[arg(long, default_value = "/run/gatehouse/helper.sock")]
    helper_socket: PathBuf,
    /// Code-signing requirement the helper's XPC service must satisfy (macOS), e.g.
    /// `anchor apple generic and certificate leaf[subject.OU] = "TEAMID" and identifier
    /// "dev.gatehouse.helper"`. Without it launchd's system bootstrap alone is trusted.
    #[cfg(target_os = "macos")]
    #[arg(long, value_name = "REQ")]
    helper_requirement: Option<String>,
    /// The control socket the `gatehouse` CLI talks to (created root-only).
    #[arg(long, default_value = "/run/gatehouse/control.sock")]
    control_socket: PathBuf,
    /// JSON-lines log of denies, fallbacks and would-denies (rotated by size).
    #[arg(long, default_value = "/var/log/gatehouse/events.jsonl")]
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
    /// executable, else `/usr/local/bin/gatehouse`, when omitted.
    #[cfg(target_os = "linux")]
    #[arg(long, value_name = "PATH")]
    cli_binary: Option<PathBuf>,
}

#[cfg(target_os = "linux")]
fn load_policy(path: Option<&std::path::Path>) -> anyhow::Result<policy::Policy> {
    use anyhow::Context;
    let Some(path) = path else {
        return Ok(policy::Policy::embedded_default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy file {}", path.display()))?;
    policy::Policy::parse(&path.display().to_string(), &text).map_err(|e| {
        anyhow::anyhow!("policy file is invalid: {e}; check it with `gatehouse policy check`")
    })
}

#[cfg(target_os = "linux")]
fn run(args: Args) -> anyhow::Result<()> {
    use es_extension::core::CoreConfig;
    let policy = load_policy(args.policy.as_deref())?;
    let config = CoreConfig {
        helper_socket: Some(args.helper_socket),
        control_socket: Some(args.control_socket),
        events_log: Some(args.events_log),
        events_log_max_bytes: args.events_log_max_bytes,
        events_log_keep: args.events_log_keep,
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

#[cfg(target_os = "macos")]
fn run(args: Args) -> anyhow::Result<()> {
    // The macOS backend (issue 7) subscribes with the embedded policy first, then loads the
    // file (NSEndpointSecurityEarlyBoot), so the file is passed through rather than read here.
    let opts = es_extension::sys::macos::MacOptions {
        policy: args.policy,
        events_log: Some(args.events_log),
        events_log_max_bytes: args.events_log_max_bytes,
        events_log_keep: args.events_log_keep,
        control_socket: Some(args.control_socket),
        helper_requirement: args.helper_requirement,
        ..es_extension::sys::macos::MacOptions::default()
    };
    // The helper is the XPC service on macOS (`core::helper_xpc::XpcTransport`).
    let _ = args.helper_socket;
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
    tracing_subscriber::fmt()
        // A closed stderr must not panic the process (tracing would report the failed write
        // on stderr itself, and that panics).
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
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
