//! Running the host tools the build drives (debootstrap, mkfs, mcopy, grub-mkimage,
//! qemu-img …) with errors that name the command and carry its stderr.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

/// A host tool that failed or could not be started.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot run `{command}` (is the package that ships {program:?} installed?)")]
    Spawn {
        command: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// A command line being assembled.
#[derive(Debug)]
pub struct Cmd {
    inner: Command,
    shown: String,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        let program = program.as_ref();
        Cmd {
            inner: Command::new(program),
            shown: program.to_string_lossy().into_owned(),
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        let a = a.as_ref();
        self.shown.push(' ');
        self.shown.push_str(&a.to_string_lossy());
        self.inner.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<OsStr>) -> Cmd {
        self.inner.env(k, v);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Cmd {
        self.inner.current_dir(dir);
        self
    }

    /// Runs to completion; stdout is returned, stderr goes into the error.
    pub fn output(mut self) -> Result<Vec<u8>, CmdError> {
        tracing::debug!(command = %self.shown, "running");
        let out = self
            .inner
            .stdin(Stdio::null())
            .output()
            .map_err(|source| CmdError::Spawn {
                program: self.inner.get_program().to_string_lossy().into_owned(),
                command: self.shown.clone(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            return Err(CmdError::Failed {
                command: self.shown,
                status: out.status,
                stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        Ok(out.stdout)
    }

    /// Runs to completion, discarding stdout.
    pub fn run(self) -> Result<(), CmdError> {
        self.output().map(drop)
    }
}

/// True when `program` is found on `PATH` (or is an existing path).
pub fn have(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}
