//! `gatehouse completions SHELL` and `gatehouse man DIR`: shell completions and man pages
//! generated from the same clap definitions the CLI parses with, so they cannot drift from it.
//! The packages ship both (scripts/package runs these at build time).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to print a completion script for.
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write `gatehouse.1` and one page per subcommand (`gatehouse-status.1`, ...)
    /// into; created when missing.
    pub dir: PathBuf,
}

/// Print the completion script for `a.shell` on stdout.
pub fn completions<C: CommandFactory>(a: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = C::command();
    clap_complete::generate(a.shell, &mut cmd, "gatehouse", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Write the man pages into `a.dir`.
pub fn man<C: CommandFactory>(a: ManArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create the man page directory {}", a.dir.display()))?;
    clap_mangen::generate_to(C::command(), &a.dir)
        .with_context(|| format!("cannot write man pages into {}", a.dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
