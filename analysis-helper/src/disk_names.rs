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
