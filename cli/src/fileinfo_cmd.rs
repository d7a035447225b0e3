//! `gatehouse fileinfo PATH`: a file's SHA-256, its kind (binary or script), on Linux the
//! package that owns it (the helper's own dpkg/rpm code, through its library) and whether its
//! contents match the package's recorded digest, and the decision a policy would make on its
//! execution (the rule, and why), as the extension would decide it with those facts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use model::{Facts, Outcome, Reason};
use policy::Os;

#[derive(Debug, Args)]
pub struct FileinfoArgs {
    /// The file to describe (a regular file).
    pub path: PathBuf,
    /// Decide with this policy file; by default this OS's installed policy, or the embedded
    /// default when there is none.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Decide as this OS's build would (`linux`, `macos`).
    #[arg(long, value_name = "OS", default_value_t = Os::HOST)]
    pub os: Os,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

/// Files larger than this are not hashed or checked (the helper's own analysis limit).
const MAX_FILE: u64 = 512 * 1024 * 1024;

pub fn fileinfo(a: FileinfoArgs) -> anyhow::Result<ExitCode> {
    // A FIFO or a device is refused at once (non-blocking open, regular files only).
    let file = protocol::bounded::open_regular(&a.path)?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat {}", a.path.display()))?;
    if meta.len() > MAX_FILE {
        anyhow::bail!(
            "{} is larger than {MAX_FILE} bytes; not hashed",
            a.path.display()
        );
    }
    let package = package_of(&a.path, &file);
    let (event, sha, kind) = crate::policy_cmd::exec_event(&a.path)?;
    let (policy, origin) = crate::input::static_policy(a.policy.as_deref(), a.os)?;
    let facts = Facts {
        sha256: Some(sha),
        file_kind: Some(kind),
        package: package.as_ref().ok().cloned(),
        ..Facts::NONE
    };
    let outcome = policy.decide(&event, &facts);
    let (verdict, why, rule, message) = match &outcome {
        Outcome::Decided(d) => {
            let verdict = match d.verdict {
                model::Verdict::Allow if d.would_deny => "allow (monitor mode; enforce would deny)",
                model::Verdict::Allow => "allow",
                model::Verdict::Deny => "deny",
            };
            let (why, rule, message) = match &d.reason {
                Reason::Rule { rule } => (
                    format!("rule {}", rule.name),
                    Some(rule.name.clone()),
                    policy.rule_message(rule).map(str::to_owned),
                ),
                Reason::Default => ("no rule matched: the mode's default".to_owned(), None, None),
                Reason::PlatformBinary => (
                    "a platform binary (on Linux: packaged, contents verified)".to_owned(),
                    None,
                    None,
                ),
                Reason::NotABinary => (
                    "not a binary (a script): out of scope, its interpreter is decided".to_owned(),
                    None,
                    None,
                ),
                other => (format!("{other:?}"), None, None),
            };
            (verdict.to_owned(), why, rule, message)
        }
        Outcome::Analyze(r) => (
            "undecided".to_owned(),
            format!("needs facts only the running helper has ({:?})", r.needs),
            None,
            None,
        ),
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "path": event.subject_file().map(|f| f.path.clone()),
                "size": meta.len(),
                "sha256": sha.to_hex(),
                "kind": kind,
                "package": package.as_ref().ok().and_then(|p| p.package.clone()),
                "package_verified": package.as_ref().ok().map(|p| p.trusted),
                "package_error": package.as_ref().err().map(|e| e.to_string()),
                "decision": {
                    "policy": origin, "verdict": verdict, "why": why, "rule": rule,
                    "message": message,
                },
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let show = |s: &str| crate::control::escape_controls(s).into_owned();
    println!("path:     {}", show(&a.path.display().to_string()));
    println!("size:     {} bytes", meta.len());
    println!("sha256:   {}", sha.to_hex());
    println!("kind:     {kind:?}");
    match &package {
        Ok(model::PackageTrust {
            package: Some(p),
            trusted,
        }) => println!(
            "package:  {} ({})",
            show(p),
            if *trusted {
                "contents match the package's digest"
            } else {
                "contents DIFFER from the package's digest"
            }
        ),
        Ok(_) => println!("package:  none (not owned by an installed package)"),
        Err(e) => println!("package:  unknown ({})", show(&e.to_string())),
    }
    println!(
        "exec:     {verdict}: {} (policy {})",
        show(&why),
        show(&origin)
    );
    if let Some(m) = &message {
        println!("message:  {}", show(m));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(target_os = "linux")]
fn package_of(path: &Path, file: &std::fs::File) -> anyhow::Result<model::PackageTrust> {
    use std::os::fd::AsFd;
    let abs = std::path::absolute(path)?;
    let fref = model::FileRef::new(abs.display().to_string());
    let input = analysis_helper::analyzer::Input {
        file: &fref,
        fd: Some(file.as_fd()),
        deadline: std::time::Instant::now() + std::time::Duration::from_secs(30),
    };
    let trust = analysis_helper::linux::package_trust(Path::new("/"), MAX_FILE);
    trust
        .package_trust(&input)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(not(target_os = "linux"))]
fn package_of(_path: &Path, _file: &std::fs::File) -> anyhow::Result<model::PackageTrust> {
    anyhow::bail!("package ownership is read on Linux only")
}
