//! Commands that talk to the running extension over its control socket.
//! PLACEHOLDER: issue 4 implements these.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

/// Default control socket (Linux).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/gatehouse/control.sock";

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

fn not_built() -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet (issue 4: extension core and control channel)")
}

pub fn status(_a: ReadArgs) -> anyhow::Result<ExitCode> {
    not_built()
}
pub fn stats(_a: ReadArgs) -> anyhow::Result<ExitCode> {
    not_built()
}
pub fn policy_load(_a: PolicyLoadArgs) -> anyhow::Result<ExitCode> {
    not_built()
}
pub fn policy_show(_a: ReadArgs) -> anyhow::Result<ExitCode> {
    not_built()
}
pub fn mute(_c: MuteCommand) -> anyhow::Result<ExitCode> {
    not_built()
}
pub fn events(_c: EventsCommand) -> anyhow::Result<ExitCode> {
    not_built()
}
pub fn helper(_c: HelperCommand) -> anyhow::Result<ExitCode> {
    not_built()
}
