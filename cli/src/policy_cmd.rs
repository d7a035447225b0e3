//! Offline policy commands: `policy check`, `policy eval`, `policy import-santa`.
//! PLACEHOLDER: issue 3 implements these.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct CheckArgs {
    pub file: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    pub file: PathBuf,
    /// The event as the model's JSON form.
    #[arg(long)]
    pub event: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImportSantaArgs {
    /// Santa rules in `santactl rule --import` JSON form.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Santa file-access authorization plist.
    #[arg(long)]
    pub file_access: Option<PathBuf>,
    /// Write the policy here instead of standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

pub fn check(_a: CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet (issue 3)")
}
pub fn eval(_a: EvalArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet (issue 3)")
}
pub fn import_santa(_a: ImportSantaArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet (issue 3)")
}
