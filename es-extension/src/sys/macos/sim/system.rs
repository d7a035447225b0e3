//! A simulated system around the ES simulator: processes, the daemons the helper's analyzers
//! call into (trustd, syspolicyd, diskarbitrationd), which exec and open files on demand and so
//! raise AUTH events back at the client, and an in-process fake helper speaking the
//! [`HelperTransport`] protocol the XPC transport's client side expects (handshake implied,
//! `Ping` -> `Pong`, `Analyze` -> `Analysis`), with its own file reads raised as opens.
//!
//! The helper's real macOS analyzers get their system-call traits from helper C's work; until
//! then this fake stands in for `gatehouse-helper` and its XPC connection.
#![forbid(unsafe_code)]

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};
use model::{Facts, MountDisposition, MountFlags, MountInfo, Sha256, cs_flags};
use protocol::{HelperRequest, HelperResponse, Request, Response};

use super::super::api::AuditToken;
use super::super::convert::{fflag, mnt, mnt_bits, more_cs_flags};
use super::super::message::{EsBody, EsFile, EsMount, EsProcess};
use super::{EsSim, Raised};
use crate::core::{HelperTransport, LinkSink, TransportError};

/// A platform (Apple-signed) process image, signing id `com.apple.<file name>`.
pub fn platform(pid: u32, exe: &str) -> EsProcess {
    platform_signed(
        pid,
        exe,
        &format!("com.apple.{}", exe.rsplit('/').next().unwrap_or(exe)),
    )
}

/// A platform process image with its signing id, as the kernel reports Apple's daemons: a valid,
/// enforced (hard, kill) code signature and a CDHash.
pub fn platform_signed(pid: u32, exe: &str, signing_id: &str) -> EsProcess {
    EsProcess {
        token: AuditToken::for_pid(pid, 1),
        ppid: 1,
        executable: EsFile::new(exe),
        codesigning_flags: cs_flags::CS_VALID
            | cs_flags::CS_HARD
            | cs_flags::CS_KILL
            | more_cs_flags::CS_SIGNED,
        is_platform_binary: true,
        signing_id: signing_id.to_owned(),
        cdhash: [0xa5; 20],
        ..EsProcess::default()
    }
}

/// An unsigned third-party process image.
pub fn unsigned(pid: u32, exe: &str) -> EsProcess {
    EsProcess {
        token: AuditToken::for_pid(pid, 1),
        ppid: 1,
        executable: EsFile::new(exe),
        ..EsProcess::default()
    }
}

pub fn exec(target: EsProcess) -> EsBody {
    EsBody::Exec {
        target: Box::new(target),
    }
}

/// A file as the kernel would report it in a message: its path and its `stat` read now (the
/// simulator's stand-in for the kernel's own; tests that write real files).
pub fn on_disk(path: &std::path::Path) -> EsFile {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).expect("the file to report exists");
    EsFile {
        path: path.to_string_lossy().into_owned(),
        path_truncated: false,
        stat: super::super::convert::RawStat {
            dev: m.dev() as i64,
            ino: m.ino(),
            size: m.size() as i64,
            mtime_sec: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            ctime_sec: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        },
    }
}

pub fn open_read(path: &str) -> EsBody {
    EsBody::Open {
        file: EsFile::new(path),
        fflag: fflag::FREAD,
    }
}

pub fn open_write(path: &str) -> EsBody {
    EsBody::Open {
        file: EsFile::new(path),
        fflag: fflag::FREAD | fflag::FWRITE,
    }
}

/// A system daemon the helper calls into. Serving a request, it execs its tool and reads its
/// database, each an AUTH event it waits on like any process.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub process: EsProcess,
    /// A daemon it has launched on demand per request (`launchd` execs it through
    /// `xpcproxy`): an image of the daemons the analysis path depends on.
    pub tool: EsProcess,
    /// A file it opens per request.
    pub database: String,
}

impl Daemon {
    pub fn trustd() -> Self {
        Self {
            process: platform(201, "/usr/libexec/trustd"),
            // Revocation checks start ocspd.
            tool: platform_signed(1201, "/usr/sbin/ocspd", "com.apple.ocspd"),
            database: "/private/var/db/TrustCache".to_owned(),
        }
    }

    pub fn syspolicyd() -> Self {
        Self {
            process: platform(202, "/usr/libexec/syspolicyd"),
            // Assessments ask amfid.
            tool: platform_signed(1202, "/usr/libexec/amfid", "com.apple.MobileFileIntegrity"),
            database: "/private/var/db/SystemPolicy".to_owned(),
        }
    }

    pub fn diskarbitrationd() -> Self {
        Self {
            process: platform(203, "/usr/libexec/diskarbitrationd"),
            // A volume query may start the daemon itself through xpcproxy.
            tool: platform_signed(1203, "/usr/libexec/xpcproxy", "com.apple.xpc.proxy"),
            database: "/private/var/db/diskarbitration".to_owned(),
        }
    }

    /// Do the work for one request, blocking on each AUTH event like a real process.
    pub fn serve(&self, sim: &EsSim) -> bool {
        let tool = sim.raise(&self.process, exec(self.tool.clone()));
        let db = sim.raise(&self.process, open_read(&self.database));
        tool.wait() && db.wait()
    }
}

/// The model's disposition back to `es_mount_disposition_t` (inverse of
/// `convert::mount_disposition`).
fn raw_disposition(d: MountDisposition) -> Option<u32> {
    match d {
        MountDisposition::External => Some(0),
        MountDisposition::Internal => Some(1),
        MountDisposition::Network => Some(2),
        MountDisposition::Virtual => Some(3),
        MountDisposition::Nullfs => Some(4),
        MountDisposition::Unknown => None,
    }
}

/// The fake helper's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HelperMode {
    /// Answers: reads the file (an open by the helper) and asks the daemons.
    #[default]
    Working,
    /// Connected but never answers an analysis (a wedged helper).
    Frozen,
    /// Never connects (not installed, or launchd cannot start it).
    Missing,
}

/// An in-process `gatehouse-helper` behind the [`HelperTransport`] the core uses.
#[derive(Debug)]
pub struct SimHelper {
    pub process: EsProcess,
    sim: EsSim,
    daemons: Vec<Daemon>,
    mode: Mutex<HelperMode>,
    connected: AtomicBool,
    requests: AtomicU64,
    work: Mutex<Option<Sender<Request<HelperRequest>>>>,
    /// Remount requests, and the mount each started (raised by diskarbitrationd's mount tool).
    remounts: Mutex<Vec<(MountInfo, MountFlags, Raised)>>,
    /// Unmount requests (start-up), with `force`.
    unmounts: Mutex<Vec<(MountInfo, bool)>>,
}

impl SimHelper {
    pub fn new(sim: &EsSim, pid: u32, mode: HelperMode) -> Arc<Self> {
        Arc::new(Self {
            process: platform(
                pid,
                "/Library/Application Support/Gatehouse/gatehouse-helper",
            ),
            sim: sim.clone(),
            daemons: vec![
                Daemon::trustd(),
                Daemon::syspolicyd(),
                Daemon::diskarbitrationd(),
            ],
            mode: Mutex::new(mode),
            connected: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            work: Mutex::new(None),
            remounts: Mutex::new(Vec::new()),
            unmounts: Mutex::new(Vec::new()),
        })
    }

    /// Analysis requests received.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Every remount asked of this helper: the volume, the forced flags, and whether the mount
    /// it started was allowed (waits for each answer, as the mount tool would).
    pub fn remounts(&self) -> Vec<(MountInfo, MountFlags, bool)> {
        super::lock(&self.remounts)
            .iter()
            .map(|(m, f, raised)| (m.clone(), *f, raised.wait()))
            .collect()
    }

    /// Every start-up unmount asked of this helper, with whether it was forced.
    pub fn unmounts(&self) -> Vec<(MountInfo, bool)> {
        super::lock(&self.unmounts).clone()
    }

    /// As DiskArbitration would: the mount tool mounts the volume (again) with its own flags
    /// plus `forced`, an AUTH_MOUNT like any other, not waited for (the real helper returns
    /// once DiskArbitration has the request). The `mount -o` words.
    fn mount_again(&self, mount: &MountInfo, forced: &MountFlags) -> Vec<String> {
        let f_flags = mount.os_flags | mnt_bits(&mount.flags) | mnt_bits(forced);
        let tool = platform_signed(
            1303,
            "/System/Library/Filesystems/msdos.fs/Contents/Resources/mount_msdos",
            "com.apple.mount_msdos",
        );
        let raised = self.sim.raise(
            &tool,
            EsBody::Mount(EsMount {
                mntfromname: mount.source.clone(),
                mntonname: mount.mount_point.clone(),
                fstypename: mount.fs_type.clone(),
                f_flags,
                disposition: raw_disposition(mount.disposition),
            }),
        );
        super::lock(&self.remounts).push((mount.clone(), *forced, raised));
        let words = [
            (mnt::MNT_RDONLY, "rdonly"),
            (mnt::MNT_NOEXEC, "noexec"),
            (mnt::MNT_NOSUID, "nosuid"),
            (mnt::MNT_NODEV, "nodev"),
        ];
        words
            .iter()
            .filter(|(bit, _)| f_flags & bit != 0)
            .map(|(_, w)| (*w).to_owned())
            .collect()
    }

    pub fn set_mode(&self, mode: HelperMode) {
        *super::lock(&self.mode) = mode;
    }

    fn mode(&self) -> HelperMode {
        *super::lock(&self.mode)
    }

    /// What the real helper would do for one request: read the subject through its own open,
    /// then ask every daemon. Blocks on the AUTH events that raises.
    pub fn analyze(&self, req: &HelperRequest) -> HelperResponse {
        match req {
            HelperRequest::Ping => HelperResponse::Pong {
                agent: "sim-helper".to_owned(),
                pid: self.process.token.pid(),
                uptime_ms: 0,
            },
            HelperRequest::Stats => HelperResponse::Stats {
                counters: Vec::new(),
            },
            HelperRequest::Remount { mount, forced } => {
                let arguments = self.mount_again(mount, forced);
                HelperResponse::RemountStarted { arguments }
            }
            HelperRequest::Unmount {
                mount,
                force,
                remount,
            } => {
                super::lock(&self.unmounts).push((mount.clone(), *force));
                let then_mount_with = remount.map(|f| self.mount_again(mount, &f));
                HelperResponse::UnmountStarted { then_mount_with }
            }
            HelperRequest::Analyze { request, .. } => {
                if let Some(f) = &request.file {
                    self.sim.raise(&self.process, open_read(&f.path)).wait();
                }
                for d in &self.daemons {
                    d.serve(&self.sim);
                }
                // The real file's hash and kind when the path names one on this machine
                // (tests that write files), else a hash no rule names: the policy decides on
                // the rest.
                let on_disk = request
                    .file
                    .as_ref()
                    .and_then(|f| std::fs::read(&f.path).ok());
                let sha256 = request.needs.sha256.then(|| {
                    on_disk.as_ref().map_or(Sha256([0x5a; 32]), |bytes| {
                        Sha256(<sha2::Sha256 as sha2::Digest>::digest(bytes).into())
                    })
                });
                let file_kind = request
                    .needs
                    .file_kind
                    .then(|| on_disk.as_ref().map(|b| model::FileKind::of(b)))
                    .flatten();
                let facts = Facts {
                    sha256,
                    file_kind,
                    ..Facts::NONE
                };
                HelperResponse::Analysis {
                    facts,
                    errors: Vec::new(),
                }
            }
        }
    }

    fn worker(&self, rx: &Receiver<Request<HelperRequest>>, sink: &LinkSink, stop: &Receiver<()>) {
        loop {
            crossbeam_channel::select! {
                recv(stop) -> _ => return,
                recv(rx) -> r => {
                    let Ok(req) = r else { return };
                    if self.mode() == HelperMode::Frozen {
                        continue;
                    }
                    let body = self.analyze(&req.body);
                    sink.response(Response { id: req.id, body });
                }
            }
        }
    }
}

impl HelperTransport for SimHelper {
    fn describe(&self) -> String {
        "sim:gatehouse-helper".to_owned()
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    fn peer_pid(&self) -> Option<u32> {
        self.connected().then(|| self.process.token.pid())
    }

    fn peer_token(&self) -> Option<AuditToken> {
        self.connected().then_some(self.process.token)
    }

    fn run(&self, sink: LinkSink, stop: &Receiver<()>) {
        if self.mode() == HelperMode::Missing {
            let _ = stop.recv();
            return;
        }
        // Bounded: two workers, a bounded queue (a full one refuses the send).
        let (tx, rx) = crossbeam_channel::bounded(64);
        *super::lock(&self.work) = Some(tx);
        self.connected.store(true, Ordering::Release);
        sink.connected();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| self.worker(&rx, &sink, stop));
            }
        });
        self.connected.store(false, Ordering::Release);
    }

    fn send(
        &self,
        req: &Request<HelperRequest>,
        _fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), TransportError> {
        if !self.connected() {
            return Err(TransportError::NotConnected);
        }
        if matches!(req.body, HelperRequest::Analyze { .. }) {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
        let work = super::lock(&self.work);
        let tx = work.as_ref().ok_or(TransportError::NotConnected)?;
        tx.try_send(req.clone())
            .map_err(|e| TransportError::Send(e.to_string()))
    }

    fn close(&self) {
        self.connected.store(false, Ordering::Release);
        super::lock(&self.work).take();
    }
}
