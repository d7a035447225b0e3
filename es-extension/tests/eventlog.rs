//! The events log: notable decisions only, written after the answer, and a loss under
//! pressure is recorded as a `{"gap": N}` line rather than silently (docs/DESIGN.md 5, 6).

mod common;

use std::time::Duration;

use common::*;
use es_extension::test_backend::events;

fn read_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

#[test]
fn notable_decisions_are_logged_and_losses_leave_a_gap_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let mut cfg = test_config(Some(&dir.path().join("absent.sock")));
    cfg.events_log = Some(log.clone());
    // A tiny channel, so a burst overflows it.
    cfg.log_channel_capacity = 4;
    let rig = start(cfg);
    // No helper: every exec is a helper-unavailable fallback (notable); opens are plain allows
    // (not logged).
    const N: u64 = 5_000;
    for i in 0..N {
        let (_, d) = rig.backend.delivery(
            events::exec(3_000_000, "/usr/local/bin/tool", 100 + i),
            Duration::from_secs(1),
        );
        rig.core.deliver(d);
        let (_, d) = rig.backend.delivery(
            events::open(3_000_000, "/usr/bin/cat", "/srv/f", 1_000_000 + i),
            Duration::from_secs(1),
        );
        rig.core.deliver(d);
    }
    settle(&rig.core, 2 * N);
    rig.core.shutdown();
    assert_clean(&rig.backend);
    let lines = read_lines(&log);
    let mut logged = 0u64;
    let mut gaps = 0u64;
    for l in &lines {
        if let Some(n) = l.get("gap") {
            gaps += n.as_u64().unwrap();
        } else {
            logged += 1;
            assert_eq!(l["kind"], "exec", "{l}");
            assert_eq!(l["verdict"], "deny", "{l}");
            assert_eq!(l["reason"], "fallback", "{l}");
            assert_eq!(l["why"], "helper_unavailable", "{l}");
        }
    }
    assert!(gaps > 0, "a 4-slot channel absorbed a 5,000-event burst?");
    assert_eq!(
        logged + gaps,
        N,
        "every notable decision is a line or part of a gap"
    );
    assert_eq!(counter(&rig.core, "log_dropped"), gaps);
    // The in-memory tail mirrors the file's last lines.
    let tail = rig.core.recent_events(3);
    let last: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .rev()
        .take(3)
        .map(str::to_owned)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert_eq!(tail, last);
}

#[test]
fn events_log_rotates_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let mut cfg = test_config(None);
    cfg.events_log = Some(log.clone());
    cfg.events_log_max_bytes = 4096;
    let rig = start(cfg);
    for i in 0..200 {
        let (_, d) = rig.backend.delivery(
            events::exec(3_000_000, "/usr/local/bin/tool", 100 + i),
            Duration::from_secs(1),
        );
        rig.core.deliver(d);
        // Pace the burst so nothing is dropped.
        if i % 8 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    settle(&rig.core, 200);
    rig.core.shutdown();
    let rotated = dir.path().join("events.jsonl.1");
    assert!(rotated.exists(), "no rotation happened");
    for p in [&log, &rotated] {
        let len = std::fs::metadata(p).unwrap().len();
        assert!(len <= 4096, "{} is {len} bytes", p.display());
        assert!(!read_lines(p).is_empty());
    }
}

#[test]
fn rotation_keeps_n_files_and_counts_what_falls_off() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let generation = |g: usize| dir.path().join(format!("events.jsonl.{g}"));
    // A file left by an earlier run, about to fall off: its records are counted too.
    std::fs::write(generation(2), "{\"old\":1}\n{\"old\":2}\n{\"gap\":5}\n").unwrap();
    let mut cfg = test_config(None);
    cfg.events_log = Some(log.clone());
    cfg.events_log_max_bytes = 4096;
    cfg.events_log_keep = 2;
    // Big enough that nothing is dropped: this test is about rotation only.
    cfg.log_channel_capacity = 100_000;
    let rig = start(cfg);
    const N: u64 = 400;
    for i in 0..N {
        let (_, d) = rig.backend.delivery(
            events::exec(3_000_000, "/usr/local/bin/tool", 100 + i),
            Duration::from_secs(1),
        );
        rig.core.deliver(d);
    }
    settle(&rig.core, N);
    rig.core.shutdown();
    assert_eq!(counter(&rig.core, "log_dropped"), 0);
    assert_eq!(counter(&rig.core, "log_write_failed"), 0);
    assert_eq!(counter(&rig.core, "log_written"), N);
    assert!(!generation(3).exists(), "more than `keep` rotated files");
    let mut on_disk = 0;
    for p in [log.clone(), generation(1), generation(2)] {
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(len <= 4096, "{} is {len} bytes", p.display());
        let lines = read_lines(&p);
        assert!(
            lines.iter().all(|l| l.get("old").is_none()),
            "the earlier run's file is still there"
        );
        on_disk += lines.len() as u64;
    }
    let files = counter(&rig.core, "log_rotated_out_files");
    assert!(files > 0);
    assert_eq!(
        on_disk + counter(&rig.core, "log_rotated_out_records"),
        N + 2,
        "every record is on disk or counted as rotated out (the earlier run's two included)"
    );
}

/// A system log that keeps what it is sent (or refuses everything).
#[derive(Debug, Default)]
struct CapturedLog {
    refuse: bool,
    got: std::sync::Mutex<Vec<(String, bool)>>,
}

impl es_extension::core::eventlog::SystemLog for CapturedLog {
    fn name(&self) -> &'static str {
        "captured"
    }
    fn send(&self, line: &str, deny: bool) -> bool {
        self.got.lock().unwrap().push((line.to_owned(), deny));
        !self.refuse
    }
}

/// Every record the file gets also goes to the system log (macOS: the unified log), a deny
/// flagged as one, and each is counted as sent or failed: none is lost uncounted.
#[test]
fn every_record_also_reaches_the_system_log_and_is_counted() {
    for refuse in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("events.jsonl");
        let sys = std::sync::Arc::new(CapturedLog {
            refuse,
            ..Default::default()
        });
        let mut cfg = test_config(Some(&dir.path().join("absent.sock")));
        cfg.events_log = Some(log.clone());
        cfg.system_log = Some(sys.clone());
        let rig = start(cfg);
        const N: u64 = 20;
        for i in 0..N {
            // No helper: each exec is a logged helper-unavailable fallback deny.
            let (_, d) = rig.backend.delivery(
                events::exec(3_000_000, "/usr/local/bin/tool", 100 + i),
                Duration::from_secs(1),
            );
            rig.core.deliver(d);
        }
        settle(&rig.core, N);
        rig.core.shutdown();
        assert_clean(&rig.backend);
        let file: Vec<String> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let got = sys.got.lock().unwrap().clone();
        assert_eq!(file.len() as u64, N, "refuse={refuse}");
        assert_eq!(
            got.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>(),
            file,
            "the system log gets the file's lines, in order (refuse={refuse})"
        );
        assert!(
            got.iter().all(|(_, deny)| *deny),
            "fallback denies: {got:?}"
        );
        let (sent, failed) = if refuse { (0, N) } else { (N, 0) };
        assert_eq!(counter(&rig.core, "log_unified_sent"), sent);
        assert_eq!(counter(&rig.core, "log_unified_failed"), failed);
    }
}

/// A deny reaches an agent waiting for block notices (macOS: the host app), with what the
/// person blocked needs: the target, the process, and why; allows never do.
#[test]
fn a_deny_becomes_a_block_notice_for_the_waiting_agent() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(Some(&dir.path().join("absent.sock")));
    let rig = start(cfg);
    let notices = rig.core.notices();
    let (tx, rx) = crossbeam_channel::unbounded();
    let exec = events::exec(3_000_000, "/usr/local/bin/tool", 100);
    let uid = exec.process.uid;
    // Start at 0: from now on.
    notices.wait(
        0,
        uid,
        std::time::Instant::now(),
        Box::new(move |b| tx.send(b).unwrap()),
    );
    // An allowed open first (not a block), then a denied exec (no helper: fallback deny).
    let (_, d) = rig.backend.delivery(
        events::open(3_000_000, "/usr/bin/cat", "/srv/f", 1_000_000),
        Duration::from_secs(1),
    );
    rig.core.deliver(d);
    let (_, d) = rig.backend.delivery(exec, Duration::from_secs(1));
    rig.core.deliver(d);
    let batch = rx.recv_timeout(Duration::from_secs(10)).expect("a notice");
    settle(&rig.core, 2);
    rig.core.shutdown();
    assert_clean(&rig.backend);
    assert_eq!(batch.missed, 0);
    assert_eq!(batch.notices.len(), 1, "{batch:?}");
    let n = &batch.notices[0];
    assert_eq!(
        (n.kind.as_str(), n.target.as_str()),
        ("exec", "/usr/local/bin/tool")
    );
    assert_eq!((n.pid, n.uid), (3_000_000, uid));
    assert_eq!(batch.next, n.seq);
}
