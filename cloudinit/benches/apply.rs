//! Times `validate` and `apply` (into a temp root, root backend: no systemd) of a
//! 20-unit, 50-file, 10-user config. Run: `cargo bench -p keel-cloudinit --bench apply`.

use keel_cloudinit::apply::{self, PlanOptions};
use keel_cloudinit::systemd::root::RootManager;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// Iterations per measurement.
const RUNS: usize = 50;

fn config() -> String {
    let mut c = String::from(
        "#cloud-config\nhostname: bench-node\nssh_authorized_keys:\n  - ssh-ed25519 AAAABENCH ops@bench\nusers:\n",
    );
    for i in 0..10 {
        let _ = write!(
            c,
            "  - name: user{i}\n    gecos: Bench User {i}\n    groups: [docker]\n    ssh_authorized_keys:\n      - ssh-ed25519 AAAAUSER{i} u{i}@bench\n"
        );
    }
    c.push_str("write_files:\n");
    for i in 0..50 {
        let _ = write!(
            c,
            "  - path: /etc/bench/file{i}.conf\n    permissions: '0644'\n    owner: user{}\n    content: |\n      KEY{i}=value-$private_ipv4\n      OTHER=1\n",
            i % 10
        );
    }
    c.push_str("coreos:\n  etcd2:\n    name: bench\n    advertise-client-urls: http://$private_ipv4:2379\n  units:\n");
    for i in 0..20 {
        let _ = write!(
            c,
            "    - name: bench{i}.service\n      enable: true\n      command: start\n      content: |\n        [Service]\n        ExecStart=/usr/bin/sleep infinity\n        [Install]\n        WantedBy=multi-user.target\n      drop-ins:\n        - name: 10-env.conf\n          content: |\n            [Service]\n            Environment=N={i}\n"
        );
    }
    c
}

fn root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/bash\ncore:x:500:500::/home/core:/bin/bash\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("shadow"),
        "root:*:19000:0:99999:7:::\ncore:*:19000:0:99999:7:::\n",
    )
    .unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\ndocker:x:233:\ncore:x:500:\n").unwrap();
    std::fs::write(etc.join("gshadow"), "root:*::\ndocker:!::\ncore:!::\n").unwrap();
    dir
}

fn stats(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<28} median {:>7.3} ms   p95 {:>7.3} ms   min {:>7.3} ms",
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() * 95 / 100]),
        ms(samples[0])
    );
}

fn main() {
    let text = config();
    let md = keel_cloudinit::metadata::Metadata {
        private_ipv4: Some("10.0.0.9".parse().unwrap()),
        ..Default::default()
    };
    let mut validate = Vec::new();
    let mut first = Vec::new();
    let mut second = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let doc = keel_cloudinit::load(text.as_bytes());
        validate.push(t.elapsed());
        assert!(doc.is_applicable(), "{}", doc.report.to_text());

        let dir = root();
        for run in [&mut first, &mut second] {
            let t = Instant::now();
            let mut doc = keel_cloudinit::load(text.as_bytes());
            keel_cloudinit::metadata::apply_metadata(&mut doc.config, &md);
            let mut opts = PlanOptions::new(dir.path());
            opts.metadata = md.clone();
            let plan = apply::plan(&doc.config, &doc.scripts, &opts).unwrap();
            let mut mgr = RootManager::new(dir.path());
            apply::execute(&plan, dir.path(), &mut mgr).unwrap();
            run.push(t.elapsed());
        }
    }
    println!(
        "config: {} bytes, 20 units, 50 files, 10 users; {RUNS} runs",
        text.len()
    );
    stats("validate", validate);
    stats("apply (fresh root)", first);
    stats("apply again (no changes)", second);
}
