//! Pure mappings from DiskArbitration's description values to the model, for the macOS
//! volume inspector: kept out of the macOS-only module so that they are tested on Linux too.
#![forbid(unsafe_code)]

use model::VolumeBus;

/// `DeviceProtocol` (IOKit's "Physical Interconnect") to the model's bus.
pub fn bus_from_protocol(protocol: Option<&str>, network: bool) -> VolumeBus {
    if network {
        return VolumeBus::Network;
    }
    match protocol.map(str::to_ascii_lowercase).as_deref() {
        Some("usb") => VolumeBus::Usb,
        Some("thunderbolt") => VolumeBus::Thunderbolt,
        Some("secure digital") | Some("sd") => VolumeBus::Sd,
        Some("sata") | Some("ata") => VolumeBus::Sata,
        Some("pci-express") | Some("pci") | Some("nvme") | Some("apple fabric") => VolumeBus::Nvme,
        Some("virtual interface") | Some("disk image") => VolumeBus::Virtual,
        _ => VolumeBus::Other,
    }
}

/// Whether a disk is removable media for the mount policy (`removable = true`): exactly the disks
/// Santa's device manager acts on (SNTEndpointSecurityDeviceManager.mm
/// `shouldOperateOnDiskWithProperties:`). An SD card counts even in a built-in reader (which
/// DiskArbitration calls internal); otherwise a disk must be neither internal nor a virtual
/// interface (a disk image), and then counts even with fixed, non-ejectable media (a USB4 or
/// Thunderbolt SSD). Santa's removable, ejectable and USB checks come after these and cannot
/// change the answer, so they are not inputs. Protocols compare exactly, as Santa's do.
pub fn removable_media(internal: bool, protocol: Option<&str>) -> bool {
    let secure_digital = protocol == Some("Secure Digital");
    let virtual_interface = protocol == Some("Virtual Interface");
    secure_digital || (!internal && !virtual_interface)
}

/// `/dev/disk4s1` (a mount's `f_mntfromname`) to the BSD name `disk4s1`; `None` for sources
/// that are not local devices (network shares, `map auto_home`, ...).
pub fn bsd_name(source: &str) -> Option<&str> {
    let name = source.strip_prefix("/dev/")?;
    let name = name
        .strip_prefix('r')
        .filter(|n| n.starts_with("disk"))
        .unwrap_or(name);
    (name.starts_with("disk") && !name.contains('/')).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bsd_name_table() {
        let cases = [
            ("/dev/disk4s1", Some("disk4s1")),
            ("/dev/rdisk2", Some("disk2")),
            ("//user@host/share", None),
            ("map auto_home", None),
            ("/dev/fd/3", None),
        ];
        for (src, want) in cases {
            assert_eq!(bsd_name(src), want, "{src}");
        }
    }

    /// Santa's scope, one row per disk description in SNTEndpointSecurityDeviceManagerTest.mm
    /// (and the branches of `shouldOperateOnDiskWithProperties:` it has no test for).
    #[test]
    fn removable_media_table() {
        #[rustfmt::skip]
        let cases = [
            // (internal, protocol, in scope, source)
            (false, Some("USB"), true, "testRemount: the USB stick every test mounts"),
            (false, Some("Virtual Interface"), false, "testEnsureDMGsDoNotPrompt: a disk image"),
            (false, Some("PCI-Express"), true, "testUSB4ThunderboltExternalSSDBlocked: fixed, not ejectable"),
            (true, Some("SATA"), false, "testEncryptedMountApproval_InternalDevice_Approves"),
            (true, Some("Secure Digital"), true, "an SD card in a built-in reader"),
            (false, Some("Secure Digital"), true, "an SD card in a USB reader that reports SD"),
            (true, Some("USB"), false, "internal and not SD: internal USB media are skipped"),
            (true, Some("Virtual Interface"), false, "internal virtual"),
            (false, None, true, "no protocol, not internal: external"),
            (true, None, false, "no protocol, internal"),
            (false, Some("usb"), true, "not internal: in scope whatever the protocol's case"),
            (false, Some("virtual interface"), true, "Santa compares the protocol exactly"),
        ];
        for (internal, protocol, want, what) in cases {
            assert_eq!(removable_media(internal, protocol), want, "{what}");
        }
    }

    #[test]
    fn bus_table() {
        let cases = [
            (Some("USB"), false, VolumeBus::Usb),
            (Some("Thunderbolt"), false, VolumeBus::Thunderbolt),
            (Some("Secure Digital"), false, VolumeBus::Sd),
            (Some("PCI-Express"), false, VolumeBus::Nvme),
            (Some("Virtual Interface"), false, VolumeBus::Virtual),
            (Some("USB"), true, VolumeBus::Network),
            (None, false, VolumeBus::Other),
        ];
        for (p, net, want) in cases {
            assert_eq!(bus_from_protocol(p, net), want, "{p:?}");
        }
    }
}
