//! Every validation rule with an invalid input and its exact report line
//! (coreos-cloudinit's wording; Keel reports wrong types as errors, see README).

fn report(text: &str) -> String {
    keel_cloudinit::load(text.as_bytes()).report.to_text()
}

#[track_caller]
fn check(body: &str, expected: &[&str]) {
    let got = report(&format!("#cloud-config\n{body}"));
    let want: String = expected.iter().map(|l| format!("{l}\n")).collect();
    assert_eq!(got, want, "for {body:?}");
}

#[test]
fn header_and_formats() {
    assert_eq!(
        report("{}"),
        "line 1: error: must be \"#cloud-config\" or begin with \"#!\"\n"
    );
    assert_eq!(
        report("# cloud-config\nhostname: a\n"),
        "line 1: error: must be \"#cloud-config\" or begin with \"#!\"\n"
    );
    assert_eq!(report(""), "");
    assert_eq!(report("#!/bin/bash\necho hey"), "");
    assert_eq!(
        report("{\"ignitionVersion\":1}"),
        "line 1: error: this is an Ignition config; keel-cloudinit applies #cloud-config and #! scripts only\n"
    );
    assert_eq!(
        keel_cloudinit::load(b"\x1f\x8bnot gzip").report.to_text(),
        "line 1: error: user-data is gzip-compressed but cannot be decompressed\n"
    );
}

#[test]
fn yaml_errors() {
    check(
        "\t",
        &["line 2: error: found character that cannot start any token"],
    );
    assert_eq!(
        report("#cloud-config\n#hello\na:\na"),
        "line 4: error: could not find expected ':'\n"
    );
    check(
        "- a\n- b",
        &["line 2: error: incorrect type for \"\" (want struct)"],
    );
}

#[test]
fn structure() {
    check("test:", &["line 2: warning: unrecognized key \"test\""]);
    check(
        "coreos:\n  etcd:\n    proxy: hi",
        &[
            "line 3: warning: deprecated key \"etcd\" (etcd v1 is not shipped in Keel; use etcd2, which configures keel-store)",
            "line 4: warning: deprecated key \"proxy\" (etcd2 options no longer work for etcd)",
        ],
    );
    check(
        "coreos:\n  units:\n    - hello\n    - goodbye",
        &[
            "line 4: error: incorrect type for \"units[0]\" (want struct)",
            "line 5: error: incorrect type for \"units[1]\" (want struct)",
        ],
    );
    check(
        "coreos:\n  units:\n    - name: a.service\n      enable: bad",
        &["line 5: error: incorrect type for \"enable\" (want bool)"],
    );
    check(
        "ssh_authorized_keys:\n  - key: value",
        &["line 3: error: incorrect type for \"ssh_authorized_keys[0]\" (want string)"],
    );
    check(
        "users:\n  - name: hi\n  - true",
        &["line 4: error: incorrect type for \"users[1]\" (want struct)"],
    );
    check(
        "hostname:",
        &["line 2: error: incorrect type for \"hostname\" (want string)"],
    );
    check("hostname: true", &[]);
    check(
        "coreos:\n  units:\n    - name: a.service\n      runtime: \"yes\"",
        &["line 5: error: incorrect type for \"runtime\" (want bool)"],
    );
    check(
        "coreos:\n  fleet:\n    token_limit: many",
        &[
            "line 3: warning: deprecated key \"fleet\" (fleet is not shipped in Keel; its drop-in is still written)",
            "line 4: error: incorrect type for \"token_limit\" (want int)",
        ],
    );
    check(
        "users:\n  - name: a\n    coreos-ssh-import-github: a",
        &[
            "line 4: warning: deprecated key \"coreos_ssh_import_github\" (trying to fetch from a remote endpoint introduces too many intermittent errors)",
        ],
    );
    check(
        "reboot_strategy: reboot\nreboot-strategy: off",
        &[
            "line 2: warning: unrecognized key \"reboot_strategy\"",
            "line 3: warning: unrecognized key \"reboot_strategy\"",
        ],
    );
    check(
        "coreos:\n  update:\n    reboot_strategy: reboot\n    reboot-strategy: off",
        &["line 5: error: duplicate key \"reboot_strategy\" (keys with - and _ are the same key)"],
    );
}

#[test]
fn validity() {
    check(
        "coreos:\n  units:\n    - name: a.service\n      command: lol",
        &["line 5: error: invalid value lol"],
    );
    check("coreos:\n  update:\n    reboot-strategy: off", &[]);
    check(
        "coreos:\n  update:\n    reboot-strategy: false",
        &["line 4: error: invalid value false"],
    );
    check(
        "coreos:\n  update:\n    reboot-strategy: besteffort",
        &["line 4: error: invalid value besteffort"],
    );
    for p in ["0744", "'0744'", "744", "'744'"] {
        check(
            &format!("write_files:\n  - path: /a\n    permissions: {p}"),
            &[],
        );
    }
    check(
        "write_files:\n  - path: /a\n    permissions: 800",
        &["line 4: error: invalid value 800"],
    );
    check(
        "write_files:\n  - path: /a\n    encoding: gzzzzbase64",
        &["line 4: error: invalid value gzzzzbase64"],
    );
    check(
        "coreos:\n  etcd2:\n    proxy: maybe",
        &["line 4: error: invalid value maybe"],
    );
    check(
        "coreos:\n  locksmith:\n    window_start: tues 0:0",
        &["line 4: error: invalid value tues 0:0"],
    );
    check(
        "coreos:\n  locksmith:\n    window_length: 0.5.0h",
        &["line 4: error: invalid value 0.5.0h"],
    );
    check(
        "manage_etc_hosts: true",
        &["line 2: error: invalid value true"],
    );
    check("manage_etc_hosts: localhost", &[]);
}

#[test]
fn write_files_rules() {
    check(
        "write-files:\n  - path: /tmp/../usr/invalid",
        &["line 3: error: file cannot be written to a read-only filesystem"],
    );
    check(
        "write_files:\n  - encoding: base64\n    path: /a\n    content: !!binary aGVsbG8K",
        &["line 5: error: content cannot be decoded as \"base64\""],
    );
    check(
        "write_files:\n  - encoding: gzip\n    path: /a\n    content: hello",
        &["line 5: error: content cannot be decoded as \"gzip\""],
    );
    check(
        "coreos:\n  write_files:\n    - path: /hi",
        &[
            "line 3: warning: unrecognized key \"write_files\"",
            "line 3: info: write_files doesn't belong under coreos",
        ],
    );
    check(
        "write_files:\n  - content: x",
        &["line 3: error: write_files entry has no \"path\""],
    );
    check(
        "write_files:\n  - path: etc/x",
        &["line 3: error: path \"etc/x\" is not absolute"],
    );
    check(
        "write_files:\n  - path: /a\n  - path: /a",
        &["line 4: warning: \"/a\" is written more than once; the last entry wins"],
    );
}

#[test]
fn keel_rules() {
    check(
        "coreos:\n  etcd:\n    discovery: \"not a url\"",
        &[
            "line 3: warning: deprecated key \"etcd\" (etcd v1 is not shipped in Keel; use etcd2, which configures keel-store)",
            "line 4: warning: discovery URL is not valid",
        ],
    );
    check(
        "coreos:\n  units:\n    - command: start",
        &["line 4: error: unit has no \"name\""],
    );
    check(
        "coreos:\n  units:\n    - name: foo",
        &["line 4: error: invalid unit name \"foo\""],
    );
    check(
        "coreos:\n  units:\n    - name: a.service\n      mask: true\n      enable: true",
        &["line 4: error: unit \"a.service\" cannot be both masked and enabled"],
    );
    check(
        "coreos:\n  units:\n    - name: a.service\n      drop_ins:\n        - content: x",
        &["line 6: error: drop-in has no \"name\""],
    );
    check(
        "coreos:\n  units:\n    - name: a.service\n      drop-ins:\n        - name: x.txt\n          content: y",
        &["line 6: warning: drop-in \"x.txt\" does not end in \".conf\"; systemd ignores it"],
    );
    check(
        "users:\n  - gecos: nobody",
        &["line 3: error: user has no \"name\""],
    );
    check(
        "coreos:\n  etcd2:\n    debug: true",
        &["line 4: warning: keel-store does not read ETCD_DEBUG; \"debug\" is not passed on"],
    );
}

#[test]
fn json_format() {
    let doc = keel_cloudinit::load(b"#cloud-config\ntest: 1\n");
    let v: serde_json::Value = serde_json::from_str(&doc.report.to_json()).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{"kind": "warning", "line": 2, "message": "unrecognized key \"test\""}])
    );
}
