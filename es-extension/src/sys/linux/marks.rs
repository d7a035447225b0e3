//! What the group marks: exec authorization on whole filesystems (`FAN_MARK_FILESYSTEM`, so
//! bind mounts are covered), and open authorization only on protected paths (an inode mark on a
//! file; a directory mark with `FAN_EVENT_ON_CHILD` on a directory and on every subdirectory
//! found when the marks are applied, bounded).
//!
//! Exec marks and the kernel allow cache live in the exec group, open marks in the open group
//! (`fanotify::Groups`): clearing the cache flushes only the exec group's inode marks, which are
//! ignore marks and nothing else, so protected paths stay marked at every instant; a policy
//! change that changes the protected set adds the new open marks before it removes the old.
//!
//! Why not one filesystem-wide `FAN_OPEN_PERM` mark filtered by path: every open on that
//! filesystem would then block on our delivery thread (the ~26x open cost of docs/DESIGN.md 7 for
//! every file, not just the guarded ones). Subdirectories created after the marks were applied
//! are marked by the follower (`follow.rs`) as they appear, with the race documented there.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::fanotify::MarkFlags;

use super::fanotify::{Group, Groups};

/// Most directory marks one protected tree may add; deeper trees are truncated (and counted).
pub const MAX_DIR_MARKS: usize = 4096;

/// What to mark.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarkPlan {
    /// Each path names a filesystem to authorize execs on.
    pub exec_filesystems: Vec<PathBuf>,
    /// Files and directories whose opens are authorized.
    pub protected: Vec<PathBuf>,
}

/// A mark that could not be added.
#[derive(Debug, thiserror::Error)]
#[error("fanotify_mark on {path}: {errno}")]
pub struct MarkError {
    pub path: PathBuf,
    pub errno: Errno,
}

/// What was marked, for status lines and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarkReport {
    pub filesystems: usize,
    pub files: usize,
    pub directories: usize,
    /// Directories left unmarked because a tree exceeded [`MAX_DIR_MARKS`].
    pub truncated: usize,
    /// Protected paths that do not exist (their parent directory is marked instead).
    pub missing: Vec<PathBuf>,
    /// The protected directories (and subdirectories) marked, for the follower to watch.
    pub marked_dirs: Vec<PathBuf>,
    /// Every open mark in place after this application: (path, directory mark). What the next
    /// [`update_open`] removes when the policy no longer asks for it.
    pub open_marks: Vec<OpenMark>,
}

/// One open mark: the path it was added through and whether it is a directory mark.
pub type OpenMark = (PathBuf, bool);

/// Add every mark of `plan`. The first failure on an exec filesystem is an error (the policy
/// cannot be enforced there); protected paths that are missing are reported, not fatal.
pub fn apply(groups: &Groups, plan: &MarkPlan) -> Result<MarkReport, MarkError> {
    let mut report = MarkReport::default();
    for fs in &plan.exec_filesystems {
        groups
            .exec
            .mark_filesystem_exec(fs)
            .map_err(|errno| MarkError {
                path: fs.clone(),
                errno,
            })?;
        report.filesystems += 1;
    }
    apply_open(&groups.open, plan, &mut report)?;
    Ok(report)
}

fn apply_open(group: &Group, plan: &MarkPlan, report: &mut MarkReport) -> Result<(), MarkError> {
    for p in &plan.protected {
        let meta = match std::fs::symlink_metadata(p) {
            Ok(m) => m,
            Err(_) => {
                report.missing.push(p.clone());
                // A file created later appears as a child of its parent: guard the parent's
                // direct children so the creation's first open is seen.
                if let Some(parent) = p.parent().filter(|d| d.is_dir()) {
                    mark(group, parent, true)?;
                    report.directories += 1;
                    report.open_marks.push((parent.to_owned(), true));
                }
                continue;
            }
        };
        if meta.is_dir() {
            let mut budget = MAX_DIR_MARKS;
            mark_tree(group, p, &mut budget, report)?;
        } else {
            mark(group, p, false)?;
            report.files += 1;
            report.open_marks.push((p.clone(), false));
        }
    }
    Ok(())
}

fn mark(group: &Group, path: &Path, directory: bool) -> Result<(), MarkError> {
    group.mark_open(path, directory).map_err(|errno| MarkError {
        path: path.to_owned(),
        errno,
    })
}

/// Mark `dir` and its subdirectories, breadth first, within `budget`. Symlinks are not
/// followed (a link out of the tree must not widen the guarded set).
fn mark_tree(
    group: &Group,
    dir: &Path,
    budget: &mut usize,
    report: &mut MarkReport,
) -> Result<(), MarkError> {
    let mut queue = std::collections::VecDeque::from([dir.to_owned()]);
    while let Some(d) = queue.pop_front() {
        if *budget == 0 {
            report.truncated += 1 + queue.len();
            return Ok(());
        }
        *budget -= 1;
        mark(group, &d, true)?;
        report.directories += 1;
        report.marked_dirs.push(d.clone());
        report.open_marks.push((d.clone(), true));
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    queue.push_back(e.path());
                }
            }
        }
    }
    Ok(())
}

/// Move the open marks from `old` (what is marked now, followed directories included) to what
/// `plan` asks for, with no instant at which a path both ask for is unmarked: every mark of
/// `plan` is added first (adding a mark that exists is a no-op), and only then are the marks
/// in `old` that `plan` no longer asks for removed. On an error nothing is removed (the caller
/// keeps `old` plus `report.open_marks`, which holds what was added before the failure: too
/// much protection, never too little).
pub fn update_open(
    groups: &Groups,
    plan: &MarkPlan,
    old: &[OpenMark],
    report: &mut MarkReport,
) -> Result<(), MarkError> {
    apply_open(&groups.open, plan, report)?;
    let keep: HashSet<&OpenMark> = report.open_marks.iter().collect();
    let mut gone: HashSet<&OpenMark> = HashSet::new();
    for m in old {
        if !keep.contains(m) && gone.insert(m) {
            // A path that no longer exists (or now names another inode) cannot be unmarked
            // by name; its mark goes with its inode.
            let _ = groups.open.unmark_open(&m.0, m.1);
        }
    }
    Ok(())
}

/// Drop every kernel-cached allow: flush the exec group's inode marks. That group's only inode
/// marks are the evictable ignore marks (its exec marks are filesystem marks, a class a flush
/// of inode marks leaves alone), and open marks live in the other group, so no authorization
/// lapses, not even for an instant.
pub fn clear_cache(groups: &Groups) -> Result<(), MarkError> {
    groups
        .exec
        .flush(MarkFlags::FAN_MARK_INODE)
        .map_err(|errno| MarkError {
            path: PathBuf::from("<exec group inode ignore marks>"),
            errno,
        })
}

/// Remove every mark of both groups (shutdown). Pending events still need their answers.
pub fn remove_all(groups: &Groups) {
    for group in groups.both() {
        for class in [
            MarkFlags::FAN_MARK_INODE,
            MarkFlags::FAN_MARK_MOUNT,
            MarkFlags::FAN_MARK_FILESYSTEM,
        ] {
            let _ = group.flush(class);
        }
    }
}
