//! The notifier agent's decisions, free of Objective-C (`Gatehouse notify`, run in each user's
//! session by the `dev.gatehouse.notifier` launch agent): how a block reads as a notification,
//! and the long-poll loop's state (cursor, back-off). `macos.rs` sends the requests over XPC
//! and posts the notifications; every branch here is table-tested on Linux.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(target_os = "macos"),
    allow(
        dead_code,
        reason = "the XPC loop that uses these is macOS-only; the tests run them on every OS"
    )
)]

use std::time::Duration;

use protocol::{BlockNotice, NoticeBatch, NoticeRequest, PROTOCOL_VERSION};

/// What the user sees when the rule has no message of its own (Santa's default block text).
pub const DEFAULT_MESSAGE: &str = "This was blocked by your organization's security policy. Contact your administrator if you need it.";

/// One notification to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Unique per block in this extension run (so the system never merges two).
    pub id: String,
    pub title: String,
    pub body: String,
}

fn name(path: &str) -> &str {
    path.rsplit('/').find(|s| !s.is_empty()).unwrap_or(path)
}

/// How a block reads: the title names what was blocked, the body says why (the rule's message,
/// or the default) and where it is.
pub fn notification(n: &BlockNotice) -> Notification {
    let title = match n.kind.as_str() {
        "exec" => format!("Gatehouse blocked {}", name(&n.target)),
        "mount" | "remount" => format!("Gatehouse blocked the volume {}", name(&n.target)),
        _ if n.target.is_empty() => format!("Gatehouse blocked {}", name(&n.process)),
        _ => format!(
            "Gatehouse stopped {} from using {}",
            name(&n.process),
            name(&n.target)
        ),
    };
    let why = n.message.as_deref().unwrap_or(DEFAULT_MESSAGE);
    let body = if n.target.is_empty() {
        why.to_owned()
    } else {
        format!("{why}\n{}", n.target)
    };
    Notification {
        id: format!("dev.gatehouse.block.{}.{}", n.time_unix_ms, n.seq),
        title,
        body,
    }
}

/// A batch as notifications, with one summary for the blocks that were not shown.
pub fn notifications(b: &NoticeBatch) -> Vec<Notification> {
    let mut out: Vec<Notification> = b.notices.iter().map(|n| notification(n)).collect();
    if b.missed > 0 {
        out.push(Notification {
            id: format!("dev.gatehouse.missed.{}", b.next),
            title: "Gatehouse blocked more".to_owned(),
            body: format!(
                "{} more blocks were not shown; your administrator can see them all",
                b.missed
            ),
        });
    }
    out
}

/// Wait at most this long for an answer: the extension answers empty before
/// `NOTICE_WAIT_MAX_MS`, so only a gone or stuck extension takes this long.
pub const REPLY_TIMEOUT: Duration = Duration::from_millis(protocol::NOTICE_WAIT_MAX_MS + 10_000);
/// After a failure (extension not running, restarting, refusing us), try again after this long,
/// doubling up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The long poll's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poller {
    cursor: u64,
    backoff: Duration,
}

impl Default for Poller {
    fn default() -> Self {
        Self {
            cursor: 0,
            backoff: BACKOFF_MIN,
        }
    }
}

/// What to do after an answer: post these, then wait this long before the next request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    pub show: Vec<Notification>,
    pub delay: Duration,
}

impl Poller {
    pub fn request(&self) -> NoticeRequest {
        NoticeRequest {
            version: PROTOCOL_VERSION,
            after: self.cursor,
        }
    }

    /// An answer (`Ok`) moves the cursor and asks again at once; a failure keeps the cursor
    /// and backs off. A cursor from an extension that has since restarted is moved back by the
    /// extension itself, so nothing from the new run is skipped.
    pub fn answered(&mut self, r: Result<NoticeBatch, String>) -> Next {
        match r {
            Ok(b) => {
                self.cursor = b.next;
                self.backoff = BACKOFF_MIN;
                Next {
                    show: notifications(&b),
                    delay: Duration::ZERO,
                }
            }
            Err(_) => {
                let delay = self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                Next {
                    show: Vec::new(),
                    delay,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(kind: &str, target: &str, message: Option<&str>) -> BlockNotice {
        BlockNotice {
            seq: 7,
            time_unix_ms: 1000,
            kind: kind.into(),
            target: target.into(),
            process: "/Applications/Editor.app/Contents/MacOS/Editor".into(),
            pid: 9,
            uid: 501,
            rule: Some("r".into()),
            message: message.map(Into::into),
        }
    }

    #[test]
    fn notification_table() {
        for (n, title, body) in [
            (
                block(
                    "exec",
                    "/Users/jo/Downloads/tool",
                    Some("Unapproved software: ask IT"),
                ),
                "Gatehouse blocked tool",
                "Unapproved software: ask IT\n/Users/jo/Downloads/tool",
            ),
            (
                block("open", "/Users/jo/.ssh/id_ed25519", None),
                "Gatehouse stopped Editor from using id_ed25519",
                &format!("{DEFAULT_MESSAGE}\n/Users/jo/.ssh/id_ed25519") as &str,
            ),
            (
                block("mount", "/Volumes/USB/", Some("No USB storage")),
                "Gatehouse blocked the volume USB",
                "No USB storage\n/Volumes/USB/",
            ),
            (
                block("unlink", "", Some("x")),
                "Gatehouse blocked Editor",
                "x",
            ),
        ] {
            let got = notification(&n);
            assert_eq!((got.title.as_str(), got.body.as_str()), (title, body));
            assert_eq!(got.id, "dev.gatehouse.block.1000.7");
        }
    }

    /// The loop: an answer moves the cursor and polls again at once; failures back off,
    /// doubling to the cap, and keep the cursor; missed blocks become one summary.
    #[test]
    fn poller_table() {
        let mut p = Poller::default();
        assert_eq!(p.request().after, 0);
        let n = p.answered(Ok(NoticeBatch {
            notices: vec![Box::new(block("exec", "/t", None))],
            missed: 3,
            next: 12,
        }));
        assert_eq!(n.delay, Duration::ZERO);
        assert_eq!(n.show.len(), 2);
        assert!(n.show[1].body.starts_with("3 more blocks"));
        assert_eq!(p.request().after, 12);
        let delays: Vec<u64> = (0..8)
            .map(|_| p.answered(Err("gone".into())).delay.as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(p.request().after, 12, "a failure keeps the cursor");
        let n = p.answered(Ok(NoticeBatch {
            notices: vec![],
            missed: 0,
            next: 12,
        }));
        assert!(n.show.is_empty());
        assert_eq!(p.answered(Err("x".into())).delay, BACKOFF_MIN, "reset");
    }
}
