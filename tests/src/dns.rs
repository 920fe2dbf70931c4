//! A DNS server for the store's `--discovery-srv` test: it answers SRV queries from a
//! fixed table (NXDOMAIN for any other name) over UDP on a loopback address, and
//! members reach it through a private `/etc/resolv.conf` ([`private_resolver`]).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::SRV;
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// SRV records by service name (`_etcd-server._tcp.keel.test.`): targets and ports.
pub type SrvTable = Vec<(String, Vec<(String, u16)>)>;

/// The server thread; stops when dropped.
#[derive(Debug)]
pub struct SrvServer {
    pub addr: SocketAddr,
    /// Every name asked for, in order.
    pub queries: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SrvServer {
    /// Serve `table` on `ip`:53.
    pub fn start(ip: &str, table: SrvTable) -> SrvServer {
        let sock = UdpSocket::bind((ip, 53)).expect("bind the test DNS server on port 53");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("socket timeout");
        let addr = sock.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, queries) = (stop.clone(), queries.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    let Ok(query) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    let reply = answer(&query, &table, &queries);
                    if let Ok(bytes) = reply.to_vec() {
                        let _ = sock.send_to(&bytes, from);
                    }
                }
            })
        };
        SrvServer {
            addr,
            queries,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SrvServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(query: &Message, table: &SrvTable, seen: &Mutex<Vec<String>>) -> Message {
    let mut reply = Message::new(
        query.metadata.id,
        MessageType::Response,
        query.metadata.op_code,
    );
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    let mut found = false;
    for q in &query.queries {
        reply.add_query(q.clone());
        let name = q.name.to_ascii().to_ascii_lowercase();
        seen.lock().expect("queries").push(name.clone());
        if q.query_type != RecordType::SRV {
            continue;
        }
        if let Some((_, targets)) = table.iter().find(|(n, _)| *n == name) {
            found = true;
            for (target, port) in targets {
                let target = Name::from_ascii(target).expect("SRV target name");
                let srv = SRV::new(0, 10, *port, target);
                reply.add_answer(Record::from_rdata(q.name.clone(), 5, RData::SRV(srv)));
            }
        }
    }
    if !found {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    reply
}

/// Files for a process in its own mount namespace: a `resolv.conf` naming the test DNS
/// server and a `hosts` file with the members' names, bound over `/etc`'s by
/// [`private_resolver`].
pub fn write_resolver_files(dir: &Path, dns: SocketAddr, hosts: &[(&str, &str)]) -> PathBuf {
    let out = dir.join("etc");
    std::fs::create_dir_all(&out).expect("create etc dir");
    std::fs::write(
        out.join("resolv.conf"),
        format!("nameserver {}\noptions timeout:1 attempts:2\n", dns.ip()),
    )
    .expect("write resolv.conf");
    let mut h = String::from("127.0.0.1 localhost\n");
    for (ip, name) in hosts {
        h.push_str(&format!("{ip} {name}\n"));
    }
    std::fs::write(out.join("hosts"), h).expect("write hosts");
    out
}

/// `unshare --mount` wrapper arguments that bind `etc/resolv.conf` and `etc/hosts` from
/// `etc` over the real ones for the wrapped command only.
pub fn private_resolver(etc: &Path) -> Vec<String> {
    let script = format!(
        "mount --bind {0}/resolv.conf /etc/resolv.conf && mount --bind {0}/hosts /etc/hosts && exec \"$@\"",
        etc.display()
    );
    ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
        .iter()
        .map(|s| s.to_string())
        .chain([script, "sh".to_string()])
        .collect()
}
