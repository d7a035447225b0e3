//! Owned XPC objects (retain/release) and the `Message` dictionary that carries one protocol
//! frame in its `frame` data field.

use std::ffi::{CStr, c_void};
use std::ptr::NonNull;

use crate::sys;

/// What a message's frame holds. XPC keeps message boundaries but a stream's "first frame is
/// the hello" convention does not survive on a connection that libxpc may re-establish, so every
/// message says what it is: the version handshake, or a request envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum FrameKind {
    /// `protocol::Hello` / `protocol::HelloReply`.
    Hello = 1,
    /// `protocol::Request<HelperRequest>` / `protocol::Response<HelperResponse>`.
    Envelope = 2,
    /// `protocol::NoticeRequest` / `protocol::NoticeBatch` (the extension's block notices).
    Notice = 3,
}

impl FrameKind {
    pub fn from_u64(v: u64) -> Option<Self> {
        match v {
            1 => Some(Self::Hello),
            2 => Some(Self::Envelope),
            3 => Some(Self::Notice),
            _ => None,
        }
    }
}

/// One strong reference to an XPC object; dropped with `xpc_release`.
#[derive(Debug)]
pub(crate) struct Object(NonNull<sys::xpc_object_s>);

// SAFETY: XPC objects are reference counted with atomic operations and may be retained, released
// and sent from any thread. Mutation of dictionaries goes through `&mut Message`, which the
// borrow checker keeps to one thread at a time.
unsafe impl Send for Object {}
// SAFETY: shared references only read (type, data fields) or call thread-safe connection
// functions; libxpc connections are documented as usable from any thread.
unsafe impl Sync for Object {}

impl Object {
    /// Take ownership of a +1 reference (a `_create` result).
    ///
    /// # Safety
    /// `raw` must be a live XPC object whose +1 reference the caller transfers to us.
    pub(crate) unsafe fn from_owned(raw: sys::xpc_object_t) -> Option<Self> {
        NonNull::new(raw).map(Self)
    }

    /// Retain an object we were lent (a handler argument).
    ///
    /// # Safety
    /// `raw` must be a live XPC object for the duration of this call.
    pub(crate) unsafe fn retain(raw: sys::xpc_object_t) -> Option<Self> {
        let nn = NonNull::new(raw)?;
        // SAFETY: the caller guarantees `raw` is live; xpc_retain adds the reference we own.
        unsafe { sys::xpc_retain(nn.as_ptr()) };
        Some(Self(nn))
    }

    pub(crate) fn as_ptr(&self) -> sys::xpc_object_t {
        self.0.as_ptr()
    }

    pub(crate) fn type_(&self) -> sys::xpc_type_t {
        // SAFETY: `self` holds a reference, so the object is live.
        unsafe { sys::xpc_get_type(self.as_ptr()) }
    }
}

impl Clone for Object {
    fn clone(&self) -> Self {
        // SAFETY: `self` is live; the new reference belongs to the clone.
        unsafe { sys::xpc_retain(self.as_ptr()) };
        Self(self.0)
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        // SAFETY: we own exactly one reference and give it up here.
        unsafe { sys::xpc_release(self.as_ptr()) }
    }
}

/// An XPC dictionary message. Gatehouse puts one protocol frame (`protocol::frame`) in the
/// `frame` data field; libxpc does the message boundaries, and the frame's own length prefix
/// and size limit are still checked by the receiver.
#[derive(Debug)]
pub struct Message(pub(crate) Object);

impl Message {
    /// The data field that carries the protocol frame.
    pub const FRAME_KEY: &'static CStr = c"frame";
    /// The integer field that says what the frame is ([`FrameKind`]).
    pub const KIND_KEY: &'static CStr = c"kind";

    /// An empty dictionary.
    pub fn new() -> Self {
        // SAFETY: a zero-length dictionary needs no key or value arrays (NULL is allowed with a
        // count of 0); the result is a +1 reference we take.
        let raw = unsafe { sys::xpc_dictionary_create(std::ptr::null(), std::ptr::null(), 0) };
        // SAFETY: `raw` is the +1 reference xpc_dictionary_create returned.
        let obj = unsafe { Object::from_owned(raw) };
        // libxpc aborts the process on allocation failure rather than returning NULL.
        Self(obj.unwrap_or_else(|| std::process::abort()))
    }

    /// A message carrying `frame` of `kind`.
    pub fn with_frame(kind: FrameKind, frame: &[u8]) -> Self {
        let mut m = Self::new();
        m.set_u64(Self::KIND_KEY, kind as u64);
        m.set_data(Self::FRAME_KEY, frame);
        m
    }

    /// The `kind` field, if it names a known [`FrameKind`].
    pub fn kind(&self) -> Option<FrameKind> {
        FrameKind::from_u64(self.u64(Self::KIND_KEY))
    }

    /// Wrap a dictionary lent to a handler. `None` if it is not a dictionary.
    ///
    /// # Safety
    /// `raw` must be a live XPC object for the duration of this call.
    pub(crate) unsafe fn from_borrowed_dictionary(raw: sys::xpc_object_t) -> Option<Self> {
        // SAFETY: the caller guarantees `raw` is live.
        let obj = unsafe { Object::retain(raw) }?;
        (obj.type_() == sys::type_dictionary()).then_some(Self(obj))
    }

    pub fn set_data(&mut self, key: &CStr, bytes: &[u8]) {
        // SAFETY: `self.0` is a live dictionary we hold exclusively (&mut); key is a valid C
        // string; libxpc copies `bytes` (pointer and length from one slice) before returning.
        unsafe {
            sys::xpc_dictionary_set_data(
                self.0.as_ptr(),
                key.as_ptr(),
                bytes.as_ptr().cast::<c_void>(),
                bytes.len(),
            )
        }
    }

    /// A copy of the data field `key`, or `None` if there is none.
    pub fn data(&self, key: &CStr) -> Option<Vec<u8>> {
        let mut len = 0usize;
        // SAFETY: `self.0` is a live dictionary; `len` is a valid out-pointer.
        let ptr = unsafe { sys::xpc_dictionary_get_data(self.0.as_ptr(), key.as_ptr(), &mut len) };
        if ptr.is_null() {
            return None;
        }
        // SAFETY: libxpc returns a pointer to `len` bytes owned by the dictionary, valid while
        // the dictionary lives and is not mutated; we hold a reference and copy at once.
        let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
        Some(bytes.to_vec())
    }

    /// The protocol frame this message carries.
    pub fn frame(&self) -> Option<Vec<u8>> {
        self.data(Self::FRAME_KEY)
    }

    pub fn set_u64(&mut self, key: &CStr, value: u64) {
        // SAFETY: live dictionary held exclusively; valid C string key.
        unsafe { sys::xpc_dictionary_set_uint64(self.0.as_ptr(), key.as_ptr(), value) }
    }

    /// The unsigned integer field `key`; 0 when absent (libxpc's convention).
    pub fn u64(&self, key: &CStr) -> u64 {
        // SAFETY: live dictionary; valid C string key.
        unsafe { sys::xpc_dictionary_get_uint64(self.0.as_ptr(), key.as_ptr()) }
    }
}

impl Default for Message {
    fn default() -> Self {
        Self::new()
    }
}

/// What an object delivered to an event handler is.
pub(crate) enum Delivered {
    Dictionary(Message),
    Connection(Object),
    Error(ErrorKind),
    Other,
}

/// The libxpc error objects we tell apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Interrupted,
    Invalid,
    PeerRequirement,
    TerminationImminent,
    Other(String),
}

impl ErrorKind {
    pub(crate) fn into_error(self, service: &str) -> crate::XpcError {
        use crate::XpcError as E;
        let service = service.to_owned();
        match self {
            ErrorKind::Interrupted => E::Interrupted { service },
            ErrorKind::Invalid => E::Invalid { service },
            ErrorKind::PeerRequirement => E::PeerRequirement { service },
            ErrorKind::TerminationImminent => E::TerminationImminent,
            ErrorKind::Other(description) => E::Other {
                service,
                description,
            },
        }
    }
}

/// Classify an object lent to a handler.
///
/// # Safety
/// `raw` must be a live XPC object (or NULL) for the duration of this call.
pub(crate) unsafe fn classify(raw: sys::xpc_object_t) -> Delivered {
    if raw.is_null() {
        return Delivered::Other;
    }
    // SAFETY: the caller guarantees `raw` is live.
    let ty = unsafe { sys::xpc_get_type(raw) };
    if ty == sys::type_dictionary() {
        // SAFETY: live, and a dictionary.
        match unsafe { Message::from_borrowed_dictionary(raw) } {
            Some(m) => Delivered::Dictionary(m),
            None => Delivered::Other,
        }
    } else if ty == sys::type_connection() {
        // SAFETY: live; we keep our own reference.
        match unsafe { Object::retain(raw) } {
            Some(c) => Delivered::Connection(c),
            None => Delivered::Other,
        }
    } else if ty == sys::type_error() {
        // The error constants are statics: comparing addresses reads nothing.
        let is = |c: *const sys::xpc_object_s| std::ptr::eq(raw.cast_const(), c);
        let kind = if is(&raw const sys::_xpc_error_connection_interrupted) {
            ErrorKind::Interrupted
        } else if is(&raw const sys::_xpc_error_connection_invalid) {
            ErrorKind::Invalid
        } else if is(&raw const sys::_xpc_error_peer_code_signing_requirement) {
            ErrorKind::PeerRequirement
        } else if is(&raw const sys::_xpc_error_termination_imminent) {
            ErrorKind::TerminationImminent
        } else {
            // SAFETY: `raw` is a live error object (caller, and the type check above).
            ErrorKind::Other(unsafe { error_description(raw) })
        };
        Delivered::Error(kind)
    } else {
        Delivered::Other
    }
}

/// `XPC_ERROR_KEY_DESCRIPTION` of an error dictionary.
///
/// # Safety
/// `raw` must be a live XPC error object.
unsafe fn error_description(raw: sys::xpc_object_t) -> String {
    // SAFETY: `_xpc_error_key_description` is a constant C string libxpc defines; `raw` is live
    // (caller); the returned string is owned by the object and copied at once.
    unsafe {
        let key = sys::_xpc_error_key_description;
        if key.is_null() {
            return String::from("(no description)");
        }
        let s = sys::xpc_dictionary_get_string(raw, key);
        if s.is_null() {
            String::from("(no description)")
        } else {
            CStr::from_ptr(s).to_string_lossy().into_owned()
        }
    }
}

/// A C string for libxpc, or a typed error naming what contained a NUL.
pub(crate) fn c_string(
    what: &'static str,
    value: &str,
) -> Result<std::ffi::CString, crate::XpcError> {
    std::ffi::CString::new(value).map_err(|_| crate::XpcError::Nul {
        what,
        value: value.to_owned(),
    })
}
