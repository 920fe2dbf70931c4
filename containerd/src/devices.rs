//! Device rules: `linux.resources.devices` followed by the devices every container may
//! use, as v1 device-controller writes and as a cgroup v2 device program (eBPF, attached
//! to the container's cgroup2 directory, as runc and crun do where there is no devices
//! controller).
//!
//! The program sees `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor }`
//! (type in the low 16 bits of `access_type`: 1 block, 2 char; access in the high 16:
//! 1 mknod, 2 read, 4 write) and returns 1 to allow. Later rules win, as in the v1
//! controller: they are tested last-to-first and the first that matches decides. A rule
//! for every device ends the list (v1 resets to it); with none, no match allows, as a new
//! v1 cgroup keeps its parent's (permissive) list.

// The bpf(2) syscall has no safe wrapper in nix; the two unsafe blocks below are the call
// and taking ownership of the descriptor it returns.
#![allow(unsafe_code)]

use nix::libc;
use oci_spec::runtime::LinuxDeviceCgroup;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("load the device program for {path}: {source}{}", if .log.is_empty() { String::new() } else { format!(" (verifier: {})", .log) })]
    Load {
        path: PathBuf,
        log: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attach the device program to {path}: {source}")]
    Attach {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One rule: allow or deny `access` (of `rwm`) to devices of `typ` (`a`, `b` or `c`)
/// with `major:minor` (`None` = any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub typ: char,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

/// Devices every container may use whatever its rules say, as runc allows them: the
/// default device nodes, ptys, and `mknod` of any node (using one is what is checked).
const ALWAYS_ALLOWED: &[(char, Option<i64>, Option<i64>, &str)] = &[
    ('c', None, None, "m"),
    ('b', None, None, "m"),
    ('c', Some(1), Some(3), "rwm"),
    ('c', Some(1), Some(5), "rwm"),
    ('c', Some(1), Some(7), "rwm"),
    ('c', Some(1), Some(8), "rwm"),
    ('c', Some(1), Some(9), "rwm"),
    ('c', Some(5), Some(0), "rwm"),
    ('c', Some(5), Some(1), "rwm"),
    ('c', Some(5), Some(2), "rwm"),
    ('c', Some(136), None, "rwm"),
];

/// The spec's rules, then the devices always allowed.
pub fn rules(spec: &[LinuxDeviceCgroup]) -> Vec<Rule> {
    let mut out: Vec<Rule> = spec
        .iter()
        .map(|r| Rule {
            allow: r.allow(),
            typ: r
                .typ()
                .and_then(|t| t.as_str().chars().next())
                .unwrap_or('a'),
            major: r.major(),
            minor: r.minor(),
            access: r.access().clone().unwrap_or_else(|| "rwm".into()),
        })
        .collect();
    out.extend(
        ALWAYS_ALLOWED
            .iter()
            .map(|&(typ, major, minor, access)| Rule {
                allow: true,
                typ,
                major,
                minor,
                access: access.into(),
            }),
    );
    out
}

impl Rule {
    /// Whether the rule covers every device and access (v1 writes it as a bare `a`).
    fn everything(&self) -> bool {
        self.typ == 'a' && self.major.is_none() && self.minor.is_none() && self.access_bits() == 7
    }

    /// The v1 line: `TYPE MAJOR:MINOR ACCESS`, or `a` for everything.
    pub fn v1_line(&self) -> String {
        if self.everything() {
            return "a".into();
        }
        let num = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_else(|| "*".into());
        format!(
            "{} {}:{} {}",
            self.typ,
            num(self.major),
            num(self.minor),
            self.access
        )
    }

    fn access_bits(&self) -> i32 {
        self.access.chars().fold(0, |bits, c| {
            bits | match c {
                'm' => 1,
                'r' => 2,
                'w' => 4,
                _ => 0,
            }
        })
    }
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

const LDX_MEM_W: u8 = 0x61;
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_X: u8 = 0xbc;
const JNE_K: u8 = 0x55;
const ALU64_MOV_K: u8 = 0xb7;
const EXIT: u8 = 0x95;

/// The device program for `rules`.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    // r2 = type, r3 = access, r4 = major, r5 = minor.
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        // Tests that jump past this rule when it does not match; patched once the
        // rule's length is known.
        let mut block = Vec::new();
        let mut skips = Vec::new();
        match r.typ {
            'b' | 'c' => {
                skips.push(block.len());
                block.push(insn(JNE_K, 2, 0, 0, if r.typ == 'b' { 1 } else { 2 }));
            }
            _ => {}
        }
        let bits = r.access_bits();
        if bits != 7 {
            // Every access asked for must be among the rule's.
            block.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
            block.push(insn(ALU32_AND_K, 1, 0, 0, !bits & 7));
            skips.push(block.len());
            block.push(insn(JNE_K, 1, 0, 0, 0));
        }
        for (reg, n) in [(4u8, r.major), (5u8, r.minor)] {
            if let Some(n) = n {
                skips.push(block.len());
                block.push(insn(JNE_K, reg, 0, 0, n as i32));
            }
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, i32::from(r.allow)));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        let unconditional = skips.is_empty();
        for at in skips {
            block[at].off = (len - at - 1) as i16;
        }
        p.extend(block);
        if unconditional {
            // Nothing after a rule for everything is reachable (the verifier refuses
            // unreachable instructions).
            return p;
        }
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// `union bpf_attr` as BPF_PROG_LOAD reads it, zero-padded.
#[repr(C)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    pad: [u8; 48],
}

/// `union bpf_attr` as BPF_PROG_ATTACH and BPF_PROG_QUERY read it, zero-padded.
#[repr(C)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd_or_type: u32,
    attach_type_or_query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    pad: [u8; 100],
}

fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a properly sized, zero-padded `union bpf_attr` the kernel reads
    // (and for queries writes) within its size; pointers in it outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn open_dir(dir: &Path) -> Result<OwnedFd, DeviceError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map(OwnedFd::from)
        .map_err(|source| DeviceError::Open {
            path: dir.to_path_buf(),
            source,
        })
}

/// Loads the program for `rules` and attaches it to the cgroup2 directory `dir`.
pub fn attach(dir: &Path, rules: &[Rule]) -> Result<(), DeviceError> {
    let insns = program(rules);
    let license = b"Apache-2.0\0";
    let mut log = vec![0u8; 64 << 10];
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"keel_device");
    let load = |log_level: u32, log: &mut [u8]| {
        let mut attr = LoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level,
            log_size: if log_level > 0 { log.len() as u32 } else { 0 },
            log_buf: if log_level > 0 {
                log.as_mut_ptr() as u64
            } else {
                0
            },
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
            prog_ifindex: 0,
            expected_attach_type: BPF_CGROUP_DEVICE,
            pad: [0; 48],
        };
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    let prog = match load(0, &mut log) {
        Ok(fd) => fd,
        Err(source) => {
            // Once more with the verifier's log, for the error.
            let _ = load(1, &mut log);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            return Err(DeviceError::Load {
                path: dir.to_path_buf(),
                log: String::from_utf8_lossy(&log[..end]).trim().to_string(),
                source,
            });
        }
    };
    // SAFETY: BPF_PROG_LOAD returned a new file descriptor we own.
    let prog = unsafe { OwnedFd::from_raw_fd(prog as i32) };
    cgroup_call(
        dir,
        BPF_PROG_ATTACH,
        [
            prog.as_raw_fd() as u32,
            BPF_CGROUP_DEVICE,
            BPF_F_ALLOW_MULTI,
        ],
    )?;
    Ok(())
}

/// How many device programs are attached to the cgroup2 directory `dir` itself.
pub fn attached(dir: &Path) -> Result<u32, DeviceError> {
    Ok(cgroup_call(dir, BPF_PROG_QUERY, [BPF_CGROUP_DEVICE, 0, 0])?.prog_cnt)
}

/// A bpf(2) command on the cgroup directory `dir`; `fields` are the three words after
/// the target descriptor (attach: program, type, flags; query: type, flags, 0).
fn cgroup_call(dir: &Path, cmd: libc::c_int, fields: [u32; 3]) -> Result<AttachAttr, DeviceError> {
    let cgroup = open_dir(dir)?;
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd_or_type: fields[0],
        attach_type_or_query_flags: fields[1],
        attach_flags: fields[2],
        prog_ids: 0,
        prog_cnt: 0,
        pad: [0; 100],
    };
    bpf(cmd, &mut attr).map_err(|source| DeviceError::Attach {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(allow: bool, typ: char, major: Option<i64>, minor: Option<i64>, access: &str) -> Rule {
        Rule {
            allow,
            typ,
            major,
            minor,
            access: access.into(),
        }
    }

    #[test]
    fn v1_lines() {
        assert_eq!(rule(false, 'a', None, None, "rwm").v1_line(), "a");
        assert_eq!(rule(true, 'c', Some(1), None, "rw").v1_line(), "c 1:* rw");
        assert_eq!(rules(&[]).len(), ALWAYS_ALLOWED.len());
    }

    #[test]
    fn program_jumps_past_rules_that_do_not_match() {
        let p = program(&[
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'b', Some(7), Some(0), "r"),
        ]);
        // Prologue 6; the block rule (type, access 3, major, minor, mov, exit) = 8; the
        // deny-all rule (mov, exit) = 2, which ends the program.
        assert_eq!(p.len(), 6 + 8 + 2);
        let block = &p[6..14];
        assert_eq!(block[0].code, JNE_K);
        assert_eq!(block[0].off, 7, "type mismatch skips the whole rule");
        assert_eq!(block[2].imm, !2 & 7, "access beyond read");
        assert_eq!(block[3].off, 4);
        assert_eq!(block[6].imm, 1, "allow");
        assert_eq!(p[14].imm, 0, "then deny everything else");
        // Without a rule for everything, no match allows (v1 keeps the parent's list).
        let p = program(&[rule(false, 'c', Some(1), Some(3), "w")]);
        assert_eq!(p[p.len() - 2].imm, 1);
    }

    /// The program, attached to a fresh cgroup2 directory on this host, decides alone
    /// for a shell moved into it (its v1 device cgroup, the root, allows everything).
    #[test]
    fn attached_program_enforces_the_rules() {
        let Some(root) = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
        else {
            panic!("no cgroup2 hierarchy on this host");
        };
        let dir = root.join(format!("keel-devices-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let mut all = vec![rule(false, 'a', None, None, "rwm")];
        all.extend(rules(&[]));
        all.push(rule(false, 'c', Some(1), Some(5), "r"));
        attach(&dir, &all).unwrap();
        assert_eq!(attached(&dir).unwrap(), 1);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs || exit 9; \
                 echo x > /dev/null && echo null-ok; \
                 head -c1 /dev/zero >/dev/null && echo zero-read; \
                 echo x > /dev/zero && echo zero-write; \
                 head -c1 /dev/mem >/dev/null 2>&1 || echo mem-denied",
                dir.display()
            ))
            .output()
            .unwrap();
        let _ = std::fs::remove_dir(&dir);
        let so = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            so,
            "null-ok\nzero-write\nmem-denied\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
