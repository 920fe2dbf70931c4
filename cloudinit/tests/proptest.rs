//! Arbitrary bytes and arbitrary YAML never panic and always give a report; a config that
//! validates always plans into an empty root without panicking; a corrupted VFAT image
//! never panics the FAT reader.

use proptest::prelude::*;

const KEYS: &[&str] = &[
    "hostname",
    "users",
    "name",
    "write_files",
    "write-files",
    "path",
    "content",
    "encoding",
    "permissions",
    "coreos",
    "units",
    "command",
    "enable",
    "mask",
    "runtime",
    "drop-ins",
    "drop_ins",
    "update",
    "reboot-strategy",
    "etcd2",
    "locksmith",
    "ssh_authorized_keys",
    "groups",
    "owner",
    "unknown",
];
const SCALARS: &[&str] = &[
    "yes",
    "off",
    "0644",
    "start",
    "/etc/x",
    "a.service",
    "'quoted'",
    "~",
    "!!binary aGk=",
    "base64",
    "gzip",
    "&a x",
    "*a",
    "[1, 2]",
    "{a: b}",
    "\"$private_ipv4\"",
    "|",
    "12",
    "1.5",
];

fn yaml_tree(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop::sample::select(SCALARS)
        .prop_map(str::to_string)
        .boxed();
    if depth == 0 {
        return leaf;
    }
    let key = prop::sample::select(KEYS);
    prop_oneof![
        leaf,
        prop::collection::vec((key, yaml_tree(depth - 1)), 0..4).prop_map(|entries| {
            entries
                .into_iter()
                .map(|(k, v)| format!("{k}:\n{}", indent(&v)))
                .collect::<Vec<_>>()
                .join("\n")
        }),
        prop::collection::vec(yaml_tree(depth - 1), 0..3).prop_map(|items| {
            items
                .into_iter()
                .map(|v| format!("-\n{}", indent(&v)))
                .collect::<Vec<_>>()
                .join("\n")
        }),
    ]
    .boxed()
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A small FAT12 config-drive image (dosfstools and mtools), built once.
fn vfat_image() -> &'static [u8] {
    static IMAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fat.img");
        let data = dir.path().join("user_data");
        std::fs::write(&data, "#cloud-config\nhostname: fat\n").unwrap();
        let run = |cmd: &mut std::process::Command| {
            let out = cmd
                .output()
                .expect("dosfstools and mtools must be installed");
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let mtool = |tool: &str| {
            let mut cmd = std::process::Command::new(tool);
            cmd.arg("-i").arg(&img);
            cmd
        };
        run(std::process::Command::new("mkfs.vfat")
            .args(["-C", "-n", "config-2"])
            .arg(&img)
            .arg("256"));
        run(mtool("mmd").args(["::openstack", "::openstack/latest"]));
        run(mtool("mcopy")
            .arg(&data)
            .arg("::openstack/latest/user_data"));
        std::fs::read(&img).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn corrupted_vfat_never_panics(
        edits in prop::collection::vec((0usize..16 * 1024, any::<u8>()), 1..24),
    ) {
        let mut image = vfat_image().to_vec();
        for (at, byte) in edits {
            image[at] = byte;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fat.img");
        std::fs::write(&path, &image).unwrap();
        if let Ok(mut fat) = keel_cloudinit::datasource::fat::Fat::open(&path) {
            let _ = fat.read("openstack/latest/user_data");
            let _ = fat.read("openstack/latest/meta_data.json");
        }
    }

    #[test]
    fn arbitrary_bytes_give_a_report(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let doc = keel_cloudinit::load(&bytes);
        let _ = doc.report.to_text();
        let mut with_header = b"#cloud-config\n".to_vec();
        with_header.extend_from_slice(&bytes);
        let doc = keel_cloudinit::load(&with_header);
        let _ = doc.report.to_json();
    }

    #[test]
    fn arbitrary_text_gives_a_report(text in "#cloud-config\n[ -~\n\t]{0,300}") {
        let _ = keel_cloudinit::load(text.as_bytes()).report.to_text();
    }

    #[test]
    fn arbitrary_yaml_gives_a_report_and_plans(tree in yaml_tree(4)) {
        let text = format!("#cloud-config\n{tree}\n");
        let doc = keel_cloudinit::load(text.as_bytes());
        let _ = doc.report.to_text();
        if doc.is_applicable() {
            let root = tempfile::tempdir().unwrap();
            let opts = keel_cloudinit::apply::PlanOptions::new(root.path());
            // Planning may refuse (unknown groups…) but must not panic or write.
            let _ = keel_cloudinit::apply::plan(&doc.config, &doc.scripts, &opts);
            prop_assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
        }
    }
}
