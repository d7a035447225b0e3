//! Golden byte fixtures: pin the wire encoding of every message kind for each protocol version.
//!
//! A failing case here means the encoding changed. If that was intended, bump
//! `PROTOCOL_VERSION`, add `tests/golden/v<N>/`, and regenerate with
//! `GATEHOUSE_UPDATE_GOLDEN=1 cargo test -p protocol --test golden`. Never regenerate an old
//! version's directory: deployed peers speak it.

use std::path::PathBuf;

use model::{
    AccessFlags, AnalysisRequest, CodeSigning, Event, EventBody, Facts, FileIdentity, FileKind,
    FileRef, MountDisposition, MountFlags, MountInfo, MuteScope, MuteSpec, Needs, PackageTrust,
    Process, Sha256, SigningBinding, SigningStatus, VolumeBus, VolumeInfo,
};
use protocol::frame::encode_frame;
use protocol::*;

fn process() -> Process {
    Process {
        pid: 4242,
        pid_version: Some(7),
        ppid: Some(1),
        uid: 501,
        gid: 20,
        executable: FileRef {
            path: "/usr/bin/curl".into(),
            identity: Some(FileIdentity {
                dev: 16777230,
                ino: 1152921500312524000,
                size: 1_234_567,
                mtime_ns: 1_700_000_000_123_456_789,
                ctime_ns: -1,
            }),
        },
        signing: CodeSigning {
            status: SigningStatus::Production,
            team_id: Some("EQHXZ8M8AV".into()),
            signing_id: Some("com.apple.curl".into()),
            cdhash: Some(model::CdHash([0xab; 20])),
            flags: 0x2000_0301,
            is_platform_binary: true,
        },
        audit_token: Some(model::AuditToken([501, 501, 20, 501, 20, 4242, 100_004, 7])),
    }
}

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let max = CONTROL_MAX_FRAME;
    let frame = |v: &dyn erased::Enc| v.enc(max);
    let mount = MountInfo {
        source: "/dev/disk4s1".into(),
        mount_point: "/Volumes/USB".into(),
        fs_type: "msdos".into(),
        flags: MountFlags {
            read_only: false,
            noexec: true,
            nosuid: true,
            nodev: false,
        },
        disposition: MountDisposition::External,
        os_flags: 0x0010_1004,
    };
    let exec = Event {
        process: process(),
        body: EventBody::Exec {
            target: Box::new(process()),
        },
    };
    let open = Event {
        process: process(),
        body: EventBody::Open {
            file: FileRef::new("/etc/gatehouse/policy.toml"),
            access: Some(AccessFlags {
                read: true,
                write: true,
                append: false,
                truncate: true,
            }),
        },
    };
    vec![
        (
            "hello",
            frame(&Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                role: Role::Extension,
                agent: "gatehouse-extension 0.1.0".into(),
            }),
        ),
        (
            "hello_reply_accepted",
            frame(&HelloReply::Accepted {
                version: 1,
                agent: "h".into(),
            }),
        ),
        (
            "hello_reply_rejected",
            frame(&HelloReply::Rejected {
                reason: "version".into(),
                supported: 1,
            }),
        ),
        (
            "helper_ping",
            frame(&Request {
                id: 1,
                budget_us: 500_000,
                body: HelperRequest::Ping,
            }),
        ),
        (
            "helper_analyze_file",
            frame(&Request {
                id: u64::MAX,
                budget_us: 2_000_000,
                body: HelperRequest::Analyze {
                    request: AnalysisRequest {
                        needs: Needs {
                            sha256: true,
                            certificate: false,
                            package: true,
                            volume: false,
                            file_kind: true,
                        },
                        file: Some(process().executable),
                        mount: None,
                        binding: Some(SigningBinding::CdHash(model::CdHash([0xab; 20]))),
                    },
                    fd_attached: true,
                },
            }),
        ),
        (
            "helper_analyze_mount",
            frame(&Request {
                id: 3,
                budget_us: 1,
                body: HelperRequest::Analyze {
                    request: AnalysisRequest {
                        needs: Needs {
                            volume: true,
                            ..Needs::default()
                        },
                        file: None,
                        mount: Some(mount.clone()),
                        binding: None,
                    },
                    fd_attached: false,
                },
            }),
        ),
        (
            "helper_analysis",
            frame(&Response {
                id: 2,
                body: HelperResponse::Analysis {
                    facts: Facts {
                        sha256: Some(Sha256([0x5a; 32])),
                        certificate: None,
                        package: Some(PackageTrust {
                            package: Some("coreutils".into()),
                            trusted: true,
                        }),
                        volume: Some(VolumeInfo {
                            removable: true,
                            bus: VolumeBus::Usb,
                            encrypted: false,
                            uuid: Some("0A1B-2C3D".into()),
                            fs_type: Some("vfat".into()),
                        }),
                        file_kind: Some(FileKind::Script),
                    },
                    errors: vec![(HelperErrorKind::Unsupported, "code signing on Linux".into())],
                },
            }),
        ),
        (
            "helper_analyze_running_certificate",
            frame(&Request {
                id: 5,
                budget_us: 900_000,
                body: HelperRequest::Analyze {
                    request: AnalysisRequest {
                        needs: Needs {
                            certificate: true,
                            ..Needs::default()
                        },
                        file: Some(FileRef::new(
                            "/Applications/Editor.app/Contents/MacOS/Editor",
                        )),
                        mount: None,
                        binding: process().audit_token.map(SigningBinding::AuditToken),
                    },
                    fd_attached: false,
                },
            }),
        ),
        (
            "helper_remount",
            frame(&Request {
                id: 6,
                budget_us: 5_000_000,
                body: HelperRequest::Remount {
                    mount: mount.clone(),
                    forced: MountFlags {
                        read_only: true,
                        noexec: true,
                        nosuid: false,
                        nodev: false,
                    },
                },
            }),
        ),
        (
            "helper_remount_started",
            frame(&Response {
                id: 6,
                body: HelperResponse::RemountStarted {
                    arguments: vec!["rdonly".into(), "noexec".into(), "nosuid".into()],
                },
            }),
        ),
        (
            "helper_unmount",
            frame(&Request {
                id: 7,
                budget_us: 5_000_000,
                body: HelperRequest::Unmount {
                    mount: mount.clone(),
                    force: true,
                    remount: Some(MountFlags {
                        read_only: true,
                        noexec: false,
                        nosuid: false,
                        nodev: true,
                    }),
                },
            }),
        ),
        (
            "helper_unmount_started",
            frame(&Response {
                id: 7,
                body: HelperResponse::UnmountStarted {
                    then_mount_with: Some(vec!["rdonly".into(), "nodev".into()]),
                },
            }),
        ),
        (
            "control_events_since",
            frame(&Request {
                id: 11,
                budget_us: 10_000_000,
                body: ControlRequest::EventsSince {
                    after: 41,
                    max: 10_000,
                },
            }),
        ),
        (
            "control_events_since_answer",
            frame(&Response {
                id: 11,
                body: ControlResponse::EventsSince {
                    lines: vec![serde_json::to_string(&open).unwrap()],
                    skipped: 3,
                    last: 45,
                },
            }),
        ),
        (
            "control_status_detail",
            frame(&Request {
                id: 12,
                budget_us: 10_000_000,
                body: ControlRequest::StatusDetail,
            }),
        ),
        (
            "control_status_detail_answer",
            frame(&Response {
                id: 12,
                body: ControlResponse::StatusDetail(StatusDetail {
                    status: StatusReport {
                        agent: "gatehouse-extension/0.1.0".into(),
                        pid: 4242,
                        backend: "fanotify".into(),
                        uptime_ms: 65_000,
                        mode: "enforce".into(),
                        policy_version: 2,
                        policy_origin: "/etc/gatehouse/policy.toml".into(),
                        helper_connected: true,
                    },
                    policy_sha256: "ab".repeat(32),
                    local_rules_origin: Some("/etc/gatehouse/local-rules.toml".into()),
                    local_rules_sha256: Some("cd".repeat(32)),
                    rules: vec![RuleCount {
                        tier: "static".into(),
                        kind: "exec sha256".into(),
                        count: 3,
                    }],
                    scopes: vec!["/".into()],
                    watched_paths: 4,
                    mutes_policy: 2,
                    mutes_runtime: 1,
                    mutes_file: Some("/etc/gatehouse/mutes.toml".into()),
                    helper_breaker_open: false,
                    policy_loaded_unix_ms: 1_764_720_000_000,
                }),
            }),
        ),
        (
            "control_transitive_list",
            frame(&Request {
                id: 13,
                budget_us: 10_000_000,
                body: ControlRequest::TransitiveList,
            }),
        ),
        (
            "control_transitive_list_answer",
            frame(&Response {
                id: 13,
                body: ControlResponse::TransitiveList(vec![Box::new(TransitiveAllow {
                    sha256: "ef".repeat(32),
                    path: "/home/dev/build/out".into(),
                    compiler_rule: "cc".into(),
                    added_ms: 1_764_720_000_000,
                })]),
            }),
        ),
        (
            "control_transitive_clear",
            frame(&Request {
                id: 14,
                budget_us: 10_000_000,
                body: ControlRequest::TransitiveClear,
            }),
        ),
        (
            "control_transitive_cleared",
            frame(&Response {
                id: 14,
                body: ControlResponse::TransitiveCleared { removed: 1 },
            }),
        ),
        (
            "helper_error",
            frame(&Response {
                id: 9,
                body: HelperResponse::Error {
                    kind: HelperErrorKind::DeadlineExceeded,
                    message: "budget spent".into(),
                },
            }),
        ),
        (
            "control_policy_load",
            frame(&Request {
                id: 4,
                budget_us: 10_000_000,
                body: ControlRequest::PolicyLoad {
                    origin: "/etc/gatehouse/policy.toml".into(),
                    text: "version = 1\nmode = \"enforce\"\n".into(),
                },
            }),
        ),
        (
            "control_mute_add",
            frame(&Request {
                id: 5,
                budget_us: 0,
                body: ControlRequest::MuteAdd(MuteSpec {
                    scope: MuteScope::Target,
                    path: "/var/log/".into(),
                    prefix: true,
                }),
            }),
        ),
        (
            "control_stats",
            frame(&Response {
                id: 6,
                body: ControlResponse::Stats(StatsReport {
                    counters: vec![
                        ("events.exec.allow".into(), 10),
                        ("fallback.deadline".into(), 0),
                    ],
                    latencies: vec![LatencySummary {
                        name: "fast_path".into(),
                        count: 10,
                        p50_us: 1,
                        p90_us: 2,
                        p99_us: 3,
                        max_us: 40,
                    }],
                    queue_depth: 0,
                    queue_capacity: 1024,
                }),
            }),
        ),
        // Events are JSON-only (their JSON form is internally tagged, which bincode cannot
        // carry); the wire carries them as JSON lines inside control responses.
        (
            "control_events",
            frame(&Response {
                id: 7,
                body: ControlResponse::Events(vec![
                    serde_json::to_string(&exec).unwrap(),
                    serde_json::to_string(&open).unwrap(),
                ]),
            }),
        ),
        // Appended after HelperPing (variant 8), so every earlier variant keeps its index.
        (
            "control_policy_load_path",
            frame(&Request {
                id: 8,
                budget_us: 10_000_000,
                body: ControlRequest::PolicyLoadPath {
                    path: "/etc/gatehouse/large-policy.toml".into(),
                },
            }),
        ),
        // Appended after PolicyLoadPath (variant 9).
        (
            "control_local_rules_load",
            frame(&Request {
                id: 9,
                budget_us: 10_000_000,
                body: ControlRequest::LocalRulesLoad {
                    path: "/etc/gatehouse/local-rules.toml".into(),
                },
            }),
        ),
        // The notice channel (macOS: the host app's block notifications over XPC).
        (
            "notice_request",
            frame(&NoticeRequest {
                version: 2,
                after: 41,
            }),
        ),
        (
            "notice_batch",
            frame(&NoticeBatch {
                notices: vec![Box::new(BlockNotice {
                    seq: 42,
                    time_unix_ms: 1_764_720_000_000,
                    kind: "exec".into(),
                    target: "/Users/jo/Downloads/tool".into(),
                    process: "/bin/zsh".into(),
                    pid: 4242,
                    uid: 501,
                    rule: Some("block-downloads".into()),
                    message: Some("Unapproved software: ask IT".into()),
                })],
                missed: 1,
                next: 42,
            }),
        ),
    ]
}

/// Object-safe encoding so the table can hold different message types.
mod erased {
    pub trait Enc {
        fn enc(&self, max: u32) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Enc for T {
        fn enc(&self, max: u32) -> Vec<u8> {
            super::encode_frame(self, max).unwrap()
        }
    }
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("v{PROTOCOL_VERSION}"))
}

#[test]
fn golden_fixtures_match() {
    let update = std::env::var_os("GATEHOUSE_UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for (name, bytes) in cases() {
        let path = dir().join(format!("{name}.bin"));
        if update {
            std::fs::create_dir_all(dir()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        match std::fs::read(&path) {
            Ok(want) if want == bytes => {}
            Ok(want) => failures.push(format!(
                "{name}: encoding changed ({} bytes, fixture {} bytes)",
                bytes.len(),
                want.len()
            )),
            Err(e) => failures.push(format!("{name}: cannot read {}: {e}", path.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches (see file header):\n{}",
        failures.join("\n")
    );
}

#[test]
fn golden_fixtures_decode_back() {
    // Each fixture must decode to the value it was made from: the format is readable, not only
    // writable. Decode through the frame reader, as a peer would.
    use protocol::frame::read_frame;
    let read = |name: &str| std::fs::read(dir().join(format!("{name}.bin"))).unwrap();
    let hello: Hello = read_frame(&mut read("hello").as_slice(), 1024).unwrap();
    assert_eq!(hello.magic, MAGIC);
    let req: Request<HelperRequest> = read_frame(
        &mut read("helper_analyze_file").as_slice(),
        HELPER_MAX_FRAME,
    )
    .unwrap();
    assert_eq!(req.id, u64::MAX);
    assert!(matches!(
        req.body,
        HelperRequest::Analyze {
            fd_attached: true,
            ..
        }
    ));
    let resp: Response<HelperResponse> =
        read_frame(&mut read("helper_analysis").as_slice(), HELPER_MAX_FRAME).unwrap();
    assert!(matches!(resp.body, HelperResponse::Analysis { .. }));
    let resp: Response<ControlResponse> =
        read_frame(&mut read("control_events").as_slice(), CONTROL_MAX_FRAME).unwrap();
    let ControlResponse::Events(lines) = resp.body else {
        panic!("not events")
    };
    let ev: Event = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(ev.process, process());
    // Optional fields that are None must survive the positional binary encoding.
    let mut bare = process().executable;
    bare.identity = None;
    let req = Request {
        id: 1,
        budget_us: 1,
        body: HelperRequest::Analyze {
            request: AnalysisRequest {
                needs: Needs::default(),
                file: Some(bare),
                mount: None,
                binding: None,
            },
            fd_attached: false,
        },
    };
    let bytes = encode_frame(&req, HELPER_MAX_FRAME).unwrap();
    let back: Request<HelperRequest> = read_frame(&mut bytes.as_slice(), HELPER_MAX_FRAME).unwrap();
    assert_eq!(back, req);
}

#[test]
fn every_fixture_file_has_a_case() {
    // A stale fixture (message removed from the table) is a silent format change.
    let names: Vec<_> = cases()
        .into_iter()
        .map(|(n, _)| format!("{n}.bin"))
        .collect();
    for entry in std::fs::read_dir(dir()).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            names.contains(&file),
            "fixture {file} has no case in golden.rs"
        );
    }
}

#[test]
fn policy_load_path_fixture_decodes_back() {
    let bytes = std::fs::read(dir().join("control_policy_load_path.bin")).unwrap();
    let req: Request<ControlRequest> =
        protocol::frame::read_frame(&mut bytes.as_slice(), CONTROL_MAX_FRAME).unwrap();
    assert_eq!(
        req.body,
        ControlRequest::PolicyLoadPath {
            path: "/etc/gatehouse/large-policy.toml".into()
        }
    );
    // Length (4 bytes), id 8 (1), budget (varint, 5), then the variant index: 9, after the nine
    // earlier variants (0..=8), which keep theirs.
    assert_eq!(bytes[4 + 1 + 5], 9, "{bytes:?}");
}
