//! Terminals. Every sandbox has a devpts instance of its own (see
//! `sandbox::mounts`), so a terminal a workload holds is one of its
//! sandbox's ptys, its controlling terminal through /dev/tty, or a terminal
//! of the host handed to it from outside (a `stasis exec` run from a
//! terminal). None is checkpointed yet: a dump refuses each, saying which,
//! and a restore refuses an image that names a terminal before opening
//! anything of it, so a host terminal never enters a restored sandbox
//! (its path would name whatever terminal has that number now).

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::stat::FileStat;

use crate::error::{Error, Result};

/// Whether character device `rdev` is a terminal by its major number:
/// BSD ptys (2, 3), virtual consoles and serial ports (4), /dev/tty,
/// /dev/console and /dev/ptmx (5), Unix98 pty slaves (136 to 143), and
/// the usual serial drivers (166 ttyACM, 188 ttyUSB, 204 low-density).
pub fn is_terminal_device(rdev: u64) -> bool {
    matches!(libc::major(rdev), 2..=5 | 136..=143 | 166 | 188 | 204)
}

/// Refuses fd `fd` of process `pid` (`dup` is our copy, `st` its fstat,
/// `link` its path) when it is a terminal. `init` is the host PID of the
/// sandbox's init, whose /dev/pts is the sandbox's own devpts.
pub fn check_dump(
    pid: i32,
    fd: i32,
    link: &str,
    dup: &OwnedFd,
    st: &FileStat,
    init: i32,
) -> Result<()> {
    // SAFETY: isatty on an fd we own.
    let tty = unsafe { libc::isatty(dup.as_raw_fd()) } == 1;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || !(tty || is_terminal_device(st.st_rdev)) {
        return Ok(());
    }
    let own = nix::sys::stat::stat(format!("/proc/{init}/root/dev/pts").as_str())
        .ok()
        .map(|s| s.st_dev);
    if own == Some(st.st_dev) {
        return Err(Error::Unsupported {
            pid,
            what: format!("fd {fd}: terminal {link} of the sandbox's own devpts"),
            detail: "pseudo-terminals are not checkpointed".into(),
        });
    }
    if st.st_rdev == libc::makedev(5, 0) {
        return Err(Error::Unsupported {
            pid,
            what: format!("fd {fd}: {link}, the process's controlling terminal"),
            detail: "terminals are not checkpointed".into(),
        });
    }
    Err(Error::Process {
        pid,
        reason: format!(
            "fd {fd} is a terminal of the host ({link}), outside the sandbox's own devpts: \
             an image never holds a host terminal (run the workload without a terminal, \
             or with one of its sandbox's ptys)"
        ),
    })
}

/// Refuses to reopen `path` for description `id` at restore when it is a
/// terminal (checked on the path before it is opened, and on the opened fd).
pub fn check_restore_path(id: u32, path: &str) -> Result<()> {
    if let Ok(st) = nix::sys::stat::stat(path) {
        if st.st_mode & libc::S_IFMT == libc::S_IFCHR && is_terminal_device(st.st_rdev) {
            return Err(refusal(id, path));
        }
    }
    Ok(())
}

/// The same check on the opened fd (a terminal of another driver).
pub fn check_restore_fd(id: u32, path: &str, fd: &OwnedFd) -> Result<()> {
    // SAFETY: isatty on an fd we own.
    if unsafe { libc::isatty(fd.as_raw_fd()) } == 1 {
        return Err(refusal(id, path));
    }
    Ok(())
}

fn refusal(id: u32, path: &str) -> Error {
    Error::Other(format!(
        "image: file {id} is the terminal {path}: terminals are not restored (a path would \
         name whatever terminal has that number now, in the sandbox or on the host)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_majors() {
        assert!(is_terminal_device(libc::makedev(136, 3)));
        assert!(is_terminal_device(libc::makedev(5, 2)));
        assert!(is_terminal_device(libc::makedev(4, 64)));
        assert!(!is_terminal_device(libc::makedev(1, 3)));
        assert!(!is_terminal_device(libc::makedev(10, 257)));
    }
}
