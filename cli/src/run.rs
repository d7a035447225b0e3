//! `gatehouse run` and `gatehouse demo`: the Linux agent in the foreground.
//! PLACEHOLDER: issue 6 implements these.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy file; the embedded default (monitor mode, self-protection) when omitted.
    #[arg(long)]
    pub policy: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {}

pub fn run(_a: RunArgs) -> anyhow::Result<ExitCode> {
    println!("gatehouse run: not built yet (issue 6: Linux fanotify backend)");
    Ok(ExitCode::SUCCESS)
}

pub fn demo(_a: DemoArgs) -> anyhow::Result<ExitCode> {
    println!("gatehouse demo: not built yet");
    Ok(ExitCode::SUCCESS)
}
