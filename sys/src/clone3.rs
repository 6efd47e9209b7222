//! `clone3(2)` with `set_tid`, wrapped by hand: the `clone3` crate on
//! crates.io pulls `bitflags` 1 and panics on flag combinations the kernel
//! would merely reject, and a raw wrapper is a few lines.

use crate::error::{check, Result};

/// `CLONE_NEWTIME` (include/uapi/linux/sched.h); libc has it, repeated here for
/// callers that only depend on this crate.
pub const CLONE_NEWTIME: u64 = 0x0000_0080;
/// `CLONE_PIDFD` (include/uapi/linux/sched.h).
pub const CLONE_PIDFD: u64 = 0x0000_1000;
/// `CLONE_INTO_CGROUP` (include/uapi/linux/sched.h).
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// Most PIDs `set_tid` may hold (`MAX_PID_NS_LEVEL`, include/linux/pid_namespace.h).
pub const MAX_SET_TID: usize = 32;

/// `struct clone_args` (include/uapi/linux/sched.h), version 2 (88 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

const _: () = assert!(std::mem::size_of::<CloneArgs>() == 88);

/// Raw clone3 (`SYS_clone3`) with `set_tid` support, fork-like (no new stack).
/// Returns 0 in the child, the child's PID in the parent.
///
/// `flags`: `CLONE_*` bits including namespace flags; `exit_signal`: usually
/// `SIGCHLD`; `set_tid`: innermost namespace first (`set_tid[0]` is the PID in
/// the innermost namespace, the child's own one when `CLONE_NEWPID` is given).
/// An empty `set_tid` lets the kernel choose.
///
/// # Safety
/// The child runs on a copy of the caller's memory, like after `fork()`. Call
/// it only from a single-threaded process, or make the child do nothing but
/// async-signal-safe work before `execve` or `_exit`.
pub unsafe fn clone3(flags: u64, exit_signal: u64, set_tid: &[i32]) -> Result<i32> {
    let mut args = CloneArgs {
        flags,
        exit_signal,
        ..CloneArgs::default()
    };
    if !set_tid.is_empty() {
        args.set_tid = set_tid.as_ptr() as u64;
        args.set_tid_size = set_tid.len() as u64;
    }
    // SAFETY: the caller upholds this function's contract; `set_tid` outlives
    // the call.
    unsafe { clone3_args(&mut args) }
}

/// Raw clone3 with a caller-built [`CloneArgs`] (e.g. with `CLONE_PIDFD` and
/// `pidfd` pointing at an `i32`, or `CLONE_INTO_CGROUP`). Returns 0 in the
/// child, the child's PID in the parent.
///
/// # Safety
/// As [`clone3`]; in addition every pointer in `args` must be valid for the
/// kernel to read or write as `clone3(2)` describes, and a non-zero `stack`
/// must be a stack the child may run on (the child then returns from this
/// function on that stack, which is only sound if the caller arranged for it).
pub unsafe fn clone3_args(args: &mut CloneArgs) -> Result<i32> {
    // SAFETY: `args` points at a valid, fully initialised clone_args of the
    // size passed; the caller guarantees the pointers inside it are valid.
    let ret = check("clone3", unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    })?;
    Ok(ret as i32)
}
