//! Compiled lookup tables whose cost does not grow with the number of rules: exact paths in a
//! hash map, plain-string prefixes in a sorted table searched for the longest match, and the
//! fixed-size keys (team ids) that identifier maps are keyed by.

use std::collections::HashMap;

/// Exact paths and string prefixes mapping to a value; `longest` finds the most specific entry.
#[derive(Debug, Clone)]
pub(crate) struct PathTable<V> {
    exact: HashMap<Box<str>, V>,
    /// Sorted by bytes; searched with the predecessor walk in [`PathTable::longest_prefix`].
    prefixes: Vec<(Box<[u8]>, V)>,
}

impl<V> Default for PathTable<V> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            prefixes: Vec::new(),
        }
    }
}

impl<V: Copy> PathTable<V> {
    /// Builds a table; returns the first duplicate entry (same path and prefix flag) as an error.
    pub(crate) fn build(
        entries: impl IntoIterator<Item = (String, bool, V)>,
    ) -> Result<Self, (String, bool, V, V)> {
        let mut exact: HashMap<Box<str>, V> = HashMap::new();
        let mut prefixes: Vec<(Box<[u8]>, V)> = Vec::new();
        let mut seen_prefix: HashMap<Box<str>, V> = HashMap::new();
        for (path, prefix, v) in entries {
            let map = if prefix { &mut seen_prefix } else { &mut exact };
            if let Some(old) = map.get(path.as_str()) {
                return Err((path, prefix, *old, v));
            }
            map.insert(path.clone().into_boxed_str(), v);
            if prefix {
                prefixes.push((path.into_bytes().into_boxed_slice(), v));
            }
        }
        prefixes.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { exact, prefixes })
    }

    /// The same table with every value transformed.
    pub(crate) fn map_values<W: Copy>(self, f: impl Fn(V) -> W) -> PathTable<W> {
        PathTable {
            exact: self.exact.into_iter().map(|(k, v)| (k, f(v))).collect(),
            prefixes: self.prefixes.into_iter().map(|(k, v)| (k, f(v))).collect(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// The most specific entry for `path`: an exact entry, else the longest matching prefix.
    pub(crate) fn longest(&self, path: &str) -> Option<V> {
        if let Some(v) = self.exact.get(path) {
            return Some(*v);
        }
        self.longest_prefix(path.as_bytes())
    }

    /// Like [`PathTable::longest`], with the length of `path` the entry covers (all of it for
    /// an exact entry) and whether it is exact, for ranking against glob matches.
    pub(crate) fn longest_with_len(&self, path: &str) -> Option<(usize, bool, V)> {
        if let Some(v) = self.exact.get(path) {
            return Some((path.len(), true, *v));
        }
        let mut s = path.as_bytes();
        if self.prefixes.is_empty() {
            return None;
        }
        loop {
            let idx = self.prefixes.partition_point(|(p, _)| &**p <= s);
            if idx == 0 {
                return None;
            }
            let (p, v) = &self.prefixes[idx - 1];
            if s.starts_with(p) {
                return Some((p.len(), false, *v));
            }
            let lcp = p.iter().zip(s).take_while(|(a, b)| a == b).count();
            s = &s[..lcp];
        }
    }

    /// Longest prefix of `s` in the sorted table in O(log n) per step, and few steps: the
    /// predecessor `p` of `s` is the answer if it is a prefix of `s`; otherwise every prefix of
    /// `s` in the table is also a prefix of `p`, so it is at most `lcp(p, s)` long and the search
    /// continues on `s[..lcp]`, which is strictly shorter.
    fn longest_prefix(&self, mut s: &[u8]) -> Option<V> {
        if self.prefixes.is_empty() {
            return None;
        }
        loop {
            let idx = self.prefixes.partition_point(|(p, _)| &**p <= s);
            if idx == 0 {
                return None;
            }
            let (p, v) = &self.prefixes[idx - 1];
            if s.starts_with(p) {
                return Some(*v);
            }
            let lcp = p.iter().zip(s).take_while(|(a, b)| a == b).count();
            s = &s[..lcp];
        }
    }
}

/// A team id as a fixed key: exactly ten ASCII letters or digits, compared upper-case.
pub(crate) type TeamKey = [u8; 10];

/// Parses a team id, upper-casing it; `None` if it is not ten ASCII alphanumerics.
pub(crate) fn team_key(s: &str) -> Option<TeamKey> {
    let b = s.as_bytes();
    if b.len() != 10 || !b.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let mut k = [0u8; 10];
    for (o, c) in k.iter_mut().zip(b) {
        *o = c.to_ascii_uppercase();
    }
    Some(k)
}

/// The team half of a signing-ID key: a team id, or `platform` for platform binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SigTeam {
    Team(TeamKey),
    Platform,
}

impl SigTeam {
    /// Parses the part before the first `:` of a signing-ID rule. `platform` is a keyword in
    /// any case, as in Santa (SNTRule.mm, WatchItemPolicy.h compare it lower-cased).
    pub(crate) fn parse(s: &str) -> Option<SigTeam> {
        if s.eq_ignore_ascii_case("platform") {
            Some(SigTeam::Platform)
        } else {
            team_key(s).map(SigTeam::Team)
        }
    }

    /// The signing-ID team of a process: its team id, or `platform` for a platform binary with
    /// no team id; `None` when it has neither (then it has no signing-ID key at all).
    pub(crate) fn of(signing: &model::CodeSigning) -> Option<SigTeam> {
        match &signing.team_id {
            Some(t) => team_key(t).map(SigTeam::Team),
            None if signing.is_platform_binary => Some(SigTeam::Platform),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_table() {
        let t = PathTable::build([
            ("/a/".to_string(), true, 1),
            ("/a/b/".to_string(), true, 2),
            ("/a/b/c".to_string(), false, 3),
            ("/ab".to_string(), true, 4),
            ("/z".to_string(), true, 5),
            ("/a/bb".to_string(), true, 6),
        ])
        .unwrap();
        let cases = [
            ("/a/x", Some(1)),
            ("/a/b/x", Some(2)),
            ("/a/b/c", Some(3)),
            ("/a/b/cd", Some(2)),
            ("/abc", Some(4)),
            ("/a/bz", Some(1)),
            ("/a/bbq", Some(6)),
            ("/b", None),
            ("/", None),
            ("", None),
            ("/zz", Some(5)),
        ];
        for (path, want) in cases {
            assert_eq!(t.longest(path), want, "{path}");
        }
    }

    #[test]
    fn duplicate_is_reported() {
        let r = PathTable::build([("/a".to_string(), true, 1), ("/a".to_string(), true, 2)]);
        assert!(matches!(r, Err((_, true, 1, 2))));
        let ok = PathTable::build([("/a".to_string(), true, 1), ("/a".to_string(), false, 2)]);
        assert!(ok.is_ok());
    }

    #[test]
    fn team_key_table() {
        assert_eq!(team_key("abcde12345"), Some(*b"ABCDE12345"));
        assert_eq!(team_key("ABCDE1234"), None);
        assert_eq!(team_key("ABCDE-1234"), None);
        assert_eq!(SigTeam::parse("platform"), Some(SigTeam::Platform));
        assert_eq!(SigTeam::parse("PLatFOrm"), Some(SigTeam::Platform));
        assert_eq!(SigTeam::parse("platforms"), None);
    }
}
