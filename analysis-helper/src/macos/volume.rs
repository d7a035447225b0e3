//! Volume metadata for mount decisions from DiskArbitration: removability, bus (device
//! protocol), encryption, volume UUID and kind, which the mount message lacks; and the forced
//! remount of a `remount` rule (`DADiskMountWithArguments`).
#![expect(
    unsafe_code,
    reason = "DiskArbitration calls and CoreFoundation casts are FFI; each block has a SAFETY proof"
)]

use std::ffi::{CString, c_void};
use std::ptr::NonNull;
use std::time::Instant;

use dispatch2::{DispatchQueue, DispatchRetained};
use model::{MountInfo, VolumeBus, VolumeInfo};
use objc2_core_foundation::{
    CFBoolean, CFDictionary, CFRetained, CFString, CFType, CFUUID, kCFAllocatorDefault,
};
use objc2_disk_arbitration::{
    DADisk, DADissenter, DASession, kDADiskDescriptionDeviceInternalKey,
    kDADiskDescriptionDeviceProtocolKey, kDADiskDescriptionMediaEncryptedKey,
    kDADiskDescriptionVolumeKindKey, kDADiskDescriptionVolumeNetworkKey,
    kDADiskDescriptionVolumeUUIDKey, kDADiskMountOptionDefault, kDADiskUnmountOptionDefault,
    kDADiskUnmountOptionForce,
};

use crate::analyzer::{AnalysisError, VolumeInspector};
use crate::disk_names::{bsd_name, bus_from_protocol, removable_media};

/// DiskArbitration-backed inspector. Each call opens its own session: DASession is not
/// thread-safe to share, and a session costs one mach port.
#[derive(Debug, Clone, Copy)]
pub struct DiskArbitrationVolumes;

type Description = CFDictionary<CFString, CFType>;

fn get<T: objc2_core_foundation::ConcreteType>(
    d: &Description,
    key: &CFString,
) -> Option<CFRetained<T>> {
    d.get(key)?.downcast::<T>().ok()
}

fn flag(d: &Description, key: &CFString) -> Option<bool> {
    get::<CFBoolean>(d, key).map(|b| b.as_bool())
}

fn string(d: &Description, key: &CFString) -> Option<String> {
    get::<CFString>(d, key).map(|s| s.to_string())
}

/// A DiskArbitration session and the disk behind BSD device `name`.
fn open_disk(name: &str) -> Result<(CFRetained<DASession>, CFRetained<DADisk>), AnalysisError> {
    let c_name = CString::new(name)
        .map_err(|_| AnalysisError::BadRequest(format!("device name {name:?} has a NUL")))?;
    // SAFETY: the default allocator is a valid CFAllocator (or NULL, which means default).
    let session = unsafe { DASession::new(kCFAllocatorDefault) }
        .ok_or_else(|| AnalysisError::Internal("DASessionCreate returned NULL".to_owned()))?;
    // SAFETY: live session; `c_name` is a valid NUL-terminated string for the call.
    let disk = unsafe {
        DADisk::from_bsd_name(
            kCFAllocatorDefault,
            &session,
            NonNull::new(c_name.as_ptr().cast_mut())
                .ok_or_else(|| AnalysisError::Internal("CString pointer was NULL".to_owned()))?,
        )
    }
    .ok_or_else(|| AnalysisError::BadRequest(format!("no disk {name} in DiskArbitration")))?;
    Ok((session, disk))
}

/// What a started remount keeps alive until DiskArbitration calls back: the session must stay
/// scheduled on its queue for the callback to run at all.
struct PendingRemount {
    session: CFRetained<DASession>,
    _queue: DispatchRetained<DispatchQueue>,
    mount_point: String,
    arguments: String,
}

/// `DADiskMountCallback`: reclaims the [`PendingRemount`] (called exactly once per mount
/// request) and logs how it went; nothing waits for it.
unsafe extern "C-unwind" fn remount_done(
    _disk: NonNull<DADisk>,
    dissenter: *const DADissenter,
    context: *mut c_void,
) {
    // SAFETY: `context` is the `Box<PendingRemount>` leaked in `start_remount` for this one
    // request; DiskArbitration passes it back once, so it is reclaimed exactly once.
    let pending = unsafe { Box::from_raw(context.cast::<PendingRemount>()) };
    // SAFETY: a non-NULL dissenter is a live DADissenter for the duration of the callback.
    match unsafe { dissenter.as_ref() } {
        None => tracing::info!(
            mount_point = %pending.mount_point,
            arguments = %pending.arguments,
            "volume remounted with the rule's flags"
        ),
        Some(d) => {
            // SAFETY: live dissenter (above).
            let status = unsafe { d.status() };
            tracing::warn!(
                mount_point = %pending.mount_point,
                arguments = %pending.arguments,
                status = format_args!("{status:#x}"),
                "DiskArbitration refused the forced remount; the volume stays unmounted"
            );
        }
    }
    // SAFETY: unscheduling a session we own; its callbacks are done.
    unsafe { pending.session.set_dispatch_queue(None) };
}

/// What a started start-up unmount keeps alive until DiskArbitration calls back, and the mount
/// to start then.
struct PendingUnmount {
    session: CFRetained<DASession>,
    queue: DispatchRetained<DispatchQueue>,
    mount_point: String,
    then_mount: Option<Vec<&'static str>>,
}

/// Mount `disk` with `arguments`; `remount_done` reclaims the context it is given.
///
/// # Safety
/// `disk` must be live for the call; `pending.session` must be scheduled on `pending._queue`.
unsafe fn mount_with(disk: &DADisk, pending: PendingRemount, arguments: &[&'static str]) {
    let words: Vec<CFRetained<CFString>> =
        arguments.iter().map(|a| CFString::from_str(a)).collect();
    let mut argv: Vec<*const CFString> = words
        .iter()
        .map(|w| std::ptr::from_ref::<CFString>(w))
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let context = Box::into_raw(Box::new(pending));
    // SAFETY: the caller's `disk` is live; NULL path asks for the standard mount point; `argv`
    // is a NULL-terminated array of live CFStrings that DiskArbitration reads during the call
    // (Santa frees its array right after the call too); `context` is reclaimed by
    // `remount_done`, which DiskArbitration calls once for this request.
    unsafe {
        disk.mount_with_arguments(
            None,
            kDADiskMountOptionDefault,
            Some(remount_done),
            context.cast(),
            argv.as_mut_ptr(),
        );
    }
}

/// `DADiskUnmountCallback`: reclaims the [`PendingUnmount`] and, when the unmount succeeded
/// and a remount was asked for, starts it (Santa's start-up tasks: unmount, then mount with the
/// updated flags).
unsafe extern "C-unwind" fn unmount_done(
    disk: NonNull<DADisk>,
    dissenter: *const DADissenter,
    context: *mut c_void,
) {
    // SAFETY: `context` is the `Box<PendingUnmount>` leaked in `start_unmount` for this one
    // request; DiskArbitration passes it back once.
    let pending = unsafe { Box::from_raw(context.cast::<PendingUnmount>()) };
    // SAFETY: a non-NULL dissenter is a live DADissenter for the duration of the callback.
    if let Some(d) = unsafe { dissenter.as_ref() } {
        // SAFETY: live dissenter (above).
        let status = unsafe { d.status() };
        tracing::warn!(
            mount_point = %pending.mount_point,
            status = format_args!("{status:#x}"),
            "DiskArbitration refused the start-up unmount; the volume stays mounted"
        );
        // SAFETY: unscheduling a session we own; its callbacks are done.
        unsafe { pending.session.set_dispatch_queue(None) };
        return;
    }
    tracing::info!(mount_point = %pending.mount_point, "volume unmounted at start-up");
    let PendingUnmount {
        session,
        queue,
        mount_point,
        then_mount,
    } = *pending;
    match then_mount {
        Some(arguments) => {
            let next = PendingRemount {
                session,
                _queue: queue,
                mount_point,
                arguments: arguments.join(","),
            };
            // SAFETY: DiskArbitration passes a live disk to the callback; the session stays
            // scheduled on its queue inside `next` until `remount_done` unschedules it.
            unsafe { mount_with(disk.as_ref(), next, &arguments) };
        }
        // SAFETY: unscheduling a session we own; its callbacks are done.
        None => unsafe { session.set_dispatch_queue(None) },
    }
}

/// The device behind `mount`, with a session scheduled on its own queue (a DiskArbitration
/// callback runs only on a scheduled session); the caller keeps all three alive until the
/// callback. `done` names the operation for the error on a non-device volume.
type Scheduled = (
    CFRetained<DASession>,
    CFRetained<DADisk>,
    DispatchRetained<DispatchQueue>,
);

fn scheduled_disk(
    mount: &MountInfo,
    deadline: Instant,
    done: &str,
) -> Result<Scheduled, AnalysisError> {
    if Instant::now() >= deadline {
        return Err(AnalysisError::DeadlineExceeded);
    }
    let name = bsd_name(&mount.source).ok_or_else(|| {
        AnalysisError::BadRequest(format!(
            "{} is not a local device: only device volumes are {done}",
            mount.source
        ))
    })?;
    let (session, disk) = open_disk(name)?;
    let queue = DispatchQueue::new("dev.gatehouse.helper.mounts", None);
    // SAFETY: live session and queue; the caller keeps the queue with the session until the
    // callback unschedules it.
    unsafe { session.set_dispatch_queue(Some(&queue)) };
    Ok((session, disk, queue))
}

impl VolumeInspector for DiskArbitrationVolumes {
    fn volume(&self, mount: &MountInfo, deadline: Instant) -> Result<VolumeInfo, AnalysisError> {
        if Instant::now() >= deadline {
            return Err(AnalysisError::DeadlineExceeded);
        }
        let Some(name) = bsd_name(&mount.source) else {
            // Not a local device: a network share or a synthetic mount.
            let network = mount.source.starts_with("//") || mount.source.contains(':');
            return Ok(VolumeInfo {
                removable: false,
                bus: if network {
                    VolumeBus::Network
                } else {
                    VolumeBus::Virtual
                },
                encrypted: false,
                uuid: None,
                fs_type: Some(mount.fs_type.clone()),
            });
        };
        let (_session, disk) = open_disk(name)?;
        // SAFETY: live disk; returns a +1 dictionary or NULL.
        let desc = unsafe { disk.description() }.ok_or_else(|| {
            AnalysisError::Internal(format!("DADiskCopyDescription({name}) returned NULL"))
        })?;
        // SAFETY: DiskArbitration description dictionaries have CFString keys and CF values;
        // every value is type-checked (`downcast`) before use.
        let desc: CFRetained<Description> = unsafe { CFRetained::cast_unchecked(desc) };
        // SAFETY: the `kDADiskDescription*` keys are constant CFStrings DiskArbitration exports.
        let (protocol_key, network_key, encrypted_key, uuid_key, kind_key, internal_key) = unsafe {
            (
                kDADiskDescriptionDeviceProtocolKey,
                kDADiskDescriptionVolumeNetworkKey,
                kDADiskDescriptionMediaEncryptedKey,
                kDADiskDescriptionVolumeUUIDKey,
                kDADiskDescriptionVolumeKindKey,
                kDADiskDescriptionDeviceInternalKey,
            )
        };
        let network = flag(&desc, network_key).unwrap_or(false);
        // A missing key reads as false, as Santa's `boolValue` on nil does.
        let internal = flag(&desc, internal_key).unwrap_or(false);
        let protocol = string(&desc, protocol_key);
        let removable = removable_media(internal, protocol.as_deref());
        let uuid = get::<CFUUID>(&desc, uuid_key)
            .and_then(|u| CFUUID::new_string(None, Some(&u)))
            .map(|s| s.to_string());
        Ok(VolumeInfo {
            removable,
            bus: bus_from_protocol(protocol.as_deref(), network),
            encrypted: flag(&desc, encrypted_key).unwrap_or(false),
            uuid,
            fs_type: string(&desc, kind_key).or_else(|| Some(mount.fs_type.clone())),
        })
    }

    /// `DADiskMountWithArguments` with the forced arguments, as Santa's device manager does
    /// after denying the mount (`remount:mountMode:callback:context:`). Returns once
    /// DiskArbitration has the request; the outcome is logged from its callback.
    fn start_remount(
        &self,
        mount: &MountInfo,
        arguments: &[&'static str],
        deadline: Instant,
    ) -> Result<(), AnalysisError> {
        let (session, disk, queue) = scheduled_disk(mount, deadline, "remounted")?;
        let pending = PendingRemount {
            session,
            _queue: queue,
            mount_point: mount.mount_point.clone(),
            arguments: arguments.join(","),
        };
        // SAFETY: live disk; the session is scheduled on the queue `pending` keeps.
        unsafe { mount_with(&disk, pending, arguments) };
        Ok(())
    }

    /// `DADiskUnmount` (forced when asked), then the mount again from its callback, as Santa's
    /// `performStartupTasks:` does for volumes mounted before it started.
    fn start_unmount(
        &self,
        mount: &MountInfo,
        force: bool,
        then_mount: Option<&[&'static str]>,
        deadline: Instant,
    ) -> Result<(), AnalysisError> {
        let (session, disk, queue) = scheduled_disk(mount, deadline, "unmounted")?;
        let context = Box::into_raw(Box::new(PendingUnmount {
            session,
            queue,
            mount_point: mount.mount_point.clone(),
            then_mount: then_mount.map(<[&'static str]>::to_vec),
        }));
        let options = if force {
            kDADiskUnmountOptionForce
        } else {
            kDADiskUnmountOptionDefault
        };
        // SAFETY: live disk; `context` is reclaimed by `unmount_done`, which DiskArbitration
        // calls once for this request.
        unsafe { disk.unmount(options, Some(unmount_done), context.cast()) };
        Ok(())
    }
}
