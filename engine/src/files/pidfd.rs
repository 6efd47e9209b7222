//! pidfd: a pidfd of a process (or, with PIDFD_THREAD, a thread) of the tree.
//! fdinfo's `Pid:` names it as the dumper sees it; the image records its PID
//! in the sandbox. Restore opens a placeholder among the descriptions (the
//! target does not exist yet) and, once the tree exists, the process opens
//! the pidfd itself with pidfd_open and puts it at its fd numbers.

use std::collections::{HashMap, HashSet};
use std::os::fd::{FromRawFd, OwnedFd};

use super::fdinfo_field;
use crate::error::{Error, Result};
use crate::image::{FileKind, FilesImage, ProcessImage};
use crate::remote::Remote;

/// `host_to_ns` maps the host PID of every process and thread of the tree to
/// its PID in the sandbox.
pub fn collect(
    pid: i32,
    fd: i32,
    fdinfo: &str,
    host_to_ns: &HashMap<i32, i32>,
) -> Result<FileKind> {
    let target: i32 = fdinfo_field(fdinfo, "Pid:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Process {
            pid,
            reason: format!("fd {fd} (pidfd): fdinfo has no Pid"),
        })?;
    if target == -1 {
        return Ok(FileKind::Pidfd { pid: DEAD });
    }
    if target <= 0 {
        return Err(Error::Process {
            pid,
            reason: format!("fd {fd} (pidfd): fdinfo gives Pid {target}"),
        });
    }
    if let Some(&ns) = host_to_ns.get(&target) {
        return Ok(FileKind::Pidfd { pid: ns });
    }
    // A thread other than a main thread: restored threads are created while
    // their own process is rebuilt, too late for the pidfds of others.
    let tgid = std::fs::read_to_string(format!("/proc/{target}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse::<i32>().ok())
        });
    if let Some(&ns) = tgid.and_then(|t| host_to_ns.get(&t)) {
        return Err(Error::Unsupported {
            pid,
            what: format!("fd {fd}: a pidfd of a thread (PIDFD_THREAD) other than a main thread"),
            detail: format!("a thread of process {ns}, host TID {target}"),
        });
    }
    Err(Error::Unsupported {
        pid,
        what: format!("fd {fd}: a pidfd of a process outside the dumped tree"),
        detail: format!("host PID {target}"),
    })
}

/// The PID a pidfd of a reaped process is recorded with.
pub const DEAD: i32 = 0;

/// A pidfd of a process that has exited and was reaped: of a child forked
/// here that exits at once (run in init, before the tree exists, so its PID
/// is free again before any is asked for).
pub fn open_dead(flags: u32) -> Result<OwnedFd> {
    // SAFETY: fork in init, which is single-threaded; the child only calls
    // _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(super::last_os_error(
            "forking for a pidfd of a reaped process".into(),
        ));
    }
    if child == 0 {
        // SAFETY: leaving the child at once, running nothing of the parent's.
        unsafe { libc::_exit(0) };
    }
    let f = (flags & libc::O_NONBLOCK as u32) as u64;
    // SAFETY: pidfd_open takes plain integers; the child is a zombie until
    // reaped below, so the PID is still its.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child, f) } as i32;
    let err = std::io::Error::last_os_error();
    let mut st = 0;
    // SAFETY: reaping our own child; `st` is a valid out pointer.
    while unsafe { libc::waitpid(child, &mut st, 0) } < 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
    if raw < 0 {
        return Err(Error::Io {
            what: "pidfd_open of a child for a pidfd of a reaped process".into(),
            cause: err,
        });
    }
    // SAFETY: `raw` is a new fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: F_SETFD on our own fd.
    unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(fd)
}

/// What the fds of a pidfd hold until the process opens the pidfd itself.
pub fn open_placeholder() -> Result<OwnedFd> {
    // SAFETY: opening a static NUL-terminated path; a new fd or -1.
    let raw = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(super::last_os_error("opening /dev/null".into()));
    }
    // SAFETY: `raw` is a new fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Checks that every pidfd names a process of the image.
pub fn validate(files: &FilesImage, pids: &HashSet<i32>) -> Result<()> {
    for f in &files.files {
        if let FileKind::Pidfd { pid } = f.kind {
            if pid != DEAD && !pids.contains(&pid) {
                return Err(Error::Other(format!(
                    "image: pidfd {} names process {pid}, which is not in the image",
                    f.id
                )));
            }
        }
    }
    Ok(())
}

/// Opens, from inside process `p`, the pidfds of its fd table and puts each
/// at its fd numbers (over the placeholder).
pub fn restore(r: &mut Remote, p: &ProcessImage, files: &FilesImage) -> Result<()> {
    let mut done = HashSet::new();
    for e in &p.fds {
        let Some(f) = files.files.get(e.file as usize) else {
            continue;
        };
        let FileKind::Pidfd { pid } = f.kind else {
            continue;
        };
        // Made in init already, at its fd numbers.
        if pid == DEAD {
            continue;
        }
        if !done.insert(e.file) {
            continue;
        }
        let flags = f.flags & (libc::O_NONBLOCK | libc::O_EXCL) as u32;
        let new = r.call(
            &format!("pidfd_open({pid}) for fd {}", e.fd),
            libc::SYS_pidfd_open,
            [pid as u64, flags as u64, 0, 0, 0, 0],
        )?;
        for e2 in p.fds.iter().filter(|x| x.file == e.file) {
            let cx = if e2.cloexec { libc::O_CLOEXEC } else { 0 };
            r.call(
                &format!("dup3 of the pidfd of {pid} to fd {}", e2.fd),
                libc::SYS_dup3,
                [new, e2.fd as u64, cx as u64, 0, 0, 0],
            )?;
        }
        r.call("close", libc::SYS_close, [new, 0, 0, 0, 0, 0])?;
    }
    Ok(())
}
