//! Volumes mounted before the extension started (Santa's `OnStartUSBOptions`): each is decided
//! as if it were being mounted now, and where the mount rules deny it the helper unmounts it
//! (and mounts it again with a `remount` rule's flags, when the policy says so). Runs once, on
//! the remount thread, when the backend says its start-up policy is in force
//! (`Core::begin_startup_mounts`) and the helper is up: start-up never waits for it, and the
//! delivery thread never sees it.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use model::{
    CodeSigning, Decision, Event, EventBody, FileRef, MountFlags, MountInfo, Outcome, Process,
    Verdict,
};
use policy::{MountedAtStart, Policy};
use protocol::{HelperRequest, HelperResponse};

use super::Shared;
use super::helper_client::HelperClient;
use super::metrics::Metrics;
use crate::backend::Responder;

/// The volumes mounted now (macOS: `getfsstat`), as the model describes a mount.
#[derive(Clone)]
pub struct MountSource(pub Arc<dyn Fn() -> Vec<MountInfo> + Send + Sync>);

impl std::fmt::Debug for MountSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MountSource")
    }
}

/// At most this many mounted volumes are looked at (a machine has a few dozen).
pub const MAX_STARTUP_MOUNTS: usize = 256;

/// How long each helper exchange of the start-up pass may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// What to do with one volume that was mounted before we started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupAction {
    Keep,
    Unmount {
        force: bool,
        /// Mount again with these flags added to the volume's own.
        remount: Option<MountFlags>,
    },
}

/// The action for a volume the policy decided `decision` for, under `option`. Santa's
/// `performStartupTasks:`: a volume the rules allow (or that already has a `remount` rule's
/// flags) is kept; otherwise it is unmounted, forced with the `Force*` options, and mounted
/// again only with a `Remount*` option and a `remount` rule (a `block` rule's volume stays
/// unmounted: "RemountSkipped").
pub fn plan(decision: &Decision, option: MountedAtStart) -> StartupAction {
    if option == MountedAtStart::Keep || decision.verdict == Verdict::Allow {
        return StartupAction::Keep;
    }
    let force = matches!(
        option,
        MountedAtStart::ForceUnmount | MountedAtStart::ForceRemount
    );
    let remount = match option {
        MountedAtStart::Remount | MountedAtStart::ForceRemount => decision.remount,
        _ => None,
    };
    StartupAction::Unmount { force, remount }
}

/// The mount event a volume would raise if it were mounted now. No process asked, so the
/// actor is the kernel (pid 0); mount rules read only the mount.
pub fn as_mount_event(mount: &MountInfo) -> Event {
    Event {
        process: Process {
            pid: 0,
            pid_version: None,
            ppid: None,
            uid: 0,
            gid: 0,
            executable: FileRef::new("/"),
            signing: CodeSigning::unsigned(),
            audit_token: None,
        },
        body: EventBody::Mount {
            mount: mount.clone(),
        },
    }
}

/// Decide `mount` under `policy`, asking the helper for volume facts when a rule needs them.
/// `None` when it cannot be decided (the helper could not say): such a volume is kept.
fn decide<R: Responder>(
    policy: &Policy,
    helper: &HelperClient<R>,
    mount: &MountInfo,
) -> Option<Decision> {
    let event = as_mount_event(mount);
    let request = match policy.decide(&event, &model::Facts::NONE) {
        Outcome::Decided(d) => return Some(d),
        Outcome::Analyze(r) => r,
    };
    let answer = helper.call(
        HelperRequest::Analyze {
            request,
            fd_attached: false,
        },
        STEP_TIMEOUT,
    );
    match answer {
        Ok((HelperResponse::Analysis { facts, .. }, _)) => match policy.decide(&event, &facts) {
            Outcome::Decided(d) => Some(d),
            Outcome::Analyze(_) => None,
        },
        _ => None,
    }
}

/// The start-up pass: wait (interruptibly) for the helper, then look at every mounted volume
/// once. Returns early when `stop` fires.
pub(crate) fn run<R: Responder>(
    shared: &Shared,
    helper: &HelperClient<R>,
    source: &MountSource,
    stop: &Receiver<()>,
) {
    while !helper.connected() {
        if stop.recv_timeout(Duration::from_millis(100)).is_ok() || shared.is_stopping() {
            return;
        }
    }
    let snapshot = shared.store.load();
    let option = snapshot.policy.mounted_at_start();
    if option == MountedAtStart::Keep {
        return;
    }
    let m = &shared.metrics;
    let mounts = (source.0)();
    for mount in mounts.iter().take(MAX_STARTUP_MOUNTS) {
        Metrics::inc(&m.startup_mounts_checked);
        let Some(decision) = decide(&snapshot.policy, helper, mount) else {
            tracing::warn!(mount_point = %mount.mount_point,
                "could not decide a volume mounted before start-up; it is kept");
            continue;
        };
        let StartupAction::Unmount { force, remount } = plan(&decision, option) else {
            continue;
        };
        let body = HelperRequest::Unmount {
            mount: mount.clone(),
            force,
            remount,
        };
        match helper.call(body, STEP_TIMEOUT) {
            Ok((HelperResponse::UnmountStarted { then_mount_with }, _)) => {
                Metrics::inc(&m.startup_unmounts_started);
                tracing::info!(mount_point = %mount.mount_point, remount = ?then_mount_with,
                    "unmounting a volume the mount rules deny, mounted before start-up");
            }
            other => {
                Metrics::inc(&m.startup_unmounts_failed);
                tracing::warn!(mount_point = %mount.mount_point, answer = ?other,
                    "the helper did not unmount a volume the mount rules deny");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{Cacheability, Reason};

    /// Santa's `performStartupTasks:` (SNTEndpointSecurityDeviceManager.mm): allowed volumes
    /// are skipped; denied ones are unmounted (forced with the Force options), and mounted
    /// again only with a Remount option and remount flags.
    #[test]
    fn plan_table() {
        let ro = MountFlags {
            read_only: true,
            ..MountFlags::default()
        };
        let allow = Decision::allow(Reason::Default, Cacheability::Never);
        let block = Decision::deny(Reason::Default, Cacheability::Never);
        let mut remount = Decision::deny(Reason::Default, Cacheability::Never);
        remount.remount = Some(ro);
        use MountedAtStart as O;
        use StartupAction as A;
        let un = |force, remount| A::Unmount { force, remount };
        let cases = [
            (&allow, O::ForceRemount, A::Keep),
            (&block, O::Keep, A::Keep),
            (&remount, O::Keep, A::Keep),
            (&block, O::Unmount, un(false, None)),
            (&block, O::ForceUnmount, un(true, None)),
            (&block, O::Remount, un(false, None)),
            (&block, O::ForceRemount, un(true, None)),
            (&remount, O::Unmount, un(false, None)),
            (&remount, O::Remount, un(false, Some(ro))),
            (&remount, O::ForceRemount, un(true, Some(ro))),
        ];
        for (d, option, want) in cases {
            assert_eq!(plan(d, option), want, "{d:?} {option:?}");
        }
    }
}
