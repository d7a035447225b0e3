//! An audit token for a pid: `task_name_for_pid`, `task_info(TASK_AUDIT_TOKEN)`, then the
//! task-name port released. `endpoint_sec::AuditToken::from_pid` never deallocates the port,
//! leaking one Mach port right per call (issue 10 item 6).

use mach2::kern_return::{KERN_SUCCESS, kern_return_t};
use mach2::mach_port::mach_port_deallocate;
use mach2::port::{MACH_PORT_NULL, mach_port_name_t};
use mach2::task::task_info;
use mach2::task_info::{TASK_AUDIT_TOKEN, TASK_AUDIT_TOKEN_COUNT};
use mach2::traps::mach_task_self;

use crate::sys::macos::api::AuditToken;

unsafe extern "C" {
    // Not in mach2; libSystem exports it (<mach/mach_traps.h>).
    fn task_name_for_pid(
        target_tport: mach_port_name_t,
        pid: libc::c_int,
        tn: *mut mach_port_name_t,
    ) -> kern_return_t;
}

/// The audit token of the process with `pid` now, or the failing `kern_return_t`.
///
/// A pid names whoever holds it at the call; callers use this only for a pid the kernel told
/// them (our own, a connected peer's) and mute the token, which names one incarnation.
pub fn for_pid(pid: u32) -> Result<AuditToken, kern_return_t> {
    let pid = libc::c_int::try_from(pid).map_err(|_| mach2::kern_return::KERN_INVALID_ARGUMENT)?;
    let mut name: mach_port_name_t = MACH_PORT_NULL;
    // SAFETY: `mach_task_self` reads a static; `name` is a valid out-pointer.
    let rc = unsafe { task_name_for_pid(mach_task_self(), pid, &mut name) };
    if rc != KERN_SUCCESS {
        return Err(rc);
    }
    let mut val = [0u32; 8];
    let mut count = TASK_AUDIT_TOKEN_COUNT;
    // SAFETY: `name` is a task-name right we hold; `val` is a writable buffer of
    // TASK_AUDIT_TOKEN_COUNT natural_t words, which `count` states.
    let rc = unsafe { task_info(name, TASK_AUDIT_TOKEN, val.as_mut_ptr().cast(), &mut count) };
    // SAFETY: `name` is a right we hold and no longer use; releasing it is the fix.
    let _ = unsafe { mach_port_deallocate(mach_task_self(), name) };
    if rc != KERN_SUCCESS {
        return Err(rc);
    }
    Ok(AuditToken(val))
}
