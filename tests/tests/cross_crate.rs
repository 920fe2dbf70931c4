//! Contracts between crates that no single crate can check alone.

/// keel-cloudinit turns `coreos.etcd2` into `ETCD_*` variables for keel-store, and
/// keel-store refuses to start on an `ETCD_*` variable it does not know: every variable
/// cloud-config may write must be one keel-store reads.
#[test]
fn cloudinit_writes_only_etcd_variables_keel_store_reads() {
    for var in keel_cloudinit::config::schema::KEEL_STORE_ENV {
        assert!(
            keel_store::config::KNOWN_ENV.contains(var),
            "keel-cloudinit may write {var}, which keel-store does not accept"
        );
    }
}
