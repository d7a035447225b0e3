//! The events log: one JSON object per notable decision (deny, fallback, monitor-mode
//! would-deny, audit-only), written by its own thread AFTER the answer was sent.
//!
//! # Accounting: no record is lost without being counted
//! Answering threads only `try_send` into a bounded channel; a full channel drops the record
//! and counts it (`log_dropped`). The writer turns each record into exactly one of:
//! - a whole line on disk (`log_written`), or
//! - a counted loss (`log_write_failed`: disk full, I/O error, no file).
//!
//! Every loss, from the channel or the disk, is also noted in the file: the next successful
//! write starts with a gap line `{"gap":N,"queue_full":Q,"write_failed":W,"time_ms":T}` (N =
//! Q + W records missing at that point). A line is never written in part: each batch is one
//! `write(2)` per file of whole lines, and after a short or failed write the file is truncated
//! back to its last whole line, so every line on disk parses. On ENOSPC (or EDQUOT) the
//! `log_disk_full` gauge is 1 and the writer retries every `retry` (records in between are
//! counted as failed without a write), until a write succeeds.
//!
//! # Rotation
//! `FILE` is rotated by size to `FILE.1`, `FILE.1` to `FILE.2` ... up to `FILE.<keep>`; the
//! oldest falls off. That is the administrator's retention choice (size x (keep + 1) bytes),
//! not a silent loss: each removed file is counted (`log_rotated_out_files`) with the records
//! it held (`log_rotated_out_records`; a file left by an earlier run is counted by reading it
//! when it falls off). A gap line in a removed file goes with it; its records were counted
//! when they were lost. So for the files one run wrote:
//! `notable decisions = log_written + log_dropped + log_write_failed`, and
//! `record lines on disk = log_written - log_rotated_out_records`.
//!
//! The writer also keeps the last lines in memory for `gatehouse events tail`.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

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

/// Who wrote a record, for log pipelines that gather many machines: read once, when the core
/// is configured, never on an answering thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostIds {
    pub hostname: String,
    /// Linux `/etc/machine-id`; `None` where there is none.
    pub machine_id: Option<String>,
}

impl HostIds {
    /// This Linux machine's (`/proc/sys/kernel/hostname`, `/etc/machine-id`); empty fields
    /// where a file cannot be read.
    pub fn linux() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty() && s.len() <= 255)
        };
        Self {
            hostname: read("/proc/sys/kernel/hostname").unwrap_or_default(),
            machine_id: read("/etc/machine-id"),
        }
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-12-02T19:50:01.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let ms = t.millisecond();
    let t = t.replace_nanosecond(0).unwrap_or(t);
    match t.format(&time::format_description::well_known::Rfc3339) {
        // `...:SSZ` -> `...:SS.mmmZ`
        Ok(s) => match s.strip_suffix('Z') {
            Some(head) => format!("{head}.{ms:03}Z"),
            None => s,
        },
        Err(_) => String::new(),
    }
}

#[derive(Serialize)]
struct Line<'a> {
    /// RFC 3339 UTC, for log pipelines; `time_ms` stays for scripts that read epoch ms.
    time: String,
    time_ms: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    host: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    machine_id: Option<&'a str>,
    kind: &'static str,
    verdict: model::Verdict,
    #[serde(flatten)]
    reason: &'a model::Reason,
    would_deny: bool,
    audit_only: bool,
    latency_us: u64,
    late: bool,
    policy_version: u64,
    /// The deciding rule's `message` (what the person blocked is told).
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    event: &'a Event,
}

impl LogRecord {
    /// The record as one JSON line, without host fields or rule message (tests).
    pub fn to_json(&self) -> String {
        self.to_line(&HostIds::default(), None)
    }

    /// The record as one JSON line, stamped with `host` and the rule's `message`.
    pub fn to_line(&self, host: &HostIds, message: Option<&str>) -> String {
        let line = Line {
            time: rfc3339(self.at),
            host: &host.hostname,
            machine_id: host.machine_id.as_deref(),
            message,
            time_ms: epoch_ms(self.at),
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

/// Recent lines kept in memory for `events tail`, each with its sequence number in this run
/// (1, 2, ...), so a follower can ask for what came after the last line it saw.
#[derive(Debug)]
pub struct RecentLines {
    lines: Mutex<Recent>,
    cap: usize,
}

#[derive(Debug)]
struct Recent {
    lines: VecDeque<(u64, String)>,
    last: u64,
}

/// What [`RecentLines::since`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub lines: Vec<String>,
    /// Lines after the cursor that are no longer in memory (they are in the log file).
    pub skipped: u64,
    /// The sequence number of the last line returned (or the cursor when none).
    pub last: u64,
}

impl RecentLines {
    fn push(&self, line: String) {
        let mut r = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if r.lines.len() == self.cap {
            r.lines.pop_front();
        }
        r.last += 1;
        let seq = r.last;
        r.lines.push_back((seq, line));
    }

    /// The last `max` lines, oldest first.
    pub fn tail(&self, max: usize) -> Vec<String> {
        let r = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        r.lines
            .iter()
            .skip(r.lines.len().saturating_sub(max))
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Up to `max` lines after sequence number `after`, oldest first, and how many lines
    /// after `after` were already gone from memory: a follower is told, never silently
    /// skipped. `after = 0` starts from the oldest line held.
    pub fn since(&self, after: u64, max: usize) -> Since {
        let r = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        // A cursor past the newest line comes from before a restart (numbers start again).
        let after = if after > r.last { 0 } else { after };
        let oldest = r.lines.front().map_or(r.last + 1, |(s, _)| *s);
        let skipped = if after == 0 {
            0
        } else {
            oldest.saturating_sub(after + 1)
        };
        let lines: Vec<(u64, String)> = r
            .lines
            .iter()
            .filter(|(s, _)| *s > after)
            .take(max)
            .cloned()
            .collect();
        Since {
            last: lines.last().map_or(after, |(s, _)| *s),
            lines: lines.into_iter().map(|(_, l)| l).collect(),
            skipped,
        }
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
            lines: Mutex::new(Recent {
                lines: VecDeque::with_capacity(recent.min(4096)),
                last: 0,
            }),
            cap: recent.max(1),
        }),
    )
}

/// Milliseconds since the Unix epoch (0 for a clock before it).
fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Linux: the block message on the blocked process's controlling terminal (as Santa does for
/// terminal blocks), from the writer thread, never the delivery thread: the terminal is found
/// from `/proc/PID/stat`'s `tty_nr`, opened `O_WRONLY | O_NONBLOCK | O_NOCTTY` (a full or hung
/// terminal cannot hold the writer; the extension never acquires it), and at most
/// [`tty::MAX`] bytes are written once. Best effort: a process that is gone, has no terminal
/// or a terminal we cannot open gets nothing (the record itself is unaffected).
#[cfg(target_os = "linux")]
mod tty {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    pub const MAX: usize = 1024;

    /// The device path of a `tty_nr` (`/proc/PID/stat` field 7): pseudo-terminals
    /// (majors 136..=143) are `/dev/pts/N`, virtual consoles (major 4, minor < 64) `/dev/ttyN`.
    pub fn device(tty_nr: u64) -> Option<String> {
        let major = (tty_nr >> 8) & 0xfff;
        let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
        match major {
            136..=143 => Some(format!("/dev/pts/{}", (major - 136) * 256 + minor)),
            4 if (1..64).contains(&minor) => Some(format!("/dev/tty{minor}")),
            _ => None,
        }
    }

    /// `tty_nr` from the text of `/proc/PID/stat` (after the parenthesised command name, which
    /// may itself contain spaces and parentheses).
    pub fn tty_nr(stat: &str) -> Option<u64> {
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_whitespace().nth(4)?.parse().ok()
    }

    pub fn tell(pid: u32, message: &str) {
        let Some(dev) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| tty_nr(&s))
            .and_then(device)
        else {
            return;
        };
        let Ok(mut t) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&dev)
        else {
            return;
        };
        let mut text = String::from("\r\ngatehouse: blocked: ");
        text.extend(
            message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c }),
        );
        text.push_str("\r\n");
        let mut end = text.len().min(MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let _ = t.write(&text.as_bytes()[..end]);
    }
}

/// A system log the writer thread also sends every record to, besides the file (macOS: the
/// unified log, `sys::macos::ffi::unified_log`). It runs on the writer thread, never on a
/// delivery thread, and must not wait on a daemon: the file stays the record of truth, and
/// every record is counted as sent (`log_unified_sent`) or not (`log_unified_failed`).
pub trait SystemLog: Send + Sync + std::fmt::Debug {
    /// Named in logs ("unified log").
    fn name(&self) -> &'static str;
    /// Sends one record (its JSON line); `deny` records may be sent at a higher level.
    /// Returns whether the log took it.
    fn send(&self, line: &str, deny: bool) -> bool;
}

/// Whether a record line is a deny (for a system log's level), without a full parse: the
/// record's own `verdict` key comes before its event, and a quote inside a string value is
/// escaped, so the first unescaped `"verdict":` is the record's.
fn line_is_deny(line: &str) -> bool {
    line.find("\"verdict\":")
        .is_some_and(|i| line[i + "\"verdict\":".len()..].starts_with("\"deny\""))
}

/// journald's native protocol: one datagram of `KEY=value` lines per record, sent without
/// blocking from the writer thread. Every record is counted as sent or failed, never silently
/// lost: the JSON file stays the record of truth.
struct Journal {
    socket: Option<std::os::unix::net::UnixDatagram>,
}

/// journald's socket.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// A record larger than this is not sent (it would need a memfd): counted as failed.
const JOURNAL_MAX: usize = 200 * 1024;

impl Journal {
    fn open() -> Self {
        let socket = std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .inspect_err(|e| tracing::warn!(error = %e, "cannot create the journald socket; records are counted in log_journal_failed"))
            .ok();
        Self { socket }
    }

    fn send(&self, line: &str, m: &Metrics) {
        let ok = self.socket.as_ref().is_some_and(|s| {
            let d = journal_datagram(line);
            d.len() <= JOURNAL_MAX && s.send_to(&d, JOURNAL_SOCKET).is_ok()
        });
        Metrics::inc(if ok {
            &m.log_journal_sent
        } else {
            &m.log_journal_failed
        });
    }
}

/// One record as a journald datagram: the JSON line as `MESSAGE` (a JSON line has no raw
/// newline), the verdict and kind as their own fields, and a priority (warning for a deny).
fn journal_datagram(line: &str) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .replace('\n', " ")
    };
    let verdict = field("verdict");
    let priority = if verdict == "deny" { 4 } else { 5 };
    let mut d = format!(
        "SYSLOG_IDENTIFIER=gatehouse-extension\nPRIORITY={priority}\nGATEHOUSE_VERDICT={verdict}\nGATEHOUSE_KIND={}\n",
        field("kind")
    );
    if let Some(rule) = v.pointer("/rule/name").and_then(|x| x.as_str()) {
        d.push_str(&format!("GATEHOUSE_RULE={}\n", rule.replace('\n', " ")));
    }
    d.push_str("MESSAGE=");
    d.push_str(&line.replace('\n', " "));
    d.push('\n');
    d.into_bytes()
}

/// `ms` since the epoch as RFC 3339 in UTC with milliseconds: `2026-12-02T20:10:30.123Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    let (days, rem) = (ms / 86_400_000, ms % 86_400_000);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm, proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// The line that stands where records are missing: `gap` is the total, split by cause.
fn gap_line(queue_full: u64, write_failed: u64) -> String {
    format!(
        "{{\"gap\":{},\"queue_full\":{queue_full},\"write_failed\":{write_failed},\"time_ms\":{}}}",
        queue_full + write_failed,
        epoch_ms(SystemTime::now())
    )
}

/// Whether a line on disk is a gap line rather than a record.
fn is_gap(line: &[u8]) -> bool {
    line.starts_with(b"{\"gap\"")
}

/// The rotated set of files, by generation: 0 is the file being written (`FILE`), `g` is
/// `FILE.g`. The real one is [`DiskFiles`]; tests use a fake that fails on cue.
pub(crate) trait LogFiles {
    /// Open generation 0 for appending (creating it); returns its length.
    fn open(&mut self) -> io::Result<u64>;
    fn close(&mut self);
    /// One `write(2)` to the open file; may be short.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Length of the open file now.
    fn len(&mut self) -> io::Result<u64>;
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    fn exists(&self, generation: usize) -> bool;
    /// Record lines (gap lines excluded) in a generation.
    fn count_records(&self, generation: usize) -> io::Result<u64>;
    /// Remove a generation; a missing one is not an error.
    fn remove(&mut self, generation: usize) -> io::Result<()>;
    /// Rename `from` to `from + 1`; a missing `from` is not an error.
    fn shift(&mut self, from: usize) -> io::Result<()>;
}

/// [`LogFiles`] on the filesystem: `FILE`, `FILE.1`, ...
pub(crate) struct DiskFiles {
    path: PathBuf,
    file: Option<File>,
}

impl DiskFiles {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    fn generation(&self, g: usize) -> PathBuf {
        if g == 0 {
            return self.path.clone();
        }
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{g}"));
        p.into()
    }

    fn file(&mut self) -> io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("the events log is not open"))
    }
}

fn not_found_is_ok(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

impl LogFiles for DiskFiles {
    fn open(&mut self) -> io::Result<u64> {
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let len = f.metadata()?.len();
        self.file = Some(f);
        Ok(len)
    }

    fn close(&mut self) {
        self.file = None;
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Unbuffered: one call is one write(2) of whole lines (O_APPEND), so what reaches the
        // file is known exactly when it fails.
        self.file()?.write(buf)
    }

    fn len(&mut self) -> io::Result<u64> {
        Ok(self.file()?.metadata()?.len())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file()?.set_len(len)
    }

    fn exists(&self, g: usize) -> bool {
        std::fs::symlink_metadata(self.generation(g)).is_ok()
    }

    fn count_records(&self, g: usize) -> io::Result<u64> {
        let mut r = BufReader::new(File::open(self.generation(g))?);
        let (mut n, mut line) = (0, Vec::new());
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line)? == 0 {
                return Ok(n);
            }
            if !is_gap(&line) {
                n += 1;
            }
        }
    }

    fn remove(&mut self, g: usize) -> io::Result<()> {
        not_found_is_ok(std::fs::remove_file(self.generation(g)))
    }

    fn shift(&mut self, from: usize) -> io::Result<()> {
        not_found_is_ok(std::fs::rename(
            self.generation(from),
            self.generation(from + 1),
        ))
    }
}

/// How the writer rotates and retries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterConfig {
    /// Rotate before a line would take the file past this (a single longer line still goes
    /// into an empty file whole).
    pub max_bytes: u64,
    /// Rotated files kept (`FILE.1` ..= `FILE.<keep>`).
    pub keep: usize,
    /// After a failed write, records are counted as failed without a write for this long.
    pub retry: Duration,
}

/// The writer's file state: whole lines only, every loss counted and noted in a gap line.
pub(crate) struct Writer<F: LogFiles> {
    files: F,
    cfg: WriterConfig,
    open: bool,
    /// Bytes in generation 0, as this writer knows them.
    size: u64,
    /// Record lines per generation (`0..=keep`); `None`: a file from before this writer, not
    /// yet counted.
    records: Vec<Option<u64>>,
    /// Losses not yet noted in a gap line on disk, by cause.
    lost_queue: u64,
    lost_write: u64,
    /// No write is tried before this (after a failure).
    retry_at: Option<Instant>,
    /// A torn tail could not be cut: truncate to this before writing again.
    repair: Option<u64>,
    /// Writes are failing (logged once per episode, not per record).
    failing: bool,
}

/// One entry of a write: its end offset in the buffer, and the gap counts if it is a gap line.
type Placed = (usize, Option<(u64, u64)>);

impl<F: LogFiles> Writer<F> {
    pub(crate) fn new(files: F, cfg: WriterConfig) -> Self {
        Self {
            files,
            cfg,
            open: false,
            size: 0,
            records: vec![None; cfg.keep + 1],
            lost_queue: 0,
            lost_write: 0,
            retry_at: None,
            repair: None,
            failing: false,
        }
    }

    #[cfg(test)]
    fn files(&self) -> &F {
        &self.files
    }

    /// Write `lines` (whole records, no newline) after a gap line for any losses so far,
    /// `queue_dropped` (records the channel refused since the last call) included. Returns the
    /// gap line if one was written. Never writes part of a line; every record not written is
    /// counted in `log_write_failed`.
    pub(crate) fn write(
        &mut self,
        lines: &[String],
        queue_dropped: u64,
        now: Instant,
        m: &Metrics,
    ) -> Option<String> {
        self.lost_queue += queue_dropped;
        let gap = (self.lost_queue + self.lost_write > 0).then(|| {
            (
                self.lost_queue,
                self.lost_write,
                gap_line(self.lost_queue, self.lost_write),
            )
        });
        if lines.is_empty() && gap.is_none() {
            return None;
        }
        if !self.ready(now, m) {
            self.fail_records(lines.len() as u64, m);
            return None;
        }
        let mut gap_written = None;
        let entries = gap
            .iter()
            .map(|(q, w, text)| (text.as_str(), Some((*q, *w))))
            .chain(lines.iter().map(|l| (l.as_str(), None)));
        let mut buf = Vec::new();
        let mut placed: Vec<Placed> = Vec::new();
        let mut left = lines.len() as u64;
        for (text, is_gap) in entries {
            let len = text.len() as u64 + 1;
            let used = self.size + buf.len() as u64;
            if used > 0 && used + len > self.cfg.max_bytes {
                if !buf.is_empty() {
                    let ok = self.flush(&buf, &placed, now, m, &mut left, &mut gap_written);
                    buf.clear();
                    placed.clear();
                    if !ok {
                        self.fail_records(left, m);
                        return gap_written;
                    }
                }
                if let Err(e) = self.rotate(m) {
                    self.failed(&e, "rotate", now, m);
                    self.fail_records(left, m);
                    return gap_written;
                }
            }
            buf.extend_from_slice(text.as_bytes());
            buf.push(b'\n');
            placed.push((buf.len(), is_gap));
        }
        if !buf.is_empty() && !self.flush(&buf, &placed, now, m, &mut left, &mut gap_written) {
            self.fail_records(left, m);
        }
        gap_written
    }

    /// Before shutdown: one last try, whatever the retry timer says, to note pending losses.
    pub(crate) fn finish(
        &mut self,
        queue_dropped: u64,
        now: Instant,
        m: &Metrics,
    ) -> Option<String> {
        self.retry_at = None;
        self.write(&[], queue_dropped, now, m)
    }

    /// Whether a write may be tried now: not backing off, no torn tail left, file open.
    fn ready(&mut self, now: Instant, m: &Metrics) -> bool {
        if self.retry_at.is_some_and(|t| now < t) {
            return false;
        }
        if !self.open {
            match self.files.open() {
                Ok(len) => {
                    self.open = true;
                    self.size = len;
                    if len == 0 {
                        self.records[0] = Some(0);
                    }
                }
                Err(e) => {
                    self.failed(&e, "open", now, m);
                    return false;
                }
            }
        }
        if let Some(len) = self.repair {
            if let Err(e) = self.files.truncate(len) {
                self.failed(&e, "truncate", now, m);
                return false;
            }
            self.repair = None;
            self.size = len;
        }
        true
    }

    /// Write one buffer of whole lines to generation 0. On failure, cut what reached the file
    /// back to its last whole line; entries that did not fully land are not written. Counts
    /// records written into `left` (down) and the metrics; returns whether all of it landed.
    fn flush(
        &mut self,
        buf: &[u8],
        placed: &[Placed],
        now: Instant,
        m: &Metrics,
        left: &mut u64,
        gap_written: &mut Option<String>,
    ) -> bool {
        let mut done = 0;
        let err = loop {
            if done == buf.len() {
                break None;
            }
            match self.files.write(&buf[done..]) {
                Ok(0) => break Some(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        let whole = placed.iter().take_while(|(end, _)| *end <= done).count();
        let kept = whole.checked_sub(1).map_or(0, |i| placed[i].0);
        if done > kept {
            // A torn line: cut it off. The file's own length locates it even if something else
            // changed the file since we last looked.
            let target = self
                .files
                .len()
                .map_or(self.size + kept as u64, |l| l - (done - kept) as u64);
            if self.files.truncate(target).is_err() {
                self.repair = Some(target);
            }
        }
        self.size += kept as u64;
        for (i, (end, gap)) in placed[..whole].iter().enumerate() {
            match gap {
                Some((q, w)) => {
                    self.lost_queue -= q;
                    self.lost_write -= w;
                    let from = if i == 0 { 0 } else { placed[i - 1].0 };
                    let text = String::from_utf8_lossy(&buf[from..end - 1]).into_owned();
                    *gap_written = Some(text);
                }
                None => {
                    *left -= 1;
                    if let Some(n) = self.records[0].as_mut() {
                        *n += 1;
                    }
                    Metrics::inc(&m.log_written);
                }
            }
        }
        match err {
            None => {
                self.recovered(m);
                true
            }
            Some(e) => {
                self.failed(&e, "write", now, m);
                false
            }
        }
    }

    /// Shift every generation up one; the oldest falls off, counted.
    fn rotate(&mut self, m: &Metrics) -> io::Result<()> {
        self.files.close();
        self.open = false;
        let last = self.cfg.keep;
        if self.files.exists(last) {
            let n = match self.records[last] {
                Some(n) => n,
                None => self.files.count_records(last).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot count the records of the oldest events-log file before removing it; they are not in log_rotated_out_records");
                    0
                }),
            };
            self.files.remove(last)?;
            self.records[last] = Some(0);
            Metrics::inc(&m.log_rotated_out_files);
            m.log_rotated_out_records.fetch_add(n, Ordering::Relaxed);
        }
        for g in (0..last).rev() {
            self.files.shift(g)?;
            self.records[g + 1] = self.records[g];
            self.records[g] = Some(0);
        }
        let len = self.files.open()?;
        self.open = true;
        self.size = len;
        self.records[0] = (len == 0).then_some(0);
        Ok(())
    }

    fn fail_records(&mut self, n: u64, m: &Metrics) {
        self.lost_write += n;
        m.log_write_failed.fetch_add(n, Ordering::Relaxed);
    }

    fn failed(&mut self, e: &io::Error, what: &str, now: Instant, m: &Metrics) {
        Metrics::inc(&m.log_write_errors);
        let full = matches!(
            e.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        );
        if full {
            m.log_disk_full.store(1, Ordering::Relaxed);
        } else {
            // Anything else may be a broken descriptor: start again from the path.
            self.files.close();
            self.open = false;
        }
        if !self.failing {
            self.failing = true;
            tracing::warn!(error = %e, operation = what, retry_ms = self.cfg.retry.as_millis() as u64,
                "cannot write the events log; records are counted in log_write_failed and a gap line will note them when writing resumes (free space, or check the log's directory)");
        }
        self.retry_at = Some(now + self.cfg.retry);
    }

    fn recovered(&mut self, m: &Metrics) {
        self.retry_at = None;
        m.log_disk_full.store(0, Ordering::Relaxed);
        if self.failing {
            self.failing = false;
            tracing::info!("the events log is writable again");
        }
    }
}

/// A notice's text fields are cut to this many bytes, so a batch of them fits its frame.
const NOTICE_FIELD_MAX: usize = 1024;

fn cut(s: &str) -> String {
    let mut end = s.len().min(NOTICE_FIELD_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The block notice for a deny record (its `seq` is assigned by `BlockNotices::push`).
fn notice(r: &LogRecord, message: Option<&str>) -> protocol::BlockNotice {
    protocol::BlockNotice {
        seq: 0,
        time_unix_ms: epoch_ms(r.at),
        kind: r.event.kind().as_str().to_owned(),
        target: r
            .event
            .subject_file()
            .map(|f| cut(&f.path))
            .unwrap_or_default(),
        process: cut(&r.event.process.executable.path),
        pid: r.event.process.pid,
        uid: r.event.process.uid,
        rule: match &r.decision.reason {
            model::Reason::Rule { rule } => Some(cut(&rule.name)),
            _ => None,
        },
        message: message.map(cut),
    }
}

/// What the writer thread needs besides its channels.
pub(crate) struct WriterSetup {
    pub path: Option<PathBuf>,
    /// Also send each record to journald.
    pub journald: bool,
    /// Also send each record to this system log (macOS: the unified log).
    pub system_log: Option<Arc<dyn SystemLog>>,
    pub cfg: WriterConfig,
}

/// Records the writer takes from the channel per write.
const BATCH: usize = 1024;
/// With nothing to write, pending losses are noted (and a failed disk retried) this often.
const TICK: Duration = Duration::from_millis(500);

/// The writer thread's body. Returns when `stop` is disconnected, after draining the channel.
pub(crate) fn run_writer(
    rx: Receiver<LogRecord>,
    stop: Receiver<()>,
    shared: Arc<super::Shared>,
    recent: Arc<RecentLines>,
    setup: WriterSetup,
) {
    let m = &shared.metrics;
    let host = &shared.config.host;
    // The deciding rule's message, from the policy the record was decided under (a record
    // from before a reload gets none rather than the new policy's).
    let line = |r: &LogRecord| {
        let snapshot = shared.store.load();
        let message = match &r.decision.reason {
            model::Reason::Rule { rule } if snapshot.version == r.policy_version => {
                snapshot.policy.rule_message(rule).map(str::to_owned)
            }
            _ => None,
        };
        #[cfg(target_os = "linux")]
        if let (model::Verdict::Deny, Some(msg)) = (r.decision.verdict, message.as_deref()) {
            tty::tell(r.event.process.pid, msg);
        }
        if r.decision.verdict == model::Verdict::Deny {
            shared.notices.push(notice(r, message.as_deref()));
        }
        r.to_line(host, message.as_deref())
    };
    let journal = setup.journald.then(Journal::open);
    let setup_system_log = setup.system_log;
    if let Some(sys) = &setup_system_log {
        tracing::info!(
            log = sys.name(),
            "events-log records also go to the system log"
        );
    }
    let mut writer = setup
        .path
        .map(|p| Writer::new(DiskFiles::new(p), setup.cfg));
    let mut emit = |batch: Vec<String>, finish: bool| {
        // Agents waiting for block notices are answered empty before their own timeout.
        shared.notices.expire(
            Instant::now(),
            Duration::from_millis(protocol::NOTICE_WAIT_MAX_MS),
        );
        let dropped = shared.log.pending_gap.swap(0, Ordering::Relaxed);
        let now = Instant::now();
        let gap = match writer.as_mut() {
            Some(w) if finish => w.finish(dropped, now, m),
            Some(w) => w.write(&batch, dropped, now, m),
            None => (dropped > 0).then(|| gap_line(dropped, 0)),
        };
        if let Some(g) = gap {
            recent.push(g);
        }
        for l in batch {
            if let Some(j) = &journal {
                j.send(&l, m);
            }
            if let Some(sys) = &setup_system_log {
                Metrics::inc(if sys.send(&l, line_is_deny(&l)) {
                    &m.log_unified_sent
                } else {
                    &m.log_unified_failed
                });
            }
            recent.push(l);
        }
    };
    loop {
        let first = crossbeam_channel::select! {
            recv(rx) -> r => r.ok(),
            recv(stop) -> _ => None,
            default(TICK) => { emit(Vec::new(), false); continue; }
        };
        let Some(first) = first else { break };
        let batch: Vec<String> = std::iter::once(first)
            .chain(rx.try_iter().take(BATCH - 1))
            .map(|r| line(&r))
            .collect();
        emit(batch, false);
    }
    loop {
        let batch: Vec<String> = rx.try_iter().take(BATCH).map(|r| line(&r)).collect();
        if batch.is_empty() {
            break;
        }
        emit(batch, false);
    }
    // Last: note what the channel refused while draining, even if the disk is backing off.
    emit(Vec::new(), true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_datagram_fields() {
        let line =
            r#"{"verdict":"deny","kind":"open","reason":"rule","rule":{"name":"r\nx"},"time":"t"}"#;
        let d = String::from_utf8(journal_datagram(line)).unwrap();
        let fields: Vec<&str> = d.lines().collect();
        assert_eq!(
            fields,
            [
                "SYSLOG_IDENTIFIER=gatehouse-extension",
                "PRIORITY=4",
                "GATEHOUSE_VERDICT=deny",
                "GATEHOUSE_KIND=open",
                "GATEHOUSE_RULE=r x",
                &format!("MESSAGE={line}"),
            ]
        );
    }

    #[test]
    fn line_is_deny_table() {
        for (line, want) in [
            (r#"{"time":"t","verdict":"deny","event":{}}"#, true),
            (r#"{"time":"t","verdict":"allow","event":{}}"#, false),
            // A rule message quoting a deny is escaped, so it is not the record's verdict.
            (r#"{"verdict":"allow","message":""verdict":"deny""}"#, false),
            (r#"{"gap":3}"#, false),
            ("", false),
        ] {
            assert_eq!(line_is_deny(line), want, "{line}");
        }
    }

    /// No journald socket: every record is counted as failed, none lost uncounted.
    #[test]
    fn journal_failures_are_counted() {
        let m = Metrics::default();
        let j = Journal { socket: None };
        for _ in 0..3 {
            j.send("{}", &m);
        }
        assert_eq!(m.log_journal_failed.load(Ordering::Relaxed), 3);
        assert_eq!(m.log_journal_sent.load(Ordering::Relaxed), 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn tty_device_table() {
        for (nr, want) in [
            (136 << 8, Some("/dev/pts/0")),
            ((136 << 8) | 5, Some("/dev/pts/5")),
            ((137 << 8) | 1, Some("/dev/pts/257")),
            ((4 << 8) | 2, Some("/dev/tty2")),
            (0, None),
            ((4 << 8) | 64, None),
        ] {
            assert_eq!(tty::device(nr).as_deref(), want, "{nr}");
        }
        let stat = "42 (a) b (c)) S 1 42 42 34821 42 4194560 0";
        assert_eq!(tty::tty_nr(stat), Some(34821));
        assert_eq!(tty::tty_nr("garbage"), None);
    }

    #[test]
    fn rfc3339_table() {
        for (ms, want) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_796_242_230_123, "2026-12-02T20:10:30.123Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
        ] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(rfc3339(t), want, "{ms}");
        }
    }

    /// The cursor returns what came after it, oldest first, and counts the lines after it
    /// that already left memory; a cursor from before a restart starts again.
    #[test]
    fn since_table() {
        let (_, _, r) = channel(1, 4);
        assert_eq!(
            r.since(0, 10),
            Since {
                lines: vec![],
                skipped: 0,
                last: 0
            }
        );
        for i in 1..=6 {
            r.push(format!("l{i}"));
        }
        // Held: l3..l6 (seq 3..=6).
        let cases: &[(u64, usize, &[&str], u64, u64)] = &[
            (0, 10, &["l3", "l4", "l5", "l6"], 0, 6),
            (1, 10, &["l3", "l4", "l5", "l6"], 1, 6),
            (2, 10, &["l3", "l4", "l5", "l6"], 0, 6),
            (3, 2, &["l4", "l5"], 0, 5),
            (5, 10, &["l6"], 0, 6),
            (6, 10, &[], 0, 6),
            // Past the newest line: a cursor from before a restart.
            (99, 10, &["l3", "l4", "l5", "l6"], 0, 6),
        ];
        for &(after, max, lines, skipped, last) in cases {
            let want = Since {
                lines: lines.iter().map(|s| s.to_string()).collect(),
                skipped,
                last,
            };
            assert_eq!(r.since(after, max), want, "after {after} max {max}");
        }
    }

    /// A disk with a byte budget shared by all generations, writes capped at `short` bytes,
    /// and truncates that fail while `truncate_fails` is set.
    #[derive(Default)]
    struct Fake {
        gens: Vec<Option<Vec<u8>>>,
        open: bool,
        capacity: Option<usize>,
        short: Option<usize>,
        truncate_fails: bool,
        writes: usize,
    }

    impl Fake {
        fn gen_mut(&mut self, g: usize) -> &mut Option<Vec<u8>> {
            if self.gens.len() <= g {
                self.gens.resize(g + 1, None);
            }
            &mut self.gens[g]
        }
        fn used(&self) -> usize {
            self.gens.iter().flatten().map(Vec::len).sum()
        }
    }

    impl LogFiles for Fake {
        fn open(&mut self) -> io::Result<u64> {
            self.open = true;
            Ok(self.gen_mut(0).get_or_insert_with(Vec::new).len() as u64)
        }
        fn close(&mut self) {
            self.open = false;
        }
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            assert!(self.open, "write to a closed file");
            self.writes += 1;
            let avail = self
                .capacity
                .map_or(usize::MAX, |c| c.saturating_sub(self.used()));
            if avail == 0 {
                return Err(io::ErrorKind::StorageFull.into());
            }
            let n = buf.len().min(avail).min(self.short.unwrap_or(usize::MAX));
            self.gen_mut(0)
                .get_or_insert_with(Vec::new)
                .extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn len(&mut self) -> io::Result<u64> {
            Ok(self.gen_mut(0).as_ref().map_or(0, Vec::len) as u64)
        }
        fn truncate(&mut self, len: u64) -> io::Result<()> {
            if self.truncate_fails {
                return Err(io::Error::other("truncate refused"));
            }
            if let Some(f) = self.gen_mut(0) {
                f.truncate(len as usize);
            }
            Ok(())
        }
        fn exists(&self, g: usize) -> bool {
            self.gens.get(g).is_some_and(Option::is_some)
        }
        fn count_records(&self, g: usize) -> io::Result<u64> {
            let f = self.gens[g].as_ref().ok_or(io::ErrorKind::NotFound)?;
            Ok(f.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty() && !is_gap(l))
                .count() as u64)
        }
        fn remove(&mut self, g: usize) -> io::Result<()> {
            *self.gen_mut(g) = None;
            Ok(())
        }
        fn shift(&mut self, from: usize) -> io::Result<()> {
            let f = self.gen_mut(from).take();
            *self.gen_mut(from + 1) = f;
            Ok(())
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// Hand the writer this many new records.
        Records(u64),
        /// The channel refused this many (they come with the next call).
        Dropped(u64),
        /// Bytes the disk holds in all (`None`: unlimited).
        Capacity(Option<usize>),
        Short(Option<usize>),
        TruncateFails(bool),
        /// Let time pass (the retry timer is 1 s).
        Advance(u64),
        /// The idle tick: no records, pending losses only.
        Tick,
        Finish,
    }
    use Step::*;

    /// Every record line here is 16 bytes with its newline (`{"seq":1000000}`).
    const LINE: usize = 16;

    struct Case {
        name: &'static str,
        max_lines: usize,
        keep: usize,
        /// Generations present before the writer starts: record lines, then one gap line.
        inherited: &'static [(usize, u64)],
        steps: &'static [Step],
        // Expected.
        on_disk: u64,
        gap_total: u64,
        failed: u64,
        disk_full: u64,
        rotated_files: u64,
        rotated_records: u64,
    }

    const CASES: &[Case] = &[
        Case {
            name: "plain",
            max_lines: 1000,
            keep: 2,
            inherited: &[],
            steps: &[Records(10)],
            on_disk: 10,
            gap_total: 0,
            failed: 0,
            disk_full: 0,
            rotated_files: 0,
            rotated_records: 0,
        },
        Case {
            name: "short writes are continued, never torn",
            max_lines: 1000,
            keep: 2,
            inherited: &[],
            steps: &[Short(Some(7)), Records(10)],
            on_disk: 10,
            gap_total: 0,
            failed: 0,
            disk_full: 0,
            rotated_files: 0,
            rotated_records: 0,
        },
        Case {
            name: "ENOSPC mid-line: cut back to the last whole line, rest counted",
            max_lines: 1000,
            keep: 2,
            inherited: &[],
            steps: &[Capacity(Some(3 * LINE + 7)), Records(10)],
            on_disk: 3,
            gap_total: 0,
            failed: 7,
            disk_full: 1,
            rotated_files: 0,
            rotated_records: 0,
        },
        Case {
            name: "space back: a gap line notes the loss, gauge clears",
            max_lines: 1000,
            keep: 2,
            inherited: &[],
            steps: &[
                Capacity(Some(3 * LINE + 7)),
                Records(10),
                Capacity(None),
                Advance(1000),
                Records(5),
            ],
            on_disk: 8,
            gap_total: 7,
            failed: 7,
            disk_full: 0,
            rotated_files: 0,
            rotated_records: 0,
        },
        Case {
            name: "backing off: records counted without a write, the tick writes the gap",
            max_lines: 1000,
            keep: 2,
            inherited: &[],
            steps: &[
                Capacity(Some(0)),
                Records(10),
                Capacity(None),
                Advance(500),
                Records(5),
                Advance(500),
                Tick,
            ],
            on_disk: 0,
            gap_total: 15,
            failed: 15,
            disk_full: 0,
            rotated_files: 0,
            rotated_records: 0,
        },
        Case {
            name: "the gap line itself does not fit: kept for later",
            max_lines: 1000,
            keep: 2,
            inherited: &[],
            steps: &[
                Capacity(Some(2 * LINE)),
                Records(4),
                Advance(1000),
                Tick,
                Capacity(None),
                Advance(1000),
                Records(1),
            ],
            on_disk: 3,
            gap_total: 2,
            failed: 2,
            disk_full: 0,
            rotated_files: 0,
            rotated_records: 0,
        },
        Case {
            name: "channel drops leave a gap line where they happened",
            max_lines: 1000,
            keep: 2,
            inherited: &[],
            steps: &[Records(3), Dropped(4), Records(3)],
            on_disk: 6,
            gap_total: 4,
            failed: 0,
            disk_full: 0,
            rotated_files: 0,
            rotated_records: 0,
        },
        Case {
            name: "rotation keeps `keep` files and counts what falls off",
            max_lines: 5,
            keep: 2,
            inherited: &[],
            steps: &[Records(40)],
            on_disk: 15,
            gap_total: 0,
            failed: 0,
            disk_full: 0,
            rotated_files: 5,
            rotated_records: 25,
        },
        Case {
            name: "keep 0: only the current file",
            max_lines: 5,
            keep: 0,
            inherited: &[],
            steps: &[Records(12)],
            on_disk: 2,
            gap_total: 0,
            failed: 0,
            disk_full: 0,
            rotated_files: 2,
            rotated_records: 10,
        },
        Case {
            name: "files from an earlier run are counted when they fall off",
            max_lines: 5,
            keep: 1,
            inherited: &[(0, 5), (1, 3)],
            steps: &[Records(5)],
            // The current file was full: it rotates (FILE.1, 3 records and a gap line, falls
            // off), then the five new records fill the new FILE.
            on_disk: 10,
            gap_total: 0,
            failed: 0,
            disk_full: 0,
            rotated_files: 1,
            rotated_records: 3,
        },
        Case {
            name: "a torn tail that cannot be cut is cut before the next write",
            max_lines: 1000,
            keep: 2,
            inherited: &[],
            steps: &[
                TruncateFails(true),
                Capacity(Some(3 * LINE + 7)),
                Records(10),
                Capacity(None),
                Advance(1000),
                Records(1),
                TruncateFails(false),
                Advance(1000),
                Records(2),
            ],
            on_disk: 5,
            gap_total: 8,
            failed: 8,
            disk_full: 0,
            rotated_files: 0,
            rotated_records: 0,
        },
        Case {
            name: "finish tries once more despite the retry timer",
            max_lines: 1000,
            keep: 2,
            inherited: &[],
            steps: &[Capacity(Some(0)), Records(3), Capacity(None), Finish],
            on_disk: 0,
            gap_total: 3,
            failed: 3,
            disk_full: 0,
            rotated_files: 0,
            rotated_records: 0,
        },
    ];

    fn lines_of(f: &[u8]) -> Vec<serde_json::Value> {
        assert!(
            f.is_empty() || f.ends_with(b"\n"),
            "torn tail {:?}",
            String::from_utf8_lossy(f)
        );
        f.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice(l).unwrap_or_else(|e| {
                    panic!("unparsable line {:?}: {e}", String::from_utf8_lossy(l))
                })
            })
            .collect()
    }

    #[test]
    fn writer_table() {
        for c in CASES {
            let mut fake = Fake::default();
            for &(g, n) in c.inherited {
                let mut f = Vec::new();
                for i in 0..n {
                    f.extend_from_slice(format!("{{\"seq\":{}}}\n", 9_000_000 + i).as_bytes());
                }
                if g == 1 {
                    f.extend_from_slice(b"{\"gap\":1}\n");
                }
                *fake.gen_mut(g) = Some(f);
            }
            let m = Metrics::default();
            let mut w = Writer::new(
                fake,
                WriterConfig {
                    max_bytes: (c.max_lines * LINE) as u64,
                    keep: c.keep,
                    retry: Duration::from_secs(1),
                },
            );
            let mut now = Instant::now();
            let (mut seq, mut dropped, mut submitted) = (0u64, 0u64, 0u64);
            for step in c.steps {
                match *step {
                    Records(n) => {
                        let lines: Vec<String> = (seq..seq + n)
                            .map(|i| format!("{{\"seq\":{}}}", 1_000_000 + i))
                            .collect();
                        seq += n;
                        submitted += n;
                        w.write(&lines, std::mem::take(&mut dropped), now, &m);
                    }
                    Dropped(n) => dropped += n,
                    Capacity(cap) => w.files.capacity = cap,
                    Short(s) => w.files.short = s,
                    TruncateFails(b) => w.files.truncate_fails = b,
                    Advance(ms) => now += Duration::from_millis(ms),
                    Tick => {
                        w.write(&[], std::mem::take(&mut dropped), now, &m);
                    }
                    Finish => {
                        w.finish(std::mem::take(&mut dropped), now, &m);
                    }
                }
            }
            let (mut on_disk, mut gap_total) = (0, 0);
            let mut seqs = Vec::new();
            for (g, f) in w.files().gens.iter().enumerate() {
                let Some(f) = f else { continue };
                assert!(g <= c.keep, "{}: generation {g} beyond keep", c.name);
                for l in lines_of(f) {
                    match l.get("gap") {
                        Some(n) => gap_total += n.as_u64().unwrap(),
                        None => {
                            on_disk += 1;
                            seqs.push(l["seq"].as_u64().unwrap());
                        }
                    }
                }
            }
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            let got = (
                on_disk,
                gap_total,
                get(&m.log_write_failed),
                get(&m.log_disk_full),
                get(&m.log_rotated_out_files),
                get(&m.log_rotated_out_records),
            );
            let want = (
                c.on_disk,
                c.gap_total,
                c.failed,
                c.disk_full,
                c.rotated_files,
                c.rotated_records,
            );
            assert_eq!(
                got, want,
                "{}: (on disk, gap total, failed, disk full, rotated files, rotated records)",
                c.name
            );
            // Every record handed over was written or counted as failed, once.
            assert_eq!(
                get(&m.log_written) + get(&m.log_write_failed),
                submitted,
                "{}",
                c.name
            );
            let inherited: u64 = c.inherited.iter().map(|(_, n)| n).sum();
            assert_eq!(
                on_disk,
                get(&m.log_written) + inherited - get(&m.log_rotated_out_records),
                "{}: what is on disk is what was written less what rotated out",
                c.name
            );
            seqs.sort_unstable();
            seqs.dedup();
            assert_eq!(
                seqs.len() as u64,
                on_disk,
                "{}: a record written twice",
                c.name
            );
        }
    }

    #[test]
    fn backing_off_makes_no_write() {
        let m = Metrics::default();
        let cfg = WriterConfig {
            max_bytes: 1 << 20,
            keep: 1,
            retry: Duration::from_secs(1),
        };
        let mut w = Writer::new(
            Fake {
                capacity: Some(0),
                ..Fake::default()
            },
            cfg,
        );
        let t0 = Instant::now();
        w.write(&["{}".to_owned()], 0, t0, &m);
        let writes = w.files().writes;
        for i in 1..100 {
            w.write(&["{}".to_owned()], 0, t0 + Duration::from_millis(i * 5), &m);
        }
        assert_eq!(
            w.files().writes,
            writes,
            "a write was tried while backing off"
        );
        assert_eq!(m.log_write_failed.load(Ordering::Relaxed), 100);
        assert_eq!(m.log_write_errors.load(Ordering::Relaxed), 1);
    }
}
