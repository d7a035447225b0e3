//! Malformed policies: each is rejected with the exact line, column and rule name.

use policy::Policy;

const HDR: &str = "version = 1\nmode = \"enforce\"\n";

/// (policy text after the header, expected line, column, rule, message fragment)
const CASES: &[(&str, usize, usize, Option<&str>, &str)] = &[
    // 1. Unknown key inside an exec rule.
    (
        "[[exec]]\nname = \"r1\"\naction = \"allow\"\nsha265 = \"ab\"\n",
        6,
        1,
        Some("r1"),
        "unknown field `sha265`",
    ),
    // 2. Malformed SHA-256.
    (
        "[[exec]]\nname = \"short-hash\"\naction = \"block\"\nsha256 = \"abc\"\n",
        6,
        10,
        Some("short-hash"),
        "sha256 must be 64 hex characters",
    ),
    // 3. Two identifiers in one rule.
    (
        "[[exec]]\nname = \"two\"\naction = \"allow\"\nteam_id = \"ABCDE12345\"\ncdhash = \"0000000000000000000000000000000000000000\"\n",
        7,
        10,
        Some("two"),
        "found cdhash and team_id",
    ),
    // 4. Conflicting rules: same team id, two actions.
    (
        "[[exec]]\nname = \"a\"\naction = \"allow\"\nteam_id = \"ABCDE12345\"\n\n[[exec]]\nname = \"b\"\naction = \"block\"\nteam_id = \"abcde12345\"\n",
        11,
        11,
        Some("b"),
        "conflicting rules for team_id",
    ),
    // 5. Bad team id.
    (
        "[[exec]]\nname = \"bad-team\"\naction = \"allow\"\nteam_id = \"ABC\"\n",
        6,
        11,
        Some("bad-team"),
        "team_id must be 10 letters or digits",
    ),
    // 6. Signing id without a team prefix.
    (
        "[[exec]]\nname = \"sid\"\naction = \"allow\"\nsigning_id = \"com.example.app\"\n",
        6,
        14,
        Some("sid"),
        "signing_id must be TEAMID:signing.id",
    ),
    // 7. Bad regex in a path scope.
    (
        "[[exec_path]]\nname = \"bad-re\"\naction = \"block\"\nregex = \"^/tmp/(\"\n",
        6,
        9,
        Some("bad-re"),
        "invalid regex",
    ),
    // 8. Watch item with a relative path invalidates the whole file.
    (
        "[[watch]]\nname = \"w\"\npaths = [{ path = \"etc/ssh\", prefix = true }]\n",
        5,
        19,
        Some("w"),
        "watch paths must be absolute",
    ),
    // 9. Watch process signing id with an empty id.
    (
        "[[watch]]\nname = \"wild\"\npaths = [{ path = \"/etc/\" , prefix = true }]\nprocesses = [{ signing_id = \"ABCDE12345:\" }]\n",
        6,
        29,
        Some("wild"),
        "must be non-empty",
    ),
    // 10. Unknown rule type.
    (
        "[[watch]]\nname = \"rt\"\nrule_type = \"paths_with_everything\"\npaths = [{ path = \"/x\" }]\n",
        5,
        13,
        Some("rt"),
        "unknown variant `paths_with_everything`",
    ),
    // 11. Remount without flags.
    (
        "[[mount]]\nname = \"usb-ro\"\naction = \"remount\"\nremovable = true\n",
        5,
        10,
        Some("usb-ro"),
        "needs remount_flags",
    ),
    // 12. Deadline out of range.
    (
        "[defaults]\ndeadline_ms = 0\n",
        4,
        15,
        None,
        "deadline_ms must be between",
    ),
    // 13. Unsupported version is reported at the version value.
    ("", 1, 11, None, "unsupported policy version 2"),
    // 14. Duplicate rule names.
    (
        "[[exec_path]]\nname = \"dup\"\naction = \"block\"\nprefix = \"/tmp/\"\n\n[[exec_path]]\nname = \"dup\"\naction = \"block\"\nprefix = \"/var/tmp/\"\n",
        9,
        8,
        Some("dup"),
        "duplicate rule name",
    ),
    // 15. Same path in two path-keyed watch items.
    (
        "[[watch]]\nname = \"one\"\npaths = [{ path = \"/etc/ssh/\", prefix = true }]\n\n[[watch]]\nname = \"two\"\npaths = [{ path = \"/etc/ssh/\", prefix = true }]\n",
        9,
        19,
        Some("two"),
        "already watched by item \"one\"",
    ),
    // 16. Unknown top-level key.
    ("lockdown = true\n", 3, 1, None, "unknown field `lockdown`"),
    // 17. Process entry with no keys.
    (
        "[[watch]]\nname = \"empty-proc\"\npaths = [{ path = \"/etc/\" }]\nprocesses = [{}]\n",
        6,
        14,
        Some("empty-proc"),
        "a process entry needs at least one of",
    ),
];

#[test]
fn malformed_policies_name_line_column_and_rule() {
    for (i, (body, line, column, rule, msg)) in CASES.iter().enumerate() {
        let text = if i == 12 {
            "version = 2\nmode = \"enforce\"\n".to_string()
        } else {
            format!("{HDR}{body}")
        };
        let err = Policy::parse("bad.toml", &text).expect_err(&format!("case {} accepted", i + 1));
        assert_eq!(err.origin, "bad.toml", "case {}", i + 1);
        assert_eq!(
            (err.line, err.column, err.rule.as_deref()),
            (*line, *column, *rule),
            "case {}: {err}",
            i + 1
        );
        assert!(err.message.contains(msg), "case {}: {err}", i + 1);
    }
}

#[test]
fn display_is_file_line_col_message_rule() {
    let text =
        format!("{HDR}[[exec]]\nname = \"short-hash\"\naction = \"block\"\nsha256 = \"abc\"\n");
    let err = Policy::parse("p.toml", &text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "p.toml:6:10: sha256 must be 64 hex characters, found \"abc\" (rule short-hash)"
    );
}

/// (policy text after the header, text the error must point at, rule, message fragment).
/// Issue 13's checks: Santa's WatchItemProcess::Create refuses a TeamID together with
/// PlatformBinary (WatchItemPolicyTest.mm `testWatchItemProcessCreate`), and a regex that does
/// not compile, the size limits included, is an error at its position, never dropped.
#[test]
fn contradictions_and_oversized_regexes_are_errors_at_their_position() {
    // Compiles alone, but many together exceed the regex set's size limit.
    let big = r"\\w{60}[\\w\\d]{60}";
    let many: String = (1..=12)
        .map(|i| {
            format!(
                "[[exec_path]]\nname = \"re{i}\"\naction = \"block\"\nregex = \"^/x{i}/{big}\"\n"
            )
        })
        .collect();
    #[rustfmt::skip]
    let cases: Vec<(String, &str, Option<&str>, &str)> = vec![
        ("[[watch]]\nname = \"w\"\npaths = [{ path = \"/etc/\" }]\nprocesses = [{ team_id = \"ABCDE12345\", platform_binary = true }]\n".into(),
            "{ team_id = \"ABCDE12345\"", Some("w"), "platform_binary = true cannot also name a team id"),
        ("[[watch]]\nname = \"w\"\npaths = [{ path = \"/etc/\" }]\nprocesses = [{ signing_id = \"ABCDE12345:com.x\", platform_binary = true }]\n".into(),
            "{ signing_id", Some("w"), "cannot also name a team id"),
        ("[[watch]]\nname = \"w\"\npaths = [{ path = \"/etc/\" }]\nprocesses = [{ team_id = \"PLATFORM\", platform_binary = false }]\n".into(),
            "{ team_id = \"PLATFORM\"", Some("w"), "platform_binary = false cannot also name the \"platform\" team"),
        ("[[exec_path]]\nname = \"bad-re\"\naction = \"block\"\nregex = \"^/a(\"\n".into(),
            "\"^/a(\"", Some("bad-re"), "invalid regex"),
        (many, "", None, "exceed the regex size limit together"),
    ];
    for (body, at, rule, msg) in cases {
        let text = format!("{HDR}{body}");
        let err = Policy::parse("bad.toml", &text).expect_err(&body);
        assert!(err.message.contains(msg), "{body}: {err}");
        if at.is_empty() {
            // The oversized set: the error names the pattern that tips it over, at its regex.
            let rule = err.rule.clone().expect("names a rule");
            let n: usize = rule.strip_prefix("re").unwrap().parse().unwrap();
            assert!(n > 1, "{err}");
            let line = text
                .lines()
                .position(|l| l.starts_with(&format!("regex = \"^/x{n}/")))
                .unwrap()
                + 1;
            assert_eq!((err.line, err.column), (line, 9), "{err}");
            continue;
        }
        let offset = text.find(at).unwrap();
        let line = text[..offset].matches('\n').count() + 1;
        let column = offset - text[..offset].rfind('\n').map_or(0, |n| n + 1) + 1;
        assert_eq!(
            (err.line, err.column, err.rule.as_deref()),
            (line, column, rule),
            "{body}: {err}"
        );
    }
    // The platform keyword is case-insensitive where a team id may be written.
    for entry in [
        "{ team_id = \"Platform\" }",
        "{ signing_id = \"PLATFORM:com.apple.cat\" }",
    ] {
        let text = format!(
            "{HDR}[[watch]]\nname = \"w\"\npaths = [{{ path = \"/etc/\" }}]\nprocesses = [{entry}]\n"
        );
        Policy::parse("ok.toml", &text).unwrap_or_else(|e| panic!("{entry}: {e}"));
    }
}
