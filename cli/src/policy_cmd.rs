//! Offline policy commands: `policy check`, `policy eval`, `policy import-santa`. They read
//! files only and never talk to a running extension.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use model::{Event, Facts, Outcome, Reason};
use policy::{Os, Policy, PolicyError};
use serde_json::json;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policy file (TOML).
    pub file: PathBuf,
    /// Compile as this OS's build does (`linux`, `macos`); on macOS `/var`, `/etc` and `/tmp`
    /// paths become `/private/...`, and each rewrite is listed.
    #[arg(long, value_name = "OS", default_value_t = Os::HOST)]
    pub os: Os,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["event", "exec"])))]
pub struct EvalArgs {
    /// The policy file (TOML).
    pub file: PathBuf,
    /// The event as the model's JSON form (see FORMAT.md, "Event and facts JSON").
    #[arg(long)]
    pub event: Option<PathBuf>,
    /// Decide the execution of this file: an exec event is built from it (its resolved path,
    /// its identity) and its SHA-256 computed and added to the facts; the executable is taken
    /// as unsigned (Linux; on macOS pass --event with the signature to see signing rules).
    #[arg(long, value_name = "PATH")]
    pub exec: Option<PathBuf>,
    /// A local rules file to compose below the policy (the running extension's local tier).
    #[arg(long, value_name = "FILE")]
    pub local_rules: Option<PathBuf>,
    /// Facts the helper would supply (SHA-256, certificate, package, volume) as JSON, to see
    /// the decision after analysis.
    #[arg(long)]
    pub facts: Option<PathBuf>,
    /// Decide as this OS's build would (`linux`, `macos`): path canonicalization, the macOS
    /// system daemons allowed before the policy, the package-trust default.
    #[arg(long, value_name = "OS", default_value_t = Os::HOST)]
    pub os: Os,
    /// Print machine-readable JSON (verdict, rule, slow path, fallbacks).
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

const USAGE: u8 = 2;

fn error_json(e: &PolicyError) -> serde_json::Value {
    json!({
        "origin": e.origin,
        "line": e.line,
        "column": e.column,
        "rule": e.rule,
        "message": e.message,
    })
}

/// Parses `file`, printing the error (`file:line:col: message (rule NAME)`) on failure.
fn load(file: &Path, os: Os, as_json: bool) -> anyhow::Result<Result<Policy, ExitCode>> {
    let text = crate::input::policy_text(file)?;
    match Policy::parse_for(&file.display().to_string(), &text, os) {
        Ok(p) => Ok(Ok(p)),
        Err(e) => {
            if as_json {
                println!("{}", json!({ "ok": false, "error": error_json(&e) }));
            } else {
                println!("{e}");
            }
            Ok(Err(ExitCode::FAILURE))
        }
    }
}

pub fn check(a: CheckArgs) -> anyhow::Result<ExitCode> {
    let p = match load(&a.file, a.os, a.json)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    if a.json {
        println!(
            "{}",
            json!({
                "ok": true,
                "origin": p.origin(),
                "mode": p.mode(),
                "rules": p.rule_count(),
                "mutes": p.mutes().len(),
                "os": p.os(),
                "canonicalized": p
                    .canonicalized_paths()
                    .iter()
                    .map(|(from, to)| json!({ "from": from, "to": to }))
                    .collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "{}: ok ({} mode, {} rules, {} mutes)",
            p.origin(),
            match p.mode() {
                policy::Mode::Monitor => "monitor",
                policy::Mode::Enforce => "enforce",
            },
            p.rule_count(),
            p.mutes().len()
        );
        for (from, to) in p.canonicalized_paths() {
            println!(
                "{}: {from} compiles to {to} (the path the kernel reports)",
                p.os()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn eval(a: EvalArgs) -> anyhow::Result<ExitCode> {
    let p = match load(&a.file, a.os, a.json)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let p = match &a.local_rules {
        Some(f) => {
            let text = protocol::bounded::read_text(f, policy::local::LOCAL_RULES_MAX_BYTES)?;
            match policy::LocalRules::parse_for(&f.display().to_string(), &text, a.os) {
                Ok(l) => p.with_local(Some(l)),
                Err(e) => {
                    println!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        None => p,
    };
    let mut facts: Facts = match &a.facts {
        Some(f) => serde_json::from_str(&crate::input::json_text(f)?)
            .with_context(|| format!("{} is not a facts JSON object", f.display()))?,
        None => Facts::NONE,
    };
    let event: Event = match (&a.event, &a.exec) {
        (Some(e), _) => serde_json::from_str(&crate::input::json_text(e)?)
            .with_context(|| format!("{} is not an event in the model's JSON form", e.display()))?,
        (None, Some(x)) => {
            let (ev, sha, kind) = exec_event(x)?;
            // Facts given explicitly win over the computed ones.
            facts.sha256.get_or_insert(sha);
            facts.file_kind.get_or_insert(kind);
            ev
        }
        (None, None) => anyhow::bail!("give --event EVENT.json or --exec PATH"),
    };
    // The extension allows the macOS daemons the slow path waits on before the policy.
    let dependency = policy::macos_slow_path_dependency(a.os, &event);
    let outcome = match dependency {
        Some(_) => Outcome::Decided(model::Decision::allow(
            Reason::SlowPathDependency,
            model::Cacheability::Kernel,
        )),
        None => p.decide(&event, &facts),
    };
    let (verdict, rule, slow) = match &outcome {
        Outcome::Decided(d) => {
            let rule = match &d.reason {
                Reason::Rule { rule } => Some(rule.name.clone()),
                _ => None,
            };
            (Some(d.verdict), rule, false)
        }
        Outcome::Analyze(_) => (None, None, true),
    };
    // What the extension answers when analysis is needed and the helper cannot give it:
    // `helper_unavailable` (helper down, queue full, helper error) or `fallback` (late).
    let kind = event.kind();
    let fallbacks = slow.then(|| {
        (
            p.fallback(kind, model::FallbackReason::HelperUnavailable),
            p.fallback(kind, model::FallbackReason::Deadline),
        )
    });
    if a.json {
        println!(
            "{}",
            json!({
                "verdict": verdict,
                "rule": rule,
                "slow_path": slow,
                "fallback": fallbacks.map(|(unavailable, late)| json!({
                    "helper_unavailable": unavailable,
                    "late": late,
                })),
                "message": rule.as_ref().and_then(|r| p.rule_message(&model::RuleRef::new(r.as_str()))),
                "result": outcome,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    match &outcome {
        Outcome::Decided(d) => {
            let verdict = match d.verdict {
                model::Verdict::Allow => "allow",
                model::Verdict::Deny => "deny",
            };
            let why = match &d.reason {
                Reason::Rule { rule } => format!("rule {}", rule.name),
                Reason::Default => "mode default".into(),
                Reason::PlatformBinary => "platform binary".into(),
                Reason::InvalidSignature => "bad-signature protection".into(),
                Reason::Muted => "muted".into(),
                Reason::Cached => "cached".into(),
                Reason::SlowPathDependency => match dependency {
                    Some(d) => format!(
                        "slow-path dependency (macOS system daemon {}, {})",
                        d.signing_id, d.path
                    ),
                    None => "slow-path dependency (pinned at start)".into(),
                },
                Reason::Fallback { why } => format!("fallback ({})", why.as_str()),
                Reason::NotABinary => "not a binary (a script): allowed by scope".into(),
            };
            let mut flags = Vec::new();
            if d.would_deny {
                flags.push("would deny in enforce mode");
            }
            if d.audit_only {
                flags.push("audit only");
            }
            let cache = match d.cacheable {
                model::Cacheability::Never => "never",
                model::Cacheability::Identity => "identity",
                model::Cacheability::Kernel => "kernel",
            };
            let extra = if flags.is_empty() {
                String::new()
            } else {
                format!(", {}", flags.join(", "))
            };
            println!("{verdict}: {why} (cache: {cache}{extra}; slow path: not needed)");
        }
        Outcome::Analyze(r) => {
            let n = r.needs;
            let needs: Vec<&str> = [
                (n.sha256, "sha256"),
                (n.certificate, "certificate"),
                (n.package, "package"),
                (n.volume, "volume"),
            ]
            .into_iter()
            .filter_map(|(b, s)| b.then_some(s))
            .collect();
            println!(
                "analyze: slow path needed for {} (pass --facts to decide with them)",
                needs.join(", ")
            );
            if let Some((unavailable, late)) = fallbacks {
                let v = |v: model::Verdict| match v {
                    model::Verdict::Allow => "allow",
                    model::Verdict::Deny => "deny",
                };
                println!(
                    "  if the helper is unavailable, erring or the queue is full: {} \
                     (helper_unavailable for {}); if it answers late: {} (fallback)",
                    v(unavailable),
                    kind.as_str(),
                    v(late)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An exec of the file at `path` by an unsigned shell, with the file's resolved path and its
/// identity from the descriptor it was hashed through, its SHA-256 and its kind (binary or
/// script, from its first bytes).
pub(crate) fn exec_event(path: &Path) -> anyhow::Result<(Event, model::Sha256, model::FileKind)> {
    let resolved = std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let (hex, meta) = crate::rule_cmd::file_digest(&resolved)?;
    let sha: model::Sha256 = hex
        .parse()
        .map_err(|e| anyhow::anyhow!("internal: digest {hex} did not parse: {e:?}"))?;
    let kind = {
        use std::io::Read;
        let mut prefix = Vec::with_capacity(model::FileKind::PREFIX);
        std::fs::File::open(&resolved)
            .and_then(|f| {
                f.take(model::FileKind::PREFIX as u64)
                    .read_to_end(&mut prefix)
            })
            .with_context(|| format!("cannot read the start of {}", resolved.display()))?;
        model::FileKind::of(&prefix)
    };
    let target = model::Process {
        pid: 0,
        pid_version: None,
        ppid: None,
        uid: 0,
        gid: 0,
        executable: model::FileRef {
            path: resolved.to_string_lossy().into_owned(),
            identity: Some(model::FileIdentity::from(&meta)),
        },
        signing: model::CodeSigning::unsigned(),
        audit_token: None,
    };
    let shell = model::Process {
        executable: model::FileRef::new("/bin/sh"),
        ..target.clone()
    };
    let ev = Event {
        process: shell,
        body: model::EventBody::Exec {
            target: Box::new(target),
        },
    };
    Ok((ev, sha, kind))
}

pub fn import_santa(a: ImportSantaArgs) -> anyhow::Result<ExitCode> {
    if a.rules.is_none() && a.file_access.is_none() {
        println!("gatehouse: error: give --rules R.json, --file-access FAA.plist, or both");
        return Ok(ExitCode::from(USAGE));
    }
    let rules = a
        .rules
        .as_deref()
        .map(crate::input::policy_text)
        .transpose()?;
    let faa = a
        .file_access
        .as_deref()
        .map(crate::input::policy_bytes)
        .transpose()?;
    let imported = policy::santa::import(rules.as_deref(), faa.as_deref())?;
    for n in &imported.notes {
        eprintln!("note: {n}");
    }
    // Never hand out a policy that Gatehouse itself would refuse.
    let origin = a
        .output
        .as_ref()
        .map_or("<imported>".to_owned(), |p| p.display().to_string());
    if let Err(e) = Policy::parse(&origin, &imported.policy) {
        println!("gatehouse: error: the imported policy is not valid: {e}");
        return Ok(ExitCode::FAILURE);
    }
    match &a.output {
        Some(path) => std::fs::write(path, &imported.policy)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{}", imported.policy),
    }
    Ok(ExitCode::SUCCESS)
}
