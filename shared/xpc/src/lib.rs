//! A small hand-written libxpc binding on `block2` + `dispatch2`: a mach-service listener for the
//! helper, a client for the extension, dictionary messages with a data field carrying protocol
//! frames, asynchronous replies, and the peer code-signing requirement check. Empty on other OSes.
#![cfg_attr(not(target_os = "macos"), forbid(unsafe_code))]
