//! Volume metadata for mount decisions from DiskArbitration: removability, bus (device
//! protocol), encryption, volume UUID and kind. The mount message has none of these.
#![expect(
    unsafe_code,
    reason = "DiskArbitration calls and CoreFoundation casts are FFI; each block has a SAFETY proof"
)]

use std::ffi::CString;
use std::ptr::NonNull;
use std::time::Instant;

use model::{MountInfo, VolumeBus, VolumeInfo};
use objc2_core_foundation::{
    CFBoolean, CFDictionary, CFRetained, CFString, CFType, CFUUID, kCFAllocatorDefault,
};
use objc2_disk_arbitration::{
    DADisk, DASession, kDADiskDescriptionDeviceInternalKey, kDADiskDescriptionDeviceProtocolKey,
    kDADiskDescriptionMediaEncryptedKey, kDADiskDescriptionMediaRemovableKey,
    kDADiskDescriptionVolumeKindKey, kDADiskDescriptionVolumeNetworkKey,
    kDADiskDescriptionVolumeUUIDKey,
};

use crate::analyzer::{AnalysisError, VolumeInspector};
use crate::disk_names::{bsd_name, bus_from_protocol};

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
                NonNull::new(c_name.as_ptr().cast_mut()).ok_or_else(|| {
                    AnalysisError::Internal("CString pointer was NULL".to_owned())
                })?,
            )
        }
        .ok_or_else(|| AnalysisError::BadRequest(format!("no disk {name} in DiskArbitration")))?;
        // SAFETY: live disk; returns a +1 dictionary or NULL.
        let desc = unsafe { disk.description() }.ok_or_else(|| {
            AnalysisError::Internal(format!("DADiskCopyDescription({name}) returned NULL"))
        })?;
        // SAFETY: DiskArbitration description dictionaries have CFString keys and CF values;
        // every value is type-checked (`downcast`) before use.
        let desc: CFRetained<Description> = unsafe { CFRetained::cast_unchecked(desc) };
        // SAFETY: the `kDADiskDescription*` keys are constant CFStrings DiskArbitration exports.
        let (
            removable_key,
            protocol_key,
            network_key,
            encrypted_key,
            uuid_key,
            kind_key,
            internal_key,
        ) = unsafe {
            (
                kDADiskDescriptionMediaRemovableKey,
                kDADiskDescriptionDeviceProtocolKey,
                kDADiskDescriptionVolumeNetworkKey,
                kDADiskDescriptionMediaEncryptedKey,
                kDADiskDescriptionVolumeUUIDKey,
                kDADiskDescriptionVolumeKindKey,
                kDADiskDescriptionDeviceInternalKey,
            )
        };
        let network = flag(&desc, network_key).unwrap_or(false);
        let internal = flag(&desc, internal_key).unwrap_or(false);
        // The mount policy's scope is "external and removable media": a disk that is not
        // internal (a USB or Thunderbolt SSD) counts as removable even if its media is fixed.
        let removable = flag(&desc, removable_key).unwrap_or(false) || !internal;
        let protocol = string(&desc, protocol_key);
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
}
