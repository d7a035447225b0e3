//! `gatehouse fileinfo PATH`: a file's SHA-256 and, on Linux, the package that owns it (the
//! helper's own dpkg/rpm code, through its library) and whether its contents match the
//! package's recorded digest.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sha2::Digest;

#[derive(Debug, Args)]
pub struct FileinfoArgs {
    /// The file to describe (a regular file).
    pub path: PathBuf,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

/// Files larger than this are not hashed or checked (the helper's own analysis limit).
const MAX_FILE: u64 = 512 * 1024 * 1024;

pub fn fileinfo(a: FileinfoArgs) -> anyhow::Result<ExitCode> {
    let file = std::fs::File::open(&a.path)
        .with_context(|| format!("cannot open {}", a.path.display()))?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file", a.path.display());
    }
    if meta.len() > MAX_FILE {
        anyhow::bail!(
            "{} is larger than {MAX_FILE} bytes; not hashed",
            a.path.display()
        );
    }
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::io::BufReader::new(&file), &mut hasher)
        .with_context(|| format!("cannot read {}", a.path.display()))?;
    let sha = model::Sha256(hasher.finalize().into()).to_hex();
    let package = package_of(&a.path, &file);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "path": a.path, "size": meta.len(), "sha256": sha,
                "package": package.as_ref().ok().and_then(|p| p.package.clone()),
                "package_verified": package.as_ref().ok().map(|p| p.trusted),
                "package_error": package.as_ref().err().map(|e| e.to_string()),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let show = |s: &str| crate::control::escape_controls(s).into_owned();
    println!("path:     {}", show(&a.path.display().to_string()));
    println!("size:     {} bytes", meta.len());
    println!("sha256:   {sha}");
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
    Ok(ExitCode::SUCCESS)
}

#[cfg(target_os = "linux")]
fn package_of(path: &std::path::Path, file: &std::fs::File) -> anyhow::Result<model::PackageTrust> {
    use std::os::fd::AsFd;
    let abs = std::path::absolute(path)?;
    let fref = model::FileRef::new(abs.display().to_string());
    let input = analysis_helper::analyzer::Input {
        file: &fref,
        fd: Some(file.as_fd()),
        deadline: std::time::Instant::now() + std::time::Duration::from_secs(30),
    };
    let trust = analysis_helper::linux::package_trust(std::path::Path::new("/"), MAX_FILE);
    trust
        .package_trust(&input)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(not(target_os = "linux"))]
fn package_of(
    _path: &std::path::Path,
    _file: &std::fs::File,
) -> anyhow::Result<model::PackageTrust> {
    anyhow::bail!("package ownership is read on Linux only")
}
