//! `linux.seccomp` compiled with libseccomp and loaded into the container's process right
//! before `execve`: default action, architectures, per-syscall actions with argument
//! conditions and `errnoRet`. Syscall names this kernel/arch does not know are skipped
//! (as runc does). `SCMP_ACT_NOTIFY` needs `listenerPath`: the init connects to it before
//! `pivot_root` and, once the filter is loaded, sends the notify descriptor there with
//! the container process state (runtime-spec's `ContainerProcessState`).

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

/// EPERM, the spec's default `errnoRet`.
const EPERM: i32 = 1;

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> ScmpAction {
    let errno = errno.map(|e| e as i32).unwrap_or(EPERM);
    match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno as u16),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
    }
}

fn arch(name: &str) -> Option<ScmpArch> {
    Some(match name {
        "SCMP_ARCH_X86" => ScmpArch::X86,
        "SCMP_ARCH_X86_64" => ScmpArch::X8664,
        "SCMP_ARCH_X32" => ScmpArch::X32,
        "SCMP_ARCH_ARM" => ScmpArch::Arm,
        "SCMP_ARCH_AARCH64" => ScmpArch::Aarch64,
        "SCMP_ARCH_RISCV64" => ScmpArch::Riscv64,
        "SCMP_ARCH_PPC64LE" => ScmpArch::Ppc64Le,
        "SCMP_ARCH_S390X" => ScmpArch::S390X,
        _ => return None,
    })
}

fn op(o: LinuxSeccompOperator) -> Option<ScmpCompareOp> {
    Some(match o {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => return None,
    })
}

/// Whether the profile hands syscalls to a listener.
pub fn uses_notify(s: &LinuxSeccomp) -> bool {
    s.default_action() == LinuxSeccompAction::ScmpActNotify
        || s.syscalls()
            .iter()
            .flatten()
            .any(|r| r.action() == LinuxSeccompAction::ScmpActNotify)
}

/// Builds the filter (without loading it).
pub fn compile(s: &LinuxSeccomp) -> Result<ScmpFilterContext, String> {
    if uses_notify(s) && s.listener_path().is_none() {
        return Err(
            "linux.seccomp.listenerPath: SCMP_ACT_NOTIFY needs a listener socket".to_string(),
        );
    }
    let default = action(s.default_action(), s.default_errno_ret());
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| format!("linux.seccomp: {e}"))?;
    // The runtime sets no_new_privs itself when the spec asks.
    ctx.set_ctl_nnp(false)
        .map_err(|e| format!("linux.seccomp: {e}"))?;
    for a in s.architectures().as_deref().unwrap_or_default() {
        let name = serde_json::to_value(a)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let arch =
            arch(&name).ok_or_else(|| format!("linux.seccomp.architectures: unknown {name}"))?;
        if arch != ScmpArch::native() {
            ctx.add_arch(arch)
                .map_err(|e| format!("linux.seccomp.architectures {name}: {e}"))?;
        }
    }
    for (i, rule) in s
        .syscalls()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let act = action(rule.action(), rule.errno_ret());
        if act == default {
            continue;
        }
        let mut conds = Vec::new();
        for a in rule.args().as_deref().unwrap_or_default() {
            let cmp = match op(a.op()) {
                Some(o) => ScmpArgCompare::new(a.index() as u32, o, a.value()),
                None => ScmpArgCompare::new(
                    a.index() as u32,
                    ScmpCompareOp::MaskedEqual(a.value()),
                    a.value_two().unwrap_or(0),
                ),
            };
            conds.push(cmp);
        }
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue; // not a syscall here
            };
            let r = if conds.is_empty() {
                ctx.add_rule(act, sc)
            } else {
                ctx.add_rule_conditional(act, sc, &conds)
            };
            r.map_err(|e| format!("{field} {name}: {e}"))?;
        }
    }
    Ok(ctx)
}

/// Compiles and loads the spec's filter into this process; with `SCMP_ACT_NOTIFY`,
/// returns the listener descriptor (to hand to the agent and close).
pub fn load(s: &LinuxSeccomp) -> Result<Option<std::os::fd::RawFd>, String> {
    let ctx = compile(s)?;
    ctx.load()
        .map_err(|e| format!("linux.seccomp: load: {e}"))?;
    if !uses_notify(s) {
        return Ok(None);
    }
    ctx.get_notify_fd()
        .map(Some)
        .map_err(|e| format!("linux.seccomp: the notify descriptor: {e}"))
}
