//! The raw libxpc declarations this crate uses (`<xpc/xpc.h>`, `<xpc/connection.h>`), and
//! nothing else. libxpc lives in libSystem, which every macOS binary links already.
#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    reason = "names match the C headers so they can be checked against them"
)]

use std::ffi::{c_char, c_int, c_void};

use dispatch2::DispatchQueue;

/// `struct _xpc_object_s` (opaque). Every XPC object is reference counted.
#[repr(C)]
pub struct xpc_object_s {
    _opaque: [u8; 0],
}

/// `struct _xpc_type_s` (opaque); types are compared by address.
#[repr(C)]
pub struct xpc_type_s {
    _opaque: [u8; 0],
}

pub type xpc_object_t = *mut xpc_object_s;
pub type xpc_connection_t = xpc_object_t;
pub type xpc_type_t = *const xpc_type_s;

/// `xpc_handler_t`: `void (^)(xpc_object_t)`. The block's argument is `void *` so that
/// `block2` can encode it; it is the same pointer.
pub type xpc_handler_t = block2::Block<dyn Fn(*mut c_void)>;

/// `XPC_CONNECTION_MACH_SERVICE_LISTENER`.
pub const XPC_CONNECTION_MACH_SERVICE_LISTENER: u64 = 1 << 0;
/// `XPC_CONNECTION_MACH_SERVICE_PRIVILEGED`: look the service up in the system (root)
/// bootstrap, where launchd daemons such as the helper live.
pub const XPC_CONNECTION_MACH_SERVICE_PRIVILEGED: u64 = 1 << 1;

unsafe extern "C" {
    pub static _xpc_type_error: xpc_type_s;
    pub static _xpc_type_dictionary: xpc_type_s;
    pub static _xpc_type_connection: xpc_type_s;

    pub static _xpc_error_connection_interrupted: xpc_object_s;
    pub static _xpc_error_connection_invalid: xpc_object_s;
    pub static _xpc_error_termination_imminent: xpc_object_s;
    /// macOS 12+.
    pub static _xpc_error_peer_code_signing_requirement: xpc_object_s;
    pub static _xpc_error_key_description: *const c_char;

    pub fn xpc_retain(object: xpc_object_t) -> xpc_object_t;
    pub fn xpc_release(object: xpc_object_t);
    pub fn xpc_get_type(object: xpc_object_t) -> xpc_type_t;

    pub fn xpc_dictionary_create(
        keys: *const *const c_char,
        values: *const xpc_object_t,
        count: usize,
    ) -> xpc_object_t;
    pub fn xpc_dictionary_create_reply(original: xpc_object_t) -> xpc_object_t;
    pub fn xpc_dictionary_set_data(
        xdict: xpc_object_t,
        key: *const c_char,
        bytes: *const c_void,
        length: usize,
    );
    pub fn xpc_dictionary_get_data(
        xdict: xpc_object_t,
        key: *const c_char,
        length: *mut usize,
    ) -> *const c_void;
    pub fn xpc_dictionary_set_uint64(xdict: xpc_object_t, key: *const c_char, value: u64);
    pub fn xpc_dictionary_get_uint64(xdict: xpc_object_t, key: *const c_char) -> u64;
    pub fn xpc_dictionary_get_string(xdict: xpc_object_t, key: *const c_char) -> *const c_char;

    pub fn xpc_connection_create_mach_service(
        name: *const c_char,
        targetq: Option<&DispatchQueue>,
        flags: u64,
    ) -> xpc_connection_t;
    pub fn xpc_connection_set_event_handler(connection: xpc_connection_t, handler: &xpc_handler_t);
    pub fn xpc_connection_resume(connection: xpc_connection_t);
    pub fn xpc_connection_cancel(connection: xpc_connection_t);
    pub fn xpc_connection_send_message(connection: xpc_connection_t, message: xpc_object_t);
    pub fn xpc_connection_send_message_with_reply(
        connection: xpc_connection_t,
        message: xpc_object_t,
        replyq: Option<&DispatchQueue>,
        handler: &xpc_handler_t,
    );
    /// macOS 12+. Returns 0, or `EINVAL` for a requirement string that does not parse.
    pub fn xpc_connection_set_peer_code_signing_requirement(
        connection: xpc_connection_t,
        requirement: *const c_char,
    ) -> c_int;
    pub fn xpc_connection_get_pid(connection: xpc_connection_t) -> i32;
    pub fn xpc_connection_get_euid(connection: xpc_connection_t) -> u32;
    /// Not in the public headers, but exported by libxpc on every macOS we support and used by
    /// Apple's own daemons (and by Santa, through `NSXPCConnection.auditToken`): the audit
    /// token of the last message received on the connection, stamped by the kernel. The
    /// public alternative, a pid, names whoever holds that pid when it is read.
    pub fn xpc_connection_get_audit_token(connection: xpc_connection_t, token: *mut [u32; 8]);
}

/// `XPC_TYPE_ERROR` and friends are the addresses of these statics (taking an address reads
/// nothing, so it is safe).
pub fn type_error() -> xpc_type_t {
    &raw const _xpc_type_error
}

pub fn type_dictionary() -> xpc_type_t {
    &raw const _xpc_type_dictionary
}

pub fn type_connection() -> xpc_type_t {
    &raw const _xpc_type_connection
}
