//! `kcmp(2)`: are two processes sharing a kernel object?

use crate::error::{check, Result};

/// `enum kcmp_type` (include/uapi/linux/kcmp.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum KcmpType {
    /// Compare file descriptions `idx1` (in pid1) and `idx2` (in pid2).
    File = 0,
    /// Address spaces.
    Vm = 1,
    /// File descriptor tables.
    Files = 2,
    /// Filesystem info (cwd, root, umask).
    Fs = 3,
    /// Signal handler tables.
    Sighand = 4,
    /// I/O contexts.
    Io = 5,
    /// System V semaphore undo lists.
    Sysvsem = 6,
    /// An epoll target: `idx2` points at a [`KcmpEpollSlot`].
    EpollTfd = 7,
}

/// `struct kcmp_epoll_slot` (include/uapi/linux/kcmp.h).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KcmpEpollSlot {
    pub efd: u32,
    pub tfd: u32,
    pub toff: u32,
}

/// What `kcmp` says about two objects. The kernel orders objects by obfuscated
/// pointers: only `Equal` versus not-equal carries meaning across calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kcmp {
    Equal,
    Less,
    Greater,
    /// Not equal, and the kernel gives no order (return value 3).
    Unordered,
}

impl Kcmp {
    /// True when both handles name the same kernel object.
    pub fn is_equal(self) -> bool {
        self == Kcmp::Equal
    }
}

/// Compares the kernel objects of type `ty` named by `idx1` in `pid1` and
/// `idx2` in `pid2`.
pub fn kcmp(pid1: i32, pid2: i32, ty: KcmpType, idx1: u64, idx2: u64) -> Result<Kcmp> {
    // SAFETY: kcmp only reads integers (and, for EpollTfd, a struct the caller
    // passes by address in idx2, which the kernel copies with copy_from_user
    // and fails with EFAULT when invalid).
    let ret = check("kcmp", unsafe {
        libc::syscall(libc::SYS_kcmp, pid1, pid2, ty as i32, idx1, idx2)
    })?;
    Ok(match ret {
        0 => Kcmp::Equal,
        1 => Kcmp::Less,
        2 => Kcmp::Greater,
        _ => Kcmp::Unordered,
    })
}
