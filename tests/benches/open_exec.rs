//! Open and exec overhead on a marked filesystem, side by side in one run, as ratios
//! (docs/DESIGN.md 7): open()+close() with no agent, under a minimal listener that allows
//! everything inline, under Gatehouse warm (kernel ignore mark) and cold (decided on the
//! delivery thread every time), and the kernel's own share of the warm path (a minimal
//! listener with Gatehouse's marks plus the ignore mark, so the open never reaches it);
//! fork+exec of a `/bin/true` copy bare, under the minimal listener and under Gatehouse (a
//! known binary, kernel-cached). Median of 5 runs each.
//!
//! `cargo bench -p tests --bench open_exec`. Root only (prints a skip otherwise).
//!
//! Safety (docs/DESIGN.md "Testing fanotify safely"): only a tmpfs mounted here is marked; every
//! process holding a fanotify group is a child of this one (this binary re-run with
//! `GH_BENCH_CHILD`), with `PR_SET_PDEATHSIG` and an `alarm` as hard kill timers and a drop
//! guard that SIGKILLs and reaps it; the tmpfs is lazily unmounted on drop.

#[cfg(target_os = "linux")]
#[path = "../tests/linux_common/mod.rs"]
mod linux_common;

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("SKIP open_exec: fanotify benchmarks run on Linux only");
}

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::{AsFd, AsRawFd};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::linux_common::{Guarded, Scratch, arm_child_timers, sha256, skip_reason};

    const CHILD_ENV: &str = "GH_BENCH_CHILD";
    /// Hard kill timer of every listener child.
    const CHILD_SECS: u32 = 300;

    /// `cargo bench` passes `--bench`; `cargo test --benches` (the test command's smoke run)
    /// does not, and then a few iterations only show that the harness still works.
    fn smoke() -> bool {
        !std::env::args().any(|a| a == "--bench")
    }
    fn runs() -> usize {
        if smoke() { 1 } else { 5 }
    }
    fn n_open() -> u32 {
        if smoke() { 200 } else { 20_000 }
    }
    fn n_exec() -> u32 {
        if smoke() { 5 } else { 300 }
    }

    pub fn main() {
        if let Ok(mode) = std::env::var(CHILD_ENV) {
            arm_child_timers(CHILD_SECS);
            // Before any thread exists, so every listener thread inherits it.
            if let Some(cpu) = std::env::var("GH_BENCH_CHILD_CPU")
                .ok()
                .and_then(|c| c.parse().ok())
            {
                pin(cpu);
            }
            match mode.as_str() {
                "minimal" => minimal_listener(),
                "minimal-ignore" => minimal_ignore_listener(),
                "gatehouse" => gatehouse(),
                other => panic!("unknown child mode {other}"),
            }
            return;
        }
        // `cargo bench` passes `--bench`; nothing else to parse.
        if let Some(why) = skip_reason() {
            println!("SKIP open_exec: {why}");
            return;
        }
        // Optional CPU placement, to separate scheduling from our cost: the cross-CPU wake-up
        // of an idle vCPU dominates a permission round trip and varies run to run with where
        // the scheduler happens to put the listener. `GH_BENCH_CPUS=0`: everything on CPU 0;
        // `GH_BENCH_CPUS=0,1`: the opener on CPU 0, every listener (and the helper) on CPU 1.
        // Unset: no pinning (the default figures).
        if let Ok(cpus) = std::env::var("GH_BENCH_CPUS") {
            let mut it = cpus.split(',').map(|c| {
                c.trim()
                    .parse::<usize>()
                    .expect("GH_BENCH_CPUS: CPU numbers")
            });
            let opener = it.next().expect("GH_BENCH_CPUS: at least one CPU");
            pin(opener);
            if let Some(listener) = it.next() {
                // SAFETY: set_var before any other thread of this process exists.
                unsafe { std::env::set_var("GH_BENCH_CHILD_CPU", listener.to_string()) };
            }
            println!(
                "open_exec: pinned, opener on CPU {opener}, listeners on CPU {}",
                std::env::var("GH_BENCH_CHILD_CPU").unwrap_or_else(|_| opener.to_string())
            );
        }
        parent();
    }

    /// Pin the calling thread (and the threads and children it creates later) to `cpu`.
    fn pin(cpu: usize) {
        // SAFETY: cpu_set_t is plain data for which all-zero is the empty set; CPU_SET writes
        // one bit inside it (it checks `cpu` against the set's size); sched_setaffinity reads
        // the set through a valid pointer of the size we pass.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        assert_eq!(
            rc,
            0,
            "sched_setaffinity(CPU {cpu}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// A listener with nothing in it: one permission group on the scratch filesystem that
    /// answers FAN_ALLOW inline. Stops when its stdin closes.
    fn minimal_listener() {
        use nix::sys::fanotify::*;
        let scratch = PathBuf::from(std::env::var("GH_SCRATCH").expect("GH_SCRATCH"));
        let g = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .expect("fanotify_init");
        g.mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
            MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_OPEN_EXEC_PERM,
            // Ignored for an absolute path.
            std::io::stdin(),
            Some(&scratch),
        )
        .expect("mark the scratch tmpfs");
        serve_inline(&g);
    }

    /// Allow every event inline until stdin closes; prints READY first and STOPPED last.
    fn serve_inline(g: &nix::sys::fanotify::Fanotify) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use nix::sys::fanotify::*;
        println!("READY");
        let stdin = std::io::stdin();
        loop {
            let mut fds = [
                PollFd::new(g.as_fd(), PollFlags::POLLIN),
                PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
            ];
            let _ = poll(&mut fds, PollTimeout::NONE);
            // Every readable group event is answered before stdin is looked at.
            loop {
                match g.read_events() {
                    Ok(evs) if !evs.is_empty() => {
                        for ev in evs {
                            if let Some(fd) = ev.fd() {
                                let _ = g
                                    .write_response(FanotifyResponse::new(fd, Response::FAN_ALLOW));
                            }
                        }
                    }
                    _ => break,
                }
            }
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                // Readable stdin here only ever means EOF: the parent closed it.
                let mut b = [0u8; 1];
                if nix::unistd::read(stdin.as_fd(), &mut b).unwrap_or(0) == 0 {
                    println!("STOPPED");
                    return;
                }
            }
        }
    }

    /// The kernel's share of the warm path: a listener with Gatehouse's marks on the scratch
    /// tmpfs (exec on the filesystem, open on the children of the warm and cold directories)
    /// plus the same evictable inode ignore mark on the warm file that Gatehouse's cached allow
    /// leaves, so an open of that file never reaches user space. Anything that does reach it is
    /// allowed inline. Stops when its stdin closes.
    fn minimal_ignore_listener() {
        use nix::sys::fanotify::*;
        let env =
            |k: &str| PathBuf::from(std::env::var(k).unwrap_or_else(|_| panic!("{k} not set")));
        let (scratch, warm, cold) = (env("GH_SCRATCH"), env("GH_WARM"), env("GH_COLD"));
        let g = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT
                | InitFlags::FAN_CLOEXEC
                | InitFlags::FAN_NONBLOCK
                | InitFlags::FAN_UNLIMITED_QUEUE
                | InitFlags::FAN_UNLIMITED_MARKS,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .expect("fanotify_init");
        g.mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
            MaskFlags::FAN_OPEN_EXEC_PERM,
            std::io::stdin(),
            Some(&scratch),
        )
        .expect("exec mark on the scratch tmpfs");
        for dir in [warm.parent(), cold.parent()] {
            g.mark(
                MarkFlags::FAN_MARK_ADD,
                MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_EVENT_ON_CHILD,
                std::io::stdin(),
                dir,
            )
            .expect("open mark on a scratch directory");
        }
        g.mark(
            MarkFlags::FAN_MARK_ADD
                | MarkFlags::FAN_MARK_IGNORED_MASK
                | MarkFlags::FAN_MARK_EVICTABLE,
            MaskFlags::FAN_OPEN_PERM,
            std::io::stdin(),
            Some(&warm),
        )
        .expect("ignore mark on the warm file");
        serve_inline(&g);
    }

    /// The real backend and core (`es_extension::sys::linux::run`, what gatehouse-extension
    /// runs), scoped to the scratch filesystem. Stops on stdin EOF.
    fn gatehouse() {
        tests::run_extension_from_env();
    }

    fn child(mode: &str, scratch: &Path, envs: &[(&str, &Path)]) -> Guarded {
        let mut cmd = Command::new(std::env::current_exe().expect("bench executable"));
        cmd.env(CHILD_ENV, mode)
            .env("GH_SCRATCH", scratch)
            .stderr(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Guarded::spawn(mode, cmd)
    }

    fn stop(mut g: Guarded, last_line: &str) -> Option<String> {
        g.close_stdin();
        let line = g.wait_line(last_line, Duration::from_secs(30));
        let st = g.wait_exit(Duration::from_secs(30));
        assert!(
            st.is_some_and(|s| s.success()),
            "{} did not stop cleanly: {st:?}",
            g.name
        );
        line
    }

    /// Median over `RUNS` runs of the per-call time of `iters` calls.
    fn median(iters: u32, mut f: impl FnMut()) -> Duration {
        let mut v: Vec<Duration> = (0..runs())
            .map(|_| {
                let t = Instant::now();
                for _ in 0..iters {
                    f();
                }
                t.elapsed() / iters
            })
            .collect();
        v.sort();
        v[runs() / 2]
    }

    fn open_close(p: &Path) {
        let f = std::fs::File::open(p).expect("open");
        std::hint::black_box(f.as_raw_fd());
    }

    fn fork_exec(p: &Path) {
        let st = Command::new(p).stdin(Stdio::null()).status().expect("exec");
        assert!(st.success(), "{} failed", p.display());
    }

    /// `gatehouse-helper` from this target directory (release, then debug).
    fn helper_binary() -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        let profile_dir = exe.parent()?.parent()?.to_owned();
        let target = profile_dir.parent()?.to_owned();
        [profile_dir, target.join("release"), target.join("debug")]
            .into_iter()
            .map(|d| d.join("gatehouse-helper"))
            .find(|p| p.is_file())
    }

    fn us(d: Duration) -> String {
        format!("{:.2} us", d.as_secs_f64() * 1e6)
    }

    fn ratio(a: Duration, b: Duration) -> String {
        format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
    }

    fn parent() {
        let scratch = Scratch::mount();
        let run = tempfile::Builder::new()
            .prefix("gatehouse-bench-")
            .tempdir()
            .expect("runtime dir");
        let (plain, warm_dir, cold_dir) = (
            scratch.join("plain.txt"),
            scratch.join("warm"),
            scratch.join("cold"),
        );
        std::fs::create_dir_all(&warm_dir).unwrap();
        std::fs::create_dir_all(&cold_dir).unwrap();
        let (warm, cold) = (warm_dir.join("file.txt"), cold_dir.join("file.txt"));
        for f in [&plain, &warm, &cold] {
            std::fs::write(f, b"x").unwrap();
        }
        let truebin = scratch.join("true");
        std::fs::copy("/bin/true", &truebin).expect("copy /bin/true");
        let bench_exe = std::env::current_exe().unwrap();
        let policy = run.path().join("policy.toml");
        // warm: a literal watch on a missing file marks its directory's children; other files
        // there match no watch item, so their allow is kernel-cached (ignore mark).
        // cold: a watch allowing only this process: decided on the delivery thread each time.
        std::fs::write(
            &policy,
            format!(
                r#"version = 1
mode = "enforce"

[defaults]
fallback = "allow"
helper_unavailable = "allow"
deadline_ms = 3000

[[exec]]
name = "bench-true"
action = "allow"
sha256 = "{sha}"

[[watch]]
name = "warm"
paths = [{{ path = "{warm_dir}/absent.txt" }}]
operations = ["open"]
audit_only = false
processes = [{{ binary_path = "/nonexistent/reader" }}]

[[watch]]
name = "cold"
paths = [{{ path = "{cold_dir}/", prefix = true }}]
operations = ["open"]
audit_only = false
processes = [{{ binary_path = "{exe}" }}]
"#,
                sha = sha256(&truebin),
                warm_dir = warm_dir.display(),
                cold_dir = cold_dir.display(),
                exe = bench_exe.display(),
            ),
        )
        .unwrap();

        println!(
            "open_exec: scratch tmpfs {}, {} runs of {} opens / {} execs each{}",
            scratch.path.display(),
            runs(),
            n_open(),
            n_exec(),
            if smoke() {
                " (smoke run: figures mean nothing; use cargo bench)"
            } else {
                ""
            }
        );
        // 1. No agent.
        let bare_open = median(n_open(), || open_close(&plain));
        let bare_exec = median(n_exec(), || fork_exec(&truebin));

        // 2. Minimal listener (open and exec permission events on the whole tmpfs).
        let (min_open, min_exec) = {
            let l = child("minimal", &scratch.path, &[]);
            assert!(
                l.wait_line("READY", Duration::from_secs(30)).is_some(),
                "minimal listener ready"
            );
            let o = median(n_open(), || open_close(&plain));
            let e = median(n_exec(), || fork_exec(&truebin));
            stop(l, "STOPPED").expect("minimal listener stopped");
            (o, e)
        };

        // 2b. The kernel's share of the warm path: the same marks as Gatehouse plus the ignore
        // mark on the warm file; the open never reaches the listener.
        let min_ignore_open = {
            let l = child(
                "minimal-ignore",
                &scratch.path,
                &[("GH_WARM", &warm), ("GH_COLD", &cold)],
            );
            assert!(
                l.wait_line("READY", Duration::from_secs(30)).is_some(),
                "minimal-ignore listener ready"
            );
            let o = median(n_open(), || open_close(&warm));
            stop(l, "STOPPED").expect("minimal-ignore listener stopped");
            o
        };

        // 3. Gatehouse, with the real helper for the binary's hash.
        let helper_sock = run.path().join("helper.sock");
        let _helper = helper_binary().map(|bin| {
            let mut cmd = Command::new(bin);
            cmd.arg("--socket")
                .arg(&helper_sock)
                .arg("--allowed-exe")
                .arg(&bench_exe)
                .stderr(Stdio::null());
            let g = Guarded::spawn("helper", cmd);
            let end = Instant::now() + Duration::from_secs(10);
            while !helper_sock.exists() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            g
        });
        if _helper.is_none() {
            println!(
                "note: gatehouse-helper not built (`cargo build --workspace --bins`): the exec row measures the fallback path"
            );
        }
        let events_log = run.path().join("events.jsonl");
        let gh = child(
            "gatehouse",
            &scratch.path,
            &[
                ("GH_POLICY", &policy),
                ("GH_HELPER_SOCK", &helper_sock),
                ("GH_EVENTS_LOG", &events_log),
            ],
        );
        assert!(
            gh.wait_line("gatehouse-extension: fanotify on", Duration::from_secs(30))
                .is_some(),
            "gatehouse ready"
        );
        // First exec goes through the helper; wait until it is decided (and cached).
        let end = Instant::now() + Duration::from_secs(15);
        let mut known = false;
        while Instant::now() < end {
            if Command::new(&truebin).status().is_ok_and(|s| s.success()) {
                known = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(known, "the /bin/true copy is allowed under Gatehouse");
        open_close(&warm); // the first open is decided and leaves the ignore mark
        let gh_warm = median(n_open(), || open_close(&warm));
        let gh_cold = median(n_open(), || open_close(&cold));
        let gh_exec = median(n_exec(), || fork_exec(&truebin));
        let counters = stop(gh, "gatehouse-extension: stopped").unwrap_or_default();

        println!();
        println!(
            "| operation (median of {}, per call) | time | vs no agent | vs minimal listener |",
            runs()
        );
        println!("|---|---|---|---|");
        let row = |name: &str, d: Duration, minimal: Option<Duration>| {
            println!(
                "| {name} | {} | {} | {} |",
                us(d),
                ratio(d, bare_open_or_exec(name, bare_open, bare_exec)),
                minimal.map_or("-".into(), |m| ratio(d, m))
            );
        };
        row("open+close, no agent", bare_open, Some(min_open));
        row("open+close, minimal listener", min_open, None);
        row(
            "open+close, minimal listener + ignore mark (kernel share of warm)",
            min_ignore_open,
            Some(min_open),
        );
        row(
            "open+close, Gatehouse warm (ignore mark)",
            gh_warm,
            Some(min_open),
        );
        row(
            "open+close, Gatehouse cold (delivery thread)",
            gh_cold,
            Some(min_open),
        );
        row("fork+exec true, no agent", bare_exec, Some(min_exec));
        row("fork+exec true, minimal listener", min_exec, None);
        row(
            "fork+exec true, Gatehouse (known binary)",
            gh_exec,
            Some(min_exec),
        );
        println!();
        println!(
            "targets (docs/DESIGN.md 7): warm <= 1.2x no agent; cold <= 1.1x minimal listener; known exec <= 1.05x no agent"
        );
        let pick = |k: &str| {
            counters
                .split_whitespace()
                .find(|kv| kv.starts_with(k))
                .unwrap_or("")
                .to_owned()
        };
        println!(
            "gatehouse counters: {} {} {} {}",
            pick("fanotify.open_events="),
            pick("fanotify.exec_events="),
            pick("fanotify.ignore_marks_added="),
            pick("pending=")
        );
    }

    fn bare_open_or_exec(name: &str, open: Duration, exec: Duration) -> Duration {
        if name.starts_with("open") { open } else { exec }
    }
}
