//! Debian package trust: is the file behind a passed descriptor owned by an installed package,
//! with contents equal to the package's recorded MD5?
//!
//! The index (path -> package, MD5) is built from `/var/lib/dpkg/info/*.md5sums` on one builder
//! thread ([`super::built_index`], as rpm's): started by the helper's warm-up right after start ([`PackageTrust::warm`]), or by
//! the first request that finds no index for the current database; a request waits for it at
//! most until its own deadline and then reports the package fact as late, so its other facts
//! (the hash) still decide it. Measured: 1.8 s for 91,750 files on a busy 2-core machine, which
//! built inside a request made the first exec after every helper restart miss its deadline.
//! It is rebuilt when `/var/lib/dpkg/status` changes (every install, removal or upgrade
//! rewrites it). The file's path is the kernel's, from
//! `readlink /proc/self/fd/N` of the passed descriptor, not the request's claim. dpkg records
//! paths without the leading slash and, on /usr-merged systems, often under the pre-merge
//! directory (`bin/ls` for `/usr/bin/ls`), so both spellings are looked up there.
//! Not handled: `dpkg-divert` diversions (a diverted file is looked up under its new path, where
//! no package owns it, so it is simply untrusted).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use md5::Digest;

use crate::analyzer::{AnalysisError, Input, PackageTrust};
use crate::hash::digest_fd;

use super::built_index::BuiltIndex;

/// After a failed build, requests answer that failure for this long before a new build is tried.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Directories that /usr-merge turned into symlinks into /usr.
const MERGED_DIRS: [&str; 6] = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

#[derive(Debug, Clone)]
struct Owner {
    package: Arc<str>,
    md5: [u8; 16],
}

/// path (no leading slash) -> every package that records it (normally one; more when a package
/// `Replaces` another that still lists the file).
#[derive(Debug, Default)]
struct Index {
    files: HashMap<String, Vec<Owner>>,
}

/// The dpkg-backed [`PackageTrust`].
#[derive(Debug)]
pub struct DpkgTrust {
    info_dir: PathBuf,
    index: BuiltIndex<SystemTime, Index>,
    status: PathBuf,
    usr_merged: bool,
    max_size: u64,
}

impl DpkgTrust {
    /// The system's dpkg database; /usr-merge detected from `/bin` being a symlink.
    pub fn system(max_size: u64) -> Self {
        let merged = std::fs::symlink_metadata("/bin").is_ok_and(|m| m.file_type().is_symlink());
        Self::new("/var/lib/dpkg".as_ref(), merged, max_size)
    }

    /// A database rooted at `dpkg_dir` (holding `info/` and `status`), for tests.
    pub fn new(dpkg_dir: &Path, usr_merged: bool, max_size: u64) -> Self {
        Self {
            info_dir: dpkg_dir.join("info"),
            index: BuiltIndex::new("dpkg-index", RETRY_AFTER),
            status: dpkg_dir.join("status"),
            usr_merged,
            max_size,
        }
    }

    /// The status file's mtime (what an index is built for), or why there is none.
    fn status_mtime(&self) -> Result<SystemTime, AnalysisError> {
        match std::fs::metadata(&self.status).and_then(|m| m.modified()) {
            Ok(t) => Ok(t),
            // Not a dpkg system: no file is package-trusted, and the policy is told why.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(AnalysisError::Unsupported(
                "package trust (no dpkg database at /var/lib/dpkg)",
            )),
            Err(e) => Err(AnalysisError::io(
                format!("reading {}", self.status.display()),
                e,
            )),
        }
    }

    /// The index for the current database, built on the builder thread if need be; waits for
    /// it until `deadline` at most.
    fn index(&self, deadline: Instant) -> Result<Arc<Index>, AnalysisError> {
        let mtime = self.status_mtime()?;
        let info_dir = self.info_dir.clone();
        self.index.get(mtime, deadline, move || {
            let started = Instant::now();
            let result = build_index(&info_dir).map_err(|e| e.to_string());
            match &result {
                Ok(index) => tracing::info!(
                    files = index.files.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "dpkg index built"
                ),
                Err(why) => tracing::warn!(error = %why, "dpkg index build failed"),
            }
            result
        })
    }

    /// dpkg's spellings of an absolute path: itself, and its /usr-merge alias.
    fn candidates(&self, path: &str) -> Vec<String> {
        let Some(rel) = path.strip_prefix('/') else {
            return Vec::new();
        };
        let mut out = vec![rel.to_owned()];
        if self.usr_merged {
            let first = |p: &str| p.split('/').next().map(|d| MERGED_DIRS.contains(&d));
            if let Some(rest) = rel.strip_prefix("usr/") {
                if first(rest) == Some(true) {
                    out.push(rest.to_owned());
                }
            } else if first(rel) == Some(true) {
                out.push(format!("usr/{rel}"));
            }
        }
        out
    }
}

fn build_index(info_dir: &Path) -> Result<Index, AnalysisError> {
    let io = |e| AnalysisError::io(format!("listing {}", info_dir.display()), e);
    let mut index = Index::default();
    for entry in std::fs::read_dir(info_dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(package) = name.to_str().and_then(|n| n.strip_suffix(".md5sums")) else {
            continue;
        };
        let package: Arc<str> = Arc::from(package);
        // An unreadable list (removed mid-scan) only loses that package's files.
        let Ok(text) = std::fs::read(entry.path()) else {
            continue;
        };
        for line in String::from_utf8_lossy(&text).lines() {
            if let Some((md5, path)) = parse_line(line) {
                index.files.entry(path.to_owned()).or_default().push(Owner {
                    package: package.clone(),
                    md5,
                });
            }
        }
    }
    Ok(index)
}

/// `<32 hex digits><spaces><path>`; anything else is skipped.
fn parse_line(line: &str) -> Option<([u8; 16], &str)> {
    let (hex_part, rest) = (line.get(..32)?, line.get(32..)?);
    let path = rest.strip_prefix(' ')?.trim_start_matches(' ');
    let mut md5 = [0u8; 16];
    hex::decode_to_slice(hex_part, &mut md5).ok()?;
    (!path.is_empty()).then_some((md5, path.trim_start_matches('/')))
}

impl PackageTrust for DpkgTrust {
    fn package_trust(&self, input: &Input<'_>) -> Result<model::PackageTrust, AnalysisError> {
        let fd = input.require_fd("package trust")?;
        input.check_deadline()?;
        let index = self.index(input.deadline)?;
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let path = std::fs::read_link(&link)
            .map_err(|e| AnalysisError::io(format!("reading {link}"), e))?;
        let untrusted = model::PackageTrust {
            package: None,
            trusted: false,
        };
        // A deleted file shows as "<path> (deleted)"; non-UTF-8 paths are never in dpkg's lists.
        let Some(path) = path.to_str().filter(|p| !p.ends_with(" (deleted)")) else {
            return Ok(untrusted);
        };
        let owners: Vec<&Owner> = self
            .candidates(path)
            .iter()
            .filter_map(|c| index.files.get(c))
            .flatten()
            .collect();
        let Some(first) = owners.first() else {
            return Ok(untrusted);
        };
        let md5: [u8; 16] = digest_fd::<md5::Md5>(input, fd, self.max_size)?
            .finalize()
            .into();
        let matching = owners.iter().find(|o| o.md5 == md5);
        Ok(model::PackageTrust {
            package: Some(matching.unwrap_or(first).package.to_string()),
            trusted: matching.is_some(),
        })
    }

    fn generation(&self) -> u64 {
        self.index.built()
    }

    fn warm(&self) {
        // Starts the builder and returns (a deadline of now): the first request waits for it
        // within its own deadline, and reports a failure itself.
        let _ = self.index(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::FileRef;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    #[test]
    fn parse_line_table() {
        let h = "7987cf330ff5bb94015dfbb9eae5a99f";
        let with_space = format!("{h}  usr/share/a b");
        let cases: Vec<(String, Option<&str>)> = vec![
            (format!("{h}  bin/ls"), Some("bin/ls")),
            (with_space, Some("usr/share/a b")),
            (format!("{h}bin/ls"), None),
            (format!("{}  bin/ls", "z".repeat(32)), None),
            ("short".into(), None),
            (format!("{h}  "), None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_line(&line).map(|(_, p)| p), want, "{line:?}");
        }
    }

    #[test]
    fn candidates_table() {
        let merged = DpkgTrust::new("/nonexistent".as_ref(), true, 1);
        let split = DpkgTrust::new("/nonexistent".as_ref(), false, 1);
        let cases: &[(&DpkgTrust, &str, &[&str])] = &[
            (&merged, "/usr/bin/ls", &["usr/bin/ls", "bin/ls"]),
            (&merged, "/bin/ls", &["bin/ls", "usr/bin/ls"]),
            (&merged, "/usr/lib64/x", &["usr/lib64/x", "lib64/x"]),
            (&merged, "/usr/share/x", &["usr/share/x"]),
            (&merged, "/binx/y", &["binx/y"]),
            (&split, "/usr/bin/ls", &["usr/bin/ls"]),
            (&merged, "relative", &[]),
        ];
        for (db, path, want) in cases {
            assert_eq!(db.candidates(path), *want, "{path}");
        }
    }

    #[test]
    fn no_database_is_unsupported() {
        let db = DpkgTrust::new("/nonexistent/dpkg".as_ref(), true, 1 << 20);
        let f = tempfile::tempfile().unwrap();
        let file = FileRef::new("/x");
        let input = Input {
            file: &file,
            fd: Some(f.as_fd()),
            deadline: Instant::now() + Duration::from_secs(5),
        };
        assert!(matches!(
            db.package_trust(&input),
            Err(AnalysisError::Unsupported(_))
        ));
    }

    /// A fake dpkg database that owns two files: one intact, one modified after "installation"
    /// at the same path (the same-path mismatch an attacker would produce).
    #[test]
    fn fake_database_same_path_mismatch() {
        let root = tempfile::tempdir().unwrap();
        let dpkg = root.path().join("dpkg");
        std::fs::create_dir_all(dpkg.join("info")).unwrap();
        std::fs::write(dpkg.join("status"), "").unwrap();
        let files = root.path().join("files");
        std::fs::create_dir_all(&files).unwrap();
        let good = files.join("good");
        let bad = files.join("bad");
        let stray = files.join("stray");
        std::fs::write(&good, b"original").unwrap();
        std::fs::write(&bad, b"original").unwrap();
        std::fs::write(&stray, b"original").unwrap();
        let md5 = hex::encode(md5::Md5::digest(b"original"));
        let rel =
            |p: &Path| std::fs::canonicalize(p).unwrap().display().to_string()[1..].to_owned();
        std::fs::write(
            dpkg.join("info/fake-pkg:amd64.md5sums"),
            format!("{md5}  {}\n{md5}  {}\n", rel(&good), rel(&bad)),
        )
        .unwrap();
        // Tamper with one owned file in place.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&bad)
            .unwrap()
            .write_all(b"!")
            .unwrap();

        let db = DpkgTrust::new(&dpkg, false, 1 << 20);
        let cases = [
            (&good, Some("fake-pkg:amd64"), true),
            (&bad, Some("fake-pkg:amd64"), false),
            (&stray, None, false),
        ];
        for (path, package, trusted) in cases {
            let f = std::fs::File::open(path).unwrap();
            let file = FileRef::new(path.display().to_string());
            let input = Input {
                file: &file,
                fd: Some(f.as_fd()),
                deadline: Instant::now() + Duration::from_secs(30),
            };
            let got = db.package_trust(&input).unwrap();
            assert_eq!(got.package.as_deref(), package, "{}", path.display());
            assert_eq!(got.trusted, trusted, "{}", path.display());
        }
        assert_eq!(db.generation(), 1, "built once, by the first request");
        // Warm-up after the build: nothing to do, the index stands.
        db.warm();
        assert_eq!(db.generation(), 1);

        // A request never builds on its own thread: with no index yet, one whose deadline has
        // come is told so at once (the builder cannot file the index while it holds the state),
        // and the build it started serves the next.
        let fresh = DpkgTrust::new(&dpkg, false, 1 << 20);
        assert!(matches!(
            fresh.index(Instant::now()),
            Err(AnalysisError::DeadlineExceeded)
        ));
        let index = fresh
            .index(Instant::now() + Duration::from_secs(30))
            .expect("the build the late request started");
        assert!(!index.files.is_empty());
        assert_eq!(fresh.generation(), 1, "one build for both");

        // The warm-up starts the build without waiting for it.
        let warmed = DpkgTrust::new(&dpkg, false, 1 << 20);
        warmed.warm();
        let end = Instant::now() + Duration::from_secs(30);
        while warmed.generation() == 0 {
            assert!(Instant::now() < end, "the warm-up never built the index");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(
            warmed.generation(),
            1,
            "built by the warm-up, not by a request"
        );
    }
}
