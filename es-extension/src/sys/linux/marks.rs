//! What the group marks: exec authorization on whole filesystems (`FAN_MARK_FILESYSTEM`, so
//! bind mounts are covered), and open authorization only on protected paths (an inode mark on a
//! file; a directory mark with `FAN_EVENT_ON_CHILD` on a directory and on every subdirectory
//! found when the marks are applied, bounded).
//!
//! Why not one filesystem-wide `FAN_OPEN_PERM` mark filtered by path: every open on that
//! filesystem would then block on our delivery thread (the ~26x open cost of DESIGN.md 7 for
//! every file, not just the guarded ones). Subdirectories created after the marks were applied
//! are marked by the follower (`follow.rs`) as they appear, with the race documented there.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::fanotify::MarkFlags;

use super::fanotify::Group;

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
}

/// Add every mark of `plan`. The first failure on an exec filesystem is an error (the policy
/// cannot be enforced there); protected paths that are missing are reported, not fatal.
pub fn apply(group: &Group, plan: &MarkPlan) -> Result<MarkReport, MarkError> {
    let mut report = MarkReport::default();
    for fs in &plan.exec_filesystems {
        group.mark_filesystem_exec(fs).map_err(|errno| MarkError {
            path: fs.clone(),
            errno,
        })?;
        report.filesystems += 1;
    }
    apply_open(group, plan, &mut report)?;
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

/// Drop every kernel-cached allow (the evictable inode ignore marks) and put the protected
/// paths' open marks back. `FAN_MARK_FLUSH` is not selective: it removes every inode mark of
/// the group, ignore marks and open marks alike, so the open marks are re-added at once. For
/// the few microseconds in between, opens of protected files are not authorized; filesystem
/// (exec) marks are untouched, so exec authorization never lapses.
pub fn clear_cache(group: &Group, plan: &MarkPlan) -> Result<MarkReport, MarkError> {
    group
        .flush(MarkFlags::FAN_MARK_INODE)
        .map_err(|errno| MarkError {
            path: PathBuf::from("<inode marks>"),
            errno,
        })?;
    let mut report = MarkReport::default();
    apply_open(group, plan, &mut report)?;
    Ok(report)
}

/// Remove every mark (shutdown). Pending events still need their answers.
pub fn remove_all(group: &Group) {
    for class in [
        MarkFlags::FAN_MARK_INODE,
        MarkFlags::FAN_MARK_MOUNT,
        MarkFlags::FAN_MARK_FILESYSTEM,
    ] {
        let _ = group.flush(class);
    }
}
