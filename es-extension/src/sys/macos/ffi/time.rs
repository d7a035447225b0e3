//! Mach absolute time: the clock ES deadlines are written in.

use std::sync::OnceLock;

use crate::sys::macos::convert::Timebase;

#[repr(C)]
struct MachTimebaseInfo {
    numer: u32,
    denom: u32,
}

// Declared here rather than through `libc`, whose Mach bindings are deprecated in favour of a
// crate we do not otherwise need; both functions are in libSystem.
unsafe extern "C" {
    fn mach_absolute_time() -> u64;
    fn mach_timebase_info(info: *mut MachTimebaseInfo) -> i32;
}

/// The current mach absolute time.
pub fn now_ticks() -> u64 {
    // SAFETY: no arguments, no preconditions; reads the kernel's monotonic counter.
    unsafe { mach_absolute_time() }
}

/// The timebase, read once. `None` only if the kernel call fails (it does not on any shipping
/// macOS); callers then treat every deadline as the shortest one they know.
pub fn timebase() -> Option<Timebase> {
    static TB: OnceLock<Option<Timebase>> = OnceLock::new();
    *TB.get_or_init(|| {
        let mut info = MachTimebaseInfo { numer: 0, denom: 0 };
        // SAFETY: `info` is a valid, writable struct with the C layout of
        // `mach_timebase_info_data_t`.
        let rc = unsafe { mach_timebase_info(&mut info) };
        if rc != 0 {
            return None;
        }
        Timebase::new(info.numer, info.denom)
    })
}
