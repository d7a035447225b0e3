//! `gatehouse rule add|remove|list|reload`: the local rules tier. Rules live in their own file
//! (`defaults::Os::local_rules`), validated before every write, written atomically (a temporary
//! file in the same directory, synced, renamed over the old one), and hot-loaded by the running
//! extension (`ControlRequest::LocalRulesLoad`), which also loads the file when it starts. They
//! rank below every rule of the policy file (see the policy crate's FORMAT.md).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use policy::local::{LOCAL_RULES_MAX_BYTES, LocalDoc, LocalExec, LocalPath};
use policy::{LocalRules, Os, Tier};
use protocol::{ControlRequest, ControlResponse};

const DEFAULT_RULES_FILE: &str = defaults::Os::HOST.local_rules();
const DEFAULT_CONTROL_SOCKET: &str = defaults::Os::HOST.paths().control_socket;

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Add a local rule (ranks below every rule of the policy file) and hot-load it.
    Add(Box<AddArgs>),
    /// Remove local rules by name (`local:NAME` or `NAME`) or identifier (`sha256:HEX`,
    /// `team_id:ID`, `signing_id:TEAM:ID`, `path:PREFIX`, `regex:RE`, ...) and hot-load.
    Remove(RemoveArgs),
    /// List every rule with its tier: the policy file's (static) and the local ones.
    List(ListArgs),
    /// Ask the running extension to load the local rules file again.
    Reload(FileArgs),
    /// The transitive allows the running extension recorded: files that processes allowed by
    /// a compiler rule wrote (`transitive_rules = true`), allowed by SHA-256.
    #[command(subcommand)]
    Transitive(TransitiveCommand),
}

#[derive(Debug, Subcommand)]
pub enum TransitiveCommand {
    /// List the transitive allows in force, oldest first.
    List(TransitiveListArgs),
    /// Remove every transitive allow, from the running extension and from the file it keeps
    /// them in; their files' execs are decided again as any unknown binary.
    Clear(TransitiveClearArgs),
}

#[derive(Debug, Args)]
pub struct TransitiveListArgs {
    /// The extension's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TransitiveClearArgs {
    /// The extension's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct FileArgs {
    /// The local rules file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_RULES_FILE)]
    pub rules_file: PathBuf,
    /// The extension's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// Only write the file; do not ask the extension to load it.
    #[arg(long)]
    pub no_reload: bool,
    /// Validate as this OS's build does.
    #[arg(long, value_name = "OS", default_value_t = Os::HOST)]
    pub os: Os,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuleAction {
    Allow,
    Block,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("identifier").required(true).args([
    "sha256", "file", "cdhash", "signing_id", "certificate", "team_id", "path_prefix", "path_regex",
])))]
pub struct AddArgs {
    /// Allow or block what the rule names.
    #[arg(long, value_enum)]
    pub action: RuleAction,
    /// The executable's SHA-256 (64 hex).
    #[arg(long)]
    pub sha256: Option<String>,
    /// The SHA-256 of this file, computed here.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// The code directory hash (40 hex; macOS, counted only when the kernel enforces it).
    #[arg(long)]
    pub cdhash: Option<String>,
    /// `TEAMID:signing.id` or `platform:signing.id`.
    #[arg(long)]
    pub signing_id: Option<String>,
    /// Leaf certificate SHA-256 (64 hex).
    #[arg(long)]
    pub certificate: Option<String>,
    /// The signing team id (10 letters or digits; macOS).
    #[arg(long)]
    pub team_id: Option<String>,
    /// An exec path scope: a plain string prefix of the executable's path.
    #[arg(long)]
    pub path_prefix: Option<String>,
    /// An exec path scope: a regex over the executable's path.
    #[arg(long)]
    pub path_regex: Option<String>,
    /// The rule's name (decisions carry it as `local:NAME`); generated when absent.
    #[arg(long)]
    pub name: Option<String>,
    /// Shown to the user on a block.
    #[arg(long)]
    pub message: Option<String>,
    #[command(flatten)]
    pub file_args: FileArgs,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// Rule names or identifiers, as `rule list` shows them.
    #[arg(required = true)]
    pub keys: Vec<String>,
    #[command(flatten)]
    pub file_args: FileArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The policy file (the static tier); without it, the OS default or the embedded default.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// The local rules file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_RULES_FILE)]
    pub rules_file: PathBuf,
    /// Compile the rules as this OS's build does (`linux`, `macos`).
    #[arg(long, value_name = "OS", default_value_t = Os::HOST)]
    pub os: Os,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn rule(c: RuleCommand) -> anyhow::Result<ExitCode> {
    match c {
        RuleCommand::Add(a) => add(*a),
        RuleCommand::Remove(a) => remove(a),
        RuleCommand::List(a) => list(a),
        RuleCommand::Reload(a) => reload(&a),
        RuleCommand::Transitive(TransitiveCommand::List(a)) => transitive_list(&a),
        RuleCommand::Transitive(TransitiveCommand::Clear(a)) => transitive_clear(&a),
    }
}

fn transitive_list(a: &TransitiveListArgs) -> anyhow::Result<ExitCode> {
    let entries = match crate::control::ask(&a.control_socket, &ControlRequest::TransitiveList)? {
        ControlResponse::TransitiveList(v) => v,
        ControlResponse::Error { message } => bail!("transitive allows not listed: {message}"),
        other => bail!("unexpected answer to the transitive list: {other:?}"),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} transitive allow(s)", entries.len());
    for e in &entries {
        println!("  {}  {:<24} {}", e.sha256, e.compiler_rule, e.path);
    }
    Ok(ExitCode::SUCCESS)
}

fn transitive_clear(a: &TransitiveClearArgs) -> anyhow::Result<ExitCode> {
    match crate::control::ask(&a.control_socket, &ControlRequest::TransitiveClear)? {
        ControlResponse::TransitiveCleared { removed } => {
            println!("cleared {removed} transitive allow(s)");
            Ok(ExitCode::SUCCESS)
        }
        ControlResponse::Error { message } => bail!("transitive allows not cleared: {message}"),
        other => bail!("unexpected answer to the transitive clear: {other:?}"),
    }
}

/// The SHA-256 of the regular file at `path` as lower-case hex, streamed through a descriptor
/// opened by `protocol::bounded` (a FIFO or device is refused at once), with that descriptor's
/// `fstat` (the identity of the bytes hashed, not of whatever the path names later).
pub fn file_digest(path: &Path) -> anyhow::Result<(String, std::fs::Metadata)> {
    use sha2::Digest as _;
    let mut f = protocol::bounded::open_regular(path)?;
    let meta = f
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {} failed", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, meta))
}

/// The editable local rules at `path`: empty when the file does not exist.
fn read_doc(path: &Path) -> anyhow::Result<LocalDoc> {
    match protocol::bounded::read_text(path, LOCAL_RULES_MAX_BYTES) {
        Ok(text) => LocalDoc::from_toml(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a local rules file ({e}); fix or remove it, then retry",
                path.display()
            )
        }),
        Err(protocol::bounded::InputError::Open { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(LocalDoc::new())
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes `text` to `path` atomically (a crash leaves the old file or the new one, whole).
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    protocol::bounded::write_atomic(path, text.as_bytes(), 0o644)
        .with_context(|| format!("cannot write {} (are you root?)", path.display()))
}

/// Validates, writes and (unless told not to) hot-loads `doc`.
fn save(doc: &LocalDoc, a: &FileArgs, what: &str) -> anyhow::Result<ExitCode> {
    let origin = a.rules_file.display().to_string();
    let (text, rules) = match doc.validate(&origin, a.os) {
        Ok(v) => v,
        Err(e) => bail!("{e}; nothing was written"),
    };
    write_atomic(&a.rules_file, &text)?;
    println!("{what}; {} now holds {} local rules", origin, rules.len());
    if a.no_reload {
        return Ok(ExitCode::SUCCESS);
    }
    reload(a)
}

fn reload(a: &FileArgs) -> anyhow::Result<ExitCode> {
    let abs = std::path::absolute(&a.rules_file)
        .with_context(|| format!("cannot make {} absolute", a.rules_file.display()))?;
    let path = abs
        .to_str()
        .context("the local rules path is not UTF-8; the control protocol carries text")?
        .to_owned();
    match crate::control::ask(&a.control_socket, &ControlRequest::LocalRulesLoad { path }) {
        Ok(ControlResponse::PolicyLoaded { version }) => {
            println!("the extension loaded the local rules (policy version {version})");
            Ok(ExitCode::SUCCESS)
        }
        Ok(other) => bail!("unexpected answer to the local rules load: {other:?}"),
        // Only a stopped extension is fine: it reads the file when it starts. A refusal (a
        // bad file) is an error.
        Err(e) if e.downcast_ref::<crate::control::NotRunning>().is_none() => Err(e),
        Err(e) => {
            eprintln!(
                "gatehouse: warning: the extension was not told ({e:#}); it loads its local \
                 rules file ({DEFAULT_RULES_FILE}) when it starts, or run `gatehouse rule reload`"
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn add(a: AddArgs) -> anyhow::Result<ExitCode> {
    let mut doc = read_doc(&a.file_args.rules_file)?;
    let action = match a.action {
        RuleAction::Allow => "allow",
        RuleAction::Block => "block",
    }
    .to_owned();
    let sha256 = match (&a.sha256, &a.file) {
        (_, Some(f)) => Some(file_digest(f)?.0),
        (s, None) => s.clone(),
    };
    let added = if a.path_prefix.is_some() || a.path_regex.is_some() {
        let r = LocalPath {
            name: a.name.clone(),
            action,
            prefix: a.path_prefix.clone(),
            regex: a.path_regex.clone(),
            message: a.message.clone(),
        };
        let id = r.identifier().unwrap_or_default();
        doc.exec_path.push(r);
        id
    } else {
        let r = LocalExec {
            name: a.name.clone(),
            action,
            cdhash: a.cdhash.clone(),
            sha256,
            signing_id: a.signing_id.clone(),
            certificate: a.certificate.clone(),
            team_id: a.team_id.clone(),
            message: a.message.clone(),
        };
        let id = r.identifier().unwrap_or_default();
        // The same identifier again replaces the earlier rule (as Santa's database does).
        doc.remove(&id);
        doc.exec.push(r);
        id
    };
    let shown = a.name.as_deref().unwrap_or(&added);
    save(&doc, &a.file_args, &format!("added local:{shown}"))
}

fn remove(a: RemoveArgs) -> anyhow::Result<ExitCode> {
    let mut doc = read_doc(&a.file_args.rules_file)?;
    let mut gone = 0;
    for k in &a.keys {
        let n = doc.remove(k);
        if n == 0 {
            bail!(
                "no local rule is named or identified by {k:?} (see `gatehouse rule list`); \
                 nothing was written"
            );
        }
        gone += n;
    }
    save(&doc, &a.file_args, &format!("removed {gone} local rules"))
}

fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let (base, _) = crate::input::static_policy(a.policy.as_deref(), a.os)?;
    let local = match protocol::bounded::read_text(&a.rules_file, LOCAL_RULES_MAX_BYTES) {
        Ok(text) => Some(
            LocalRules::parse_for(&a.rules_file.display().to_string(), &text, a.os)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        Err(protocol::bounded::InputError::Open { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            None
        }
        Err(e) => return Err(e.into()),
    };
    let p = base.with_local(local);
    let rules = p.rules();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rules)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("static tier: {} (ranks first)", p.origin());
    for r in rules.iter().filter(|r| r.tier == Tier::Static) {
        println!("  static  {:<40} {}", r.name, r.what);
    }
    println!("local tier: {}", a.rules_file.display());
    for r in rules.iter().filter(|r| r.tier == Tier::Local) {
        println!("  local   {:<40} {}", r.name, r.what);
    }
    Ok(ExitCode::SUCCESS)
}
