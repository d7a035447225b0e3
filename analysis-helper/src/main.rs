//! `gatehouse-helper`: parses arguments and runs the helper's listener (Linux: a Unix socket;
//! macOS: the `dev.gatehouse.helper` XPC mach service), or with `--probe SOCKET` connects to a
//! running helper as a client and pings it.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// Gatehouse's analysis helper: hashing, package trust, volume metadata and code signing for the
/// extension, over an authenticated socket (Linux) or XPC service (macOS) with a bounded worker
/// pool.
#[derive(Debug, Parser)]
#[command(name = "gatehouse-helper", version)]
struct Args {
    /// Unix socket to listen on (created with mode 0600; its directory is created). Linux only.
    #[cfg_attr(
        target_os = "linux",
        arg(long, value_name = "PATH", required_unless_present = "probe")
    )]
    #[cfg_attr(not(target_os = "linux"), arg(long, value_name = "PATH"))]
    socket: Option<PathBuf>,
    /// Listen on the XPC mach service (macOS; the default there, so the flag is optional).
    #[arg(long, conflicts_with_all = ["socket", "probe"])]
    xpc: bool,
    /// The mach service to listen on (macOS, with launchd's `MachServices` entry).
    #[cfg(target_os = "macos")]
    #[arg(long, value_name = "NAME", default_value = "dev.gatehouse.helper")]
    service: String,
    /// Code-signing requirement every XPC peer must satisfy, e.g. `anchor apple generic and
    /// certificate leaf[subject.OU] = "TEAMID" and identifier "dev.gatehouse.extension"`
    /// (macOS). Without it peers get ping and stats only, never analysis.
    #[cfg(target_os = "macos")]
    #[arg(long, value_name = "REQ")]
    peer_requirement: Option<String>,
    /// A requirement a binary must satisfy for its certificate to count as valid (macOS;
    /// default: any signature that validates).
    #[cfg(target_os = "macos")]
    #[arg(long, value_name = "REQ")]
    certificate_requirement: Option<String>,
    /// Analysis worker threads (fixed; the thread count never grows with load).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
    /// Requests queued for the workers beyond those running; a full queue answers Busy.
    #[arg(long, value_name = "N", default_value_t = 256)]
    queue: usize,
    /// Concurrent connections (two threads each); more are refused.
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_connections: usize,
    /// Requests one connection may have queued or running at once; more are answered Busy.
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_in_flight: usize,
    /// Largest file the helper will hash or digest, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = analysis_helper::hash::DEFAULT_MAX_FILE_SIZE)]
    max_file_size: u64,
    /// Results remembered per kind (SHA-256, package trust), keyed by file identity.
    #[arg(long, value_name = "N", default_value_t = analysis_helper::service::DEFAULT_CACHE_ENTRIES)]
    cache_entries: usize,
    /// Also accept peers running this executable (repeatable). Always accepted: the
    /// `gatehouse-extension` and `gatehouse` binaries next to this one.
    #[arg(long = "allowed-exe", value_name = "PATH")]
    allowed_exe: Vec<PathBuf>,
    /// Do not listen: connect to a running helper at SOCKET as a CLI client, ping it, print the
    /// answer and exit 0 (or print why it failed and exit 1).
    #[arg(long, value_name = "SOCKET", conflicts_with = "socket")]
    probe: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    #[cfg(target_os = "linux")]
    if let Err(e) = die_with_parent() {
        eprintln!("gatehouse-helper: prctl(PR_SET_PDEATHSIG) failed: {e}");
        return ExitCode::FAILURE;
    }
    tracing_subscriber::fmt()
        // A closed stderr must not panic the helper: tracing reports a failed write on stderr
        // itself, which panics, and a panicked signal thread would never stop it.
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colours only for a person at a terminal: a pipe (`gatehouse demo`, a log file,
        // journald) must get plain text, not escape codes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let result = match &args.probe {
        Some(socket) => probe(socket),
        None => serve(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse-helper: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn probe(socket: &std::path::Path) -> anyhow::Result<()> {
    use protocol::{HelperRequest, HelperResponse, Role};
    let mut client =
        analysis_helper::client::Client::connect(socket, Role::Cli, Duration::from_secs(5))
            .with_context(|| format!("connecting to the helper at {}", socket.display()))?;
    match client.call(HelperRequest::Ping, Duration::from_secs(5), None)? {
        HelperResponse::Pong {
            agent,
            pid,
            uptime_ms,
        } => {
            println!("pong from {agent} (pid {pid}, up {uptime_ms} ms)");
            Ok(())
        }
        other => anyhow::bail!("unexpected answer to ping: {other:?}"),
    }
}

#[cfg(target_os = "linux")]
fn serve(args: &Args) -> anyhow::Result<()> {
    if args.xpc {
        anyhow::bail!("--xpc is macOS only; on Linux listen on a Unix socket with --socket PATH");
    }
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use analysis_helper::linux::{self, auth::PeerPolicy, server};
    use nix::sys::signal::{SigSet, Signal};

    let socket = args.socket.clone().context("--socket is required")?;
    // Block the stop signals before any thread exists, so every thread inherits the mask and
    // only the signal thread below receives them (synchronously, with sigwait).
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("blocking SIGTERM/SIGINT")?;

    let mut allowed = default_peers();
    allowed.extend(args.allowed_exe.iter().cloned());
    let config = server::Config {
        socket: socket.clone(),
        workers: args.workers.into(),
        queue: args.queue,
        max_connections: args.max_connections.max(1),
        max_in_flight: args.max_in_flight.max(1),
        peers: PeerPolicy::new(allowed),
    };
    tracing::info!(peers = ?config.peers, "accepted peers");
    let service = Arc::new(analysis_helper::service::Service::new(
        linux::analyzers(args.max_file_size),
        args.cache_entries,
    ));
    let listener = server::Listener::bind(config, Arc::clone(&service))?;
    // Start building the package index now, so the first analysis after a (re)start finds it:
    // a stat and a builder thread that ends when built; nothing waits for it (invariant 6).
    service.warm();

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let sig = signals.wait();
                // Stop first, log second: nothing about stderr may delay or prevent the stop.
                stop.store(true, Ordering::SeqCst);
                if let Ok(sig) = sig {
                    tracing::info!(signal = ?sig, "stopping");
                }
            })
            .context("starting the signal thread")?;
    }
    listener.run(&stop)?;
    tracing::info!(socket = %socket.display(), "stopped; socket removed");
    Ok(())
}

/// Under `gatehouse run`/`demo` (`GATEHOUSE_PARENT_PID` set to its pid), die with it:
/// `PR_SET_PDEATHSIG(SIGKILL)`, then exit at once if it is already gone (the race before the
/// prctl). An orphaned helper would hold its socket and serve no one.
#[cfg(target_os = "linux")]
fn die_with_parent() -> nix::Result<()> {
    let Some(want) = std::env::var("GATEHOUSE_PARENT_PID")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
    else {
        return Ok(());
    };
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    if nix::unistd::getppid().as_raw() != want {
        eprintln!("gatehouse-helper: the supervising parent (pid {want}) is gone; exiting");
        std::process::exit(1);
    }
    Ok(())
}

/// The extension and the CLI installed next to this binary.
#[cfg(target_os = "linux")]
fn default_peers() -> Vec<PathBuf> {
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.to_path_buf()))
    else {
        return Vec::new();
    };
    // Our own executable too: `gatehouse-helper --probe` must be able to check this helper.
    let mut peers = vec![dir.join("gatehouse-extension"), dir.join("gatehouse")];
    peers.extend(std::env::current_exe().ok());
    peers
}

/// macOS: the XPC mach-service listener (`analysis_helper::macos::server`). launchd starts the
/// helper on demand and stops it with SIGTERM, whose default action ends the process; work in
/// flight is budget-bounded, so dropping it with the process is what the extension expects.
#[cfg(target_os = "macos")]
fn serve(args: &Args) -> anyhow::Result<()> {
    use std::sync::Arc;

    use analysis_helper::macos::{self, server};

    // XPC is the only listener on macOS: `--xpc` is accepted for launchd plists and scripts.
    let _ = args.xpc;
    if args.socket.is_some() {
        anyhow::bail!(
            "--socket is supported on Linux only; on macOS the helper listens on the {} XPC service (--xpc, the default)",
            args.service
        );
    }
    if !args.allowed_exe.is_empty() {
        tracing::warn!(
            "--allowed-exe applies to the Linux socket only; XPC peers are checked with --peer-requirement"
        );
    }
    let service = Arc::new(analysis_helper::service::Service::new(
        macos::analyzers(args.max_file_size, args.certificate_requirement.clone()),
        args.cache_entries,
    ));
    let pool = Arc::new(
        analysis_helper::pool::Pool::new(args.workers.into(), args.queue)
            .context("starting the analysis workers")?,
    );
    let config = server::Config {
        service: args.service.clone(),
        peer_requirement: args.peer_requirement.clone(),
    };
    match server::run(config, service, pool)? {}
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn serve(_args: &Args) -> anyhow::Result<()> {
    anyhow::bail!("gatehouse-helper listens on Linux (Unix socket) or macOS (XPC) only")
}
