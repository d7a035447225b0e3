//! The events log through a full disk, end to end on Linux as root: the real
//! `gatehouse-extension` denies opens of a protected file on a scratch tmpfs and logs them to a
//! second, tiny tmpfs that the test fills up, frees, and floods past rotation. Every deny must
//! end up as a whole line on disk or in a counter (`log_dropped`, `log_write_failed`,
//! `log_rotated_out_records`), every line on disk must parse, the full disk must show in
//! `gatehouse status` and `stats`, and a gap line must note the loss when writing resumes.
//!
//! Safety (docs/DESIGN.md "Testing fanotify safely"): `--scope` is a tmpfs mounted here; the
//! extension runs as `timeout -s KILL <secs> gatehouse-extension` in its own process group,
//! killed as a group on drop.
#![cfg(target_os = "linux")]

mod linux_common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use linux_common::{Guarded, Scratch, skip};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Rotation size and rotated files kept, as passed to the extension.
const MAX_BYTES: u64 = 16 * 1024;
const KEEP: usize = 2;

/// A process group (`timeout` and the extension) SIGKILLed as a whole on drop.
struct Group {
    g: Guarded,
    pgid: Pid,
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = killpg(self.pgid, Signal::SIGKILL);
    }
}

fn ctl(sock: &Path, args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .args(["-s", "KILL", "30"])
        .arg(tests::binary("gatehouse"))
        .args(args)
        .arg("--control-socket")
        .arg(sock)
        .stdin(Stdio::null())
        .output()
        .expect("run gatehouse");
    assert!(out.status.success(), "gatehouse {args:?}: {out:?}");
    out
}

/// The extension's counters, by name.
fn counters(sock: &Path) -> std::collections::HashMap<String, u64> {
    let out = ctl(sock, &["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    let pairs: Vec<(String, u64)> =
        serde_json::from_value(v["counters"].clone()).expect("counters as (name, value)");
    pairs.into_iter().collect()
}

/// Records the writer has disposed of: written, or lost and counted.
fn accounted(c: &std::collections::HashMap<String, u64>) -> u64 {
    c["log_written"] + c["log_dropped"] + c["log_write_failed"]
}

/// `n` opens of `secret` by one shell (a regular builtin's redirection: no fork per open);
/// returns how many were refused.
fn denied_opens(secret: &Path, n: u32) -> u32 {
    let out = Command::new("/bin/sh")
        .args([
            "-c",
            r#"i=0; d=0; while [ $i -lt "$2" ]; do if ! true < "$1"; then d=$((d+1)); fi; i=$((i+1)); done 2>/dev/null; echo $d"#,
            "sh",
        ])
        .arg(secret)
        .arg(n.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run the opener shell");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("opener output {out:?}: {e}"))
}

/// The log's generations that exist: `FILE`, `FILE.1`, ...
fn generations(log: &Path) -> Vec<PathBuf> {
    (0..=KEEP + 2)
        .map(|g| {
            if g == 0 {
                log.to_owned()
            } else {
                PathBuf::from(format!("{}.{g}", log.display()))
            }
        })
        .filter(|p| p.exists())
        .collect()
}

/// (record lines, gap total) over every file; panics on a line that does not parse.
fn read_log(log: &Path, secret: &Path) -> (u64, u64) {
    let (mut records, mut gaps) = (0, 0);
    for p in generations(log) {
        let bytes = std::fs::read(&p).unwrap();
        assert!(
            bytes.is_empty() || bytes.ends_with(b"\n"),
            "{} ends in a torn line",
            p.display()
        );
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_else(|e| {
                panic!(
                    "{}: unparsable line {:?}: {e}",
                    p.display(),
                    String::from_utf8_lossy(line)
                )
            });
            match v.get("gap") {
                Some(n) => gaps += n.as_u64().expect("gap count"),
                None => {
                    records += 1;
                    assert_eq!(v["verdict"], "deny", "{v}");
                    assert!(v.to_string().contains(&*secret.to_string_lossy()), "{v}");
                }
            }
        }
    }
    (records, gaps)
}

/// Fill the filesystem holding `filler` completely, then give back `room` bytes.
fn fill_leaving(filler: &Path, room: u64) {
    let mut f = std::fs::File::create(filler).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", filler.display()),
        }
    }
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(room)).unwrap();
}

/// Wait until every deny so far is accounted for and nothing moves for longer than the
/// writer's idle tick (so a pending gap line has been written); returns the counters.
fn settled(sock: &Path) -> std::collections::HashMap<String, u64> {
    let mut last = counters(sock);
    let ok = tests::wait_until(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(1200));
        let now = counters(sock);
        // Only the record accounting: while the disk is full, the retry keeps counting
        // `log_write_errors`, and the liveness heartbeat always moves.
        let key = |c: &std::collections::HashMap<String, u64>| {
            [
                "answers.deny",
                "log_written",
                "log_dropped",
                "log_write_failed",
                "log_rotated_out_files",
                "log_rotated_out_records",
                "log_disk_full",
            ]
            .map(|n| c[n])
        };
        let quiet = key(&now) == key(&last) && accounted(&now) == now["answers.deny"];
        last = now;
        quiet
    });
    assert!(ok, "the log never settled: {last:?}");
    last
}

#[test]
fn every_deny_is_a_whole_line_or_counted_through_a_full_disk() {
    if skip("every_deny_is_a_whole_line_or_counted_through_a_full_disk") {
        return;
    }
    let scratch = Scratch::mount();
    let secret = scratch.join("secret.txt");
    std::fs::write(&secret, b"secret\n").unwrap();
    let policy = scratch.join("policy.toml");
    std::fs::write(
        &policy,
        linux_common::watch_policy("log-secret", &secret, false, ""),
    )
    .unwrap();
    // The log's own tiny filesystem, outside the scope.
    let logdir = tempfile::Builder::new()
        .prefix("gatehouse-logfs-")
        .tempdir()
        .unwrap();
    let _logfs = tests::MountGuard::tmpfs(logdir.path(), "1m").expect("mount the log tmpfs");
    let log = logdir.path().join("events.jsonl");
    let filler = logdir.path().join("filler");
    // Room for two and a half files: the third fills the disk before any file falls off.
    fill_leaving(&filler, 40 * 1024);
    let sock = scratch.join("control.sock");

    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", "120"])
        .arg(tests::binary("gatehouse-extension"))
        .arg("--policy")
        .arg(&policy)
        .arg("--scope")
        .arg(&scratch.path)
        .arg("--helper-socket")
        .arg(scratch.join("no-helper.sock"))
        .arg("--control-socket")
        .arg(&sock)
        .arg("--events-log")
        .arg(&log)
        .args(["--events-log-max-bytes", &MAX_BYTES.to_string()])
        .args(["--events-log-keep", &KEEP.to_string()])
        .stderr(Stdio::inherit())
        .process_group(0);
    let g = Guarded::spawn("extension", cmd);
    let mut ext = Group {
        pgid: Pid::from_raw(g.pid()),
        g,
    };
    assert!(
        ext.g
            .wait_line(
                "gatehouse-extension: fanotify on 1 filesystem",
                Duration::from_secs(30)
            )
            .is_some(),
        "the extension came up on the scratch filesystem"
    );
    assert!(tests::wait_until(Duration::from_secs(10), || sock.exists()));

    // Phase 1: far more denies than the disk holds.
    let mut denied = u64::from(denied_opens(&secret, 2000));
    assert_eq!(denied, 2000, "every open of the secret is denied");
    let mut c = settled(&sock);
    // The gauge says whether the last write failed for want of space. A gap line may still
    // fit in the log file's last page after a record did not (tmpfs allocates pages), and
    // then the gauge is honestly 0 until the next record fails; each such gap line takes
    // room, so a few more denies leave none and the gauge stays up.
    for _ in 0..20 {
        if c["log_disk_full"] == 1 {
            break;
        }
        denied += u64::from(denied_opens(&secret, 20));
        c = settled(&sock);
    }
    assert_eq!(c["answers.deny"], denied, "{c:?}");
    assert_eq!(c["log_disk_full"], 1, "the full disk is reported: {c:?}");
    assert!(c["log_write_failed"] > 0, "{c:?}");
    let status = String::from_utf8_lossy(&ctl(&sock, &["status"]).stdout).into_owned();
    assert!(status.contains("events log:   DISK FULL"), "{status}");
    let stats = String::from_utf8_lossy(&ctl(&sock, &["stats"]).stdout).into_owned();
    assert!(stats.contains("events log:        DISK FULL"), "{stats}");
    assert_eq!(c["log_rotated_out_files"], 0, "{c:?}");
    let (records, _) = read_log(&log, &secret);
    assert_eq!(records, c["log_written"], "nothing fell off yet: {c:?}");
    assert!(records > 0, "some lines fit before the disk filled");

    // Phase 2: space comes back; with no new deny, the writer's retry notes the loss.
    std::fs::remove_file(&filler).unwrap();
    let c = settled(&sock);
    assert_eq!(c["log_disk_full"], 0, "{c:?}");
    let (records, gaps) = read_log(&log, &secret);
    assert_eq!(records, c["log_written"], "{c:?}");
    assert_eq!(
        gaps,
        c["log_dropped"] + c["log_write_failed"],
        "gap lines note every loss once writing resumes"
    );

    // Phase 3: a flood past rotation; the oldest files fall off, counted.
    denied += u64::from(denied_opens(&secret, 3000));
    let c = settled(&sock);
    assert_eq!(c["answers.deny"], denied, "{c:?}");
    assert!(c["log_rotated_out_files"] > 0, "{c:?}");
    ext.g.signal(Signal::SIGTERM);
    assert!(
        ext.g.wait_exit(Duration::from_secs(20)).is_some(),
        "the extension stopped on SIGTERM"
    );
    let _ = killpg(ext.pgid, Signal::SIGKILL);

    let files = generations(&log);
    assert!(
        files.len() <= KEEP + 1,
        "more than keep + 1 files: {files:?}"
    );
    for p in &files {
        let len = std::fs::metadata(p).unwrap().len();
        assert!(len <= MAX_BYTES, "{} is {len} bytes", p.display());
    }
    let (records, gaps) = read_log(&log, &secret);
    eprintln!(
        "denied {denied}: {records} lines on disk (gap lines noting {gaps}), log_written {}, \
         log_dropped {}, log_write_failed {}, log_rotated_out_records {} in {} files",
        c["log_written"],
        c["log_dropped"],
        c["log_write_failed"],
        c["log_rotated_out_records"],
        c["log_rotated_out_files"]
    );
    assert_eq!(
        records + c["log_dropped"] + c["log_write_failed"] + c["log_rotated_out_records"],
        denied,
        "denies = lines on disk + counted drops + counted write failures + rotated out: {c:?}"
    );
    assert_eq!(accounted(&c), denied, "{c:?}");
}
