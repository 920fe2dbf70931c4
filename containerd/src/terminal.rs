//! A foreground `exec --tty` without `--console-socket`: the runtime receives the pty
//! master itself and relays it to its own stdin/stdout (raw mode while stdin is a
//! terminal), as `runc exec -t` does in the foreground.

// Taking ownership of a descriptor received over SCM_RIGHTS is the one unsafe step.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Receives one message with one descriptor (SCM_RIGHTS) over `sock`: the payload and
/// the descriptor.
pub fn receive_fd(sock: &UnixStream) -> std::io::Result<(Vec<u8>, OwnedFd)> {
    let mut buf = vec![0u8; 64 << 10];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    let len = msg.bytes;
    let mut fd = None;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c
            && let Some(&raw) = fds.first()
        {
            // SAFETY: the kernel installed this descriptor in our table for us alone.
            fd = Some(unsafe { OwnedFd::from_raw_fd(raw) });
        }
    }
    buf.truncate(len);
    fd.map(|fd| (buf, fd))
        .ok_or_else(|| std::io::Error::other("no descriptor arrived"))
}

/// Puts a terminal stdin into raw mode until dropped.
struct RawMode {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(stdin.as_fd()) else {
            return RawMode { saved: None };
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// Receives the master over `sock` and copies stdin to it and it to stdout until the
/// process side closes (the master then reads EIO).
pub fn relay(sock: &UnixStream) -> std::io::Result<()> {
    let master = std::fs::File::from(receive_fd(sock)?.1);
    let _raw = RawMode::enter();
    let mut input = master.try_clone()?;
    // Ends with the runtime: a read of stdin may block past the process's exit.
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || input.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut output = master;
    let mut stdout = std::io::stdout();
    let mut buf = [0u8; 4096];
    loop {
        match output.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                stdout.write_all(&buf[..n])?;
                stdout.flush()?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: every slave descriptor is closed.
            Err(_) => break,
        }
    }
    Ok(())
}
