//! The macOS backend's logic (`sys::macos::session`, `handler`, `control`) against the
//! Endpoint Security simulator, on every OS: start-up, reloads, muting, watched paths,
//! truncated paths, floods, shutdown, and the field report's deadlock as a test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use es_extension::backend::{Delivery, KernelControl};
use es_extension::core::{Core, CoreConfig, HelperEndpoint, HelperTransport};
use es_extension::sys::macos::api::AuditToken;
use es_extension::sys::macos::control::{EsControl, EsCounters};
use es_extension::sys::macos::handler::{Fallback, Handler, Sink};
use es_extension::sys::macos::message::{
    EsBody, EsDestination, EsFile, EsMount, EsNotifyBody, EsProcess,
};
use es_extension::sys::macos::responder::EsResponder;
use es_extension::sys::macos::session::{Session, SessionOptions};
use es_extension::sys::macos::sim::system::{
    Daemon, HelperMode, SimHelper, exec, on_disk, open_read, open_write, platform, platform_signed,
    unsigned,
};
use es_extension::sys::macos::sim::{EsSim, SimClient, SimConfig, SimConnect};
use model::{EventKind, Verdict};

const SELF_PID: u32 = 100;
const HELPER_PID: u32 = 150;
const HELPER_EXE: &str = "/Library/Application Support/Gatehouse/gatehouse-helper";

/// A monitor-mode policy; `slow` adds a SHA-256 rule, so unsigned execs (and platform execs,
/// which a hash rule could outrank) need the helper.
fn policy(fallback: &str, slow: bool, watch: &str) -> String {
    let sha = if slow { SHA_RULE } else { "" };
    format!(
        r#"version = 1
mode = "monitor"

[defaults]
fallback = "{fallback}"
helper_unavailable = "{fallback}"
deadline_ms = 2000
{sha}
{watch}
"#
    )
}

const SHA_RULE: &str = r#"
[[exec]]
name = "block-bad"
action = "block"
sha256 = "5f2b51ad4d3c5b5e2c3e0c6f1b8d0e9a7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a29"
"#;

const WATCH_SUDOERS: &str = r#"
[[watch]]
name = "sudoers"
paths = [{ path = "/etc/sudoers" }, { path = "/Users/a/.ssh/", prefix = true }]
allow_read_access = true
audit_only = true
operations = ["open"]
processes = [{ team_id = "platform" }]
"#;

type SimCore = Core<EsResponder<SimClient>>;

struct Machine {
    sim: EsSim,
    connect: Arc<SimConnect>,
    core: Arc<SimCore>,
    control: Arc<EsControl<SimClient>>,
    helper: Option<Arc<SimHelper>>,
}

fn machine(cfg: SimConfig, helper_mode: HelperMode) -> Machine {
    machine_with(cfg, helper_mode, |_| {})
}

fn machine_with(
    cfg: SimConfig,
    helper_mode: HelperMode,
    tweak: impl FnOnce(&mut CoreConfig),
) -> Machine {
    let sim = EsSim::new(cfg);
    let connect = Arc::new(SimConnect::new(&sim, AuditToken::for_pid(SELF_PID, 1)));
    let helper = SimHelper::new(&sim, HELPER_PID, helper_mode);
    let control = Arc::new(EsControl::<SimClient>::new(true));
    let transport: Arc<dyn HelperTransport> = Arc::clone(&helper) as Arc<dyn HelperTransport>;
    let config = CoreConfig {
        headroom_min: Duration::from_millis(200),
        headroom_max: Duration::from_millis(500),
        kernel_retry_backoff: Duration::from_millis(50),
        ..CoreConfig::endpoint_security()
    }
    .with_helper(HelperEndpoint::Custom(transport));
    let mut config = config;
    tweak(&mut config);
    let kernel: Arc<dyn KernelControl> = control.clone();
    let core = Arc::new(
        // Policies decided as the macOS build decides them (the simulator runs on Linux).
        Core::start(
            config,
            policy::Policy::embedded_default_for(policy::Os::Macos),
            kernel,
        )
        .expect("core starts"),
    );
    Machine {
        sim,
        connect,
        core,
        control,
        helper: Some(helper),
    }
}

fn start(m: &Machine, policy_text: Option<String>) -> Session<SimConnect> {
    Session::start(
        Arc::clone(&m.connect),
        Arc::clone(&m.core),
        Arc::clone(&m.control),
        SessionOptions {
            helper_executable: HELPER_EXE.to_owned(),
            policy: policy_text.map(|t| ("test.toml".to_owned(), Ok(t))),
            helper_poll: Some(Duration::from_millis(10)),
        },
    )
    .expect("session starts")
}

fn wait_until(what: &str, f: impl FnMut() -> bool) {
    wait_until_for(what, Duration::from_secs(10), f);
}

fn wait_until_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let give_up = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < give_up, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn counter(m: &Machine, name: &str) -> u64 {
    m.control
        .counters()
        .into_iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, v)| v)
}

#[test]
fn es_sim_startup_releases_early_boot_with_the_helper_missing() {
    let m = machine(
        SimConfig {
            early_boot: true,
            ..SimConfig::default()
        },
        HelperMode::Missing,
    );
    let sim = m.sim.clone();
    let held = std::thread::spawn(move || {
        let r = sim.raise(
            &platform(7, "/sbin/launchd"),
            exec(unsigned(300, "/opt/agent/bin/agent")),
        );
        (r.delivered(), r.wait())
    });
    // A platform exec is never held (and, with no client yet, nobody is asked).
    let r = m.sim.raise(
        &platform(7, "/sbin/launchd"),
        exec(platform(301, "/usr/bin/true")),
    );
    assert!(!r.delivered());
    wait_until("the early-boot hold", || m.sim.held() == 1);

    let mut session = start(&m, Some(policy("allow", true, "")));
    let (delivered, allowed) = held.join().unwrap();
    assert!(
        delivered,
        "the held exec reaches the client once it subscribes"
    );
    assert!(
        allowed,
        "monitor mode with the helper missing falls back to allow"
    );
    assert!(!m.core.helper_connected());
    session.stop().unwrap();
    m.sim.assert_no_violations();
}

#[test]
fn es_sim_policy_reload_resubscribes_and_clears_the_cache() {
    let m = machine(SimConfig::default(), HelperMode::Working);
    let mut session = start(&m, Some(policy("allow", false, "")));
    let clients = m.sim.clients();
    assert_eq!(
        clients.len(),
        3,
        "a process client, a file-access client and a recorder client"
    );
    assert_eq!(clients[0].subscriptions(), vec![EventKind::Exec]);
    assert!(
        clients[1].subscriptions().is_empty(),
        "no rule reads opens yet"
    );
    assert!(
        clients[2].subscriptions().is_empty() && clients[2].notify_subscriptions().is_empty(),
        "no compiler rule: the recorder takes nothing"
    );

    // A platform exec is allowed with the kernel cache: the repeat is never delivered.
    let ls = || exec(platform(400, "/bin/ls"));
    let first = m.sim.raise(&platform(401, "/bin/zsh"), ls());
    assert!(first.wait());
    let repeat = m.sim.raise(&platform(401, "/bin/zsh"), ls());
    assert_eq!(
        (repeat.delivered(), repeat.cached),
        (false, 1),
        "cached allow"
    );

    m.core
        .load_policy("reload.toml", &policy("allow", false, WATCH_SUDOERS))
        .unwrap();
    wait_until("the open subscription", || {
        clients[1].subscriptions() == vec![EventKind::Open]
    });
    wait_until("the kernel cache clear", || {
        let again = m.sim.raise(&platform(401, "/bin/zsh"), ls());
        again.wait();
        again.delivered()
    });
    session.stop().unwrap();
    m.sim.assert_no_violations();
}

/// ES refuses `es_clear_cache` for a while (another client, or our own last clear): the
/// retry must go on until the cache is cleared, however long the refusal lasts (issue 10
/// item 7), or kernel-cached allows outlive the policy that gave them.
#[test]
fn es_sim_cache_clear_retries_until_es_stops_throttling() {
    let m = machine_with(
        SimConfig {
            clear_cache_interval: Duration::from_secs(3),
            ..SimConfig::default()
        },
        HelperMode::Working,
        |c| {
            c.kernel_retry_backoff = Duration::from_millis(10);
            c.kernel_retry_attempts = 2;
        },
    );
    // The start-up load clears once; that starts ES's 3 s throttle.
    let mut session = start(&m, Some(policy("allow", false, "")));
    let ls = || exec(platform(400, "/bin/ls"));
    assert!(m.sim.raise(&platform(401, "/bin/zsh"), ls()).wait());
    assert_eq!(m.sim.raise(&platform(401, "/bin/zsh"), ls()).cached, 1);
    m.core
        .load_policy("reload.toml", &policy("allow", false, WATCH_SUDOERS))
        .unwrap();
    wait_until_for("the kernel cache clear", Duration::from_secs(20), || {
        let again = m.sim.raise(&platform(401, "/bin/zsh"), ls());
        again.wait();
        again.delivered()
    });
    assert!(counter(&m, "clear_cache_throttled") >= 2);
    session.stop().unwrap();
    m.sim.assert_no_violations();
}

#[test]
fn es_sim_mutes_ourselves_and_the_helper_by_audit_token() {
    // Issue 10 item 6: the helper's token is the one its connection carries (the transport's
    // kernel stamp); nothing in the session can look a token up by pid any more.
    let m = machine(SimConfig::default(), HelperMode::Working);
    let mut session = start(&m, Some(policy("allow", false, WATCH_SUDOERS)));
    let helper = m.helper.as_ref().unwrap().process.clone();
    wait_until("the helper's token muted", || {
        m.sim
            .clients()
            .iter()
            .all(|c| c.muted_tokens().contains(&helper.token))
    });
    let me = EsProcess {
        token: AuditToken::for_pid(SELF_PID, 1),
        ..unsigned(
            SELF_PID,
            "/Library/Application Support/Gatehouse/gatehouse-extension",
        )
    };
    // (actor, event, delivered?)
    let reused = EsProcess {
        token: AuditToken::for_pid(HELPER_PID, 2),
        ..unsigned(HELPER_PID, "/tmp/impostor")
    };
    let cases: [(&EsProcess, EsBody, bool); 5] = [
        (&me, open_read("/etc/sudoers"), false),
        (&me, exec(unsigned(500, "/usr/local/bin/x")), false),
        (&helper, open_read("/etc/sudoers"), false),
        (&helper, exec(platform(501, "/usr/bin/codesign")), false),
        // The helper's pid reused by another image: a different token, not muted.
        (&reused, open_read("/etc/sudoers"), true),
    ];
    for (actor, body, want) in cases {
        let got = m
            .sim
            .clients()
            .iter()
            .any(|c| c.would_deliver(&m.sim, actor, &body));
        assert_eq!(got, want, "{} {:?}", actor.executable.path, body.kind());
    }
    session.stop().unwrap();
    m.sim.assert_no_violations();
}

#[test]
fn es_sim_only_watched_opens_reach_the_file_client() {
    let m = machine(SimConfig::default(), HelperMode::Working);
    let mut session = start(&m, Some(policy("allow", false, WATCH_SUDOERS)));
    let files = &m.sim.clients()[1];
    assert!(files.target_muting_inverted());
    let vim = unsigned(600, "/usr/local/bin/vim");
    // (path, delivered?): `/etc` is reported as `/private/etc`.
    let cases = [
        ("/etc/sudoers", true),
        ("/private/etc/sudoers", true),
        ("/etc/sudoers.d/x", false),
        ("/Users/a/.ssh/id_ed25519", true),
        ("/Users/a/Documents/notes.txt", false),
        ("/tmp/scratch", false),
    ];
    for (path, want) in cases {
        assert_eq!(
            files.would_deliver(&m.sim, &vim, &open_write(path)),
            want,
            "{path}"
        );
        // Reached: delivered, or answered from the cache an earlier delivery filled.
        let r = m.sim.raise(&vim, open_write(path));
        assert_eq!(r.delivered() || r.cached > 0, want, "{path}");
        assert!(r.wait(), "{path}: monitor mode allows");
    }
    session.stop().unwrap();
    m.sim.assert_no_violations();
}

#[test]
fn es_sim_truncated_paths_get_the_policy_fallback() {
    let m = machine(SimConfig::default(), HelperMode::Working);
    let mut session = start(&m, Some(policy("deny", false, "")));
    let long = format!("/Applications/{}/x", "a".repeat(2000));
    let sh = platform(700, "/bin/sh");
    // (target, allowed?): a whole platform path is decided by the policy (allow); a truncated
    // one names some other file, so it gets the fallback (deny) and never reaches the core.
    let cases = [("/usr/bin/true".to_owned(), true), (long, false)];
    for (path, want) in cases {
        let r = m.sim.raise(&sh, exec(platform(701, &path)));
        assert!(r.delivered());
        assert_eq!(r.wait(), want, "{} bytes", path.len());
    }
    assert_eq!(counter(&m, "truncated_paths"), 1);
    session.stop().unwrap();
    m.sim.assert_no_violations();
}

#[test]
fn es_sim_flood_with_a_frozen_helper_is_answered_in_time() {
    let m = machine(SimConfig::default(), HelperMode::Frozen);
    let mut session = start(&m, Some(policy("allow", true, "")));
    wait_until("the helper connected", || m.core.helper_connected());
    let sh = platform(800, "/bin/sh");
    let raised: Vec<_> = (0..300)
        .map(|i| {
            m.sim
                .raise(&sh, exec(unsigned(1000 + i, &format!("/opt/t/bin/{i}"))))
        })
        .collect();
    for r in &raised {
        assert!(r.delivered());
        assert!(r.wait(), "fallback allow");
    }
    session.stop().unwrap();
    m.sim.assert_no_violations();
    assert_eq!(m.sim.duplicate_answers(), 0);
    assert!(m.sim.unanswered().is_empty());
}

#[test]
fn es_sim_shutdown_answers_every_pending_message() {
    let m = machine(SimConfig::default(), HelperMode::Frozen);
    let mut session = start(&m, Some(policy("deny", true, "")));
    wait_until("the helper connected", || m.core.helper_connected());
    let sh = platform(900, "/bin/sh");
    let raised: Vec<_> = (0..20)
        .map(|i| {
            m.sim
                .raise(&sh, exec(unsigned(2000 + i, &format!("/opt/p/{i}"))))
        })
        .collect();
    wait_until("every exec handed to the helper", || {
        m.helper.as_ref().unwrap().requests() >= 20
    });
    session.stop().unwrap();
    assert!(
        m.sim.unanswered().is_empty(),
        "shutdown answered everything"
    );
    for r in &raised {
        assert!(!r.wait(), "the shutdown fallback (deny)");
    }
    assert!(m.sim.clients().iter().all(|c| c.is_deleted()));
    m.sim.assert_no_violations();
    assert_eq!(m.sim.duplicate_answers(), 0);
}

#[test]
fn es_sim_gatehouse_answers_in_time_while_the_daemons_raise_events() {
    let m = machine(SimConfig::default(), HelperMode::Working);
    let mut session = start(&m, Some(policy("deny", true, WATCH_SUDOERS)));
    wait_until("the helper connected", || m.core.helper_connected());
    let sh = platform(1100, "/bin/sh");
    for i in 0..5 {
        let r = m
            .sim
            .raise(&sh, exec(unsigned(3000 + i, &format!("/opt/app/{i}"))));
        assert!(r.delivered());
        r.wait();
    }
    assert!(
        m.helper.as_ref().unwrap().requests() >= 1,
        "the slow path ran"
    );
    let daemon_execs = m
        .sim
        .records()
        .iter()
        .filter(|r| r.what.contains("/usr/libexec/syspolicyd"))
        .count();
    assert!(daemon_execs >= 1, "the daemons' events reached Gatehouse");
    assert!(m.sim.unanswered().is_empty());
    // slow-path-never-gates-itself: the daemons' on-demand launches (ocspd, amfid, xpcproxy:
    // platform binaries with enforced CDHashes) were decided on the fast path, so the helper
    // that waits on them never timed out and its breaker never opened, although every other
    // exec needs a hash.
    let stats = m.core.stats();
    let c = |name: &str| {
        stats
            .counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no counter {name}"))
    };
    assert!(c("trusted.hits.system") >= 1, "{:?}", stats.counters);
    assert_eq!(c("helper_timeouts"), 0, "{:?}", stats.counters);
    assert_eq!(c("helper_breaker_opens"), 0, "{:?}", stats.counters);
    session.stop().unwrap();
    m.sim.assert_no_violations();
}

/// The field report as a test: a client that runs the analysis on its delivery queue waits on
/// the helper, which waits on a daemon, whose exec waits behind that very queue. ES kills it.
#[test]
fn es_sim_naive_client_with_analysis_on_the_delivery_queue_is_killed() {
    let sim = EsSim::new(SimConfig {
        deadline: Duration::from_millis(500),
        ..SimConfig::default()
    });
    let helper = SimHelper::new(&sim, HELPER_PID, HelperMode::Working);
    let naive_helper = Arc::clone(&helper);
    let sink: Sink<SimClient> = Arc::new(move |d: Delivery<EsResponder<SimClient>>| {
        use es_extension::backend::Responder;
        let req = protocol::HelperRequest::Analyze {
            request: model::AnalysisRequest {
                needs: model::Needs::default(),
                file: Some(model::FileRef {
                    path: d.event.process.executable.path.clone(),
                    identity: None,
                }),
                mount: None,
                binding: None,
            },
            fd_attached: false,
        };
        // The bug: a blocking call into the slow path on the delivery queue.
        let _ = naive_helper.analyze(&req);
        let _ = d.responder.respond(es_extension::backend::Answer {
            verdict: Verdict::Allow,
            cache: false,
        });
    });
    let fallback: Fallback = Arc::new(|_| Verdict::Allow);
    let handler = Arc::new(Handler::new(
        sink,
        fallback,
        Arc::new(EsCounters::default()),
    ));
    let client = sim.new_client(Arc::clone(&handler)).unwrap();
    handler.attach(Arc::clone(&client));
    use es_extension::sys::macos::api::EsApi;
    client.subscribe(&[EventKind::Exec]).unwrap();
    let r = sim.raise(
        &platform(1200, "/bin/sh"),
        exec(unsigned(1201, "/opt/naive/x")),
    );
    r.wait();
    wait_until("the kill", || client.is_killed());
    let v = sim.violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].contains("/opt/naive/x") || v[0].contains(&Daemon::trustd().tool.executable.path),
        "{v:?}"
    );
    client.delete().unwrap();
}

#[test]
fn es_sim_file_with_short_path_is_whole() {
    // The simulator's own truncation rule: the boundary case stays whole.
    let m = machine(
        SimConfig {
            max_path: 16,
            ..SimConfig::default()
        },
        HelperMode::Working,
    );
    let mut session = start(&m, Some(policy("deny", false, "")));
    let sh = platform(1300, "/bin/sh");
    let exact = "/usr/bin/true123"; // 16 bytes
    assert_eq!(exact.len(), 16);
    assert!(m.sim.raise(&sh, exec(platform(1301, exact))).wait());
    assert!(
        !m.sim
            .raise(&sh, exec(platform(1302, "/usr/bin/true1234")))
            .wait()
    );
    session.stop().unwrap();
    m.sim.assert_no_violations();
}

/// A reload that changes the watched paths selects the new ones and drops the stale ones on the
/// file-access client (which stays inverted: ES would refuse to re-invert a subscribed client).
#[test]
fn es_sim_reload_moves_the_watched_paths() {
    let m = machine(SimConfig::default(), HelperMode::Working);
    let mut session = start(&m, Some(policy("allow", false, WATCH_SUDOERS)));
    let files = Arc::clone(&m.sim.clients()[1]);
    let vim = unsigned(1400, "/usr/local/bin/vim");
    let reaches = |path: &str| files.would_deliver(&m.sim, &vim, &open_write(path));
    assert!(reaches("/etc/sudoers") && !reaches("/etc/hosts"));
    let hosts = WATCH_SUDOERS.replace(
        r#"{ path = "/etc/sudoers" }, { path = "/Users/a/.ssh/", prefix = true }"#,
        r#"{ path = "/etc/hosts" }"#,
    );
    m.core
        .load_policy("hosts.toml", &policy("allow", false, &hosts))
        .unwrap();
    wait_until("the new selection", || reaches("/etc/hosts"));
    wait_until("the stale selection dropped", || !reaches("/etc/sudoers"));
    assert!(!reaches("/Users/a/.ssh/id_ed25519"));
    assert!(files.target_muting_inverted());
    assert_eq!(counter(&m, "watch_errors"), 0);
    session.stop().unwrap();
    m.sim.assert_no_violations();
}

/// The helper's own launch never waits for the helper (slow-path-never-gates-itself): launchd
/// starts it through xpcproxy, an exec by a process that is not muted, and with a SHA-256 rule
/// and the helper missing every other exec gets the deny fallback. The helper's image is
/// allowed by signing id and team id with an enforced CDHash; the same binary signed by another
/// team, or with a CDHash the kernel does not enforce, is not.
#[test]
fn es_sim_helper_launch_through_xpcproxy_never_waits_for_the_helper() {
    const TEAM: &str = "ABCDE12345";
    let m = machine_with(SimConfig::default(), HelperMode::Missing, |c| {
        c.trusted = Arc::new(
            es_extension::core::trusted::TrustedSet::macos(Some(TEAM)).expect("macOS set"),
        );
    });
    let enforce = format!(
        r#"version = 1
mode = "enforce"

[defaults]
fallback = "deny"
helper_unavailable = "deny"
deadline_ms = 2000
{SHA_RULE}"#
    );
    let mut session = start(&m, Some(enforce));
    let xpcproxy = platform_signed(1, "/usr/libexec/xpcproxy", "com.apple.xpc.proxy");
    // Each case at its own path: the simulator's result cache keys on paths (ES keys on files,
    // and a replaced binary is another file).
    let helper_image = |team: &str, flags: u32, path: &str| EsProcess {
        token: AuditToken::for_pid(HELPER_PID + 1, 1),
        ppid: 1,
        executable: es_extension::sys::macos::message::EsFile::new(path),
        codesigning_flags: flags,
        is_platform_binary: false,
        team_id: team.to_owned(),
        signing_id: defaults::macos::HELPER_SIGNING_ID.to_owned(),
        cdhash: [0x5a; 20],
    };
    use es_extension::sys::macos::convert::more_cs_flags;
    use model::cs_flags;
    let enforced =
        cs_flags::CS_VALID | cs_flags::CS_HARD | cs_flags::CS_KILL | more_cs_flags::CS_SIGNED;
    let unenforced = cs_flags::CS_VALID | more_cs_flags::CS_SIGNED;
    // (image, allowed)
    let cases = [
        (
            "our team, enforced CDHash",
            helper_image(TEAM, enforced, HELPER_EXE),
            true,
        ),
        (
            "another team",
            helper_image("ZZZZZ99999", enforced, "/tmp/a/gatehouse-helper"),
            false,
        ),
        (
            "CDHash not enforced",
            helper_image(TEAM, unenforced, "/tmp/b/gatehouse-helper"),
            false,
        ),
        (
            "an unrelated binary",
            unsigned(400, "/opt/other/bin/tool"),
            false,
        ),
    ];
    for (what, image, allowed) in cases {
        let r = m.sim.raise(&xpcproxy, exec(image));
        assert!(r.delivered(), "{what}");
        assert_eq!(r.wait(), allowed, "{what}");
    }
    let stats = m.core.stats();
    let hits = stats
        .counters
        .iter()
        .find(|(n, _)| n == "trusted.hits.helper")
        .map(|(_, v)| *v);
    assert_eq!(hits, Some(1), "{:?}", stats.counters);
    session.stop().unwrap();
    m.sim.assert_no_violations();
}

/// Issue 10 item 7: a `remount` rule denies the mount and the helper performs it again with the
/// rule's flags added (Santa's device manager: deny, then `DADiskMountWithArguments`). The
/// mount that remount starts carries the flags, so the same rule allows it: no loop, and the
/// helper never waits for it. A remount of the mounted volume is denied and forced the same way.
#[test]
fn es_sim_remount_rule_denies_then_the_helper_remounts_with_the_rules_flags() {
    let m = machine(SimConfig::default(), HelperMode::Working);
    let rules = r#"
[[mount]]
name = "usb-read-only"
action = "remount"
disposition = ["external"]
remount_flags = { read_only = true, noexec = true }
"#;
    let mut session = start(&m, Some(policy("deny", false, rules)));
    wait_until("the helper connected", || m.core.helper_connected());
    let helper = m.helper.as_ref().unwrap();
    let usb = |f_flags: u32| EsMount {
        mntfromname: "/dev/disk4s1".into(),
        mntonname: "/Volumes/USB".into(),
        fstypename: "msdos".into(),
        f_flags,
        // External (message version 8).
        disposition: Some(0),
    };
    let mounter = platform(1300, "/usr/libexec/diskarbitrationd");
    const MNT_RDONLY: u32 = 0x1;
    const MNT_NOEXEC: u32 = 0x4;
    const MNT_NOSUID: u32 = 0x8;
    // A read-write mount that keeps nosuid: denied, then remounted with both kept and added.
    let first = m.sim.raise(&mounter, EsBody::Mount(usb(MNT_NOSUID)));
    assert!(!first.wait(), "a mount without the rule's flags is denied");
    wait_until("the helper was asked to remount", || {
        !helper.remounts().is_empty()
    });
    // A remount to read-write of the (now read-only) volume: denied and forced again.
    let second = m
        .sim
        .raise(&mounter, EsBody::Remount(usb(MNT_RDONLY | MNT_NOEXEC)));
    assert!(
        !second.wait(),
        "a remount is always denied by a remount rule"
    );
    wait_until("both remounts asked", || helper.remounts().len() == 2);
    let remounts = helper.remounts();
    let forced = model::MountFlags {
        read_only: true,
        noexec: true,
        ..model::MountFlags::default()
    };
    for (mount, flags, allowed) in &remounts {
        assert_eq!(mount.mount_point, "/Volumes/USB");
        assert_eq!(*flags, forced, "the rule's flags");
        assert!(
            allowed,
            "the mount the helper started has the flags, so the rule allows it"
        );
    }
    assert_eq!(
        remounts[0].0.os_flags, MNT_NOSUID,
        "the volume's own flags travel along"
    );
    wait_until("both counted as started", || {
        let stats = m.core.stats();
        let c = |name: &str| {
            stats
                .counters
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, v)| *v)
        };
        c("remounts_requested") == 2 && c("remounts_started") == 2
    });
    let stats = m.core.stats();
    for name in ["remounts_failed", "remounts_dropped", "helper_timeouts"] {
        let v = stats
            .counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v);
        assert_eq!(v, Some(0), "{name}: {:?}", stats.counters);
    }
    session.stop().unwrap();
    m.sim.assert_no_violations();
}

/// Issue 13: clones, copies and exchanges of watched files reach the files client (AUTH_CLONE,
/// AUTH_COPYFILE, AUTH_EXCHANGEDATA, selected by target path like opens) and are decided per
/// target as Santa's file-access authorizer does: a clone or copy only reads its source, so an
/// item with `allow_read_access` lets it out, but nothing may be cloned, copied or swapped in.
#[test]
fn es_sim_clone_copyfile_and_exchangedata_of_watched_files() {
    let m = machine(SimConfig::default(), HelperMode::Working);
    let watch = r#"
[[watch]]
name = "secrets"
paths = [{ path = "/Users/a/secret/", prefix = true }]
allow_read_access = true
audit_only = false
processes = [{ team_id = "platform" }]
"#;
    let text = policy("allow", false, watch).replace("mode = \"monitor\"", "mode = \"enforce\"");
    let mut session = start(&m, Some(text));
    let files = &m.sim.clients()[1];
    for kind in [
        EventKind::Clone,
        EventKind::Copyfile,
        EventKind::Exchangedata,
    ] {
        assert!(files.subscriptions().contains(&kind), "{kind:?}");
    }
    let f = EsFile::new;
    let new = |dir: &str, name: &str| EsDestination::New {
        directory: f(dir),
        filename: name.to_owned(),
    };
    let clone = |src: &str, dir: &str, name: &str| EsBody::Clone {
        source: f(src),
        target_dir: f(dir),
        target_name: name.to_owned(),
    };
    let vim = unsigned(700, "/usr/local/bin/vim");
    // (what, event, delivered?, allowed?)
    let cases: Vec<(&str, EsBody, bool, bool)> = vec![
        (
            "clone out",
            clone("/Users/a/secret/key", "/tmp", "k"),
            true,
            true,
        ),
        (
            "clone in",
            clone("/tmp/k", "/Users/a/secret", "k2"),
            true,
            false,
        ),
        (
            "copy out",
            EsBody::Copyfile {
                source: f("/Users/a/secret/key"),
                destination: new("/tmp", "k"),
            },
            true,
            true,
        ),
        (
            "copy onto a watched file",
            EsBody::Copyfile {
                source: f("/tmp/k"),
                destination: EsDestination::Existing(f("/Users/a/secret/key")),
            },
            true,
            false,
        ),
        (
            "exchange with a watched file",
            EsBody::Exchangedata {
                file1: f("/tmp/k"),
                file2: f("/Users/a/secret/key"),
            },
            true,
            false,
        ),
        (
            "nothing watched",
            EsBody::Exchangedata {
                file1: f("/tmp/a"),
                file2: f("/tmp/b"),
            },
            false,
            true,
        ),
    ];
    for (what, body, delivered, allowed) in cases {
        let r = m.sim.raise(&vim, body);
        assert_eq!(r.delivered(), delivered, "{what}");
        assert_eq!(r.wait(), allowed, "{what}");
    }
    session.stop().unwrap();
    m.sim.assert_no_violations();
}

/// Issue 13, Santa's `OnStartUSBOptions`: volumes mounted before the extension ran are decided
/// as if mounted now, once the helper is up. With `mounted_at_start = "remount"`, a volume a
/// `remount` rule denies is unmounted and mounted again with the rule's flags (that mount is
/// allowed: it has them); one a `block` rule denies is only unmounted; one the rules allow is
/// kept. Start-up itself never waited: the session was up before the pass ran.
#[test]
fn es_sim_volumes_mounted_before_start_are_unmounted_or_remounted() {
    let volume = |point: &str, fs: &str, disposition| model::MountInfo {
        source: format!("/dev/disk{}s1", point.len()),
        mount_point: point.into(),
        fs_type: fs.into(),
        flags: model::MountFlags::default(),
        disposition,
        os_flags: 0,
    };
    let mounted = vec![
        volume("/Volumes/USB", "msdos", model::MountDisposition::External),
        volume(
            "/Volumes/CAMERA",
            "exfat",
            model::MountDisposition::External,
        ),
        volume("/", "apfs", model::MountDisposition::Internal),
    ];
    let source = es_extension::core::startup_mounts::MountSource(Arc::new(move || mounted.clone()));
    let m = machine_with(SimConfig::default(), HelperMode::Working, |c| {
        c.mounted_volumes = Some(source);
    });
    let rules = r#"
[[mount]]
name = "no-exfat"
action = "block"
disposition = ["external"]
fs_type = ["exfat"]

[[mount]]
name = "usb-read-only"
action = "remount"
disposition = ["external"]
remount_flags = { read_only = true, noexec = true }
"#;
    let text = policy("deny", false, rules).replace(
        "deadline_ms = 2000\n",
        "deadline_ms = 2000\nmounted_at_start = \"remount\"\n",
    );
    let mut session = start(&m, Some(text));
    let helper = m.helper.as_ref().unwrap();
    wait_until("both denied volumes unmounted", || {
        helper.unmounts().len() == 2
    });
    let unmounted: Vec<String> = helper
        .unmounts()
        .iter()
        .map(|(v, force)| {
            assert!(!force, "`remount` does not force");
            v.mount_point.clone()
        })
        .collect();
    assert!(
        unmounted.contains(&"/Volumes/USB".to_owned()),
        "{unmounted:?}"
    );
    assert!(
        unmounted.contains(&"/Volumes/CAMERA".to_owned()),
        "{unmounted:?}"
    );
    let remounts = helper.remounts();
    assert_eq!(
        remounts.len(),
        1,
        "only the remount rule's volume comes back"
    );
    let (v, flags, allowed) = &remounts[0];
    assert_eq!(v.mount_point, "/Volumes/USB");
    assert!(flags.read_only && flags.noexec, "{flags:?}");
    assert!(
        allowed,
        "the mount again has the rule's flags, so it is allowed"
    );
    // The pass counts each volume as it finishes it: the kept one may be counted after the
    // two unmounts were asked for.
    wait_until("every volume checked", || {
        core_counter(&m, "startup_mounts_checked") == 3
    });
    let stats = m.core.stats();
    let c = |name: &str| {
        stats
            .counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    };
    assert_eq!(c("startup_mounts_checked"), Some(3), "{:?}", stats.counters);
    assert_eq!(c("startup_unmounts_started"), Some(2));
    assert_eq!(c("startup_unmounts_failed"), Some(0));
    session.stop().unwrap();
    m.sim.assert_no_violations();
}

fn core_counter(m: &Machine, name: &str) -> u64 {
    m.core
        .stats()
        .counters
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no counter {name}"))
        .1
}

/// A minimal little-endian 64-bit Mach-O `MH_EXECUTE` header followed by `body`: what Santa's
/// `isExecutable` accepts, so a compiler's output the recorder keeps.
fn mach_o(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for word in [0xfeed_facfu32, 0x0100_000c, 0, 2] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v.resize(32, 0);
    v.extend_from_slice(body);
    v
}

fn sha256_hex(bytes: &[u8]) -> [u8; 32] {
    <sha2::Sha256 as sha2::Digest>::digest(bytes).into()
}

/// Pins as the simulated kernel would: alive until its NOTIFY_EXIT (the simulator has no real
/// processes for `kill(pid, 0)` to find).
#[derive(Debug)]
struct SimPin;

impl es_extension::core::transitive::ProcessPin for SimPin {
    fn exited(&self) -> bool {
        false
    }
}

/// Issue 13: transitive allowlisting recorded on macOS (Santa's `SNTCompilerController`
/// `handleEvent:`, fed by `SNTEndpointSecurityRecorder`, which drops unmodified closes). A
/// process exec'd under a compiler rule is a compiler; its NOTIFY_CLOSE of a modified file, on
/// a client of its own, makes that file a transitive allow once the recorder has re-opened the
/// path and proved it is the file the kernel reported. Unmodified closes, other processes,
/// another image of the compiler's pid, a file replaced since the close and files that are no
/// executable are not recorded; a rename is recorded at its destination; NOTIFY_EXIT ends the
/// tracking. The output then runs (enforce mode) only through the transitive allow.
#[test]
fn es_sim_a_compilers_closed_files_become_transitive_allows() {
    let m = machine_with(SimConfig::default(), HelperMode::Working, |c| {
        c.transitive_backend = Some(es_extension::core::transitive::TransitiveBackend {
            pin: Arc::new(|_pid, _incarnation| {
                Some(Box::new(SimPin) as Box<dyn es_extension::core::transitive::ProcessPin>)
            }),
            path_of: Arc::new(|_f: &std::fs::File| String::new()),
        });
    });
    let enforce = |transitive: bool| {
        format!(
            r#"version = 1
mode = "enforce"

[defaults]
fallback = "deny"
helper_unavailable = "deny"
deadline_ms = 2000
package_trust = false
transitive_rules = {transitive}

[[exec]]
name = "ld"
action = "allow"
compiler = true
signing_id = "platform:com.apple.ld"
"#
        )
    };
    let mut session = start(&m, Some(enforce(true)));
    let recorder = m
        .sim
        .clients()
        .into_iter()
        .find(|c| !c.notify_subscriptions().is_empty())
        .expect("a client takes NOTIFY events while transitive rules are on");
    assert!(
        recorder.subscriptions().is_empty(),
        "the recorder takes no AUTH event: closes never queue ahead of an exec"
    );

    // Outside /tmp, /var and /etc, which ES (and the simulator) report as /private/...
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = |name: &str| dir.path().join(name);
    let shell = unsigned(600, "/bin/zsh");
    let ld = EsProcess {
        token: AuditToken::for_pid(600, 2),
        ..platform_signed(600, "/usr/bin/ld", "com.apple.ld")
    };
    assert!(
        m.sim.raise(&shell, exec(ld.clone())).wait(),
        "the compiler rule allows ld"
    );
    wait_until("ld tracked", || {
        core_counter(&m, "transitive_compilers_tracked") == 1
    });

    let close = |who: &EsProcess, name: &str, bytes: &[u8], modified: bool| {
        std::fs::write(path(name), bytes).unwrap();
        let delivered = m.sim.notify(
            who,
            EsNotifyBody::Close {
                modified,
                target: on_disk(&path(name)),
            },
        );
        assert_eq!(delivered, 1, "{name}: only the recorder takes closes");
    };
    let out = mach_o(b"linked by ld");
    close(&ld, "out", &out, true);
    // (who, file, contents, modified)
    let other = unsigned(700, "/usr/local/bin/writer");
    let pre_exec = EsProcess {
        token: AuditToken::for_pid(600, 1),
        ..ld.clone()
    };
    let unmodified = mach_o(b"read, not written");
    let by_other = mach_o(b"written by another process");
    let by_old_image = mach_o(b"written by the image before the exec");
    let data = b"an intermediate file, not an executable".to_vec();
    close(&ld, "unmodified", &unmodified, false);
    close(&other, "by-other", &by_other, true);
    close(&pre_exec, "by-old-image", &by_old_image, true);
    close(&ld, "data", &data, true);
    // Reported, then replaced at its path before the recorder re-opens it.
    let reported = {
        std::fs::write(path("replaced"), mach_o(b"what ld wrote")).unwrap();
        on_disk(&path("replaced"))
    };
    std::fs::remove_file(path("replaced")).unwrap();
    let planted = mach_o(b"planted in its place");
    std::fs::write(path("replaced"), &planted).unwrap();
    m.sim.notify(
        &ld,
        EsNotifyBody::Close {
            modified: true,
            target: reported,
        },
    );
    // Written under a temporary name, then renamed (the source path is gone: the file is found
    // at the destination, proved by its identity).
    let renamed = mach_o(b"renamed into place");
    std::fs::write(path("a.tmp"), &renamed).unwrap();
    let source = on_disk(&path("a.tmp"));
    std::fs::rename(path("a.tmp"), path("a.out")).unwrap();
    m.sim.notify(
        &ld,
        EsNotifyBody::Rename {
            source,
            destination: EsDestination::New {
                directory: on_disk(dir.path()),
                filename: "a.out".to_owned(),
            },
        },
    );

    let store = m.core.transitive_store();
    wait_until("every file handled", || {
        store.len() == 2
            && core_counter(&m, "transitive_not_executable") == 1
            && core_counter(&m, "transitive_file_changed") == 1
            && core_counter(&m, "transitive_stale_writers") == 1
    });
    let cases: [(&str, &[u8], bool); 7] = [
        ("out", &out, true),
        ("a.out (renamed)", &renamed, true),
        ("unmodified", &unmodified, false),
        ("by-other", &by_other, false),
        ("by-old-image", &by_old_image, false),
        ("data", &data, false),
        ("planted", &planted, false),
    ];
    for (what, bytes, want) in cases {
        assert_eq!(store.contains(&sha256_hex(bytes)), want, "{what}");
    }
    let listed: Vec<String> = store.list().into_iter().map(|e| e.path).collect();
    assert!(
        listed.contains(&path("out").to_string_lossy().into_owned())
            && listed.contains(&path("a.out").to_string_lossy().into_owned()),
        "{listed:?}"
    );

    // Enforce mode: the output runs only because of its transitive allow; the planted file
    // does not. Each image with its own identity, as the kernel reports it (the verdict cache
    // keys on it).
    let runs = |name: &str, pid: u32| {
        let image = EsProcess {
            executable: on_disk(&path(name)),
            ..unsigned(pid, &path(name).to_string_lossy())
        };
        m.sim.raise(&shell, exec(image)).wait()
    };
    assert!(runs("out", 801), "the compiler's output runs");
    assert!(runs("a.out", 802), "the renamed output runs");
    assert!(!runs("replaced", 803), "the planted file does not");

    // NOTIFY_EXIT (queued behind ld's closes) ends the tracking: a later close by that pid is
    // not recorded.
    m.sim.notify(&ld, EsNotifyBody::Exit);
    wait_until("ld no longer tracked", || {
        core_counter(&m, "transitive_compilers_pruned") == 1
    });
    let late = mach_o(b"closed after the exit");
    close(&ld, "late", &late, true);
    std::thread::sleep(Duration::from_millis(50));
    assert!(!store.contains(&sha256_hex(&late)));

    // A policy without transitive rules takes no NOTIFY event at all.
    m.core
        .load_policy("test.toml", &enforce(false))
        .expect("reload");
    wait_until("NOTIFY events unsubscribed", || {
        recorder.notify_subscriptions().is_empty()
    });
    session.stop().unwrap();
    m.sim.assert_no_violations();
}
