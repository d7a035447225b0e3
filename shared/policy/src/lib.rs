//! Gatehouse's pure policy engine: parses and validates TOML policies, compiles them into
//! lookup structures, and decides events without I/O, locks or unsafe code.
#![forbid(unsafe_code)]
