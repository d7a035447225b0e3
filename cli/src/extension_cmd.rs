//! `gatehouse extension activate|deactivate|status` (macOS, OSSystemExtensionRequest).
//! PLACEHOLDER: issue 7 implements these on macOS; elsewhere they say they are macOS-only.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ExtensionCommand {
    Activate,
    Deactivate,
    Status,
}

pub fn extension(_c: ExtensionCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "`gatehouse extension` manages the macOS system extension; not available on this OS"
    )
}
