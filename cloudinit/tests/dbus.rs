//! The D-Bus backend against a private `dbus-daemon` with a test service playing
//! `org.freedesktop.systemd1` and `org.freedesktop.hostname1`; checks the exact calls.

mod common;

use common::*;
use keel_cloudinit::apply::{self, PlanOptions};
use keel_cloudinit::systemd::dbus::DbusManager;
use std::sync::{Arc, Mutex};
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

type Calls = Arc<Mutex<Vec<String>>>;
type Changes = Vec<(String, String, String)>;

struct FakeSystemd {
    calls: Calls,
}

fn job() -> OwnedObjectPath {
    OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/1").unwrap()
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl FakeSystemd {
    fn enable_unit_files(&self, files: Vec<String>, runtime: bool, force: bool) -> (bool, Changes) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("EnableUnitFiles {files:?} {runtime} {force}"));
        let changes = files
            .iter()
            .map(|f| {
                (
                    "symlink".to_string(),
                    format!("/etc/systemd/system/multi-user.target.wants/{f}"),
                    format!("/etc/systemd/system/{f}"),
                )
            })
            .collect();
        (true, changes)
    }
    fn mask_unit_files(&self, files: Vec<String>, runtime: bool, force: bool) -> Changes {
        self.calls
            .lock()
            .unwrap()
            .push(format!("MaskUnitFiles {files:?} {runtime} {force}"));
        Vec::new()
    }
    fn unmask_unit_files(&self, files: Vec<String>, runtime: bool) -> Changes {
        self.calls
            .lock()
            .unwrap()
            .push(format!("UnmaskUnitFiles {files:?} {runtime}"));
        Vec::new()
    }
    fn reload(&self) {
        self.calls.lock().unwrap().push("Reload".into());
    }
    fn start_unit(&self, name: String, mode: String) -> OwnedObjectPath {
        self.calls
            .lock()
            .unwrap()
            .push(format!("StartUnit {name} {mode}"));
        job()
    }
    fn stop_unit(&self, name: String, mode: String) -> OwnedObjectPath {
        self.calls
            .lock()
            .unwrap()
            .push(format!("StopUnit {name} {mode}"));
        job()
    }
    fn restart_unit(&self, name: String, mode: String) -> OwnedObjectPath {
        self.calls
            .lock()
            .unwrap()
            .push(format!("RestartUnit {name} {mode}"));
        job()
    }
    fn start_transient_unit(
        &self,
        name: String,
        mode: String,
        properties: Vec<(String, OwnedValue)>,
        _aux: Vec<(String, Vec<(String, OwnedValue)>)>,
    ) -> OwnedObjectPath {
        let exec = properties
            .iter()
            .find(|(k, _)| k == "ExecStart")
            .map(|(_, v)| {
                let list: Vec<(String, Vec<String>, bool)> =
                    v.try_clone().unwrap().try_into().unwrap();
                format!("{list:?}")
            })
            .unwrap_or_default();
        self.calls
            .lock()
            .unwrap()
            .push(format!("StartTransientUnit {name} {mode} {exec}"));
        job()
    }
}

struct FakeHostnamed {
    calls: Calls,
}

#[zbus::interface(name = "org.freedesktop.hostname1")]
impl FakeHostnamed {
    fn set_hostname(&self, name: String, interactive: bool) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("SetHostname {name} {interactive}"));
    }
}

/// A private bus (`dbus-daemon` with its own config), shared with the other crates' tests.
fn private_bus() -> keel_tests::dbus::PrivateBus {
    keel_tests::dbus::PrivateBus::start()
}

fn serve(bus: &keel_tests::dbus::PrivateBus) -> (zbus::blocking::Connection, Calls) {
    let calls: Calls = Arc::default();
    let conn = zbus::blocking::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.systemd1")
        .unwrap()
        .name("org.freedesktop.hostname1")
        .unwrap()
        .serve_at(
            "/org/freedesktop/systemd1",
            FakeSystemd {
                calls: calls.clone(),
            },
        )
        .unwrap()
        .serve_at(
            "/org/freedesktop/hostname1",
            FakeHostnamed {
                calls: calls.clone(),
            },
        )
        .unwrap()
        .build()
        .unwrap();
    (conn, calls)
}

fn apply_over_dbus(
    bus: &keel_tests::dbus::PrivateBus,
    root: &std::path::Path,
    bytes: &[u8],
) -> apply::Outcome {
    let mut doc = keel_cloudinit::load(bytes);
    assert!(doc.is_applicable(), "{}", doc.report.to_text());
    keel_cloudinit::metadata::apply_metadata(&mut doc.config, &metadata());
    let mut opts = PlanOptions::new(root);
    opts.metadata = metadata();
    let plan = apply::plan(&doc.config, &doc.scripts, &opts).unwrap();
    let mut mgr = DbusManager::connect(Some(&bus.address)).unwrap();
    apply::execute(&plan, root, &mut mgr).unwrap()
}

#[test]
fn kube_master_makes_exactly_these_calls() {
    let bus = private_bus();
    let (_service, calls) = serve(&bus);
    let root = base_root();
    let bytes = std::fs::read(fixture("corpus/kube-master.yml")).unwrap();
    let outcome = apply_over_dbus(&bus, root.path(), &bytes);
    assert_eq!(
        *calls.lock().unwrap(),
        [
            "SetHostname kube-master-1 false",
            "EnableUnitFiles [\"kubelet.service\"] false true",
            "UnmaskUnitFiles [\"keel-store.service\"] true",
            "UnmaskUnitFiles [\"keel-locksmith.service\"] true",
            "Reload",
            "StartUnit keel-store.service replace",
            "StartUnit kubelet.service replace",
            "RestartUnit keel-locksmith.service replace",
            "RestartUnit keel-updater.service replace",
        ]
    );
    assert_eq!(outcome.jobs, vec!["/org/freedesktop/systemd1/job/1"; 4]);
    // Unit files themselves are written into the root.
    assert!(read(root.path(), "/etc/systemd/system/kubelet.service").contains("kubelet"));

    // Second run: nothing is written and the hostname is unchanged (no SetHostname).
    calls.lock().unwrap().clear();
    let again = apply_over_dbus(&bus, root.path(), &bytes);
    assert!(again.written.is_empty());
    let second = calls.lock().unwrap().clone();
    assert!(
        !second.iter().any(|c| c.starts_with("SetHostname")),
        "{second:?}"
    );
}

#[test]
fn mask_and_script_calls() {
    let bus = private_bus();
    let (_service, calls) = serve(&bus);
    let root = base_root();
    apply_over_dbus(
        &bus,
        root.path(),
        b"#cloud-config\ncoreos:\n  units:\n    - name: systemd-timesyncd.service\n      mask: true\n      command: stop\n",
    );
    assert_eq!(
        *calls.lock().unwrap(),
        [
            "SetHostname node-5 false",
            "MaskUnitFiles [\"systemd-timesyncd.service\"] false true",
            "StopUnit systemd-timesyncd.service replace",
        ]
    );
    calls.lock().unwrap().clear();
    apply_over_dbus(&bus, root.path(), b"#!/bin/sh\necho hi\n");
    let path = "/var/lib/keel/cloudinit/scripts/user-data";
    assert_eq!(
        *calls.lock().unwrap(),
        [format!(
            "StartTransientUnit keel-cloudinit-user-data.service replace [(\"{path}\", [\"{path}\"], false)]"
        )]
    );
}
