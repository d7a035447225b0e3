//! A bounded parser for the rpm header blobs stored in the rpm database, and the extraction of a
//! package's file list from one.
//!
//! A blob (rpm's `headerExport`, as the SQLite backend stores it; no lead, no signature header):
//! `u32 il` index entries, `u32 dl` data bytes, `il` 16-byte entries (`tag, type, offset,
//! count`), then the `dl`-byte data store; everything big-endian. The database is root-owned,
//! but the parser still treats every blob as hostile: every offset and count is checked against
//! the data store before use, counts are capped before anything is allocated, and no input can
//! make it panic (`header_parser_never_panics` feeds it truncations and corruptions).
#![forbid(unsafe_code)]

/// More index entries than any real header has (a few hundred at most); rpm's own cap is 16M.
pub const MAX_ENTRIES: u32 = 65_535;

/// rpm's own limit on a header's data store (`HEADER_DATA_MAX`, 256 MiB).
pub const MAX_DATA: u32 = 256 << 20;

/// Elements in one array tag, hence files in one package (the largest real packages have about
/// 100 000 files). Caps every allocation the parser makes at a few tens of MiB.
pub const MAX_ARRAY: usize = 1 << 20;

/// The tags read here (rpm's `rpmTag` numbers).
pub mod tag {
    pub const NAME: u32 = 1000;
    pub const VERSION: u32 = 1001;
    pub const RELEASE: u32 = 1002;
    pub const ARCH: u32 = 1022;
    pub const FILEMODES: u32 = 1030;
    pub const FILEDIGESTS: u32 = 1035;
    pub const FILEFLAGS: u32 = 1037;
    pub const DIRINDEXES: u32 = 1116;
    pub const BASENAMES: u32 = 1117;
    pub const DIRNAMES: u32 = 1118;
    pub const FILEDIGESTALGO: u32 = 5011;
}

/// rpm's tag data types.
pub mod ty {
    pub const INT16: u32 = 3;
    pub const INT32: u32 = 4;
    pub const STRING: u32 = 6;
    pub const STRING_ARRAY: u32 = 8;
}

/// `RPMFILE_CONFIG`: `%config`, which the administrator may edit.
pub const FILE_CONFIG: u32 = 1 << 0;
/// `RPMFILE_GHOST`: `%ghost`, owned but not shipped, so there is no content to vouch for.
pub const FILE_GHOST: u32 = 1 << 6;

const S_IFMT: u16 = 0o170_000;
const S_IFREG: u16 = 0o100_000;

/// Why a blob is not a usable header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("rpm header truncated: {what} needs {need} bytes, the blob has {have}")]
    Truncated {
        what: &'static str,
        need: u64,
        have: usize,
    },
    #[error("rpm header has {0} index entries, over the limit of {MAX_ENTRIES}")]
    TooManyEntries(u32),
    #[error("rpm header declares {0} data bytes, over the limit of {MAX_DATA}")]
    DataTooLarge(u32),
    #[error("rpm header blob has {0} bytes past its data store")]
    Trailing(usize),
    #[error("rpm header tag {tag}: {why}")]
    BadEntry { tag: u32, why: &'static str },
    #[error("rpm header lacks tag {0}")]
    Missing(u32),
}

/// A parsed header: its index and data store, borrowed from the blob.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    index: &'a [u8],
    data: &'a [u8],
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(w)
}

impl<'a> Header<'a> {
    /// Checks the blob's framing: counts within limits and the exact size they imply.
    pub fn parse(blob: &'a [u8]) -> Result<Self, HeaderError> {
        if blob.len() < 8 {
            return Err(HeaderError::Truncated {
                what: "the intro",
                need: 8,
                have: blob.len(),
            });
        }
        let (il, dl) = (be32(blob, 0), be32(blob, 4));
        if il == 0 || il > MAX_ENTRIES {
            return Err(HeaderError::TooManyEntries(il));
        }
        if dl > MAX_DATA {
            return Err(HeaderError::DataTooLarge(dl));
        }
        // Both are capped above, so this cannot overflow a u64.
        let need = 8 + u64::from(il) * 16 + u64::from(dl);
        if (blob.len() as u64) < need {
            return Err(HeaderError::Truncated {
                what: "the index and data store",
                need,
                have: blob.len(),
            });
        }
        if (blob.len() as u64) > need {
            return Err(HeaderError::Trailing(blob.len() - need as usize));
        }
        let index_end = 8 + il as usize * 16;
        Ok(Self {
            index: &blob[8..index_end],
            data: &blob[index_end..],
        })
    }

    /// The first entry for `tag` of type `want`: `(offset, count)` with the offset inside the
    /// data store and the count at least 1 and at most [`MAX_ARRAY`].
    fn entry(&self, tag: u32, want: u32) -> Result<Option<(usize, usize)>, HeaderError> {
        let Some(e) = self.index.chunks_exact(16).find(|e| be32(e, 0) == tag) else {
            return Ok(None);
        };
        let bad = |why| HeaderError::BadEntry { tag, why };
        if be32(e, 4) != want {
            return Err(bad("has an unexpected data type"));
        }
        let (offset, count) = (be32(e, 8) as usize, be32(e, 12) as usize);
        if offset >= self.data.len() {
            return Err(bad("points past the data store"));
        }
        if count == 0 {
            return Err(bad("has no elements"));
        }
        if count > MAX_ARRAY {
            return Err(bad("has more elements than the parser accepts"));
        }
        Ok(Some((offset, count)))
    }

    /// `count` NUL-terminated strings from `offset`.
    fn strings_at(
        &self,
        tag: u32,
        offset: usize,
        count: usize,
    ) -> Result<Vec<&'a [u8]>, HeaderError> {
        // Each string takes at least its NUL, so a count over the bytes left is a lie; checked
        // before the allocation it would size.
        let mut rest = &self.data[offset..];
        if count > rest.len() {
            return Err(HeaderError::BadEntry {
                tag,
                why: "has more strings than bytes",
            });
        }
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let Some(nul) = rest.iter().position(|&b| b == 0) else {
                return Err(HeaderError::BadEntry {
                    tag,
                    why: "has a string without its terminating NUL",
                });
            };
            out.push(&rest[..nul]);
            rest = &rest[nul + 1..];
        }
        Ok(out)
    }

    /// A `STRING` tag's value.
    pub fn string(&self, tag: u32) -> Result<Option<&'a [u8]>, HeaderError> {
        let Some((offset, count)) = self.entry(tag, ty::STRING)? else {
            return Ok(None);
        };
        if count != 1 {
            return Err(HeaderError::BadEntry {
                tag,
                why: "is a string with a count other than 1",
            });
        }
        Ok(self.strings_at(tag, offset, 1)?.pop())
    }

    /// A `STRING_ARRAY` tag's values.
    pub fn strings(&self, tag: u32) -> Result<Option<Vec<&'a [u8]>>, HeaderError> {
        match self.entry(tag, ty::STRING_ARRAY)? {
            None => Ok(None),
            Some((offset, count)) => self.strings_at(tag, offset, count).map(Some),
        }
    }

    /// The `count * width` bytes of a fixed-width array tag.
    fn fixed(&self, tag: u32, want: u32, width: usize) -> Result<Option<&'a [u8]>, HeaderError> {
        let Some((offset, count)) = self.entry(tag, want)? else {
            return Ok(None);
        };
        // count <= MAX_ARRAY and width <= 4: no overflow.
        let end = offset + count * width;
        match self.data.get(offset..end) {
            Some(b) => Ok(Some(b)),
            None => Err(HeaderError::BadEntry {
                tag,
                why: "runs past the data store",
            }),
        }
    }

    /// An `INT32` tag's values.
    pub fn u32s(&self, tag: u32) -> Result<Option<Vec<u32>>, HeaderError> {
        Ok(self
            .fixed(tag, ty::INT32, 4)?
            .map(|b| b.chunks_exact(4).map(|c| be32(c, 0)).collect()))
    }

    /// An `INT16` tag's values.
    pub fn u16s(&self, tag: u32) -> Result<Option<Vec<u16>>, HeaderError> {
        Ok(self.fixed(tag, ty::INT16, 2)?.map(|b| {
            b.chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect()
        }))
    }

    /// The package's label (`name-version-release.arch`, as `rpm -qf` prints it) and its
    /// regular, shipped files.
    pub fn package(&self) -> Result<Package, HeaderError> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let name = self
            .string(tag::NAME)?
            .ok_or(HeaderError::Missing(tag::NAME))?;
        let mut label = text(name);
        for (t, sep) in [(tag::VERSION, '-'), (tag::RELEASE, '-'), (tag::ARCH, '.')] {
            if let Some(v) = self.string(t)? {
                label.push(sep);
                label.push_str(&text(v));
            }
        }
        let Some(basenames) = self.strings(tag::BASENAMES)? else {
            // A package without files (a meta package).
            return Ok(Package {
                label,
                files: Vec::new(),
            });
        };
        let n = basenames.len();
        let same_len = |tag, len: usize| {
            if len == n {
                Ok(())
            } else {
                Err(HeaderError::BadEntry {
                    tag,
                    why: "has a different element count than BASENAMES",
                })
            }
        };
        let dirnames = self
            .strings(tag::DIRNAMES)?
            .ok_or(HeaderError::Missing(tag::DIRNAMES))?;
        let dirindexes = self
            .u32s(tag::DIRINDEXES)?
            .ok_or(HeaderError::Missing(tag::DIRINDEXES))?;
        same_len(tag::DIRINDEXES, dirindexes.len())?;
        let modes = self
            .u16s(tag::FILEMODES)?
            .ok_or(HeaderError::Missing(tag::FILEMODES))?;
        same_len(tag::FILEMODES, modes.len())?;
        let flags = self.u32s(tag::FILEFLAGS)?;
        if let Some(f) = &flags {
            same_len(tag::FILEFLAGS, f.len())?;
        }
        let digests = self.strings(tag::FILEDIGESTS)?;
        if let Some(d) = &digests {
            same_len(tag::FILEDIGESTS, d.len())?;
        }
        // rpm's default when the tag is absent (packages older than rpm 4.6) is MD5.
        let algo_num = self
            .u32s(tag::FILEDIGESTALGO)?
            .and_then(|v| v.first().copied())
            .unwrap_or(1);
        let algo = DigestAlgo::from_rpm(algo_num);

        let mut files = Vec::new();
        for i in 0..n {
            let file_flags = flags.as_ref().map_or(0, |f| f[i]);
            if modes[i] & S_IFMT != S_IFREG || file_flags & FILE_GHOST != 0 {
                continue;
            }
            let dir = dirnames
                .get(dirindexes[i] as usize)
                .ok_or(HeaderError::BadEntry {
                    tag: tag::DIRINDEXES,
                    why: "points past DIRNAMES",
                })?;
            // Paths that are not UTF-8, or not absolute, can never be what a lookup asks for.
            let (Ok(dir), Ok(base)) = (std::str::from_utf8(dir), std::str::from_utf8(basenames[i]))
            else {
                continue;
            };
            if !dir.starts_with('/') || base.is_empty() {
                continue;
            }
            let digest = match (algo, &digests) {
                (None, _) => Err("its package's digest algorithm is not MD5 or SHA-2"),
                (Some(_), None) => Err("its package records no file digests"),
                (Some(a), Some(d)) => a.decode(d[i]),
            };
            files.push(File {
                path: format!("{dir}{base}"),
                digest,
                config: file_flags & FILE_CONFIG != 0,
            });
        }
        Ok(Package { label, files })
    }
}

/// The digest algorithms the helper computes (rpm's `PGPHASHALGO_*` numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgo {
    Md5,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl DigestAlgo {
    /// `None` for algorithms the helper does not compute (SHA-1 = 2, RIPEMD-160 = 3, ...).
    pub fn from_rpm(n: u32) -> Option<Self> {
        match n {
            1 => Some(Self::Md5),
            8 => Some(Self::Sha256),
            9 => Some(Self::Sha384),
            10 => Some(Self::Sha512),
            11 => Some(Self::Sha224),
            _ => None,
        }
    }

    fn len(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha224 => 28,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// A recorded hex digest, checked for this algorithm's length.
    fn decode(self, hex_digest: &[u8]) -> Result<(Self, Box<[u8]>), &'static str> {
        if hex_digest.is_empty() {
            return Err("its package records no digest for it");
        }
        let mut out = vec![0u8; self.len()];
        match hex::decode_to_slice(hex_digest, &mut out) {
            Ok(()) => Ok((self, out.into_boxed_slice())),
            Err(_) => Err("its recorded digest is malformed"),
        }
    }
}

/// What one header says about its package's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub label: String,
    pub files: Vec<File>,
}

/// One regular, shipped file of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Absolute, as installed under the database's root.
    pub path: String,
    /// The recorded digest, or why the file cannot be verified.
    pub digest: Result<(DigestAlgo, Box<[u8]>), &'static str>,
    pub config: bool,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One entry to encode: tag, type, count, data bytes.
    pub(crate) type RawEntry = (u32, u32, u32, Vec<u8>);

    /// Encodes entries the way rpm's `headerExport` does (data concatenated in entry order; no
    /// alignment padding, which the parser does not need).
    pub(crate) fn encode(entries: &[RawEntry]) -> Vec<u8> {
        let mut index = Vec::new();
        let mut data = Vec::new();
        for (tag, ty, count, bytes) in entries {
            for w in [*tag, *ty, data.len() as u32, *count] {
                index.extend_from_slice(&w.to_be_bytes());
            }
            data.extend_from_slice(bytes);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&index);
        out.extend_from_slice(&data);
        out
    }

    fn strs(v: &[&str]) -> Vec<u8> {
        v.iter().flat_map(|s| s.bytes().chain([0])).collect()
    }

    /// A header with NAME and, per file `(path, hex digest, flags)`, a regular 0644 file, with
    /// SHA-256 as the digest algorithm.
    pub(crate) fn package_blob(name: &str, files: &[(&str, &str, u32)]) -> Vec<u8> {
        let n = files.len() as u32;
        let split: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, _, _)| p.split_at(p.rfind('/').unwrap() + 1))
            .collect();
        let mut dirs: Vec<&str> = split.iter().map(|(d, _)| *d).collect();
        dirs.dedup();
        let dirindexes: Vec<u8> = split
            .iter()
            .flat_map(|(d, _)| (dirs.iter().position(|x| x == d).unwrap() as u32).to_be_bytes())
            .collect();
        let bases: Vec<&str> = split.iter().map(|(_, b)| *b).collect();
        let digests: Vec<&str> = files.iter().map(|(_, d, _)| *d).collect();
        encode(&[
            (tag::NAME, ty::STRING, 1, strs(&[name])),
            (
                tag::FILEMODES,
                ty::INT16,
                n,
                files
                    .iter()
                    .flat_map(|_| 0o100_644u16.to_be_bytes())
                    .collect(),
            ),
            (tag::FILEDIGESTS, ty::STRING_ARRAY, n, strs(&digests)),
            (
                tag::FILEFLAGS,
                ty::INT32,
                n,
                files.iter().flat_map(|(_, _, f)| f.to_be_bytes()).collect(),
            ),
            (tag::DIRINDEXES, ty::INT32, n, dirindexes),
            (tag::BASENAMES, ty::STRING_ARRAY, n, strs(&bases)),
            (
                tag::DIRNAMES,
                ty::STRING_ARRAY,
                dirs.len() as u32,
                strs(&dirs),
            ),
            (
                tag::FILEDIGESTALGO,
                ty::INT32,
                1,
                8u32.to_be_bytes().to_vec(),
            ),
        ])
    }

    const D1: &str = "8d0d4c8a1e6ab75ae2f81abf1e1e66ce1ab7be53c7b8f245a41907fc45b3a801";

    fn name_entry() -> RawEntry {
        (tag::NAME, ty::STRING, 1, strs(&["p"]))
    }

    /// A package with one file, whose entries the cases below corrupt one at a time.
    fn file_entries() -> Vec<RawEntry> {
        vec![
            name_entry(),
            (
                tag::FILEMODES,
                ty::INT16,
                1,
                0o100_755u16.to_be_bytes().to_vec(),
            ),
            (tag::FILEDIGESTS, ty::STRING_ARRAY, 1, strs(&[D1])),
            (tag::DIRINDEXES, ty::INT32, 1, 0u32.to_be_bytes().to_vec()),
            (tag::BASENAMES, ty::STRING_ARRAY, 1, strs(&["tool"])),
            (tag::DIRNAMES, ty::STRING_ARRAY, 1, strs(&["/opt/gh/"])),
            (
                tag::FILEDIGESTALGO,
                ty::INT32,
                1,
                8u32.to_be_bytes().to_vec(),
            ),
        ]
    }

    fn with(tag: u32, f: impl Fn(&mut RawEntry)) -> Vec<u8> {
        let mut e = file_entries();
        e.iter_mut().filter(|e| e.0 == tag).for_each(f);
        encode(&e)
    }

    fn without(tag: u32) -> Vec<u8> {
        let mut e = file_entries();
        e.retain(|e| e.0 != tag);
        encode(&e)
    }

    #[test]
    fn malformed_headers_table() {
        let good = encode(&file_entries());
        let mut huge_il = good.clone();
        huge_il[..4].copy_from_slice(&(MAX_ENTRIES + 1).to_be_bytes());
        let mut huge_dl = good.clone();
        huge_dl[4..8].copy_from_slice(&(MAX_DATA + 1).to_be_bytes());
        let mut trailing = good.clone();
        trailing.push(0);
        let bad = |tag, why| Err(HeaderError::BadEntry { tag, why });
        let cases: Vec<(&str, Vec<u8>, Result<usize, HeaderError>)> = vec![
            ("well formed", good.clone(), Ok(1)),
            (
                "empty",
                vec![],
                Err(HeaderError::Truncated {
                    what: "the intro",
                    need: 8,
                    have: 0,
                }),
            ),
            (
                "cut in the data store",
                good[..good.len() - 1].to_vec(),
                Err(HeaderError::Truncated {
                    what: "the index and data store",
                    need: good.len() as u64,
                    have: good.len() - 1,
                }),
            ),
            (
                "no entries",
                vec![0; 8],
                Err(HeaderError::TooManyEntries(0)),
            ),
            (
                "too many entries",
                huge_il,
                Err(HeaderError::TooManyEntries(MAX_ENTRIES + 1)),
            ),
            (
                "data over the limit",
                huge_dl,
                Err(HeaderError::DataTooLarge(MAX_DATA + 1)),
            ),
            ("trailing byte", trailing, Err(HeaderError::Trailing(1))),
            (
                "no name",
                without(tag::NAME),
                Err(HeaderError::Missing(tag::NAME)),
            ),
            (
                "name of the wrong type",
                with(tag::NAME, |e| e.1 = ty::INT32),
                bad(tag::NAME, "has an unexpected data type"),
            ),
            (
                "name without NUL",
                encode(&[(tag::NAME, ty::STRING, 1, b"p".to_vec())]),
                bad(tag::NAME, "has a string without its terminating NUL"),
            ),
            (
                "name count 2",
                with(tag::NAME, |e| e.2 = 2),
                bad(tag::NAME, "is a string with a count other than 1"),
            ),
            (
                "basenames count over the bytes",
                with(tag::BASENAMES, |e| e.2 = 1000),
                bad(tag::BASENAMES, "has more strings than bytes"),
            ),
            (
                "basenames count over the cap",
                with(tag::BASENAMES, |e| e.2 = u32::MAX),
                bad(tag::BASENAMES, "has more elements than the parser accepts"),
            ),
            (
                "basenames count zero",
                with(tag::BASENAMES, |e| e.2 = 0),
                bad(tag::BASENAMES, "has no elements"),
            ),
            (
                "dirindex past dirnames",
                with(tag::DIRINDEXES, |e| e.3 = 7u32.to_be_bytes().to_vec()),
                bad(tag::DIRINDEXES, "points past DIRNAMES"),
            ),
            (
                "dirindexes count differs",
                with(tag::DIRINDEXES, |e| {
                    e.2 = 2;
                    e.3 = [0u32.to_be_bytes(), 0u32.to_be_bytes()].concat();
                }),
                bad(
                    tag::DIRINDEXES,
                    "has a different element count than BASENAMES",
                ),
            ),
            (
                "no dirnames",
                without(tag::DIRNAMES),
                Err(HeaderError::Missing(tag::DIRNAMES)),
            ),
            (
                "no modes",
                without(tag::FILEMODES),
                Err(HeaderError::Missing(tag::FILEMODES)),
            ),
            ("no files at all", encode(&[name_entry()]), Ok(0)),
        ];
        for (what, blob, want) in cases {
            let got = Header::parse(&blob)
                .and_then(|h| h.package())
                .map(|p| p.files.len());
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn fixed_arrays_past_the_end() {
        // An INT32 array whose count runs past the end of the data store.
        let blob = encode(&[
            name_entry(),
            (tag::DIRINDEXES, ty::INT32, 3, 0u32.to_be_bytes().to_vec()),
        ]);
        let h = Header::parse(&blob).unwrap();
        assert_eq!(
            h.u32s(tag::DIRINDEXES),
            Err(HeaderError::BadEntry {
                tag: tag::DIRINDEXES,
                why: "runs past the data store"
            })
        );
        // An offset past the data store.
        let mut blob = encode(&[name_entry()]);
        blob[8 + 8..8 + 12].copy_from_slice(&100u32.to_be_bytes());
        assert_eq!(
            Header::parse(&blob).unwrap().string(tag::NAME),
            Err(HeaderError::BadEntry {
                tag: tag::NAME,
                why: "points past the data store"
            })
        );
    }

    #[test]
    fn file_extraction_table() {
        let sha = |d: &str| {
            let mut v = vec![0u8; 32];
            hex::decode_to_slice(d, &mut v).unwrap();
            Ok((DigestAlgo::Sha256, v.into_boxed_slice()))
        };
        type Want = Vec<(
            &'static str,
            Result<(DigestAlgo, Box<[u8]>), &'static str>,
            bool,
        )>;
        let cases: Vec<(&str, Vec<u8>, Want)> = vec![
            (
                "regular file",
                encode(&file_entries()),
                vec![("/opt/gh/tool", sha(D1), false)],
            ),
            (
                "config file",
                encode(
                    &[
                        file_entries(),
                        vec![(
                            tag::FILEFLAGS,
                            ty::INT32,
                            1,
                            FILE_CONFIG.to_be_bytes().to_vec(),
                        )],
                    ]
                    .concat(),
                ),
                vec![("/opt/gh/tool", sha(D1), true)],
            ),
            (
                "ghost file",
                encode(
                    &[
                        file_entries(),
                        vec![(
                            tag::FILEFLAGS,
                            ty::INT32,
                            1,
                            FILE_GHOST.to_be_bytes().to_vec(),
                        )],
                    ]
                    .concat(),
                ),
                vec![],
            ),
            (
                "symlink",
                with(tag::FILEMODES, |e| {
                    e.3 = 0o120_777u16.to_be_bytes().to_vec()
                }),
                vec![],
            ),
            (
                "SHA-1 package",
                with(tag::FILEDIGESTALGO, |e| e.3 = 2u32.to_be_bytes().to_vec()),
                vec![(
                    "/opt/gh/tool",
                    Err("its package's digest algorithm is not MD5 or SHA-2"),
                    false,
                )],
            ),
            (
                "no algorithm tag means MD5: a SHA-256-long digest is malformed",
                without(tag::FILEDIGESTALGO),
                vec![(
                    "/opt/gh/tool",
                    Err("its recorded digest is malformed"),
                    false,
                )],
            ),
            (
                "empty digest",
                with(tag::FILEDIGESTS, |e| e.3 = vec![0]),
                vec![(
                    "/opt/gh/tool",
                    Err("its package records no digest for it"),
                    false,
                )],
            ),
            (
                "no digests",
                without(tag::FILEDIGESTS),
                vec![(
                    "/opt/gh/tool",
                    Err("its package records no file digests"),
                    false,
                )],
            ),
            (
                "relative dirname",
                with(tag::DIRNAMES, |e| e.3 = strs(&["opt/"])),
                vec![],
            ),
        ];
        for (what, blob, want) in cases {
            let got: Vec<_> = Header::parse(&blob)
                .and_then(|h| h.package())
                .unwrap_or_else(|e| panic!("{what}: {e}"))
                .files
                .into_iter()
                .map(|f| (f.path, f.digest, f.config))
                .collect();
            let want: Vec<_> = want
                .into_iter()
                .map(|(p, d, c)| (p.to_owned(), d, c))
                .collect();
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn label_is_name_version_release_arch() {
        let blob = encode(&[
            name_entry(),
            (tag::VERSION, ty::STRING, 1, strs(&["1.0"])),
            (tag::RELEASE, ty::STRING, 1, strs(&["1.el9"])),
            (tag::ARCH, ty::STRING, 1, strs(&["x86_64"])),
        ]);
        let p = Header::parse(&blob).unwrap().package().unwrap();
        assert_eq!(p.label, "p-1.0-1.el9.x86_64");
    }

    use proptest::prelude::*;

    /// Entries with the tags the parser reads (and one it does not), any type, a count that is
    /// usually small but sometimes huge, and random data.
    fn raw_entry() -> impl Strategy<Value = RawEntry> {
        let tags = prop::sample::select(vec![
            tag::NAME,
            tag::VERSION,
            tag::FILEMODES,
            tag::FILEDIGESTS,
            tag::FILEFLAGS,
            tag::DIRINDEXES,
            tag::BASENAMES,
            tag::DIRNAMES,
            tag::FILEDIGESTALGO,
            63,
        ]);
        let count = prop_oneof![4 => 0u32..8, 1 => any::<u32>()];
        let data = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            prop::collection::vec(prop::sample::select(vec![0u8, b'/', b'a', 0x81]), 0..64),
        ];
        (tags, 0u32..12, count, data)
    }

    proptest! {
        /// Random headers parse or fail cleanly; what they yield is absolute and no larger than
        /// what they declare.
        #[test]
        fn random_headers_never_panic(entries in prop::collection::vec(raw_entry(), 1..12)) {
            let blob = encode(&entries);
            if let Ok(p) = Header::parse(&blob).and_then(|h| h.package()) {
                let declared = entries
                    .iter()
                    .find(|e| e.0 == tag::BASENAMES)
                    .map_or(0, |e| e.2 as usize);
                prop_assert!(p.files.len() <= declared);
                prop_assert!(p.files.iter().all(|f| f.path.starts_with('/')));
            }
        }
    }

    /// Every truncation and every single-byte corruption of a real-shaped header parses or fails
    /// cleanly: no panic, no allocation beyond the caps.
    #[test]
    fn header_parser_never_panics() {
        let good = package_blob(
            "pkg",
            &[("/usr/bin/a", D1, 0), ("/etc/a.conf", D1, FILE_CONFIG)],
        );
        for cut in 0..good.len() {
            let _ = Header::parse(&good[..cut]).and_then(|h| h.package());
        }
        for at in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut b = good.clone();
                b[at] = v;
                let _ = Header::parse(&b).and_then(|h| h.package());
            }
        }
    }
}
