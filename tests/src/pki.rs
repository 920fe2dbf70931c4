//! A throw-away PKI made with `openssl` for the TLS tests.

use std::path::{Path, PathBuf};
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a certificate it signed for `name` with the given extensions.
/// A new P-256 key, unencrypted.
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

fn make_ca(dir: &Path, ca: &str) {
    let (key, crt, subj) = (
        format!("{ca}.key"),
        format!("{ca}.crt"),
        format!("/CN={ca}"),
    );
    let mut args = vec!["req", "-x509"];
    args.extend(EC_KEY);
    args.extend(["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
    openssl(dir, &args);
}

fn make_cert(dir: &Path, ca: &str, name: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("pki");
    let (key, csr, subj) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("/CN={name}"),
    );
    let mut args = vec!["req"];
    args.extend(EC_KEY);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(dir, &args);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// A CA (`ca`), a foreign CA (`other-ca`) and certificates: `server` (127.0.0.1,
/// localhost; serverAuth), `client` (clientAuth), `stranger` (clientAuth from the other
/// CA), `peer` (127.0.0.1; serverAuth and clientAuth, as etcd peer certificates are).
#[derive(Debug)]
pub struct Pki {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("pki");
        let p = dir.path();
        make_ca(p, "ca");
        make_ca(p, "other-ca");
        make_cert(
            p,
            "ca",
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        make_cert(p, "ca", "client", "extendedKeyUsage=clientAuth\n");
        make_cert(p, "other-ca", "stranger", "extendedKeyUsage=clientAuth\n");
        make_cert(
            p,
            "ca",
            "peer",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        );
        Pki {
            path: p.to_path_buf(),
            _dir: dir,
        }
    }

    /// The path of `name` (e.g. `ca.crt`) as a string for flags.
    pub fn file(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
