//! `gatehouse`: the companion CLI. `run` and `demo` drive the Linux agent in the foreground;
//! `status`, `stats`, `policy load|show`, `mute`, `events` and `helper ping` talk to the
//! extension's control socket; `policy check|eval|import-santa` work offline on files.
//!
//! Exit codes: 0 ok, 1 failure, 2 usage error (clap's own code for bad arguments).
#![forbid(unsafe_code)]

mod control;
mod docs_cmd;
mod doctor_cmd;
mod extension_cmd;
mod fileinfo_cmd;
mod input;
mod metrics_cmd;
mod policy_cmd;
mod rule_cmd;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Gatehouse endpoint authorization agent",
    after_help = "Exit codes: 0 success; 1 failure (an error, an invalid policy, a refused \
                  request; the message on stderr says which); 2 usage error (clap's, or \
                  `policy import-santa` without input); 3 the extension is not running (nothing \
                  listens on its control socket). `extension` on macOS passes the host app's \
                  own codes through."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Linux, root: start the helper and the extension in the foreground; Ctrl-C stops both.
    Run(run::RunArgs),
    /// Linux, root: a self-contained tour in a scratch directory: a block, an allow, a protected
    /// file, then the helper frozen and killed while the extension keeps answering.
    Demo(run::DemoArgs),
    /// The extension's state: mode, policy file and content hash, rule counts, scope, marks,
    /// mutes, helper, events log.
    Status(control::ReadArgs),
    /// Counters, latency percentiles, fallbacks, cache hit rate, queue depth.
    Stats(control::ReadArgs),
    /// Counters and latency percentiles in the Prometheus text format (stdout or a
    /// textfile-collector file).
    Metrics(metrics_cmd::MetricsArgs),
    /// A file's SHA-256 and (Linux) the package that owns it, checked against its digest.
    Fileinfo(fileinfo_cmd::FileinfoArgs),
    /// Check this machine: root, kernel features, extension and helper, policy and rules,
    /// file permissions, disk space; each problem with what to do. Exit 1 on any failure.
    Doctor(doctor_cmd::DoctorArgs),
    /// Validate, evaluate, load, show or import policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Local rules: add, remove, list (with their tier) and reload.
    #[command(subcommand)]
    Rule(rule_cmd::RuleCommand),
    /// Manage muted paths.
    #[command(subcommand)]
    Mute(control::MuteCommand),
    /// Read the events log.
    #[command(subcommand)]
    Events(control::EventsCommand),
    /// Talk to the analysis helper through the extension.
    #[command(subcommand)]
    Helper(control::HelperCommand),
    /// macOS: activate, deactivate or query the system extension.
    #[command(subcommand)]
    Extension(extension_cmd::ExtensionCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(docs_cmd::CompletionsArgs),
    /// Write man pages for `gatehouse` and each subcommand into a directory.
    Man(docs_cmd::ManArgs),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file; errors name the file, line, column and rule.
    Check(policy_cmd::CheckArgs),
    /// Decide one event offline and print the verdict, the deciding rule and whether the slow
    /// path would be needed.
    Eval(policy_cmd::EvalArgs),
    /// Translate Santa rules (JSON) and a file-access plist into a Gatehouse policy.
    ImportSanta(policy_cmd::ImportSantaArgs),
    /// Hot-reload the running extension's policy (a bad file changes nothing).
    Load(control::PolicyLoadArgs),
    /// Print the running extension's policy.
    Show(control::ReadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Demo(a) => run::demo(a),
        Command::Status(a) => control::status(a),
        Command::Stats(a) => control::stats(a),
        Command::Metrics(a) => metrics_cmd::metrics(a),
        Command::Fileinfo(a) => fileinfo_cmd::fileinfo(a),
        Command::Doctor(a) => doctor_cmd::doctor(a),
        Command::Policy(PolicyCommand::Check(a)) => policy_cmd::check(a),
        Command::Policy(PolicyCommand::Eval(a)) => policy_cmd::eval(a),
        Command::Policy(PolicyCommand::ImportSanta(a)) => policy_cmd::import_santa(a),
        Command::Policy(PolicyCommand::Load(a)) => control::policy_load(a),
        Command::Policy(PolicyCommand::Show(a)) => control::policy_show(a),
        Command::Rule(c) => rule_cmd::rule(c),
        Command::Mute(c) => control::mute(c),
        Command::Events(c) => control::events(c),
        Command::Helper(c) => control::helper(c),
        Command::Extension(c) => extension_cmd::extension(c),
        Command::Completions(a) => docs_cmd::completions::<Cli>(a),
        Command::Man(a) => docs_cmd::man::<Cli>(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // anyhow's alternate form prints the whole context chain on one line.
            eprintln!("gatehouse: error: {e:#}");
            if e.downcast_ref::<control::NotRunning>().is_some() {
                ExitCode::from(control::EXIT_NOT_RUNNING)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
