//! Process file descriptors: `pidfd_open(2)`, `pidfd_getfd(2)`,
//! `pidfd_send_signal(2)`.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::error::{check, Result};

/// `PIDFD_NONBLOCK` (include/uapi/linux/pidfd.h): equal to `O_NONBLOCK`.
pub const PIDFD_NONBLOCK: u32 = libc::O_NONBLOCK as u32;

/// Opens a pidfd referring to process `pid` (close-on-exec).
pub fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    pidfd_open_flags(pid, 0)
}

/// `pidfd_open` with flags (`0` or [`PIDFD_NONBLOCK`]).
pub fn pidfd_open_flags(pid: i32, flags: u32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let fd = check("pidfd_open", unsafe {
        libc::syscall(libc::SYS_pidfd_open, pid, flags)
    })?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Duplicates file descriptor `targetfd` of the process behind `pidfd` into this
/// process (same open file description; close-on-exec set). Needs
/// `PTRACE_MODE_ATTACH_REALCREDS` over the target.
pub fn pidfd_getfd(pidfd: BorrowedFd, targetfd: i32) -> Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes a pidfd, a target fd number and flags (0); it
    // returns a new fd or -1.
    let fd = check("pidfd_getfd", unsafe {
        libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), targetfd, 0u32)
    })?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends signal `sig` to the process behind `pidfd` (`sig == 0` checks that it
/// still exists).
pub fn pidfd_send_signal(pidfd: BorrowedFd, sig: i32) -> Result<()> {
    // SAFETY: a null siginfo pointer means "as if sent by kill(2)"; flags are 0.
    check("pidfd_send_signal", unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    })?;
    Ok(())
}

/// Frees the memory of the process behind `pidfd`, which must be dying (a
/// SIGKILL sent): the caller's CPU unmaps its anonymous memory while the
/// process's own exit does the same from the other end, so a large address
/// space goes about twice as fast. ENOSYS before Linux 5.15; EINVAL when the
/// memory is shared with a process that is not dying.
pub fn process_mrelease(pidfd: BorrowedFd) -> Result<()> {
    // SAFETY: process_mrelease takes a pidfd and flags (0); no memory passed.
    check("process_mrelease", unsafe {
        libc::syscall(libc::SYS_process_mrelease, pidfd.as_raw_fd(), 0u32)
    })?;
    Ok(())
}
