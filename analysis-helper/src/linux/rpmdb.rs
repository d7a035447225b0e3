//! RPM package trust (RHEL 9, Fedora 33+ and other SQLite rpmdb hosts): is the file behind a
//! passed descriptor owned by an installed package, with contents equal to the package's
//! recorded digest?
//!
//! The database is `rpmdb.sqlite`, table `Packages(hnum, blob)`, each blob one package's rpm
//! header without lead or signature ([`header`]). The index (path -> package, digest) is built
//! from every header on a builder thread of its own (at most one; [`super::built_index`]),
//! started by the helper's warm-up right after start or by the first request, never in the
//! way of start-up (invariant 6), while a request waits no longer than its own deadline: a
//! first request on a large database may answer `DeadlineExceeded` while the build goes on, and
//! the next one finds the index ready. The index is rebuilt when the database or its write-ahead
//! log changes (size or mtime; rpm writes through the WAL, so the main file alone can lag).
//!
//! The database is opened read-only with `query_only` and a short busy timeout, and never as
//! `immutable`: rpm keeps recent writes in `rpmdb.sqlite-wal`, which an immutable open ignores.
//! In WAL mode a reader never blocks rpm's writers.
//!
//! The file's path is the kernel's (`readlink /proc/self/fd/N` of the passed descriptor), never
//! the request's claim. rpm records absolute paths; on /usr-merged hosts a package may still name
//! the pre-merge directory (`/bin/x` for `/usr/bin/x`), so both spellings are looked up.
//! Only regular files with a digest are indexed: directories, symlinks and `%ghost` files are not
//! content rpm can vouch for. A `%config` file that was edited since installation no longer
//! matches its digest and is untrusted like any other modified file (the helper logs that it is
//! a config file, since such edits are often legitimate). Digests in an algorithm the helper
//! does not compute (SHA-1, RIPEMD-160...) leave the file owned but untrusted.
//! Not handled: Berkeley DB (RHEL 8 and older) and ndb (SUSE) databases; the backend choice in
//! [`super::package_trust`] answers `Unsupported` for those.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::Digest;

use crate::analyzer::{AnalysisError, Input, PackageTrust};
use crate::hash::digest_fd;

use super::built_index::BuiltIndex;

pub mod header;

use header::DigestAlgo;

/// Directories that /usr-merge turned into symlinks into /usr.
const MERGED_DIRS: [&str; 6] = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// More packages than any real host has (a large RHEL server has a few thousand).
pub const MAX_PACKAGES: usize = 200_000;

/// More indexed files than any real host has (a large RHEL server has a few hundred thousand);
/// at about 350 resident bytes each (`rpm_index_build_cost`) this caps the index near 700 MB.
pub const MAX_INDEXED_FILES: usize = 2_000_000;

/// How long one read of the database waits for rpm's lock (only taken in rollback-journal mode,
/// or while rpm recovers its WAL) before the build fails and a later request retries.
const BUSY_TIMEOUT: Duration = Duration::from_millis(250);

/// After a failed build, requests answer that failure for this long before a new build is tried,
/// so a broken database costs one read per interval, not one per request.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Where rpm keeps its SQLite database, newest layout first (Fedora 36+ moved it to sysimage and
/// left `/var/lib/rpm` as a symlink; RHEL 9 keeps it in `/var/lib/rpm`).
pub const SQLITE_PATHS: [&str; 2] = [
    "usr/lib/sysimage/rpm/rpmdb.sqlite",
    "var/lib/rpm/rpmdb.sqlite",
];

/// Berkeley DB (RHEL 8 and older) and ndb (SUSE) databases, which this helper does not read,
/// with what package trust answers instead.
pub const UNREAD_PATHS: [(&str, &str); 3] = [
    ("usr/lib/sysimage/rpm/Packages.db", NDB),
    ("var/lib/rpm/Packages.db", NDB),
    (
        "var/lib/rpm/Packages",
        "package trust (this host's rpm database is Berkeley DB, as on RHEL 8 and older; only \
         the SQLite rpmdb of RHEL 9 and Fedora 33+ is read)",
    ),
];

const NDB: &str = "package trust (this host's rpm database is ndb, as on SUSE; only the SQLite \
                   rpmdb of RHEL 9 and Fedora 33+ is read)";

/// One package's claim on a path.
#[derive(Debug, Clone)]
struct Owner {
    package: Arc<str>,
    /// `None` when the package's digest algorithm is one the helper does not compute, or the
    /// recorded digest is malformed: owned, never trusted.
    digest: Option<(DigestAlgo, Box<[u8]>)>,
    config: bool,
}

/// Absolute path -> every package that records it (normally one; more for files shared by
/// multilib packages or by packages that replace one another).
#[derive(Debug, Default)]
struct Index {
    files: HashMap<Box<str>, Vec<Owner>>,
    /// Headers that did not parse; their files are simply unowned (untrusted).
    skipped: usize,
}

/// What identifies one state of the database: size and mtime of the main file and of a non-empty
/// WAL. An empty WAL counts as none: opening the database may create one, and that must not
/// look like a change.
type Stamp = ((u64, SystemTime), Option<(u64, SystemTime)>);

fn stamp_of(db: &Path) -> std::io::Result<Stamp> {
    let stat = |p: &Path| -> std::io::Result<(u64, SystemTime)> {
        let m = std::fs::metadata(p)?;
        Ok((m.len(), m.modified()?))
    };
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let wal = stat(Path::new(&wal)).ok().filter(|(len, _)| *len > 0);
    Ok((stat(db)?, wal))
}

/// What the service's cache generation last saw of the database.
#[derive(Debug, Default)]
struct Seen {
    stamp: Option<Stamp>,
    generation: u64,
}

/// The rpmdb-backed [`PackageTrust`].
#[derive(Debug)]
pub struct RpmTrust {
    db: PathBuf,
    index: BuiltIndex<Stamp, Index>,
    seen: Mutex<Seen>,
    /// The filesystem root the database describes: `/` on a host; a scratch directory in tests
    /// (`rpm --root`), whose prefix is stripped from the kernel's paths before lookup.
    root: PathBuf,
    usr_merged: bool,
    max_size: u64,
}

impl RpmTrust {
    /// The SQLite database at `db` describing the files under `root`.
    pub fn new(db: &Path, root: &Path, usr_merged: bool, max_size: u64) -> Self {
        Self {
            db: db.to_owned(),
            index: BuiltIndex::new("rpmdb-index", RETRY_AFTER),
            seen: Mutex::default(),
            root: root.to_owned(),
            usr_merged,
            max_size,
        }
    }

    /// The database's current stamp, or why there is none.
    fn stamp(&self) -> Result<Stamp, AnalysisError> {
        let db = &self.db;
        stamp_of(db).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                AnalysisError::Unsupported("package trust (the rpm database is gone)")
            }
            _ => AnalysisError::io(format!("reading {}", db.display()), e),
        })
    }

    /// The index for `stamp`, built on the builder thread if need be; waits until `deadline`.
    fn index_for(&self, stamp: Stamp, deadline: Instant) -> Result<Arc<Index>, AnalysisError> {
        let db = self.db.clone();
        self.index.get(stamp, deadline, move || {
            let started = Instant::now();
            let result = read_database(&db);
            match &result {
                Ok(index) => tracing::info!(
                    db = %db.display(),
                    files = index.files.len(),
                    skipped_headers = index.skipped,
                    ms = started.elapsed().as_millis() as u64,
                    "rpm index built"
                ),
                Err(why) => {
                    tracing::warn!(db = %db.display(), error = %why, "rpm index build failed");
                }
            }
            result
        })
    }

    /// rpm's spellings of the kernel's absolute path: itself under the root, and its /usr-merge
    /// alias. Empty when the path is outside the root.
    fn candidates(&self, path: &Path) -> Vec<String> {
        let rel = match path.strip_prefix(&self.root) {
            Ok(rel) => rel,
            Err(_) => return Vec::new(),
        };
        let Some(rel) = rel.to_str().filter(|r| !r.is_empty()) else {
            return Vec::new();
        };
        let mut out = vec![format!("/{rel}")];
        if self.usr_merged {
            let first = |p: &str| {
                p.split('/')
                    .next()
                    .is_some_and(|d| MERGED_DIRS.contains(&d))
            };
            if let Some(rest) = rel.strip_prefix("usr/") {
                if first(rest) {
                    out.push(format!("/{rest}"));
                }
            } else if first(rel) {
                out.push(format!("/usr/{rel}"));
            }
        }
        out
    }
}

/// Every package header in the database, folded into an index.
fn read_database(db: &Path) -> Result<Index, String> {
    use rusqlite::{Connection, OpenFlags};
    let fail = |what: &str, e: rusqlite::Error| {
        format!(
            "{what} the rpm database {} failed: {e} (check that it is a SQLite rpmdb; `rpm --rebuilddb` repairs a damaged one)",
            db.display()
        )
    };
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| fail("opening", e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| fail("configuring", e))?;
    conn.pragma_update(None, "query_only", true)
        .map_err(|e| fail("configuring", e))?;
    let mut stmt = conn
        .prepare("SELECT blob FROM Packages")
        .map_err(|e| fail("querying", e))?;
    let mut rows = stmt.query([]).map_err(|e| fail("reading", e))?;
    let mut builder = IndexBuilder::default();
    while let Some(row) = rows.next().map_err(|e| fail("reading", e))? {
        match row.get_ref(0) {
            Ok(rusqlite::types::ValueRef::Blob(blob)) => builder.add_blob(blob)?,
            // Not a header at all: skipped like one that does not parse.
            _ => builder.skip("a Packages row holds no blob"),
        }
    }
    Ok(builder.index)
}

#[derive(Debug, Default)]
struct IndexBuilder {
    index: Index,
    packages: usize,
    files: usize,
}

impl IndexBuilder {
    fn skip(&mut self, why: &str) {
        self.index.skipped += 1;
        tracing::warn!(
            error = why,
            "skipping an rpm package record (its files stay untrusted)"
        );
    }

    /// Adds one header's files. A header that does not parse is skipped (its files stay
    /// unowned); only the overall limits fail the build.
    fn add_blob(&mut self, blob: &[u8]) -> Result<(), String> {
        self.packages += 1;
        if self.packages > MAX_PACKAGES {
            return Err(format!(
                "the rpm database lists more than {MAX_PACKAGES} packages; package trust refuses to index it"
            ));
        }
        let package = match header::Header::parse(blob).and_then(|h| h.package()) {
            Ok(p) => p,
            Err(e) => {
                self.skip(&e.to_string());
                return Ok(());
            }
        };
        let name: Arc<str> = Arc::from(package.label.as_str());
        for file in package.files {
            self.files += 1;
            if self.files > MAX_INDEXED_FILES {
                return Err(format!(
                    "the rpm database lists more than {MAX_INDEXED_FILES} files; package trust refuses to index it"
                ));
            }
            let digest = match file.digest {
                Ok(d) => Some(d),
                Err(why) => {
                    tracing::debug!(path = %file.path, package = %name, why, "unverifiable file");
                    None
                }
            };
            self.index
                .files
                .entry(file.path.into_boxed_str())
                .or_default()
                .push(Owner {
                    package: name.clone(),
                    digest,
                    config: file.config,
                });
        }
        Ok(())
    }
}

impl PackageTrust for RpmTrust {
    fn package_trust(&self, input: &Input<'_>) -> Result<model::PackageTrust, AnalysisError> {
        let fd = input.require_fd("package trust")?;
        input.check_deadline()?;
        let stamp = self.stamp()?;
        let index = self.index_for(stamp, input.deadline)?;
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let path = std::fs::read_link(&link)
            .map_err(|e| AnalysisError::io(format!("reading {link}"), e))?;
        let untrusted = model::PackageTrust {
            package: None,
            trusted: false,
        };
        // A deleted file shows as "<path> (deleted)": no package owns what is no longer there.
        if path.as_os_str().as_encoded_bytes().ends_with(b" (deleted)") {
            return Ok(untrusted);
        }
        let owners: Vec<&Owner> = self
            .candidates(&path)
            .iter()
            .filter_map(|c| index.files.get(c.as_str()))
            .flatten()
            .collect();
        let Some(first) = owners.first() else {
            return Ok(untrusted);
        };
        // One pass over the file per algorithm in use (normally one: SHA-256).
        let mut computed: Vec<(DigestAlgo, Vec<u8>)> = Vec::new();
        let mut matching = None;
        for owner in &owners {
            let Some((algo, want)) = &owner.digest else {
                continue;
            };
            if !computed.iter().any(|(a, _)| a == algo) {
                computed.push((*algo, self.digest(input, *algo)?));
            }
            if computed.iter().any(|(a, d)| a == algo && d[..] == want[..]) {
                matching = Some(*owner);
                break;
            }
        }
        if matching.is_none() {
            let why = if first.digest.is_none() {
                "the package records no digest the helper can check"
            } else if first.config {
                "it is a %config file changed since installation (often a legitimate edit, but only the packaged contents are trusted)"
            } else {
                "its contents differ from the package's record"
            };
            tracing::info!(path = %path.display(), package = %first.package, why, "package-owned file not trusted");
        }
        Ok(model::PackageTrust {
            package: Some(matching.unwrap_or(first).package.to_string()),
            trusted: matching.is_some(),
        })
    }

    fn generation(&self) -> u64 {
        // A stat or two per request, so that a cached answer never outlives the database it came
        // from (the service keys its cache by this value before asking).
        let stamp = self.stamp().ok();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.stamp != stamp {
            seen.stamp = stamp;
            seen.generation += 1;
        }
        seen.generation
    }

    fn warm(&self) {
        // Starts the builder thread and returns (a deadline of now); the first request waits
        // for it within its own deadline, as it would have for a build it started.
        if let Ok(stamp) = self.stamp() {
            let _ = self.index_for(stamp, Instant::now());
        }
    }
}

impl RpmTrust {
    fn digest(&self, input: &Input<'_>, algo: DigestAlgo) -> Result<Vec<u8>, AnalysisError> {
        let fd = input.require_fd("package trust")?;
        let max = self.max_size;
        Ok(match algo {
            DigestAlgo::Md5 => digest_fd::<md5::Md5>(input, fd, max)?.finalize().to_vec(),
            DigestAlgo::Sha224 => digest_fd::<sha2::Sha224>(input, fd, max)?
                .finalize()
                .to_vec(),
            DigestAlgo::Sha256 => digest_fd::<sha2::Sha256>(input, fd, max)?
                .finalize()
                .to_vec(),
            DigestAlgo::Sha384 => digest_fd::<sha2::Sha384>(input, fd, max)?
                .finalize()
                .to_vec(),
            DigestAlgo::Sha512 => digest_fd::<sha2::Sha512>(input, fd, max)?
                .finalize()
                .to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::FileRef;
    use std::os::fd::AsFd;

    /// A SQLite file shaped like rpm's: `Packages(hnum, blob)` holding `blobs` (an integer for
    /// `None`).
    fn fake_db(path: &Path, blobs: &[Option<Vec<u8>>]) {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; \
             CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL \
             DEFAULT '' ); ",
        )
        .unwrap();
        for b in blobs {
            match b {
                Some(b) => conn.execute("INSERT INTO Packages (blob) VALUES (?1)", [b]),
                None => conn.execute("INSERT INTO Packages (blob) VALUES (1)", []),
            }
            .unwrap();
        }
    }

    fn ask(db: &RpmTrust, path: &Path) -> Result<model::PackageTrust, AnalysisError> {
        let f = std::fs::File::open(path).unwrap();
        let file = FileRef::new(path.display().to_string());
        db.package_trust(&Input {
            file: &file,
            fd: Some(f.as_fd()),
            deadline: Instant::now() + Duration::from_secs(30),
        })
    }

    /// The SQLite path without the rpm tool: good, garbage and non-blob rows side by side.
    #[test]
    fn fake_sqlite_database() {
        let dir = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(dir.path()).unwrap();
        let (good, changed, stray) = (dir.join("good"), dir.join("changed"), dir.join("stray"));
        for p in [&good, &changed, &stray] {
            std::fs::write(p, b"contents").unwrap();
        }
        let sha = hex::encode(sha2::Sha256::digest(b"contents"));
        let blob = header::tests::package_blob(
            "fake",
            &[
                (good.to_str().unwrap(), &sha, 0),
                (changed.to_str().unwrap(), &sha, header::FILE_CONFIG),
            ],
        );
        std::fs::write(&changed, b"edited").unwrap();
        let db_path = dir.join("rpmdb.sqlite");
        fake_db(&db_path, &[Some(b"garbage".to_vec()), None, Some(blob)]);

        let db = RpmTrust::new(&db_path, "/".as_ref(), false, 1 << 20);
        let cases = [
            (&good, Some("fake"), true),
            (&changed, Some("fake"), false),
            (&stray, None, false),
        ];
        for (path, package, trusted) in cases {
            let got = ask(&db, path).unwrap();
            assert_eq!(got.package.as_deref(), package, "{}", path.display());
            assert_eq!(got.trusted, trusted, "{}", path.display());
        }
        assert_eq!(db.index.current().map(|i| i.skipped), Some(2));
        assert_eq!(db.index.builds(), 1, "built once, lazily");
    }

    /// Requests arriving together share one build: at most one builder thread, whatever the
    /// interleaving.
    #[test]
    fn concurrent_first_requests_share_one_build() {
        let dir = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(dir.path()).unwrap();
        let file = dir.join("tool");
        std::fs::write(&file, b"contents").unwrap();
        let sha = hex::encode(sha2::Sha256::digest(b"contents"));
        let blob = header::tests::package_blob("fake", &[(file.to_str().unwrap(), &sha, 0)]);
        let db_path = dir.join("rpmdb.sqlite");
        fake_db(&db_path, &[Some(blob)]);
        let db = RpmTrust::new(&db_path, "/".as_ref(), false, 1 << 20);
        std::thread::scope(|s| {
            let asks: Vec<_> = (0..4).map(|_| s.spawn(|| ask(&db, &file))).collect();
            for a in asks {
                assert!(a.join().unwrap().unwrap().trusted);
            }
        });
        assert_eq!(db.index.builds(), 1);
    }

    /// A file that is not a SQLite rpmdb: the request gets an error saying what failed and how to
    /// repair it, and requests right after get the same answer without a new read.
    #[test]
    fn broken_database_fails_then_holds_off() {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("rpmdb.sqlite");
        std::fs::write(&db_path, vec![0x5a; 4096]).unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let db = RpmTrust::new(&db_path, "/".as_ref(), false, 1 << 20);
        for _ in 0..2 {
            match ask(&db, &file) {
                Err(AnalysisError::Internal(m)) => {
                    assert!(
                        m.contains("rpmdb.sqlite") && m.contains("--rebuilddb"),
                        "{m}"
                    )
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(db.index.failed_idle());
        assert_eq!(
            db.index.builds(),
            1,
            "the second request did not read the database again"
        );
    }

    /// Not a test of speed (no assertion on time): prints what the first build of a
    /// RHEL-sized index costs, for the report. `cargo test --release -p analysis-helper --lib
    /// rpm_index_build_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "measurement, run by hand"]
    fn rpm_index_build_cost() {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("rpmdb.sqlite");
        let sha = hex::encode(sha2::Sha256::digest(b"x"));
        let names: Vec<String> = (0..150)
            .map(|f| format!("/usr/share/p/d{}/file-{f}", f % 7))
            .collect();
        let blobs: Vec<Option<Vec<u8>>> = (0..1500)
            .map(|p| {
                let files: Vec<(String, &str, u32)> = names
                    .iter()
                    .map(|n| (n.replace("/p/", &format!("/pkg{p}/")), sha.as_str(), 0))
                    .collect();
                let refs: Vec<(&str, &str, u32)> =
                    files.iter().map(|(a, b, c)| (a.as_str(), *b, *c)).collect();
                Some(header::tests::package_blob(&format!("pkg{p}"), &refs))
            })
            .collect();
        fake_db(&db_path, &blobs);
        let size = std::fs::metadata(&db_path).unwrap().len();
        let t = Instant::now();
        let mut parsed = 0;
        for b in blobs.iter().flatten() {
            parsed += header::Header::parse(b)
                .unwrap()
                .package()
                .unwrap()
                .files
                .len();
        }
        println!("parse only: {parsed} files in {:?}", t.elapsed());
        let rss = || {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >> 10
        };
        drop(blobs);
        let before = rss();
        let t = Instant::now();
        let index = read_database(&db_path).unwrap();
        let took = t.elapsed();
        println!("index resident: about {} MB", rss().saturating_sub(before));
        println!(
            "1500 packages, {} files, {} MB database: index built in {took:?}",
            index.files.len(),
            size >> 20,
        );
    }

    #[test]
    fn candidates_table() {
        let merged = RpmTrust::new("/x".as_ref(), "/".as_ref(), true, 1);
        let split = RpmTrust::new("/x".as_ref(), "/".as_ref(), false, 1);
        let rooted = RpmTrust::new("/x".as_ref(), "/scratch/r".as_ref(), false, 1);
        let cases: &[(&RpmTrust, &str, &[&str])] = &[
            (&merged, "/usr/bin/ls", &["/usr/bin/ls", "/bin/ls"]),
            (&merged, "/bin/ls", &["/bin/ls", "/usr/bin/ls"]),
            (&merged, "/usr/lib64/x", &["/usr/lib64/x", "/lib64/x"]),
            (&merged, "/usr/share/x", &["/usr/share/x"]),
            (&merged, "/binx/y", &["/binx/y"]),
            (&split, "/usr/bin/ls", &["/usr/bin/ls"]),
            (&rooted, "/scratch/r/opt/x", &["/opt/x"]),
            (&rooted, "/scratch/rx/opt/x", &[]),
            (&rooted, "/opt/x", &[]),
            (&rooted, "/scratch/r", &[]),
            (&merged, "relative", &[]),
        ];
        for (db, path, want) in cases {
            assert_eq!(db.candidates(path.as_ref()), *want, "{path}");
        }
    }

    #[test]
    fn index_builder_skips_bad_headers_and_caps_files() {
        let mut b = IndexBuilder::default();
        b.add_blob(b"not a header").unwrap();
        b.add_blob(&header::tests::package_blob("p", &[("/opt/a", "0", 0)]))
            .unwrap();
        assert_eq!(b.index.skipped, 1);
        assert_eq!(b.index.files.len(), 1);
        b.files = MAX_INDEXED_FILES;
        let err = b
            .add_blob(&header::tests::package_blob("q", &[("/opt/b", "0", 0)]))
            .unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }
}
