//! Fixed-size digests (SHA-256, CDHash) that print and parse as lower-case hex.
//!
//! Hashes compare lower-case (docs/DESIGN.md 3a), so they are stored as bytes and only ever rendered
//! lower-case; parsing accepts either case so that policies written by hand still load.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A digest string that is not the expected number of hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected} hex characters for a {what}, found {found:?}")]
pub struct DigestError {
    pub what: &'static str,
    pub expected: usize,
    pub found: String,
}

macro_rules! digest_type {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Number of bytes in this digest.
            pub const LEN: usize = $len;

            /// Lower-case hex form, as written in policies and logs.
            pub fn to_hex(self) -> String {
                hex::encode(self.0)
            }
        }

        impl FromStr for $name {
            type Err = DigestError;
            fn from_str(s: &str) -> Result<Self, DigestError> {
                let err = || DigestError { what: $what, expected: $len * 2, found: s.to_owned() };
                if s.len() != $len * 2 {
                    return Err(err());
                }
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).map_err(|_| err())?;
                Ok(Self(out))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        // Hex in human formats (JSON, TOML), raw bytes in binary ones (the wire).
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; $len]>::deserialize(d).map(Self)
                }
            }
        }
    };
}

digest_type!(
    /// SHA-256 of a file's contents or of a certificate.
    Sha256, 32, "SHA-256"
);
digest_type!(
    /// A code directory hash as the kernel reports it (20 bytes, truncated SHA-256 or SHA-1).
    CdHash, 20, "CDHash"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let lower = "a".repeat(64);
        let upper = "A".repeat(64);
        let cases: &[(&str, bool)] = &[
            (&lower, true),
            (&upper, true),
            ("abc", false),
            (&"g".repeat(64), false),
            (&"a".repeat(66), false),
            ("", false),
        ];
        for (input, ok) in cases {
            assert_eq!(input.parse::<Sha256>().is_ok(), *ok, "{input:?}");
        }
        assert_eq!(
            upper.parse::<Sha256>().unwrap().to_hex(),
            lower,
            "renders lower-case"
        );
    }

    #[test]
    fn json_round_trip_is_hex() {
        let d = CdHash([0xab; 20]);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(20)));
        assert_eq!(serde_json::from_str::<CdHash>(&json).unwrap(), d);
    }
}
