//! Keel's disk layout: Flatcar's partition numbers, labels and type GUIDs, so `cgpt`,
//! `sgdisk` and Flatcar's tooling read a Keel disk the same way.

/// Partition numbers.
pub const EFI_SYSTEM: u32 = 1;
pub const BIOS_BOOT: u32 = 2;
pub const USR_A: u32 = 3;
pub const USR_B: u32 = 4;
pub const OEM: u32 = 6;
pub const ROOT: u32 = 9;

/// Type GUIDs (as written by `sgdisk -t` / shown by `sgdisk -i`).
pub const EFI_SYSTEM_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const BIOS_BOOT_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";
/// Flatcar's "rootfs" type, used for both USR slots.
pub const USR_TYPE: &str = "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6";
pub const OEM_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// Flatcar's "resize" type: ROOT, grown to the disk on first boot.
pub const ROOT_TYPE: &str = "3884DD41-8582-4404-B9A8-E9B84F2DF50E";
/// The USR slots' fixed partition GUIDs (Flatcar's).
pub const USR_A_UUID: &str = "7130C94A-213A-4E5A-8E26-6CCE9662F132";
pub const USR_B_UUID: &str = "E03DD35C-7C2D-4A47-B3FE-27F15780A57C";

/// A GUID string → the 16 bytes GPT stores (first three fields little-endian).
pub fn guid_bytes(s: &str) -> Option<[u8; 16]> {
    let hexs: String = s.chars().filter(|c| *c != '-').collect();
    if hexs.len() != 32 {
        return None;
    }
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hexs[2 * i..2 * i + 2], 16).ok()?;
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    Some(b)
}

/// The 16 stored bytes → the upper-case GUID string.
pub fn guid_string(b: &[u8; 16]) -> String {
    let mut b = *b;
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    let h: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_round_trip_mixed_endian() {
        let b = guid_bytes(EFI_SYSTEM_TYPE).unwrap();
        assert_eq!(b[..4], [0x28, 0x73, 0x2a, 0xc1]);
        assert_eq!(guid_string(&b), EFI_SYSTEM_TYPE);
        assert_eq!(guid_string(&guid_bytes(USR_A_UUID).unwrap()), USR_A_UUID);
        assert!(guid_bytes("xyz").is_none());
    }
}

/// One partition to create.
#[derive(Debug, Clone)]
pub struct PartSpec {
    pub number: u32,
    pub label: &'static str,
    pub type_guid: &'static str,
    /// Fixed partition GUID (random when `None`).
    pub uuid: Option<&'static str>,
    /// Size in MiB; 0 = the rest of the disk.
    pub size_mib: u64,
    pub attributes: u64,
}

/// Keel's partitions: 1 EFI-SYSTEM, 2 BIOS-BOOT, 3 USR-A (blessed: priority 1,
/// successful), 4 USR-B, 6 OEM, 9 ROOT (the rest).
pub fn keel_partitions(efi_mib: u64, usr_mib: u64, oem_mib: u64) -> Vec<PartSpec> {
    let p = |number, label, type_guid, uuid, size_mib, attributes| PartSpec {
        number,
        label,
        type_guid,
        uuid,
        size_mib,
        attributes,
    };
    vec![
        p(EFI_SYSTEM, "EFI-SYSTEM", EFI_SYSTEM_TYPE, None, efi_mib, 0),
        p(BIOS_BOOT, "BIOS-BOOT", BIOS_BOOT_TYPE, None, 2, 0),
        p(
            USR_A,
            "USR-A",
            USR_TYPE,
            Some(USR_A_UUID),
            usr_mib,
            crate::boot::attrs::with(0, 1, 0, true),
        ),
        p(USR_B, "USR-B", USR_TYPE, Some(USR_B_UUID), usr_mib, 0),
        p(OEM, "OEM", OEM_TYPE, None, oem_mib, 0),
        p(ROOT, "ROOT", ROOT_TYPE, None, 0, 0),
    ]
}

/// Writes a protective MBR and a fresh GPT (512-byte sectors, partitions 1 MiB aligned,
/// in the order given) onto `path`, which must already have its final size.
pub fn create_disk(path: &std::path::Path, parts: &[PartSpec]) -> Result<(), gptman::Error> {
    create_disk_seeded(path, parts, None)
}

/// Like [`create_disk`]; with a seed, the disk GUID and the partition GUIDs that are not
/// fixed derive from it (SHA-256 of seed and partition number), so image builds repeat.
pub fn create_disk_seeded(
    path: &std::path::Path,
    parts: &[PartSpec],
    seed: Option<&[u8]>,
) -> Result<(), gptman::Error> {
    use sha2::{Digest, Sha256};
    const ALIGN: u64 = 2048;
    let counter = std::cell::Cell::new(0u32);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let random_guid = || {
        let mut g = [0u8; 16];
        match seed {
            Some(seed) => {
                let n = counter.get();
                counter.set(n + 1);
                let h = Sha256::new()
                    .chain_update(seed)
                    .chain_update(n.to_le_bytes())
                    .finalize();
                g.copy_from_slice(&h[..16]);
            }
            None => getrandom::getrandom(&mut g).expect("random bytes"),
        }
        g[7] = (g[7] & 0x0f) | 0x40; // version 4 (stored little-endian in field 3)
        g[8] = (g[8] & 0x3f) | 0x80;
        g
    };
    let mut gpt = gptman::GPT::new_from(&mut f, 512, random_guid())?;
    let last = gpt.header.last_usable_lba;
    let mut next = ALIGN;
    for p in parts {
        let start = next.div_ceil(ALIGN) * ALIGN;
        let end = if p.size_mib == 0 {
            last
        } else {
            start + p.size_mib * 2048 - 1
        };
        gpt[p.number] = gptman::GPTPartitionEntry {
            partition_type_guid: guid_bytes(p.type_guid).expect("valid type GUID"),
            unique_partition_guid: p.uuid.and_then(guid_bytes).unwrap_or_else(random_guid),
            starting_lba: start,
            ending_lba: end,
            attribute_bits: p.attributes,
            partition_name: p.label.into(),
        };
        next = end + 1;
    }
    gpt.write_into(&mut f)?;
    gptman::GPT::write_protective_mbr_into(&mut f, 512)?;
    f.sync_all()?;
    Ok(())
}
