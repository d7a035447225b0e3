//! CLI conventions through the real `gatehouse` binary, no root needed: every command and flag
//! has help text, every control command says "not running" with its own exit code (3) on
//! stderr when no extension listens, and an error never repeats its cause.

use tests::gatehouse;

/// Every command path the CLI has (kept in step with `cli/src/main.rs`: a new subcommand
/// missing here is caught by `every_listed_command_lists_its_subcommands`).
const COMMANDS: &[&[&str]] = &[
    &[],
    &["run"],
    &["demo"],
    &["status"],
    &["stats"],
    &["metrics"],
    &["fileinfo"],
    &["doctor"],
    &["policy"],
    &["policy", "check"],
    &["policy", "eval"],
    &["policy", "import-santa"],
    &["policy", "load"],
    &["policy", "show"],
    &["rule"],
    &["rule", "add"],
    &["rule", "remove"],
    &["rule", "list"],
    &["rule", "reload"],
    &["rule", "transitive"],
    &["rule", "transitive", "list"],
    &["rule", "transitive", "clear"],
    &["mute"],
    &["mute", "add"],
    &["mute", "rm"],
    &["mute", "list"],
    &["events"],
    &["events", "tail"],
    &["helper"],
    &["helper", "ping"],
    &["extension"],
    &["extension", "activate"],
    &["extension", "deactivate"],
    &["extension", "status"],
    &["completions"],
    &["man"],
];

/// The entries of `-h` output's Commands/Arguments/Options sections that have no text: an
/// entry is followed by its text on the same line (two spaces apart) or, in clap's long
/// layout, on the next line, indented further.
fn blank_entries(help: &str) -> Vec<String> {
    let mut in_section = false;
    let mut blank = Vec::new();
    let lines: Vec<&str> = help.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        // A line at column 0 is a section heading or text after the sections.
        if !line.starts_with(' ') {
            in_section = matches!(*line, "Commands:" | "Arguments:" | "Options:");
            continue;
        }
        if !in_section || line.trim().is_empty() || line.starts_with("          ") {
            continue;
        }
        let entry = line.trim_start();
        // The text: after two spaces on the same line, else the next, further-indented line.
        // Only "[default: ...]" or "[possible values: ...]" is no text.
        let text = match entry.split_once("  ") {
            Some((_, t)) => t.trim(),
            None => lines
                .get(i + 1)
                .filter(|next| next.starts_with("          "))
                .map_or("", |next| next.trim()),
        };
        if text.is_empty() || text.starts_with('[') {
            blank.push(entry.split("  ").next().unwrap_or(entry).to_owned());
        }
    }
    blank
}

#[test]
fn every_command_and_flag_has_help_text() {
    for path in COMMANDS {
        let mut args = path.to_vec();
        args.push("-h");
        let o = gatehouse(&args);
        assert!(o.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&o.stdout);
        let blank = blank_entries(&help);
        assert!(
            blank.is_empty(),
            "gatehouse {}: no help for {blank:?}\n{help}",
            path.join(" ")
        );
    }
}

#[test]
fn every_listed_command_lists_its_subcommands() {
    for path in COMMANDS {
        let mut args = path.to_vec();
        args.push("-h");
        let help = String::from_utf8_lossy(&gatehouse(&args).stdout).into_owned();
        let mut in_commands = false;
        for line in help.lines() {
            if !line.starts_with(' ') {
                in_commands = line == "Commands:";
                continue;
            }
            let Some(name) = line.split_whitespace().next().filter(|_| in_commands) else {
                continue;
            };
            if name == "help" {
                continue;
            }
            let mut sub = path.to_vec();
            sub.push(name);
            assert!(
                COMMANDS.contains(&sub.as_slice()),
                "`gatehouse {}` is not in COMMANDS",
                sub.join(" ")
            );
        }
    }
}

#[test]
fn the_exit_codes_are_documented() {
    let help = String::from_utf8_lossy(&gatehouse(&["--help"]).stdout).into_owned();
    assert!(help.contains("Exit codes:"), "{help}");
    assert!(help.contains("3 the extension is not running"), "{help}");
}

/// Scripts tell "not running" (3) from any other failure (1), the message is on stderr only,
/// and it says what to do.
#[test]
fn control_commands_say_not_running_with_exit_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("control.sock");
    // A socket file nobody listens on: connection refused.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    for socket in [&missing, &stale] {
        let s = socket.to_str().unwrap();
        let cases: [&[&str]; 7] = [
            &["status", "--control-socket", s],
            &["stats", "--json", "--control-socket", s],
            &["policy", "show", "--control-socket", s],
            &["mute", "list", "--control-socket", s],
            &["mute", "add", "/usr/bin/true", "--control-socket", s],
            // Following needs the extension (reading the file once does not: below).
            &["events", "tail", "--follow", "--control-socket", s],
            &["helper", "ping", "--control-socket", s],
        ];
        for args in cases {
            let o = gatehouse(args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(3), "{args:?}: {err}");
            assert!(
                o.stdout.is_empty(),
                "{args:?}: stdout must stay clean for pipes"
            );
            assert!(err.contains("not running"), "{args:?}: {err}");
            assert!(err.contains(s), "{args:?}: names the socket: {err}");
            assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
            // The cause appears once, not once per layer of context.
            let cause = if socket == &missing {
                "No such file"
            } else {
                "refused"
            };
            assert_eq!(err.matches(cause).count(), 1, "{args:?}: {err}");
        }
    }
}

/// With the extension down, `events tail` reads the events log file instead: the last `-n`
/// records, each on one line with an RFC 3339 time, the verdict, the kind, the target, the
/// acting process, the rule and its message; a note on stderr says where they came from.
#[test]
fn events_tail_reads_the_log_file_when_the_extension_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let record = |n: u32, target: &str| {
        format!(
            r#"{{"time":"2026-12-02T19:50:0{n}.123Z","time_ms":1,"kind":"exec","verdict":"deny","reason":"rule","rule":{{"name":"no-tmp"}},"would_deny":false,"audit_only":false,"latency_us":5,"late":false,"policy_version":1,"message":"Ask IT","event":{{"process":{{"pid":4{n},"uid":0,"executable":{{"path":"/bin/sh"}},"signing":{{"status":"unsigned"}}}},"kind":"exec","target":{{"pid":5,"uid":0,"executable":{{"path":"{target}"}},"signing":{{"status":"unsigned"}}}}}}}}"#
        )
    };
    let text = [
        record(1, "/tmp/a"),
        record(2, "/tmp/b"),
        record(3, "/tmp/c"),
    ]
    .join("\n")
        + "\n";
    std::fs::write(&log, text).unwrap();
    let sock = dir.path().join("control.sock");
    let o = gatehouse(&[
        "events",
        "tail",
        "-n",
        "2",
        "--control-socket",
        sock.to_str().unwrap(),
        "--log-file",
        log.to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        err.contains("not running") && err.contains("events.jsonl"),
        "{err}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "2026-12-02T19:50:02.123Z deny  exec   /tmp/b by pid 42 (/bin/sh): rule no-tmp: \"Ask IT\"",
            "2026-12-02T19:50:03.123Z deny  exec   /tmp/c by pid 43 (/bin/sh): rule no-tmp: \"Ask IT\"",
        ],
        "{out}"
    );
}
