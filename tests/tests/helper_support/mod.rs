//! Starting a real `gatehouse-helper` on a temporary socket for the helper end-to-end tests,
//! plus request builders. The helper is killed by its own pid when [`Helper`] drops.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use analysis_helper::client::Client;
use model::{AnalysisRequest, FileRef, MountInfo, Needs};
use protocol::{HelperRequest, HelperResponse, Role};
use tests::{ChildGuard, binary, wait_until};

/// A running helper and its scratch directory.
pub struct Helper {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub process: ChildGuard,
}

impl Helper {
    /// Start the helper with `--workers 4`, accepting this test executable as a peer, plus
    /// `extra` arguments. Waits until the socket exists.
    pub fn start(extra: &[&str]) -> Helper {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("run/helper.sock");
        let me = std::env::current_exe().expect("test executable");
        let mut cmd = Command::new(binary("gatehouse-helper"));
        cmd.arg("--socket")
            .arg(&socket)
            .args(["--workers", "4", "--allowed-exe"])
            .arg(&me)
            .args(extra)
            .env("GATEHOUSE_LOG", "warn")
            .stdin(Stdio::null());
        let mut process = ChildGuard::spawn(&mut cmd);
        let up = wait_until(Duration::from_secs(10), || socket.exists());
        if !up {
            let status = process.wait_timeout(Duration::ZERO);
            panic!(
                "helper did not create {} (exit: {status:?})",
                socket.display()
            );
        }
        Helper {
            dir,
            socket,
            process,
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// A connection that passed the handshake as the extension.
    pub fn client(&self) -> Client {
        Client::connect(&self.socket, Role::Extension, Duration::from_secs(10))
            .expect("connecting to the helper as the extension")
    }

    /// The helper's counters by name.
    pub fn stats(&self) -> HashMap<String, u64> {
        match self
            .client()
            .call(HelperRequest::Stats, Duration::from_secs(5), None)
            .expect("stats request")
        {
            HelperResponse::Stats { counters } => counters.into_iter().collect(),
            other => panic!("unexpected answer to Stats: {other:?}"),
        }
    }

    /// Live threads of the helper process.
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // The ChildGuard field kills the process by pid; the socket goes with it here and the
        // directory with the TempDir.
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// An Analyze request for `path` with the file's descriptor attached.
pub fn analyze_file(path: &Path, needs: Needs) -> HelperRequest {
    HelperRequest::Analyze {
        request: AnalysisRequest {
            needs,
            file: Some(FileRef::new(path.display().to_string())),
            mount: None,
            binding: None,
        },
        fd_attached: true,
    }
}

/// An Analyze request for a volume.
pub fn analyze_mount(mount: MountInfo) -> HelperRequest {
    HelperRequest::Analyze {
        request: AnalysisRequest {
            needs: Needs {
                volume: true,
                ..Needs::default()
            },
            file: None,
            mount: Some(mount),
            binding: None,
        },
        fd_attached: false,
    }
}

pub const SHA: Needs = Needs {
    sha256: true,
    certificate: false,
    package: false,
    volume: false,
    file_kind: false,
};

pub const PACKAGE: Needs = Needs {
    sha256: false,
    certificate: false,
    package: true,
    volume: false,
    file_kind: false,
};

/// Send one request (with `fd` attached when given) and wait for its answer.
pub fn call(
    client: &mut Client,
    req: HelperRequest,
    budget: Duration,
    fd: Option<BorrowedFd<'_>>,
) -> HelperResponse {
    client.call(req, budget, fd).expect("helper round trip")
}

/// `sha256sum FILE`'s digest.
pub fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("running sha256sum");
    assert!(out.status.success(), "sha256sum {} failed", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_owned()
}
