//! Forking init with new namespaces: a raw clone3(2), as nix and libc do not
//! wrap it. The child runs on a copy of the caller's stack, like fork(2), so
//! the caller must be single-threaded (checked) and the child must finish with
//! `_exit`, never returning into the parent's frames for good.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `struct clone_args` of linux/sched.h, version 2 (with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// linux/sched.h (libc's constant is an i32 that overflows).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Result of [`clone_with_namespaces`].
pub enum Forked {
    /// In the new process.
    Child,
    /// In the caller: the child's PID (in the caller's PID namespace) and a pidfd for it.
    Parent { pid: i32, pidfd: OwnedFd },
}

/// Number of threads of the calling process, from /proc/self/status.
pub fn thread_count() -> io::Result<usize> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

/// Forks the calling process into new namespaces (`CLONE_NEW*` bits in
/// `ns_flags`), with SIGCHLD as exit signal and a pidfd for the child.
///
/// With `cgroup` (a cgroup2 directory), the child is born in that cgroup
/// (`CLONE_INTO_CGROUP`): no migration, which would wait for an RCU grace
/// period of the cgroup threadgroup lock (see `Cgroup::add_pid`). The second
/// value says whether it was: when the kernel refuses (before Linux 5.7, or a
/// cgroup it cannot take the child into), the child is forked without it and
/// the caller moves it by `cgroup.procs`, whose error then says why.
///
/// Fails with `InvalidInput` when the caller has more than one thread: the
/// child would inherit locks held by threads that do not exist in it.
pub fn clone_with_namespaces(
    ns_flags: u64,
    cgroup: Option<BorrowedFd<'_>>,
) -> io::Result<(Forked, bool)> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the calling process has {threads} threads; forking the sandbox's init needs exactly one"),
        ));
    }
    if let Some(fd) = cgroup {
        match clone3(ns_flags | CLONE_INTO_CGROUP, fd.as_raw_fd() as u64) {
            Ok(f) => return Ok((f, true)),
            Err(e) => tracing::debug!("clone3 with CLONE_INTO_CGROUP: {e}; forking without it"),
        }
    }
    clone3(ns_flags, 0).map(|f| (f, false))
}

fn clone3(flags: u64, cgroup: u64) -> io::Result<Forked> {
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: flags | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM and without a stack behaves like fork(2):
    // the child gets a copy-on-write copy of the address space and returns here
    // with 0. `args` is a valid clone_args of the size passed, and `pidfd`
    // outlives the call; `cgroup`, when set, is an fd the caller holds open.
    // The process is single-threaded (checked by the caller), so no lock can
    // be held by a thread missing from the child.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => {
            // SAFETY: with CLONE_PIDFD the kernel stored a new pidfd owned by us.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok(Forked::Parent {
                pid: pid as i32,
                pidfd,
            })
        }
    }
}
