//! `keel-images build` without booting: Keel's GPT layout (Flatcar numbering and type
//! GUIDs, GPT priority bits), GRUB's boot code and environment, a payload signed by the
//! key the image trusts, the same USR bytes from two builds of the same inputs, and an
//! unchanged rebuild answered from the manifest.

use keel_images::build::{self, BuildOptions};
use keel_tests::image::{shared_image, target_dir, test_dir};
use keel_updater::boot::{BootEnv, Slot};
use keel_updater::grubenv::GrubEnv;
use keel_updater::payload::{Header, keys};
use std::process::Command;

fn sgdisk_info(disk: &std::path::Path, n: u32) -> String {
    let out = Command::new("sgdisk")
        .arg("-i")
        .arg(n.to_string())
        .arg(disk)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn image_layout_boot_code_and_signed_payload() {
    let (dir, m) = shared_image("1.0.0");
    let disk = dir.join(&m.disk);
    let v = Command::new("sgdisk")
        .arg("-v")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains("No problems found"));
    for (n, label, type_guid) in [
        (1, "EFI-SYSTEM", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        (2, "BIOS-BOOT", "21686148-6449-6E6F-744E-656564454649"),
        (3, "USR-A", "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6"),
        (4, "USR-B", "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6"),
        (6, "OEM", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        (9, "ROOT", "3884DD41-8582-4404-B9A8-E9B84F2DF50E"),
    ] {
        let info = sgdisk_info(&disk, n);
        assert!(
            info.contains(&format!("Partition name: '{label}'")),
            "{n}: {info}"
        );
        assert!(info.contains(type_guid), "{n}: {info}");
    }
    // USR-A blessed in the GPT attributes as in Flatcar (priority 1, successful).
    let usr_a = sgdisk_info(&disk, 3);
    assert!(
        usr_a.contains("Attribute flags: 0101000000000000"),
        "{usr_a}"
    );
    assert!(
        usr_a.contains("7130C94A-213A-4E5A-8E26-6CCE9662F132"),
        "{usr_a}"
    );
    // GRUB's boot code in the MBR pointing at core.img in BIOS-BOOT.
    let bytes = std::fs::read(&disk).unwrap();
    let boot_img = std::fs::read("/usr/lib/grub/i386-pc/boot.img").unwrap();
    assert_eq!(bytes[0x66..0x68], [0x90, 0x90]);
    assert_eq!(bytes[0x68..440], boot_img[0x68..440]);
    let core_lba = u64::from_le_bytes(bytes[0x5c..0x64].try_into().unwrap());
    assert_eq!(
        core_lba * 512,
        (1 + 128) << 20,
        "core.img at the start of BIOS-BOOT"
    );
    assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
    // The ESP holds grub.cfg and the updater's initial boot state (A blessed).
    let esp = dir.join("esp-copy.img");
    Command::new("dd")
        .args([
            &format!("if={}", disk.display()),
            &format!("of={}", esp.display()),
            "bs=1M",
            "skip=1",
            "count=128",
            "status=none",
        ])
        .status()
        .unwrap();
    let env_path = dir.join("grubenv-copy");
    let st = Command::new("mcopy")
        .arg("-o")
        .arg("-i")
        .arg(&esp)
        .arg("::/grub/grubenv")
        .arg(&env_path)
        .env("MTOOLS_SKIP_CHECK", "1")
        .status()
        .unwrap();
    assert!(st.success());
    let env = GrubEnv::read(&env_path).unwrap();
    let boot = BootEnv::from_env(&env_path, &env).unwrap();
    assert_eq!(keel_updater::boot::select(&boot).0, Some(Slot::A));
    let cfg = Command::new("mtype")
        .arg("-i")
        .arg(&esp)
        .arg("::/grub/grub.cfg")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    let cfg = String::from_utf8_lossy(&cfg.stdout);
    assert!(cfg.contains(keel_updater::boot::GRUB_SELECT), "{cfg}");
    assert!(cfg.contains("keel.slot=$usr_slot"), "{cfg}");
    let _ = std::fs::remove_file(&esp);
    // The payload: signed by the key the image trusts, for the same USR bytes.
    let payload = std::fs::read(dir.join(&m.payload)).unwrap();
    let header = Header::parse("payload", &payload).unwrap();
    let manifest: keel_updater::payload::Manifest =
        serde_json::from_slice(&header.manifest_bytes).unwrap();
    assert_eq!(manifest.version, "1.0.0");
    assert_eq!(manifest.image_sha256, m.usr_sha256);
    let pub_path = dir.join("trusted.pub");
    std::fs::write(&pub_path, &m.update_key_public).unwrap();
    let trusted = keys::TrustedKeys::from_keys([keys::read_public(&pub_path).unwrap()]);
    trusted
        .verify("payload", &header.manifest_bytes, &header.signatures)
        .unwrap();
    let usr = std::fs::read(dir.join(&m.usr)).unwrap();
    assert_eq!(keel_updater::payload::sha256_hex(&usr), m.usr_sha256);
}

#[test]
fn image_usr_is_reproducible_and_unchanged_rebuilds_are_skipped() {
    // Make sure the base is cached (shared with the other tests).
    let _ = shared_image("1.0.0");
    let mut sums = Vec::new();
    for run in ["a", "b"] {
        let out = test_dir().join(format!("repro-{run}"));
        let mut o = BuildOptions::new(
            out.clone(),
            std::env::var_os("KEEL_IMAGES_CACHE")
                .map(Into::into)
                .unwrap_or_else(|| "/var/cache/keel-images".into()),
            "0.0.1-repro".into(),
            target_dir().join("release"),
        );
        o.force = true;
        let m = build::build(&o).unwrap();
        sums.push(m.usr_sha256.clone());
        if run == "b" {
            // Nothing changed: the manifest answers without rebuilding.
            o.force = false;
            let again = build::build(&o).unwrap();
            assert_eq!(again.input_key, m.input_key);
            assert_eq!(again.assemble_seconds, m.assemble_seconds, "rebuilt");
            // A different version changes the key.
            o.version = "0.0.2-repro".into();
            let other = build::build(&o).unwrap();
            assert_ne!(other.input_key, m.input_key);
            assert_ne!(other.usr_sha256, m.usr_sha256);
        }
        let _ = std::fs::remove_dir_all(&out);
    }
    assert_eq!(
        sums[0], sums[1],
        "USR differs between two builds of the same inputs"
    );
}
