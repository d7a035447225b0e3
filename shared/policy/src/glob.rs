//! Watch-path globs (`*`, `?`, `[...]`) matched live against event paths, with the semantics
//! of the `glob(3)` call Santa expands watch paths with (flags 0): wildcards never match `/`,
//! nor a `.` that begins a path component, `\` quotes the next character, `[!...]` negates a
//! class and an unclosed `[` is literal. Compiled once per policy; a match walks the path's
//! components once, without allocating.

/// Longest glob pattern accepted: Linux's `PATH_MAX`, so no Linux path is too long to watch
/// (Santa, macOS only, allows its own `PATH_MAX` of 1024, which the importer enforces).
pub(crate) const GLOB_MAX_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `?`: one character.
    One,
    /// `*`: any run of characters within one component.
    Star,
    /// `[...]`: one character in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Tok {
    fn matches(&self, c: char) -> bool {
        match self {
            Tok::Lit(l) => *l == c,
            Tok::One => true,
            Tok::Star => false,
            Tok::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// A compiled glob path: its components (split at `/`) and the literal text before its first
/// wildcard, which every match starts with.
#[derive(Debug, Clone)]
pub(crate) struct Glob {
    components: Vec<Vec<Tok>>,
    literal_head: Box<str>,
}

/// What a path that contains `*`, `?` or `[` turned out to be.
#[derive(Debug)]
pub(crate) enum Parsed {
    Glob(Glob),
    /// No unquoted wildcard (`\*`, an unclosed `[`): the path as written, quotes included.
    Literal(String),
}

impl Glob {
    /// Parses `pattern`; `Err` says what is wrong. Only paths containing `*`, `?` or `[` are
    /// globs (others stay literal as written, backslashes included).
    pub(crate) fn parse(pattern: &str) -> Result<Parsed, String> {
        if pattern.len() > GLOB_MAX_LEN {
            return Err(format!(
                "a glob path is at most {GLOB_MAX_LEN} bytes, found {}",
                pattern.len()
            ));
        }
        let chars: Vec<char> = pattern.chars().collect();
        let mut components = vec![Vec::new()];
        let mut magic = false;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let tok = match c {
                '\\' if i + 1 < chars.len() => {
                    i += 1;
                    Tok::Lit(chars[i])
                }
                '/' => {
                    components.push(Vec::new());
                    i += 1;
                    continue;
                }
                '*' => {
                    magic = true;
                    Tok::Star
                }
                '?' => {
                    magic = true;
                    Tok::One
                }
                '[' => match parse_class(&chars[i + 1..]) {
                    Some(Ok((tok, used))) => {
                        magic = true;
                        i += used;
                        tok
                    }
                    Some(Err(e)) => return Err(e),
                    None => Tok::Lit('['),
                },
                c => Tok::Lit(c),
            };
            components
                .last_mut()
                .expect("components starts non-empty")
                .push(tok);
            i += 1;
        }
        // No unquoted wildcard: glob(3) sets no GLOB_MAGCHAR, and Santa's `FindMatches` then
        // watches the path exactly as written, backslashes and all (Glob.mm: "If the path had
        // no glob char, begin watching it whether or not it exists").
        if !magic {
            return Ok(Parsed::Literal(pattern.to_owned()));
        }
        // The literal head: whole literal components, then the literal start of the first
        // component with a wildcard.
        let mut head = String::new();
        for (n, comp) in components.iter().enumerate() {
            if n > 0 {
                head.push('/');
            }
            let lits: String = comp
                .iter()
                .map_while(|t| match t {
                    Tok::Lit(c) => Some(*c),
                    _ => None,
                })
                .collect();
            let whole = lits.chars().count() == comp.len();
            head.push_str(&lits);
            if !whole {
                break;
            }
        }
        Ok(Parsed::Glob(Glob {
            components,
            literal_head: head.into(),
        }))
    }

    /// A regex that matches every path this glob matches (whole, or as a prefix with
    /// `prefix`), and possibly more (it ignores the leading-`.` rule and the non-empty last
    /// component of a prefix): the policy compiles all globs into one set to find the few
    /// candidates, which [`Glob::matches`] and [`Glob::longest_prefix`] then decide.
    pub(crate) fn regex(&self, prefix: bool) -> String {
        let mut r = String::from("^(?:");
        for (n, comp) in self.components.iter().enumerate() {
            if n > 0 {
                r.push('/');
            }
            for t in comp {
                match t {
                    Tok::Lit(c) => r.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
                    Tok::One => r.push_str("[^/]"),
                    Tok::Star => r.push_str("[^/]*"),
                    Tok::Class { negated, ranges } => {
                        r.push('[');
                        if *negated {
                            r.push('^');
                            r.push_str("\\x{2f}");
                        }
                        for (lo, hi) in ranges {
                            r.push_str(&format!("\\x{{{:x}}}-\\x{{{:x}}}", *lo as u32, *hi as u32));
                        }
                        r.push(']');
                    }
                }
            }
        }
        r.push(')');
        if !prefix {
            r.push('$');
        }
        r
    }

    /// The directory every match lies under: the literal head up to its last `/` (a
    /// directory prefix, so a backend can mark it as a tree).
    pub(crate) fn root(&self) -> &str {
        let h = &*self.literal_head;
        h.rfind('/').map_or("/", |i| &h[..=i])
    }

    /// Whether the whole of `path` matches.
    pub(crate) fn matches(&self, path: &str) -> bool {
        if !path.starts_with(&*self.literal_head) {
            return false;
        }
        let mut parts = path.split('/');
        for comp in &self.components {
            match parts.next() {
                Some(p) if component_matches(comp, p) => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }

    /// The length of the longest leading part of `path` that the glob matches whole (what a
    /// prefix watch path covers: Santa expands the glob and treats each result as a string
    /// prefix, so the longest expansion that begins `path` wins).
    pub(crate) fn longest_prefix(&self, path: &str) -> Option<usize> {
        if !path.starts_with(&*self.literal_head) {
            return None;
        }
        let (last, dirs) = self.components.split_last()?;
        let mut offset = 0;
        let mut rest = path;
        for comp in dirs {
            let (p, after) = rest.split_once('/')?;
            if !component_matches(comp, p) {
                return None;
            }
            offset += p.len() + 1;
            rest = after;
        }
        let cur = rest.split('/').next().unwrap_or("");
        let mut ends: Vec<usize> = Vec::new();
        ends.extend(cur.char_indices().map(|(i, _)| i).skip(1));
        ends.push(cur.len());
        // Longest first. An expansion's last component is a directory entry's name, never
        // empty, unless the pattern itself ends in `/`.
        let min = usize::from(!last.is_empty());
        std::iter::once(0)
            .chain(ends)
            .rev()
            .filter(|&j| j >= min)
            .find(|&j| component_matches(last, &cur[..j]))
            .map(|j| offset + j)
    }
}

/// `[` ... `]` starting after the `[`: `None` when unclosed (then `[` is literal), else the
/// class and how many characters it used after the `[`.
fn parse_class(rest: &[char]) -> Option<Result<(Tok, usize), String>> {
    let mut i = 0;
    let negated = rest.first() == Some(&'!');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let c = *rest.get(i)?;
        if c == ']' && !first {
            break;
        }
        first = false;
        if c == '/' {
            return Some(Err(
                "a [...] class in a glob path cannot contain '/' (wildcards never match it)"
                    .to_owned(),
            ));
        }
        if rest.get(i + 1) == Some(&'-') && rest.get(i + 2).is_some_and(|&h| h != ']') {
            let hi = rest[i + 2];
            if hi == '/' {
                return Some(Err(
                    "a [...] class in a glob path cannot contain '/'".to_owned()
                ));
            }
            ranges.push((c, hi));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    Some(Ok((Tok::Class { negated, ranges }, i + 1)))
}

/// One component against one pattern component: `*` backtracks to its last position only
/// (linear in practice), and a leading `.` must be matched by a literal `.` (glob(3) without
/// `GLOB_PERIOD`).
fn component_matches(pat: &[Tok], s: &str) -> bool {
    if s.starts_with('.') && !matches!(pat.first(), Some(Tok::Lit('.'))) {
        return false;
    }
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < pat.len() {
            if pat[pi] == Tok::Star {
                star = Some((pi, si));
                pi += 1;
                continue;
            }
            if let Some(c) = s[si..].chars().next()
                && pat[pi].matches(c)
            {
                pi += 1;
                si += c.len_utf8();
                continue;
            }
        } else if si == s.len() {
            return true;
        }
        let Some((sp, ss)) = star else { return false };
        let Some(c) = s[ss..].chars().next() else {
            return false;
        };
        star = Some((sp, ss + c.len_utf8()));
        pi = sp + 1;
        si = ss + c.len_utf8();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> Glob {
        match Glob::parse(p).unwrap() {
            Parsed::Glob(g) => g,
            Parsed::Literal(l) => panic!("{p} parsed as literal {l}"),
        }
    }

    /// glob(3) semantics (Santa `DataWatchItems::Build` calls `glob(path, 0, ...)`).
    #[test]
    fn whole_path_table() {
        let cases = [
            ("/Users/*/Library", "/Users/alice/Library", true),
            ("/Users/*/Library", "/Users/alice/x/Library", false),
            ("/Users/*/Library", "/Users//Library", true),
            ("/Users/*/Library", "/Users/.hidden/Library", false),
            ("/Users/.*/Library", "/Users/.hidden/Library", true),
            ("/etc/*.conf", "/etc/a.conf", true),
            ("/etc/*.conf", "/etc/a.conf/x", false),
            ("/etc/?.conf", "/etc/a.conf", true),
            ("/etc/?.conf", "/etc/ab.conf", false),
            ("/etc/?.conf", "/etc/.x", false),
            ("/d/[abc]x", "/d/bx", true),
            ("/d/[abc]x", "/d/dx", false),
            ("/d/[!abc]x", "/d/dx", true),
            ("/d/[!abc]x", "/d/ax", false),
            ("/d/[a-c]x", "/d/cx", true),
            ("/d/[]a]x", "/d/]x", true),
            ("/d/[a-]x", "/d/-x", true),
            ("/d/\\*x*", "/d/*xyz", true),
            ("/d/\\*x*", "/d/axyz", false),
            ("/d/*a*b*", "/d/xaybz", true),
            ("/d/*a*b*", "/d/xbya", false),
            ("/d/é*", "/d/éa", true),
            ("/d/?", "/d/é", true),
        ];
        for (pat, path, want) in cases {
            let g = glob(pat);
            assert_eq!(g.matches(path), want, "{pat} vs {path}");
            // The set's regex never misses a match.
            let re = regex::Regex::new(&g.regex(false)).unwrap();
            assert!(
                !want || re.is_match(path),
                "{pat} regex {} vs {path}",
                g.regex(false)
            );
            let re = regex::Regex::new(&g.regex(true)).unwrap();
            assert!(!want || re.is_match(path), "{pat} prefix regex vs {path}");
        }
    }

    #[test]
    fn longest_prefix_table() {
        let cases = [
            ("/Users/*/tmp/foo", "/Users/bob/tmp/foo/x", Some(18)),
            ("/Users/*/tmp/foo", "/Users/bob/tmp/foobar", Some(18)),
            ("/Users/*/tmp/foo", "/Users/bob/tmp/fo", None),
            ("/a/*", "/a/bcd/e", Some(6)),
            ("/a/*", "/a/", None),
            ("/a/*/", "/a/b/x", Some(5)),
            ("/a/*/", "/a/b", None),
            ("/a/x*y", "/a/xzzyq", Some(7)),
            ("/a/x*y", "/a/xzz", None),
            ("/a/*", "/a/.git/x", None),
            ("/a/.*", "/a/.git/x", Some(7)),
        ];
        for (pat, path, want) in cases {
            assert_eq!(glob(pat).longest_prefix(path), want, "{pat} vs {path}");
        }
    }

    #[test]
    fn parse_table() {
        // Quoting without a wildcard left: the path as written (Santa's Glob.mm `FindMatches`
        // returns it unexpanded when glob(3) finds no magic character).
        assert!(matches!(Glob::parse("/a/\\*"), Ok(Parsed::Literal(l)) if l == "/a/\\*"));
        assert!(matches!(Glob::parse("/a/\\[b]"), Ok(Parsed::Literal(l)) if l == "/a/\\[b]"));
        assert!(matches!(Glob::parse("/a/[b"), Ok(Parsed::Literal(l)) if l == "/a/[b"));
        assert!(Glob::parse("/a/[b/c]").is_err());
        assert!(Glob::parse(&format!("/{}*", "a".repeat(GLOB_MAX_LEN))).is_err());
        let roots = [
            ("/Users/*/Library", "/Users/"),
            ("/etc/ssh/ssh*_config", "/etc/ssh/"),
            ("/*", "/"),
            ("/a/b/[c]", "/a/b/"),
        ];
        for (p, root) in roots {
            assert_eq!(glob(p).root(), root, "{p}");
        }
    }
}
