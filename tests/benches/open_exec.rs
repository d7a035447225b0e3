//! Open and exec cost side by side in one run (BENCHMARKS.md): opens of distinct files in a
//! watched directory, a hot set of 5,000 files, ordinary unwatched opens, fork+exec of a known
//! binary and the first exec of 200 distinct binaries, under no agent, a minimal in-repo
//! listener, Gatehouse and (when installed) fapolicyd from Debian with allow-all and with
//! trust and ftype rules; unpinned and pinned to one CPU, configurations interleaved, medians
//! of 5 rounds. Then the extension's threads and peak RSS under a one-million-event flood.
//!
//! `scripts/bench` (root) builds what it needs and runs `cargo bench -p tests --bench
//! open_exec`; `GH_BENCH_QUICK=1` shrinks every size. `cargo test --benches` (no `--bench`
//! argument) runs a smoke pass that only shows the harness works: its figures mean nothing.
//!
//! Safety (docs/DESIGN.md "Testing fanotify safely"): only a filesystem mounted here is marked
//! (an ext2 loop mount, a type nothing else on the machine may use, so fapolicyd's `watch_fs`
//! reaches nothing else; a tmpfs when ext2 cannot be made, and then fapolicyd is skipped);
//! every listener is a child of this process with `PR_SET_PDEATHSIG` and a drop guard that
//! SIGKILLs and reaps it by pid; fapolicyd runs in the foreground, permissive, never through
//! systemd, and its configuration files are restored on drop.

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
    use std::collections::BTreeMap;
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    use super::linux_common::{Guarded, Scratch, arm_child_timers, sha256, skip_reason};

    const CHILD_ENV: &str = "GH_BENCH_CHILD";
    /// Hard kill timer of every listener child (the flood run is the longest).
    const CHILD_SECS: u32 = 900;
    const FAPOLICYD: &str = "/usr/sbin/fapolicyd";

    /// Sizes of one run. The full run stays under about ten minutes on 2 vCPUs.
    #[derive(Debug, Clone, Copy)]
    struct Sizes {
        rounds: usize,
        distinct: usize,
        hot: usize,
        hot_passes: usize,
        unwatched: usize,
        exec: usize,
        first_exec: usize,
        flood: usize,
        pinned: bool,
        fapolicyd: bool,
    }

    fn sizes() -> Sizes {
        let mut s = base_sizes();
        // Knobs for profiling one part: fewer rounds, a smaller (or no) flood.
        let knob = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
        if let Some(n) = knob("GH_BENCH_ROUNDS") {
            s.rounds = n.max(1);
        }
        if let Some(n) = knob("GH_BENCH_FLOOD") {
            s.flood = n;
        }
        s
    }

    fn base_sizes() -> Sizes {
        let smoke = !std::env::args().any(|a| a == "--bench");
        let quick = std::env::var_os("GH_BENCH_QUICK").is_some_and(|v| v != "0");
        if smoke {
            Sizes {
                rounds: 1,
                distinct: 200,
                hot: 100,
                hot_passes: 1,
                unwatched: 200,
                exec: 5,
                first_exec: 5,
                flood: 0,
                pinned: false,
                fapolicyd: false,
            }
        } else if quick {
            Sizes {
                rounds: 1,
                distinct: 2_000,
                hot: 500,
                hot_passes: 2,
                unwatched: 2_000,
                exec: 50,
                first_exec: 20,
                flood: 20_000,
                pinned: true,
                fapolicyd: true,
            }
        } else {
            Sizes {
                rounds: 5,
                distinct: 20_000,
                hot: 5_000,
                hot_passes: 2,
                unwatched: 10_000,
                exec: 200,
                first_exec: 200,
                flood: 1_000_000,
                pinned: true,
                fapolicyd: true,
            }
        }
    }

    pub fn main() {
        if let Ok(mode) = std::env::var(CHILD_ENV) {
            arm_child_timers(CHILD_SECS);
            match mode.as_str() {
                "minimal" => minimal_listener(),
                "gatehouse" => tests::run_extension_from_env(),
                other => panic!("unknown child mode {other}"),
            }
            return;
        }
        if let Some(why) = skip_reason() {
            println!("SKIP open_exec: {why}");
            return;
        }
        parent(sizes());
    }

    /// Pin the calling thread (and what it spawns from now on) to `cpus`.
    fn pin(cpus: &[usize]) {
        // SAFETY: cpu_set_t is plain data for which all-zero is the empty set; CPU_SET writes
        // one bit inside it (it checks the CPU against the set's size); sched_setaffinity reads
        // the set through a valid pointer of the size we pass.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in cpus {
                libc::CPU_SET(c, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        assert_eq!(
            rc,
            0,
            "sched_setaffinity({cpus:?}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// A listener with nothing in it: one permission group on the whole scratch filesystem
    /// that answers FAN_ALLOW inline. Stops when its stdin closes.
    fn minimal_listener() {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
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
        .expect("mark the scratch filesystem");
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

    /// The scratch filesystem: an ext2 loop mount (unmounted lazily on drop, the loop device
    /// going with it), or a tmpfs when ext2 cannot be made here.
    enum Fs {
        Ext2 {
            _dir: tempfile::TempDir,
            mnt: PathBuf,
        },
        Tmpfs(Scratch),
    }

    impl Fs {
        fn mount() -> (Fs, Option<String>) {
            match Self::ext2() {
                Ok(fs) => (fs, None),
                Err(why) => (Fs::Tmpfs(Scratch::mount()), Some(why)),
            }
        }

        fn ext2() -> Result<Fs, String> {
            let dir = tempfile::Builder::new()
                .prefix("gatehouse-bench-")
                .tempdir_in("/var/tmp")
                .map_err(|e| format!("temp dir in /var/tmp: {e}"))?;
            let img = dir.path().join("ext2.img");
            let mnt = dir.path().join("mnt");
            std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
            std::fs::File::create(&img)
                .and_then(|f| f.set_len(256 << 20))
                .map_err(|e| format!("image file: {e}"))?;
            let run = |cmd: &mut Command| -> Result<(), String> {
                let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "{cmd:?}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                }
            };
            run(Command::new("mkfs.ext2")
                .args(["-q", "-F", "-N", "65536"])
                .arg(&img))?;
            run(Command::new("mount")
                .args(["-t", "ext2", "-o", "loop,nosuid,nodev"])
                .arg(&img)
                .arg(&mnt))?;
            Ok(Fs::Ext2 { _dir: dir, mnt })
        }

        fn path(&self) -> &Path {
            match self {
                Fs::Ext2 { mnt, .. } => mnt,
                Fs::Tmpfs(s) => &s.path,
            }
        }

        fn kind(&self) -> &'static str {
            match self {
                Fs::Ext2 { .. } => "ext2 (loop mount)",
                Fs::Tmpfs(_) => "tmpfs",
            }
        }
    }

    impl Drop for Fs {
        fn drop(&mut self) {
            if let Fs::Ext2 { mnt, .. } = self {
                let _ = nix::mount::umount2(mnt.as_path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }

    /// fapolicyd's configuration files, as they were before this run; put back on drop.
    struct FapolicydEtc {
        saved: Vec<(PathBuf, Option<Vec<u8>>)>,
    }

    const FAP_CONF: &str = "/etc/fapolicyd/fapolicyd.conf";
    const FAP_RULES: &str = "/etc/fapolicyd/compiled.rules";
    const FAP_TRUST: &str = "/etc/fapolicyd/fapolicyd.trust";

    impl FapolicydEtc {
        fn save() -> FapolicydEtc {
            let saved = [FAP_CONF, FAP_RULES, FAP_TRUST]
                .into_iter()
                .map(|p| (PathBuf::from(p), std::fs::read(p).ok()))
                .collect();
            FapolicydEtc { saved }
        }
    }

    impl Drop for FapolicydEtc {
        fn drop(&mut self) {
            for (p, old) in &self.saved {
                let _ = match old {
                    Some(b) => std::fs::write(p, b),
                    None => std::fs::remove_file(p),
                };
            }
        }
    }

    /// Why fapolicyd cannot be measured here, if it cannot.
    fn fapolicyd_skip(fs: &Fs) -> Option<String> {
        if !Path::new(FAPOLICYD).is_file() {
            return Some(format!(
                "{FAPOLICYD} not installed (`apt-get install --no-install-recommends fapolicyd`, never started through systemd)"
            ));
        }
        if !matches!(fs, Fs::Ext2 { .. }) {
            return Some(
                "no ext2 scratch filesystem, so watch_fs could not be limited to it".into(),
            );
        }
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let ext2: Vec<&str> = mounts
            .lines()
            .filter(|l| l.split_whitespace().nth(2) == Some("ext2"))
            .collect();
        if ext2.len() != 1 {
            return Some(format!(
                "other ext2 mounts exist, so watch_fs = ext2 would reach them: {ext2:?}"
            ));
        }
        let running = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "fapolicyd")
            });
        if running {
            return Some("a fapolicyd is already running on this machine".into());
        }
        None
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Cfg {
        None,
        Minimal,
        Gatehouse,
        FapAllow,
        FapTrust,
    }

    impl Cfg {
        fn title(self) -> &'static str {
            match self {
                Cfg::None => "no agent",
                Cfg::Minimal => "minimal listener",
                Cfg::Gatehouse => "Gatehouse",
                Cfg::FapAllow => "fapolicyd allow-all",
                Cfg::FapTrust => "fapolicyd trust+ftype",
            }
        }
    }

    const ROWS: [&str; 5] = [
        "open, distinct files in a watched dir",
        "open, hot set of files (after one pass)",
        "open, unwatched file",
        "fork+exec of a known binary",
        "first exec of distinct binaries (SHA-256 rule)",
    ];

    /// The files every run uses.
    struct Layout {
        distinct: Vec<PathBuf>,
        hot: Vec<PathBuf>,
        plain_dir: PathBuf,
        plain: PathBuf,
        truebin: PathBuf,
        first_dir: PathBuf,
        distinct_dir: PathBuf,
        hot_dir: PathBuf,
    }

    fn layout(root: &Path, s: &Sizes) -> Layout {
        let distinct_dir = root.join("distinct");
        let hot_dir = root.join("hot");
        let plain_dir = root.join("plain");
        let first_dir = root.join("first");
        for d in [&distinct_dir, &hot_dir, &plain_dir, &first_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        // 200 files a directory: ext2 directories are linear lists.
        let distinct: Vec<PathBuf> = (0..s.distinct)
            .map(|i| {
                let d = distinct_dir.join(format!("d{:03}", i / 200));
                if i % 200 == 0 {
                    std::fs::create_dir_all(&d).unwrap();
                }
                d.join(format!("f{i:05}.txt"))
            })
            .collect();
        let hot: Vec<PathBuf> = (0..s.hot)
            .map(|i| hot_dir.join(format!("h{i:05}.txt")))
            .collect();
        for f in distinct.iter().chain(&hot) {
            std::fs::write(f, b"x").unwrap();
        }
        let plain = plain_dir.join("plain.txt");
        std::fs::write(&plain, b"x").unwrap();
        let truebin = root.join("true");
        std::fs::copy("/bin/true", &truebin).expect("copy /bin/true");
        Layout {
            distinct,
            hot,
            plain_dir,
            plain,
            truebin,
            first_dir,
            distinct_dir,
            hot_dir,
        }
    }

    /// `n` distinct small binaries (`/bin/true` plus a unique tail, which the ELF loader
    /// ignores), never executed before.
    fn fresh_binaries(l: &Layout, tag: &str, n: usize) -> Vec<PathBuf> {
        let body = std::fs::read("/bin/true").expect("read /bin/true");
        (0..n)
            .map(|i| {
                let p = l.first_dir.join(format!("{tag}-{i:03}"));
                let mut b = body.clone();
                b.extend_from_slice(format!("gatehouse-bench {tag} {i}\n").as_bytes());
                std::fs::write(&p, &b).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
                p
            })
            .collect()
    }

    fn open_close(p: &Path) {
        let f = std::fs::File::open(p).expect("open");
        std::hint::black_box(f.as_raw_fd());
    }

    fn fork_exec(p: &Path) {
        let st = Command::new(p).stdin(Stdio::null()).status().expect("exec");
        assert!(st.success(), "{} failed", p.display());
    }

    /// Microseconds per call of `f` over `items`.
    fn per_call<T>(items: impl IntoIterator<Item = T>, mut f: impl FnMut(T)) -> f64 {
        let t = Instant::now();
        let mut n = 0u32;
        for it in items {
            f(it);
            n += 1;
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n.max(1))
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

    /// The bench policy; `known` are the binaries with a SHA-256 allow rule (enforce mode
    /// denies any other exec).
    fn gatehouse_policy(l: &Layout, exe: &Path, known: &[(PathBuf, String)]) -> String {
        let mut rules = String::new();
        for (i, (_, sha)) in known.iter().enumerate() {
            rules.push_str(&format!(
                "\n[[exec]]\nname = \"bench-{i}\"\naction = \"allow\"\nsha256 = \"{sha}\"\n"
            ));
        }
        // distinct: a watch allowing only this process, so every open is decided on the
        // delivery thread. hot: a literal watch on a missing file marks its directory's
        // children; the files there match no watch item. plain: no watch at all.
        format!(
            r#"version = 1
mode = "enforce"

[defaults]
fallback = "allow"
helper_unavailable = "allow"
deadline_ms = 3000
{rules}
[[watch]]
name = "distinct"
paths = [{{ path = "{distinct}/", prefix = true }}]
operations = ["open"]
audit_only = false
processes = [{{ binary_path = "{exe}" }}]

[[watch]]
name = "hot"
paths = [{{ path = "{hot}/absent.txt" }}]
operations = ["open"]
audit_only = false
processes = [{{ binary_path = "/nonexistent/reader" }}]
"#,
            distinct = l.distinct_dir.display(),
            hot = l.hot_dir.display(),
            exe = exe.display(),
        )
    }

    fn fapolicyd_conf(integrity: &str) -> String {
        // The package's defaults except: permissive, our own uid (the trust database is
        // root's here), nice 0 like the other listeners, watch_fs = ext2 only (nothing but the
        // scratch mount is ext2: checked before start), the file trust backend only.
        format!(
            "permissive = 1\nnice_val = 0\nq_size = 640\nuid = root\ngid = root\n\
             do_stat_report = 0\ndetailed_report = 0\ndb_max_size = 50\n\
             subj_cache_size = 1549\nobj_cache_size = 8191\nwatch_fs = ext2\ntrust = file\n\
             integrity = {integrity}\n\
             syslog_format = rule,dec,perm,auid,pid,exe,:,path,ftype,trust\n\
             rpm_sha256_only = 0\nallow_filesystem_mark = 0\n"
        )
    }

    /// Modelled on fapolicyd's own default rule set: trust for execution, ftype for
    /// interpreters' input, audit-deny the rest (permissive: nothing is denied).
    const FAP_TRUST_RULES: &str = "\
%languages=application/x-bytecode.ocaml,application/x-bytecode.python,application/java-archive,text/x-java,application/x-java-applet,application/javascript,text/javascript,text/x-awk,text/x-gawk,text/x-lisp,application/x-elc,text/x-lua,text/x-m4,text/x-nftables,text/x-perl,text/x-php,text/x-python,text/x-R,text/x-ruby,text/x-script.guile,text/x-tcl,text/x-luatex,text/x-systemtap
deny_audit perm=any pattern=ld_so : all
allow perm=execute all : trust=1
allow perm=open all : ftype=%languages trust=1
deny_audit perm=any all : ftype=%languages
allow perm=any all : ftype=text/x-shellscript
deny_audit perm=execute all : all
allow perm=open all : all
";

    /// One started agent; stopped (cleanly, by its pid) by [`Agent::stop`], killed on drop.
    struct Agent {
        main: Option<Guarded>,
        _helper: Option<Guarded>,
        cfg: Cfg,
    }

    impl Agent {
        fn pid(&self) -> Option<i32> {
            self.main.as_ref().map(Guarded::pid)
        }

        /// Stop and return the last line (Gatehouse's counters).
        fn stop(mut self) -> String {
            let Some(mut g) = self.main.take() else {
                return String::new();
            };
            let last = match self.cfg {
                Cfg::None => unreachable!("no process"),
                Cfg::Minimal => "STOPPED",
                Cfg::Gatehouse => "gatehouse-extension: stopped",
                Cfg::FapAllow | Cfg::FapTrust => {
                    let _ = kill(Pid::from_raw(g.pid()), Signal::SIGTERM);
                    let st = g.wait_exit(Duration::from_secs(30));
                    assert!(st.is_some(), "fapolicyd did not stop on SIGTERM");
                    return String::new();
                }
            };
            g.close_stdin();
            let line = g.wait_line(last, Duration::from_secs(60));
            let st = g.wait_exit(Duration::from_secs(30));
            assert!(
                st.is_some_and(|s| s.success()),
                "{} did not stop cleanly: {st:?}",
                g.name
            );
            line.unwrap_or_default()
        }
    }

    struct Env<'a> {
        fs: &'a Fs,
        l: &'a Layout,
        run: &'a Path,
        seq: u32,
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

    fn start(cfg: Cfg, env: &mut Env<'_>, first: &[PathBuf]) -> Agent {
        env.seq += 1;
        let scratch = env.fs.path();
        // What each agent is told to trust: the known binary and this run's fresh ones.
        let known = || -> Vec<(PathBuf, String)> {
            std::iter::once(&env.l.truebin)
                .chain(first)
                .map(|b| (b.clone(), sha256(b)))
                .collect()
        };
        match cfg {
            Cfg::None => Agent {
                main: None,
                _helper: None,
                cfg,
            },
            Cfg::Minimal => {
                let g = child("minimal", scratch, &[]);
                assert!(
                    g.wait_line("READY", Duration::from_secs(30)).is_some(),
                    "minimal listener ready"
                );
                Agent {
                    main: Some(g),
                    _helper: None,
                    cfg,
                }
            }
            Cfg::Gatehouse => {
                let sock = env.run.join(format!("helper-{}.sock", env.seq));
                let helper = helper_binary().map(|bin| {
                    let mut cmd = Command::new(bin);
                    cmd.arg("--socket")
                        .arg(&sock)
                        .arg("--allowed-exe")
                        .arg(std::env::current_exe().unwrap())
                        .stderr(Stdio::null());
                    let g = Guarded::spawn("helper", cmd);
                    let end = Instant::now() + Duration::from_secs(10);
                    while !sock.exists() && Instant::now() < end {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    g
                });
                assert!(
                    helper.is_some(),
                    "gatehouse-helper not built: run scripts/bench (it builds it)"
                );
                let log = env.run.join(format!("events-{}.jsonl", env.seq));
                let policy = env.run.join(format!("policy-{}.toml", env.seq));
                let exe = std::env::current_exe().unwrap();
                std::fs::write(&policy, gatehouse_policy(env.l, &exe, &known())).unwrap();
                let g = child(
                    "gatehouse",
                    scratch,
                    &[
                        ("GH_POLICY", &policy),
                        ("GH_HELPER_SOCK", &sock),
                        ("GH_EVENTS_LOG", &log),
                    ],
                );
                assert!(
                    g.wait_line("gatehouse-extension: fanotify on", Duration::from_secs(60))
                        .is_some(),
                    "gatehouse ready"
                );
                Agent {
                    main: Some(g),
                    _helper: helper,
                    cfg,
                }
            }
            Cfg::FapAllow | Cfg::FapTrust => {
                let (integrity, rules) = if cfg == Cfg::FapAllow {
                    ("none", "allow perm=any all : all\n")
                } else {
                    ("sha256", FAP_TRUST_RULES)
                };
                let mut trust = String::new();
                for (b, sha) in known() {
                    let size = std::fs::metadata(&b).unwrap().len();
                    trust.push_str(&format!("{} {size} {sha}\n", b.display()));
                }
                std::fs::write(FAP_CONF, fapolicyd_conf(integrity)).unwrap();
                std::fs::write(FAP_RULES, rules).unwrap();
                std::fs::write(FAP_TRUST, trust).unwrap();
                let mut cmd = Command::new(FAPOLICYD);
                cmd.args(["--debug-deny", "--permissive"]);
                // SAFETY: between fork and exec only async-signal-safe calls: dup2 (its log
                // goes to stderr; the guard reads stdout) and prctl.
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::dup2(1, 2) < 0
                            || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                let g = Guarded::spawn("fapolicyd", cmd);
                assert!(
                    g.wait_line("Starting to listen for events", Duration::from_secs(120))
                        .is_some(),
                    "fapolicyd did not start (see its [fapolicyd] lines above)"
                );
                Agent {
                    main: Some(g),
                    _helper: None,
                    cfg,
                }
            }
        }
    }

    /// Gatehouse's open marks, from its fanotify groups' fdinfo: whether any is on `dir` or
    /// `file`, and the open bits of any filesystem-wide mark.
    fn marks_on(pid: i32, dir: &Path, file: &Path) -> (usize, bool, u64) {
        const FAN_OPEN_PERM: u64 = 0x0001_0000;
        let inos = [dir, file].map(|p| std::fs::metadata(p).unwrap().ino());
        let (mut inode_marks, mut on_unwatched, mut sb_open) = (0, false, 0);
        for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for line in text.lines().filter(|l| l.starts_with("fanotify ")) {
                let field = |k: &str| {
                    line.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(k))
                        .and_then(|v| u64::from_str_radix(v, 16).ok())
                };
                let mask = field("mask:").unwrap_or(0);
                match field("ino:") {
                    Some(ino) => {
                        inode_marks += 1;
                        if inos.contains(&ino) && mask & FAN_OPEN_PERM != 0 {
                            on_unwatched = true;
                        }
                    }
                    None if line.contains("sdev:") => sb_open |= mask & FAN_OPEN_PERM,
                    None => {}
                }
            }
        }
        (inode_marks, on_unwatched, sb_open)
    }

    fn median(v: &mut [f64]) -> f64 {
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            f64::NAN
        } else {
            v[v.len() / 2]
        }
    }

    fn pick(line: &str, key: &str) -> Option<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    }

    fn sh(cmd: &str) -> String {
        Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }

    type Key = (Cfg, bool, usize);

    fn parent(s: Sizes) {
        let (fs, no_ext2) = Fs::mount();
        let run = tempfile::Builder::new()
            .prefix("gatehouse-bench-run-")
            .tempdir()
            .expect("runtime dir");
        let l = layout(fs.path(), &s);
        let fap_skip = if s.fapolicyd {
            fapolicyd_skip(&fs)
        } else {
            Some("not in a smoke run".into())
        };
        let _etc = fap_skip.is_none().then(FapolicydEtc::save);
        let mut cfgs = vec![Cfg::None, Cfg::Minimal, Cfg::Gatehouse];
        if fap_skip.is_none() {
            cfgs.extend([Cfg::FapAllow, Cfg::FapTrust]);
        }
        // `GH_BENCH_ONLY=gatehouse` (say): only these columns besides "no agent", for
        // profiling one agent (the ratios need the columns they divide by).
        if let Ok(only) = std::env::var("GH_BENCH_ONLY") {
            let keep: Vec<&str> = only.split(',').map(str::trim).collect();
            cfgs.retain(|c| {
                *c == Cfg::None
                    || keep.iter().any(|k| match c {
                        Cfg::Minimal => *k == "minimal",
                        Cfg::Gatehouse => *k == "gatehouse",
                        _ => *k == "fapolicyd",
                    })
            });
        }
        let pinnings: &[bool] = if s.pinned { &[false, true] } else { &[false] };
        let all: Vec<usize> =
            (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        if let Some(why) = &no_ext2 {
            println!("note: no ext2 loop mount ({why}); using a tmpfs");
        }
        println!(
            "open_exec: {} on {}, {} rounds, configurations interleaved{}",
            fs.kind(),
            fs.path().display(),
            s.rounds,
            if std::env::args().any(|a| a == "--bench") {
                ""
            } else {
                " (smoke run: figures mean nothing; use scripts/bench)"
            }
        );

        let mut results: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
        let mut gh_lines: BTreeMap<bool, Vec<String>> = BTreeMap::new();
        let mut unwatched_marks = None;
        let started = Instant::now();
        let mut env = Env {
            fs: &fs,
            l: &l,
            run: run.path(),
            seq: 0,
        };
        for round in 0..s.rounds {
            for &pinned in pinnings {
                pin(if pinned { &[0] } else { &all });
                for &cfg in &cfgs {
                    let first =
                        fresh_binaries(&l, &format!("r{round}-{pinned}-{cfg:?}"), s.first_exec);
                    let agent = start(cfg, &mut env, &first);
                    // A known binary: its first exec goes through the helper (Gatehouse) or
                    // the trust check; every later one is what the row measures.
                    fork_exec(&l.truebin);
                    let mut put = |row: usize, us: f64| {
                        results.entry((cfg, pinned, row)).or_default().push(us);
                    };
                    put(0, per_call(&l.distinct, |p| open_close(p)));
                    l.hot.iter().for_each(|p| open_close(p));
                    put(
                        1,
                        per_call((0..s.hot_passes).flat_map(|_| &l.hot), |p| open_close(p)),
                    );
                    put(2, per_call(0..s.unwatched, |_| open_close(&l.plain)));
                    put(3, per_call(0..s.exec, |_| fork_exec(&l.truebin)));
                    put(4, per_call(&first, |p| fork_exec(p)));
                    if cfg == Cfg::Gatehouse && unwatched_marks.is_none() {
                        unwatched_marks = agent.pid().map(|p| marks_on(p, &l.plain_dir, &l.plain));
                    }
                    let line = agent.stop();
                    if cfg == Cfg::Gatehouse {
                        gh_lines.entry(pinned).or_default().push(line);
                    }
                    for b in &first {
                        let _ = std::fs::remove_file(b);
                    }
                }
            }
            eprintln!(
                "open_exec: round {}/{} done after {:.0} s",
                round + 1,
                s.rounds,
                started.elapsed().as_secs_f64()
            );
        }
        pin(&all);

        // The flood: one Gatehouse, unpinned, two openers cycling through the distinct files
        // (each open decided on the delivery thread).
        let flood = (s.flood > 0).then(|| {
            let agent = start(Cfg::Gatehouse, &mut env, &[]);
            let pid = agent.pid().unwrap();
            let status = |k: &str| {
                std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_owned()))
                    .unwrap_or_default()
            };
            let (threads0, rss0) = (status("Threads:"), status("VmRSS:"));
            let t = Instant::now();
            std::thread::scope(|sc| {
                for k in 0..2 {
                    let files = &l.distinct;
                    let n = s.flood / 2;
                    sc.spawn(move || {
                        for i in 0..n {
                            open_close(&files[(i * 2 + k) % files.len()]);
                        }
                    });
                }
            });
            let secs = t.elapsed().as_secs_f64();
            let (threads1, hwm) = (status("Threads:"), status("VmHWM:"));
            let line = agent.stop();
            (threads0, rss0, threads1, hwm, secs, line)
        });

        // The table.
        let mut med: BTreeMap<Key, f64> = BTreeMap::new();
        for (k, v) in &mut results {
            med.insert(*k, median(v));
        }
        println!();
        println!(
            "Median of {} per-call means (µs); in brackets: x no agent. Sizes: {} distinct files, hot set {} x {} passes, {} unwatched opens, {} execs, {} first execs.",
            s.rounds, s.distinct, s.hot, s.hot_passes, s.unwatched, s.exec, s.first_exec
        );
        println!();
        let mut head = String::from("| operation | CPUs |");
        let mut rule = String::from("|---|---|");
        for c in &cfgs {
            head.push_str(&format!(" {} |", c.title()));
            rule.push_str("---|");
        }
        head.push_str(" Gatehouse / minimal |");
        rule.push_str("---|");
        if fap_skip.is_none() {
            head.push_str(" Gatehouse / fapolicyd allow-all |");
            rule.push_str("---|");
        }
        println!("{head}\n{rule}");
        for (row, name) in ROWS.iter().enumerate() {
            for &pinned in pinnings {
                let bare = med[&(Cfg::None, pinned, row)];
                let mut line = format!("| {name} | {} |", if pinned { "1 (pinned)" } else { "2" });
                for &c in &cfgs {
                    let v = med[&(c, pinned, row)];
                    if c == Cfg::None {
                        line.push_str(&format!(" {v:.1} |"));
                    } else {
                        line.push_str(&format!(" {v:.1} ({:.2}x) |", v / bare));
                    }
                }
                let ratio = |c: Cfg| match (
                    med.get(&(Cfg::Gatehouse, pinned, row)),
                    med.get(&(c, pinned, row)),
                ) {
                    (Some(g), Some(o)) => format!(" {:.2}x |", g / o),
                    _ => " - |".to_owned(),
                };
                line.push_str(&ratio(Cfg::Minimal));
                if fap_skip.is_none() {
                    line.push_str(&ratio(Cfg::FapAllow));
                }
                println!("{line}");
            }
        }
        println!();
        if let Some(why) = &fap_skip {
            println!("fapolicyd: skipped: {why}");
        }
        if let Some((n, on, sb)) = unwatched_marks {
            println!(
                "Gatehouse marks during the run: {n} inode marks, {} on the unwatched directory or file, filesystem-wide open-permission bits {sb:#x} (the exec mark is filesystem-wide; opens there raise no event)",
                if on { "SOME" } else { "none" }
            );
        }
        for (&pinned, lines) in &gh_lines {
            let stat = |k: &str| -> String {
                let mut v: Vec<f64> = lines
                    .iter()
                    .filter_map(|l| pick(l, k))
                    .map(|x| x as f64)
                    .collect();
                format!("{:.0}", median(&mut v))
            };
            println!(
                "Gatehouse stats ({}; median over runs): fast_path p50 {} µs p99 {} µs; event_to_answer p50 {} µs p99 {} µs; helper_round_trip p50 {} µs p99 {} µs (n = {}); open events {} exec events {} ignore marks added {}",
                if pinned { "pinned" } else { "unpinned" },
                stat("latency.fast_path.p50_us"),
                stat("latency.fast_path.p99_us"),
                stat("latency.event_to_answer.p50_us"),
                stat("latency.event_to_answer.p99_us"),
                stat("latency.helper_round_trip.p50_us"),
                stat("latency.helper_round_trip.p99_us"),
                stat("latency.helper_round_trip.count"),
                stat("fanotify.open_events"),
                stat("fanotify.exec_events"),
                stat("fanotify.ignore_marks_added"),
            );
        }
        if let Some((t0, rss0, t1, hwm, secs, line)) = flood {
            println!(
                "Flood: {} opens from 2 threads in {secs:.1} s ({:.0}/s); Gatehouse open events {}; extension threads {t0} before, {t1} after; RSS {rss0} before, peak (VmHWM) {hwm}; pending at stop {}",
                s.flood,
                s.flood as f64 / secs,
                pick(&line, "fanotify.open_events").map_or("?".into(), |v| v.to_string()),
                pick(&line, "pending").map_or("?".into(), |v| v.to_string()),
            );
        }
        println!(
            "Machine: {} x {}, {}, kernel {}; fapolicyd {}; total {:.0} s",
            sh("nproc"),
            sh("lscpu | sed -n 's/^Model name: *//p'"),
            sh("awk '/MemTotal/ {printf \"%.1f GiB RAM\", $2/1048576}' /proc/meminfo"),
            sh("uname -r"),
            if fap_skip.is_none() {
                sh("dpkg-query -W -f '${Version}' fapolicyd")
            } else {
                "-".into()
            },
            started.elapsed().as_secs_f64()
        );
    }
}
