//! Package trust on RPM hosts against a real rpm database: a tiny package is built with
//! `rpmbuild` and installed with `rpm --root` into a scratch root, then the helper's backend
//! choice ([`analysis_helper::linux::package_trust`]) is asked about files in that root.
//! Plus the backend choice for roots without an rpm database, which needs no tool.
#![cfg(target_os = "linux")]
#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use analysis_helper::analyzer::{AnalysisError, Input, PackageTrust};
use analysis_helper::linux::package_trust;
use model::FileRef;

const MAX: u64 = 1 << 20;

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds a noarch rpm named `name` shipping `/opt/<name>/tool` (0755, `tool` contents),
/// `/opt/<name>/victim` and the `%config` file `/opt/<name>/app.conf`; returns its path.
fn build_rpm(scratch: &Path, name: &str, tool: &str) -> PathBuf {
    let top = scratch.join(format!("top-{name}"));
    std::fs::create_dir_all(top.join("SPECS")).unwrap();
    let spec = top.join("SPECS").join(format!("{name}.spec"));
    std::fs::write(
        &spec,
        format!(
            "Name: {name}\nVersion: 1.0\nRelease: 1\nSummary: gatehouse rpm trust test\n\
             License: none\nBuildArch: noarch\n%description\ntest\n%install\n\
             mkdir -p %{{buildroot}}/opt/{name}\n\
             printf '%s' '{tool}' > %{{buildroot}}/opt/{name}/tool\n\
             chmod 755 %{{buildroot}}/opt/{name}/tool\n\
             echo victim > %{{buildroot}}/opt/{name}/victim\n\
             echo setting=1 > %{{buildroot}}/opt/{name}/app.conf\n\
             %files\n/opt/{name}/tool\n/opt/{name}/victim\n%config /opt/{name}/app.conf\n"
        ),
    )
    .unwrap();
    run(Command::new("rpmbuild")
        .arg("-bb")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .arg("--define")
        .arg(format!("_tmppath {}", scratch.display()))
        // No post-install processing (stripping, build-id links) and no payload compression:
        // the test needs only the file list and digests.
        .args(["--define", "__spec_install_post %{nil}"])
        .args(["--define", "_build_id_links none"])
        .args(["--define", "_binary_payload w.ufdio"])
        .arg(&spec));
    top.join("RPMS/noarch")
        .join(format!("{name}-1.0-1.noarch.rpm"))
}

fn install(root: &Path, rpm: &Path) {
    run(Command::new("rpm")
        .arg("--root")
        .arg(root)
        .args(["--dbpath", "/var/lib/rpm", "-i", "--nodeps", "--noscripts"])
        .arg(rpm));
}

fn ask(db: &dyn PackageTrust, path: &Path) -> Result<model::PackageTrust, AnalysisError> {
    let f = std::fs::File::open(path).unwrap();
    let file = FileRef::new(path.display().to_string());
    db.package_trust(&Input {
        file: &file,
        fd: Some(f.as_fd()),
        deadline: Instant::now() + Duration::from_secs(60),
    })
}

#[test]
fn rpm_database_trusts_installed_files_only() {
    const TEST: &str = "rpm_database_trusts_installed_files_only";
    if !have("rpm") || !have("rpmbuild") {
        eprintln!(
            "SKIP {TEST}: needs rpm and rpmbuild (Debian package `rpm`; scripts/test installs it)"
        );
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let scratch = std::fs::canonicalize(scratch.path()).unwrap();
    let root = scratch.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let first = build_rpm(&scratch, "gh-rpm-one", "tool one");
    let second = build_rpm(&scratch, "gh-rpm-two", "tool two");
    install(&root, &first);

    let pkg = root.join("opt/gh-rpm-one");
    // Same contents as the packaged tool, but no package owns these paths.
    std::fs::write(pkg.join("stray"), "tool one").unwrap();
    let outside = scratch.join("outside-root-tool");
    std::fs::write(&outside, "tool one").unwrap();
    // Owned files changed after installation, in place.
    let append = |p: &Path| {
        OpenOptions::new()
            .append(true)
            .open(p)
            .unwrap()
            .write_all(b"tampered\n")
            .unwrap();
    };
    append(&pkg.join("victim"));
    append(&pkg.join("app.conf"));

    let db = package_trust(&root, MAX);
    let label = Some("gh-rpm-one-1.0-1.noarch");
    let cases: [(&str, PathBuf, Option<&str>, bool); 5] = [
        ("installed, unchanged", pkg.join("tool"), label, true),
        (
            "installed, modified in place",
            pkg.join("victim"),
            label,
            false,
        ),
        ("%config file, edited", pkg.join("app.conf"), label, false),
        ("unowned, same contents", pkg.join("stray"), None, false),
        ("outside the database's root", outside, None, false),
    ];
    for (what, path, package, trusted) in &cases {
        let got = ask(&*db, path).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got.package.as_deref(), *package, "{what}");
        assert_eq!(got.trusted, *trusted, "{what}");
    }

    // A later install changes the database: the generation moves (so the service's cache drops
    // older answers) and the new package's files are found.
    let before = db.generation();
    assert_eq!(before, db.generation(), "stable while the database is");
    install(&root, &second);
    assert_ne!(db.generation(), before, "an install changes the generation");
    let got = ask(&*db, &root.join("opt/gh-rpm-two/tool")).unwrap();
    assert_eq!(got.package.as_deref(), Some("gh-rpm-two-1.0-1.noarch"));
    assert!(got.trusted);
    // And the first package is still there.
    assert!(ask(&*db, &pkg.join("tool")).unwrap().trusted);
}

/// Backend choice for roots with no rpm database: what each answers for an arbitrary file.
#[test]
fn backend_choice_without_an_rpm_database() {
    let file = tempfile::NamedTempFile::new().unwrap();
    type Check = fn(&Result<model::PackageTrust, AnalysisError>) -> bool;
    let cases: [(&str, &[&str], Check); 4] = [
        (
            "nothing",
            &[],
            |r| matches!(r, Err(AnalysisError::Unsupported(m)) if m.contains("no dpkg database") && m.contains("no rpm database")),
        ),
        (
            "Berkeley DB rpm database",
            &["var/lib/rpm/Packages"],
            |r| matches!(r, Err(AnalysisError::Unsupported(m)) if m.contains("Berkeley DB")),
        ),
        (
            "ndb rpm database",
            &["usr/lib/sysimage/rpm/Packages.db"],
            |r| matches!(r, Err(AnalysisError::Unsupported(m)) if m.contains("ndb")),
        ),
        // dpkg wins over rpm (Debian hosts may carry an rpm database for rpm itself); an empty
        // dpkg database owns nothing.
        (
            "dpkg and rpm",
            &["var/lib/dpkg/status", "var/lib/rpm/rpmdb.sqlite"],
            |r| matches!(r, Ok(p) if p.package.is_none() && !p.trusted),
        ),
    ];
    for (what, files, check) in cases {
        let root = tempfile::tempdir().unwrap();
        for f in files {
            let p = root.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        std::fs::create_dir_all(root.path().join("var/lib/dpkg/info")).unwrap();
        let got = ask(&*package_trust(root.path(), MAX), file.path());
        assert!(check(&got), "{what}: {got:?}");
    }
}
