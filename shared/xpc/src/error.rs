//! Errors of the XPC binding, each saying what failed and what to do.
#![forbid(unsafe_code)]

/// An XPC failure. Connection errors are what libxpc delivers to handlers; the rest are ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XpcError {
    /// `XPC_ERROR_CONNECTION_INTERRUPTED`: the peer went away (crashed, restarted). The
    /// connection is still usable; the next message relaunches an on-demand service.
    #[error("XPC connection to {service} interrupted (peer exited or restarted); retrying later")]
    Interrupted { service: String },
    /// `XPC_ERROR_CONNECTION_INVALID`: the service does not exist or the connection was
    /// cancelled. Nothing will ever be delivered on it again.
    #[error(
        "XPC connection to {service} is invalid: is the launchd job that advertises it loaded? (`launchctl print system/{service}`)"
    )]
    Invalid { service: String },
    /// `XPC_ERROR_PEER_CODE_SIGNING_REQUIREMENT`: the peer is not signed as required.
    #[error("XPC peer of {service} does not satisfy the code-signing requirement; refusing it")]
    PeerRequirement { service: String },
    /// `XPC_ERROR_TERMINATION_IMMINENT`.
    #[error("XPC: this process is about to be terminated by launchd")]
    TerminationImminent,
    /// Another error object from libxpc.
    #[error("XPC error on {service}: {description}")]
    Other {
        service: String,
        description: String,
    },
    /// No reply arrived within the request's budget; the reply, if it ever comes, is dropped.
    #[error("no XPC reply from {service} within {timeout_ms} ms")]
    Timeout { service: String, timeout_ms: u64 },
    /// The message is not a dictionary, or has no `frame` data field.
    #[error("XPC message from {service} carries no protocol frame")]
    NoFrame { service: String },
    /// A name or requirement string contains a NUL byte.
    #[error("{what} {value:?} contains a NUL byte")]
    Nul { what: &'static str, value: String },
    /// `xpc_connection_set_peer_code_signing_requirement` refused the requirement string.
    #[error(
        "code-signing requirement {requirement:?} rejected by libxpc (error {code}); check its syntax with `csreq -r='...' -t`"
    )]
    BadRequirement { requirement: String, code: i32 },
    /// libxpc returned NULL where it documents an object.
    #[error("libxpc returned NULL from {call}")]
    Null { call: &'static str },
}
