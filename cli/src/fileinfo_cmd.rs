//! `gatehouse fileinfo PATH`: a file's SHA-256, its kind (binary or script), on Linux the
//! package that owns it (the helper's own dpkg/rpm code, through its library) and whether its
//! contents match the package's recorded digest, on macOS its code signature (status, signing
//! id, team, CDHash, certificate chain: the helper's Security-framework code), and the decision
//! a policy would make on its execution (the rule, and why), as the extension would decide it
//! with those facts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use analysis_helper::file_signing::FileSigning;
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
    let (mut event, sha, kind) = crate::policy_cmd::exec_event(&a.path)?;
    let signing = signing_of(&event);
    // The exec decided with the signature the kernel would report for the file.
    if let (Some(Ok(s)), model::EventBody::Exec { target }) = (&signing, &mut event.body) {
        target.signing = s.code_signing();
    }
    let (policy, origin) = crate::input::static_policy(a.policy.as_deref(), a.os)?;
    let facts = Facts {
        sha256: Some(sha),
        file_kind: Some(kind),
        package: package.as_ref().ok().cloned(),
        certificate: signing
            .as_ref()
            .and_then(|s| s.as_ref().ok())
            .and_then(FileSigning::certificate),
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
                "signing": match &signing {
                    None => serde_json::Value::Null,
                    Some(Ok(s)) => signing_json(s),
                    Some(Err(e)) => serde_json::json!({ "error": e.to_string() }),
                },
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
    match &signing {
        None => {}
        Some(Ok(s)) => {
            for l in signing_lines(s) {
                println!("{}", show(&l));
            }
        }
        Some(Err(e)) => println!("signing:  unknown ({})", show(&e.to_string())),
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

/// The file's code signature (macOS): `None` where files carry none the system checks (Linux).
#[cfg(target_os = "macos")]
fn signing_of(event: &model::Event) -> Option<anyhow::Result<FileSigning>> {
    let path = event.subject_file()?.path.clone();
    Some(analysis_helper::macos::signing::file_signing(&path).map_err(|e| anyhow::anyhow!("{e}")))
}

#[cfg(not(target_os = "macos"))]
fn signing_of(_event: &model::Event) -> Option<anyhow::Result<FileSigning>> {
    None
}

/// The signature as `santactl fileinfo` shows it: status, Santa's signing-id form, team,
/// CDHash, and the chain leaf first with each certificate's SHA-256 (what certificate rules
/// name) and subject.
fn signing_lines(s: &FileSigning) -> Vec<String> {
    use analysis_helper::analyzer::Validity;
    let status = match (s.status(), s.validity) {
        (_, Validity::Invalid(rc)) => format!("invalid (OSStatus {rc})"),
        (st, _) => format!("{st:?}").to_lowercase().replace("adhoc", "ad hoc"),
    };
    let mut out = vec![format!(
        "signing:  {status}{}",
        if s.platform_identifier != 0 {
            ", platform binary"
        } else {
            ""
        }
    )];
    if let Some(id) = s.santa_signing_id() {
        out.push(format!("signing id: {id}"));
    }
    if let Some(t) = &s.team_id {
        out.push(format!("team id:  {t}"));
    }
    if let Some(c) = s.cdhash {
        out.push(format!("cdhash:   {c}"));
    }
    for (i, c) in s.chain.iter().enumerate() {
        let label = if i == 0 { "chain:" } else { "" };
        out.push(format!("{label:<10}{}. {}  {}", i + 1, c.sha256, c.summary));
    }
    out
}

fn signing_json(s: &FileSigning) -> serde_json::Value {
    serde_json::json!({
        "status": s.status(),
        "valid": s.validity == analysis_helper::analyzer::Validity::Valid,
        "signing_id": s.santa_signing_id(),
        "team_id": s.team_id,
        "cdhash": s.cdhash.map(|c| c.to_hex()),
        "platform_binary": s.platform_identifier != 0,
        "chain": s.chain.iter().map(|c| serde_json::json!({
            "sha256": c.sha256.to_hex(), "subject": c.summary,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use analysis_helper::analyzer::Validity;
    use analysis_helper::file_signing::ChainCert;

    fn signed(validity: Validity, chain: &[(&str, u8)], platform: u32) -> FileSigning {
        FileSigning {
            validity,
            identifier: Some("com.example.tool".to_owned()),
            team_id: (!chain.is_empty() && platform == 0).then(|| "EQHXZ8M8AV".to_owned()),
            cdhash: Some(model::CdHash([0xab; 20])),
            flags: 0,
            platform_identifier: platform,
            chain: chain
                .iter()
                .map(|(s, n)| ChainCert {
                    sha256: model::Sha256([*n; 32]),
                    summary: (*s).to_owned(),
                })
                .collect(),
        }
    }

    #[test]
    fn signing_lines_table() {
        let prod = [
            ("Developer ID Application: Example (EQHXZ8M8AV)", 1),
            ("Developer ID CA", 2),
        ];
        let rows: Vec<(FileSigning, Vec<String>)> = vec![
            (
                FileSigning {
                    identifier: None,
                    cdhash: None,
                    ..signed(Validity::Unsigned, &[], 0)
                },
                vec!["signing:  unsigned".to_owned()],
            ),
            (
                signed(Validity::Invalid(-67061), &prod, 0),
                vec![
                    "signing:  invalid (OSStatus -67061)".to_owned(),
                    "team id:  EQHXZ8M8AV".to_owned(),
                    format!("cdhash:   {}", "ab".repeat(20)),
                    format!(
                        "chain:    1. {}  Developer ID Application: Example (EQHXZ8M8AV)",
                        "01".repeat(32)
                    ),
                    format!("          2. {}  Developer ID CA", "02".repeat(32)),
                ],
            ),
            (
                signed(Validity::Valid, &[], 0),
                vec![
                    "signing:  ad hoc".to_owned(),
                    "signing id: com.example.tool".to_owned(),
                    format!("cdhash:   {}", "ab".repeat(20)),
                ],
            ),
            (
                signed(Validity::Valid, &[("Software Signing", 5)], 1),
                vec![
                    "signing:  production, platform binary".to_owned(),
                    "signing id: platform:com.example.tool".to_owned(),
                    format!("cdhash:   {}", "ab".repeat(20)),
                    format!("chain:    1. {}  Software Signing", "05".repeat(32)),
                ],
            ),
        ];
        for (s, want) in rows {
            assert_eq!(signing_lines(&s), want, "{s:?}");
        }
        let j = signing_json(&signed(Validity::Valid, &prod, 0));
        assert_eq!(j["status"], "production");
        assert_eq!(j["signing_id"], "EQHXZ8M8AV:com.example.tool");
        assert_eq!(j["chain"][1]["subject"], "Developer ID CA");
    }

    /// A signing-id rule decides the file as it would decide its exec: the CLI takes the same
    /// path through the policy as the extension, with the kernel's view of the signature.
    #[test]
    fn a_signing_id_rule_sees_the_files_signature() {
        let policy = policy::Policy::parse_for(
            "t.toml",
            "version = 1\nmode = \"enforce\"\n[[exec]]\nname = \"tool\"\naction = \"block\"\nsigning_id = \"EQHXZ8M8AV:com.example.tool\"\n",
            Os::Macos,
        )
        .unwrap();
        let file = std::env::current_exe().unwrap();
        let (mut event, sha, kind) = crate::policy_cmd::exec_event(&file).unwrap();
        let facts = Facts {
            sha256: Some(sha),
            file_kind: Some(kind),
            ..Facts::NONE
        };
        let decide = |e: &model::Event| match policy.decide(e, &facts) {
            Outcome::Decided(d) => (d.verdict, d.reason),
            Outcome::Analyze(r) => panic!("analysis {r:?}"),
        };
        let by_rule = |r: &Reason| matches!(r, Reason::Rule { rule } if rule.name == "tool");
        let unsigned = decide(&event);
        assert!(
            !by_rule(&unsigned.1),
            "unsigned: no signing-id match: {unsigned:?}"
        );
        let s = FileSigning {
            flags: analysis_helper::file_signing::CS_RUNTIME,
            ..signed(
                Validity::Valid,
                &[("Developer ID Application: Example (EQHXZ8M8AV)", 1)],
                0,
            )
        };
        if let model::EventBody::Exec { target } = &mut event.body {
            target.signing = s.code_signing();
        }
        let (verdict, reason) = decide(&event);
        assert_eq!(verdict, model::Verdict::Deny, "{reason:?}");
        assert!(by_rule(&reason), "{reason:?}");
    }
}
