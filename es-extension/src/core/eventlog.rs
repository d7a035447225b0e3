//! The events log: one JSON object per notable decision (deny, fallback, monitor-mode
//! would-deny, audit-only), written by its own thread AFTER the answer was sent.
//!
//! Answering threads only `try_send` into a bounded channel; when it is full the record is
//! dropped and counted, and the writer puts a `{"gap": N}` line where the loss happened, so a
//! loss is never silent. The file is rotated by size (`FILE` -> `FILE.1`). The writer also keeps
//! the last lines in memory for `gatehouse events tail`.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use model::{Decision, Event};
use serde::Serialize;

use super::metrics::Metrics;

/// One notable decision, as handed to the writer.
#[derive(Debug)]
pub struct LogRecord {
    pub event: Event,
    pub decision: Decision,
    pub latency: Duration,
    pub late: bool,
    pub policy_version: u64,
    pub at: SystemTime,
}

#[derive(Serialize)]
struct Line<'a> {
    time_ms: u64,
    kind: &'static str,
    verdict: model::Verdict,
    #[serde(flatten)]
    reason: &'a model::Reason,
    would_deny: bool,
    audit_only: bool,
    latency_us: u64,
    late: bool,
    policy_version: u64,
    event: &'a Event,
}

impl LogRecord {
    pub fn to_json(&self) -> String {
        let line = Line {
            time_ms: self
                .at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            kind: self.event.kind().as_str(),
            verdict: self.decision.verdict,
            reason: &self.decision.reason,
            would_deny: self.decision.would_deny,
            audit_only: self.decision.audit_only,
            latency_us: self.latency.as_micros() as u64,
            late: self.late,
            policy_version: self.policy_version,
            event: &self.event,
        };
        serde_json::to_string(&line).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// The answering side of the log: never blocks.
#[derive(Debug)]
pub struct LogSender {
    tx: Sender<LogRecord>,
    /// Records dropped since the writer last wrote a gap line.
    pending_gap: AtomicU64,
}

impl LogSender {
    pub fn submit(&self, rec: LogRecord, metrics: &Metrics) {
        match self.tx.try_send(rec) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.pending_gap.fetch_add(1, Ordering::Relaxed);
                Metrics::inc(&metrics.log_dropped);
            }
        }
    }
}

/// Recent lines kept in memory for `events tail`.
#[derive(Debug)]
pub struct RecentLines {
    lines: Mutex<VecDeque<String>>,
    cap: usize,
}

impl RecentLines {
    fn push(&self, line: String) {
        let mut l = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if l.len() == self.cap {
            l.pop_front();
        }
        l.push_back(line);
    }

    /// The last `max` lines, oldest first.
    pub fn tail(&self, max: usize) -> Vec<String> {
        let l = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        l.iter()
            .skip(l.len().saturating_sub(max))
            .cloned()
            .collect()
    }
}

/// Create the channel pair. `capacity` bounds memory; `recent` bounds the tail buffer.
pub fn channel(
    capacity: usize,
    recent: usize,
) -> (LogSender, Receiver<LogRecord>, Arc<RecentLines>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (
        LogSender {
            tx,
            pending_gap: AtomicU64::new(0),
        },
        rx,
        Arc::new(RecentLines {
            lines: Mutex::new(VecDeque::with_capacity(recent.min(4096))),
            cap: recent.max(1),
        }),
    )
}

/// A size-rotated JSON-lines file.
struct Rotating {
    path: PathBuf,
    max_bytes: u64,
    file: Option<BufWriter<File>>,
    size: u64,
}

impl Rotating {
    fn open(path: &Path, max_bytes: u64) -> Self {
        let mut r = Self {
            path: path.to_owned(),
            max_bytes,
            file: None,
            size: 0,
        };
        r.reopen();
        r
    }

    fn reopen(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(f) => {
                self.size = f.metadata().map_or(0, |m| m.len());
                self.file = Some(BufWriter::new(f));
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot open the events log; lines are kept in memory only");
                self.file = None;
            }
        }
    }

    fn write_line(&mut self, line: &str) {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            if let Some(mut f) = self.file.take() {
                let _ = f.flush();
            }
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            let _ = std::fs::rename(&self.path, rotated);
            self.reopen();
        }
        if let Some(f) = &mut self.file
            && f.write_all(line.as_bytes())
                .and_then(|()| f.write_all(b"\n"))
                .is_ok()
        {
            self.size += len;
        }
    }

    fn flush(&mut self) {
        if let Some(f) = &mut self.file {
            let _ = f.flush();
        }
    }
}

/// The writer thread's body. Returns when `stop` is disconnected, after draining the channel.
pub(crate) fn run_writer(
    rx: Receiver<LogRecord>,
    stop: Receiver<()>,
    sender: Arc<super::Shared>,
    recent: Arc<RecentLines>,
    path: Option<PathBuf>,
    max_bytes: u64,
) {
    let mut file = path.map(|p| Rotating::open(&p, max_bytes));
    let mut emit = |line: String, file: &mut Option<Rotating>| {
        if let Some(f) = file.as_mut() {
            f.write_line(&line);
        }
        recent.push(line);
    };
    let gap = |file: &mut Option<Rotating>, emit: &mut dyn FnMut(String, &mut Option<Rotating>)| {
        let n = sender.log.pending_gap.swap(0, Ordering::Relaxed);
        if n > 0 {
            emit(format!("{{\"gap\":{n}}}"), file);
        }
    };
    loop {
        let first = crossbeam_channel::select! {
            recv(rx) -> r => r.ok(),
            recv(stop) -> _ => None,
            default(Duration::from_millis(500)) => { gap(&mut file, &mut emit); if let Some(f) = file.as_mut() { f.flush(); } continue; }
        };
        let Some(first) = first else { break };
        gap(&mut file, &mut emit);
        emit(first.to_json(), &mut file);
        for rec in rx.try_iter().take(1024) {
            emit(rec.to_json(), &mut file);
        }
        gap(&mut file, &mut emit);
        if let Some(f) = file.as_mut() {
            f.flush();
        }
    }
    for rec in rx.try_iter() {
        emit(rec.to_json(), &mut file);
    }
    gap(&mut file, &mut emit);
    if let Some(f) = file.as_mut() {
        f.flush();
    }
}
