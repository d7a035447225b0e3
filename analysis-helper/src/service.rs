//! The transport-neutral core of the helper: turns one [`HelperRequest`] into one
//! [`HelperResponse`], enforcing the request's deadline, catching analyzer panics, caching
//! results by file identity, and counting everything. The Unix socket server (Linux) and the XPC
//! listener (macOS) both call [`Service::handle`] from their worker threads.
#![forbid(unsafe_code)]

use std::os::fd::BorrowedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use model::{FileIdentity, Sha256, SigningBinding};
use protocol::{AnalysisRequest, Facts, HelperErrorKind, HelperRequest, HelperResponse, Role};

use crate::analyzer::{AnalysisError, Analyzers, Binding, Input};
use crate::cache::BoundedCache;
use crate::stats::Stats;

/// Entries per result cache; each is a few dozen bytes.
pub const DEFAULT_CACHE_ENTRIES: usize = 16 * 1024;

type PackageKey = (FileIdentity, u64, String);

/// Shared by every worker; all state inside is bounded and thread-safe.
#[derive(Debug)]
pub struct Service {
    analyzers: Analyzers,
    stats: Stats,
    sha: BoundedCache<FileIdentity, Sha256>,
    packages: BoundedCache<PackageKey, model::PackageTrust>,
    started: Instant,
    agent: String,
}

impl Service {
    /// Start building the package database's index ([`crate::analyzer::PackageTrust::warm`]);
    /// returns at once. The helper calls it once, after the socket is listening.
    pub fn warm(&self) {
        self.analyzers.packages.warm();
    }

    pub fn new(analyzers: Analyzers, cache_entries: usize) -> Self {
        Self {
            analyzers,
            stats: Stats::default(),
            sha: BoundedCache::new(cache_entries),
            packages: BoundedCache::new(cache_entries),
            started: Instant::now(),
            agent: format!("gatehouse-helper {}", env!("CARGO_PKG_VERSION")),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The helper's name and version, sent in the handshake and in `Pong`.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// Count a request by kind on arrival (before it is queued, so refused ones count too).
    pub fn count_arrival(&self, body: &HelperRequest) {
        Stats::bump(match body {
            HelperRequest::Ping => &self.stats.requests_ping,
            HelperRequest::Stats => &self.stats.requests_stats,
            HelperRequest::Analyze { .. } => &self.stats.requests_analyze,
            HelperRequest::Remount { .. } => &self.stats.requests_remount,
            HelperRequest::Unmount { .. } => &self.stats.requests_unmount,
        });
    }

    /// An error answer, counted where the kind has a counter.
    pub fn error(&self, kind: HelperErrorKind, message: impl Into<String>) -> HelperResponse {
        match kind {
            HelperErrorKind::DeadlineExceeded => Stats::bump(&self.stats.timeouts),
            HelperErrorKind::Busy => Stats::bump(&self.stats.busy),
            HelperErrorKind::BadRequest => Stats::bump(&self.stats.bad_requests),
            _ => {}
        }
        HelperResponse::Error {
            kind,
            message: message.into(),
        }
    }

    /// Answer one request from a peer of `role`. `fd` is the descriptor that arrived with it;
    /// `deadline` is the arrival time plus the request's budget. Never panics: an analyzer panic
    /// is caught and answered `Internal`.
    pub fn handle(
        &self,
        role: Role,
        body: &HelperRequest,
        fd: Option<BorrowedFd<'_>>,
        deadline: Instant,
    ) -> HelperResponse {
        match catch_unwind(AssertUnwindSafe(|| self.dispatch(role, body, fd, deadline))) {
            Ok(r) => r,
            Err(_) => {
                Stats::bump(&self.stats.panics);
                self.error(
                    HelperErrorKind::Internal,
                    "an analyzer panicked on this request; it was abandoned (see the helper's log)",
                )
            }
        }
    }

    fn dispatch(
        &self,
        role: Role,
        body: &HelperRequest,
        fd: Option<BorrowedFd<'_>>,
        deadline: Instant,
    ) -> HelperResponse {
        match body {
            HelperRequest::Ping => HelperResponse::Pong {
                agent: self.agent.clone(),
                pid: std::process::id(),
                uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            },
            HelperRequest::Stats => HelperResponse::Stats {
                counters: self.stats.snapshot(),
            },
            HelperRequest::Unmount { .. } if role != Role::Extension => self.error(
                HelperErrorKind::BadRequest,
                format!("role {role:?} may not unmount volumes; that is for the extension"),
            ),
            HelperRequest::Unmount {
                mount,
                force,
                remount,
            } => {
                if Instant::now() >= deadline {
                    return self.error(
                        HelperErrorKind::DeadlineExceeded,
                        "the unmount's budget was spent before it started; dropped",
                    );
                }
                let words = remount.map(|f| crate::remount::mount_arguments(mount, &f));
                match self.analyzers.volumes.start_unmount(
                    mount,
                    *force,
                    words.as_deref(),
                    deadline,
                ) {
                    Ok(()) => {
                        Stats::bump(&self.stats.unmounts_started);
                        HelperResponse::UnmountStarted {
                            then_mount_with: words
                                .map(|w| w.iter().map(|a| (*a).to_owned()).collect()),
                        }
                    }
                    Err(e) => {
                        Stats::bump(&self.stats.unmounts_failed);
                        self.error(e.kind(), format!("unmounting {}: {e}", mount.mount_point))
                    }
                }
            }
            HelperRequest::Remount { .. } if role != Role::Extension => self.error(
                HelperErrorKind::BadRequest,
                format!("role {role:?} may not remount volumes; that is for the extension"),
            ),
            HelperRequest::Remount { mount, forced } => {
                if Instant::now() >= deadline {
                    return self.error(
                        HelperErrorKind::DeadlineExceeded,
                        "the remount's budget was spent before it started; dropped",
                    );
                }
                let arguments = crate::remount::mount_arguments(mount, forced);
                match self
                    .analyzers
                    .volumes
                    .start_remount(mount, &arguments, deadline)
                {
                    Ok(()) => {
                        Stats::bump(&self.stats.remounts_started);
                        HelperResponse::RemountStarted {
                            arguments: arguments.iter().map(|a| (*a).to_owned()).collect(),
                        }
                    }
                    Err(e) => {
                        Stats::bump(&self.stats.remounts_failed);
                        self.error(e.kind(), format!("remounting {}: {e}", mount.mount_point))
                    }
                }
            }
            HelperRequest::Analyze { .. } if role != Role::Extension => self.error(
                HelperErrorKind::BadRequest,
                format!(
                    "role {role:?} may only ping and read stats; analysis is for the extension"
                ),
            ),
            HelperRequest::Analyze {
                request,
                fd_attached,
            } => {
                if Instant::now() >= deadline {
                    return self.error(
                        HelperErrorKind::DeadlineExceeded,
                        "the request's budget was spent before work started; dropped",
                    );
                }
                if *fd_attached != fd.is_some() {
                    return self.error(
                        HelperErrorKind::BadRequest,
                        format!(
                            "fd_attached is {fd_attached} but {} descriptor arrived",
                            if fd.is_some() { "a" } else { "no" }
                        ),
                    );
                }
                self.analyze(request, fd, deadline)
            }
        }
    }
}

/// The kernel identity a certificate request carries, as the analyzers take it.
fn binding_of(request: &AnalysisRequest) -> Binding {
    match request.binding {
        Some(SigningBinding::CdHash(cd)) => Binding::CdHash(cd),
        Some(SigningBinding::AuditToken(token)) => Binding::AuditToken(token.0),
        None => Binding::Unbound,
    }
}

impl Service {
    fn analyze(
        &self,
        request: &AnalysisRequest,
        fd: Option<BorrowedFd<'_>>,
        deadline: Instant,
    ) -> HelperResponse {
        let needs = request.needs;
        let mut facts = Facts::default();
        let mut errors: Vec<AnalysisError> = Vec::new();
        if needs.sha256 || needs.package || needs.certificate || needs.file_kind {
            match &request.file {
                None => errors.push(AnalysisError::BadRequest(
                    "file facts requested without a file".into(),
                )),
                Some(file) => {
                    let input = Input { file, fd, deadline };
                    // Identity from the descriptor the kernel gave, never from the request.
                    let identity = fd.and_then(identity_of);
                    if needs.sha256 {
                        match self
                            .cached(&self.sha, identity, || self.analyzers.hasher.sha256(&input))
                        {
                            Ok(d) => facts.sha256 = Some(d),
                            Err(e) => errors.push(e),
                        }
                    }
                    if needs.package {
                        let key = identity.map(|id| {
                            (id, self.analyzers.packages.generation(), file.path.clone())
                        });
                        match self.cached(&self.packages, key, || {
                            self.analyzers.packages.package_trust(&input)
                        }) {
                            Ok(p) => facts.package = Some(p),
                            Err(e) => errors.push(e),
                        }
                    }
                    if needs.file_kind {
                        match self.analyzers.hasher.file_kind(&input) {
                            Ok(k) => facts.file_kind = Some(k),
                            Err(e) => errors.push(e),
                        }
                    }
                    if needs.certificate {
                        match input.check_deadline().and_then(|()| {
                            self.analyzers
                                .signing
                                .certificate_bound(&input, &binding_of(request))
                        }) {
                            Ok(c) => facts.certificate = Some(c),
                            Err(e) => errors.push(e),
                        }
                    }
                }
            }
        }
        if needs.volume {
            match &request.mount {
                None => errors.push(AnalysisError::BadRequest(
                    "volume facts requested without a mount".into(),
                )),
                Some(mount) => match self.analyzers.volumes.volume(mount, deadline) {
                    Ok(v) => facts.volume = Some(v),
                    Err(e) => errors.push(e),
                },
            }
        }
        if errors
            .iter()
            .any(|e| matches!(e, AnalysisError::DeadlineExceeded))
            || Instant::now() >= deadline
        {
            // The caller has stopped waiting: partial facts are of no use to it.
            return self.error(
                HelperErrorKind::DeadlineExceeded,
                "the request's budget ran out during analysis; the work was abandoned",
            );
        }
        for e in &errors {
            if e.kind() == HelperErrorKind::BadRequest {
                Stats::bump(&self.stats.bad_requests);
            }
        }
        HelperResponse::Analysis {
            facts,
            errors: errors.iter().map(|e| (e.kind(), e.to_string())).collect(),
        }
    }

    /// Look `key` up in `cache`, or compute and remember the result (errors are not cached).
    fn cached<K, V>(
        &self,
        cache: &BoundedCache<K, V>,
        key: Option<K>,
        compute: impl FnOnce() -> Result<V, AnalysisError>,
    ) -> Result<V, AnalysisError>
    where
        K: std::hash::Hash + Eq + Clone,
        V: Clone,
    {
        if let Some(v) = key.as_ref().and_then(|k| cache.get(k)) {
            Stats::bump(&self.stats.cache_hits);
            return Ok(v);
        }
        Stats::bump(&self.stats.cache_misses);
        let v = compute()?;
        if let Some(k) = key {
            cache.insert(k, v.clone());
        }
        Ok(v)
    }
}

/// (dev, ino, size, mtime, ctime) from `fstat` of the passed descriptor. `None` when the
/// descriptor cannot be duplicated or stat'ed: the request is then analysed but not cached.
pub fn identity_of(fd: BorrowedFd<'_>) -> Option<FileIdentity> {
    let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
    Some(FileIdentity::from(&file.metadata().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzer::{FileHasher, Unsupported};
    use crate::hash::FdHasher;
    use model::{FileRef, MountFlags, MountInfo, Needs};
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::time::Duration;

    struct Panics;
    impl FileHasher for Panics {
        fn sha256(&self, _: &Input<'_>) -> Result<Sha256, AnalysisError> {
            panic!("analyzer bug")
        }
    }

    fn service(hasher: Box<dyn FileHasher>) -> Service {
        Service::new(
            Analyzers {
                hasher,
                packages: Box::new(Unsupported("package trust")),
                volumes: Box::new(Unsupported("volume metadata")),
                signing: Box::new(Unsupported("code signing")),
            },
            8,
        )
    }

    fn analyze(needs: Needs, fd_attached: bool) -> HelperRequest {
        HelperRequest::Analyze {
            request: AnalysisRequest {
                needs,
                file: Some(FileRef::new("/t")),
                mount: None,
                binding: None,
            },
            fd_attached,
        }
    }

    fn counter(s: &Service, name: &str) -> u64 {
        s.stats()
            .snapshot()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
    }

    #[test]
    fn request_table() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"abc").unwrap();
        let sha = Needs {
            sha256: true,
            ..Needs::default()
        };
        let cert = Needs {
            certificate: true,
            ..Needs::default()
        };
        let later = Instant::now() + Duration::from_secs(30);
        let now = Instant::now();
        type Check = fn(&HelperResponse) -> bool;
        let cases: Vec<(&str, Role, HelperRequest, bool, Instant, Check)> = vec![
            (
                "ping",
                Role::Cli,
                HelperRequest::Ping,
                false,
                later,
                |r| matches!(r, HelperResponse::Pong { pid, .. } if *pid == std::process::id()),
            ),
            (
                "stats",
                Role::Cli,
                HelperRequest::Stats,
                false,
                later,
                |r| matches!(r, HelperResponse::Stats { .. }),
            ),
            (
                "cli may not analyze",
                Role::Cli,
                analyze(sha, true),
                true,
                later,
                |r| {
                    matches!(
                        r,
                        HelperResponse::Error {
                            kind: HelperErrorKind::BadRequest,
                            ..
                        }
                    )
                },
            ),
            (
                "spent budget",
                Role::Extension,
                analyze(sha, true),
                true,
                now,
                |r| {
                    matches!(
                        r,
                        HelperResponse::Error {
                            kind: HelperErrorKind::DeadlineExceeded,
                            ..
                        }
                    )
                },
            ),
            (
                "fd claimed, none sent",
                Role::Extension,
                analyze(sha, true),
                false,
                later,
                |r| {
                    matches!(
                        r,
                        HelperResponse::Error {
                            kind: HelperErrorKind::BadRequest,
                            ..
                        }
                    )
                },
            ),
            (
                "hash",
                Role::Extension,
                analyze(sha, true),
                true,
                later,
                |r| {
                    matches!(r, HelperResponse::Analysis { facts, errors }
                    if errors.is_empty() && facts.sha256.unwrap().to_hex().starts_with("ba7816bf"))
                },
            ),
            (
                "unsupported is a per-fact error",
                Role::Extension,
                analyze(cert, true),
                true,
                later,
                |r| {
                    matches!(r, HelperResponse::Analysis { facts, errors }
                    if facts.certificate.is_none() && errors[0].0 == HelperErrorKind::Unsupported)
                },
            ),
        ];
        let s = service(Box::new(FdHasher { max_size: 100 }));
        for (name, role, req, send_fd, deadline, check) in cases {
            let fd = send_fd.then(|| f.as_fd());
            let r = s.handle(role, &req, fd, deadline);
            assert!(check(&r), "{name}: {r:?}");
        }
        assert_eq!(counter(&s, "timeouts"), 1);
        // A second hash of the same file comes from the cache.
        let before = counter(&s, "cache_hits");
        let _ = s.handle(Role::Extension, &analyze(sha, true), Some(f.as_fd()), later);
        assert_eq!(counter(&s, "cache_hits"), before + 1);
    }

    #[test]
    fn panic_is_caught_and_counted() {
        let s = service(Box::new(Panics));
        let f = tempfile::tempfile().unwrap();
        let sha = Needs {
            sha256: true,
            ..Needs::default()
        };
        let r = s.handle(
            Role::Extension,
            &analyze(sha, true),
            Some(f.as_fd()),
            Instant::now() + Duration::from_secs(5),
        );
        assert!(matches!(
            r,
            HelperResponse::Error {
                kind: HelperErrorKind::Internal,
                ..
            }
        ));
        assert_eq!(counter(&s, "panics"), 1);
    }

    /// Records what the service handed the analyzers.
    #[derive(Default)]
    struct Recorder {
        bindings: std::sync::Mutex<Vec<Binding>>,
        remounts: std::sync::Mutex<Vec<Vec<&'static str>>>,
    }

    impl crate::analyzer::CodeSigning for std::sync::Arc<Recorder> {
        fn certificate(&self, _: &Input<'_>) -> Result<model::CertificateInfo, AnalysisError> {
            unreachable!("the service always passes the request's binding")
        }
        fn certificate_bound(
            &self,
            _: &Input<'_>,
            binding: &Binding,
        ) -> Result<model::CertificateInfo, AnalysisError> {
            self.bindings.lock().unwrap().push(*binding);
            Err(AnalysisError::Unsupported("recorder"))
        }
    }

    impl crate::analyzer::VolumeInspector for std::sync::Arc<Recorder> {
        fn volume(&self, _: &MountInfo, _: Instant) -> Result<model::VolumeInfo, AnalysisError> {
            Err(AnalysisError::Unsupported("recorder"))
        }
        fn start_remount(
            &self,
            mount: &MountInfo,
            arguments: &[&'static str],
            _: Instant,
        ) -> Result<(), AnalysisError> {
            if mount.mount_point == "/Volumes/Refused" {
                return Err(AnalysisError::Internal(
                    "DADiskCreateFromBSDName failed".into(),
                ));
            }
            self.remounts.lock().unwrap().push(arguments.to_vec());
            Ok(())
        }
    }

    fn recording() -> (Service, std::sync::Arc<Recorder>) {
        let r = std::sync::Arc::new(Recorder::default());
        let s = Service::new(
            Analyzers {
                hasher: Box::new(Unsupported("hashing")),
                packages: Box::new(Unsupported("package trust")),
                volumes: Box::new(std::sync::Arc::clone(&r)),
                signing: Box::new(std::sync::Arc::clone(&r)),
            },
            8,
        );
        (s, r)
    }

    /// Invariant `identity-from-kernel`: the certificate analyzer gets the identity the
    /// extension took from the kernel's message, and nothing when the message had none.
    #[test]
    fn certificate_requests_carry_the_kernels_binding() {
        let token = model::AuditToken([501, 501, 20, 501, 20, 77, 100_001, 3]);
        let cases = [
            (
                Some(SigningBinding::CdHash(model::CdHash([4; 20]))),
                Binding::CdHash(model::CdHash([4; 20])),
            ),
            (
                Some(SigningBinding::AuditToken(token)),
                Binding::AuditToken(token.0),
            ),
            (None, Binding::Unbound),
        ];
        let (s, r) = recording();
        let later = Instant::now() + Duration::from_secs(30);
        for (binding, _) in &cases {
            let req = HelperRequest::Analyze {
                request: AnalysisRequest {
                    needs: Needs {
                        certificate: true,
                        ..Needs::default()
                    },
                    file: Some(FileRef::new("/Applications/A.app/Contents/MacOS/A")),
                    mount: None,
                    binding: *binding,
                },
                fd_attached: false,
            };
            let _ = s.handle(Role::Extension, &req, None, later);
        }
        let want: Vec<Binding> = cases.iter().map(|(_, b)| *b).collect();
        assert_eq!(*r.bindings.lock().unwrap(), want);
    }

    #[test]
    fn remount_table() {
        let usb = |point: &str| MountInfo {
            source: "/dev/disk4s1".into(),
            mount_point: point.into(),
            fs_type: "msdos".into(),
            flags: MountFlags::default(),
            disposition: model::MountDisposition::External,
            os_flags: crate::remount::mnt::MNT_NOSUID,
        };
        let forced = MountFlags {
            read_only: true,
            noexec: true,
            ..MountFlags::default()
        };
        let later = Instant::now() + Duration::from_secs(30);
        type Check = fn(&HelperResponse) -> bool;
        let cases: Vec<(&str, Role, &str, Instant, Check)> = vec![
            ("extension", Role::Extension, "/Volumes/USB", later, |r| {
                matches!(r, HelperResponse::RemountStarted { arguments }
                    if arguments == &["rdonly", "noexec", "nosuid"])
            }),
            (
                "the CLI may not remount",
                Role::Cli,
                "/Volumes/USB",
                later,
                |r| {
                    matches!(
                        r,
                        HelperResponse::Error {
                            kind: HelperErrorKind::BadRequest,
                            ..
                        }
                    )
                },
            ),
            (
                "spent budget",
                Role::Extension,
                "/Volumes/USB",
                Instant::now(),
                |r| {
                    matches!(
                        r,
                        HelperResponse::Error {
                            kind: HelperErrorKind::DeadlineExceeded,
                            ..
                        }
                    )
                },
            ),
            ("refused", Role::Extension, "/Volumes/Refused", later, |r| {
                matches!(
                    r,
                    HelperResponse::Error {
                        kind: HelperErrorKind::Internal,
                        ..
                    }
                )
            }),
        ];
        let (s, r) = recording();
        for (what, role, point, deadline, check) in cases {
            let req = HelperRequest::Remount {
                mount: usb(point),
                forced,
            };
            let got = s.handle(role, &req, None, deadline);
            assert!(check(&got), "{what}: {got:?}");
        }
        assert_eq!(r.remounts.lock().unwrap().len(), 1);
        assert_eq!(
            counter(&s, "requests_remount"),
            0,
            "counted on arrival by the server"
        );
        assert_eq!(counter(&s, "remounts_started"), 1);
        assert_eq!(counter(&s, "remounts_failed"), 1);
    }
}
