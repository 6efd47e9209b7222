//! userfaultfd with write-protection, enough for dirty-page tracking through
//! `UFFD_FEATURE_WP_ASYNC` (the kernel marks written pages itself, no fault
//! handler needed) read back with `PAGEMAP_SCAN`.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::error::{check, Result};

// include/uapi/linux/userfaultfd.h
pub const UFFD_API: u64 = 0xaa;
pub const UFFD_USER_MODE_ONLY: i32 = 1;
pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
pub const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const UFFD_FEATURE_SIGBUS: u64 = 1 << 7;
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
pub const UFFD_FEATURE_MINOR_HUGETLBFS: u64 = 1 << 9;
pub const UFFD_FEATURE_MINOR_SHMEM: u64 = 1 << 10;
pub const UFFD_FEATURE_EXACT_ADDRESS: u64 = 1 << 11;
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_POISON: u64 = 1 << 14;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_REGISTER_MODE_MINOR: u64 = 1 << 2;
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `_IOWR(UFFDIO, 0x3F, struct uffdio_api)`.
pub const UFFDIO_API: u64 = 0xc018_aa3f;
/// `_IOWR(UFFDIO, 0x00, struct uffdio_register)`.
pub const UFFDIO_REGISTER: u64 = 0xc020_aa00;
/// `_IOR(UFFDIO, 0x01, struct uffdio_range)`.
pub const UFFDIO_UNREGISTER: u64 = 0x8010_aa01;
/// `_IOWR(UFFDIO, 0x06, struct uffdio_writeprotect)`.
pub const UFFDIO_WRITEPROTECT: u64 = 0xc018_aa06;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `userfaultfd(flags)` (`O_CLOEXEC`, `O_NONBLOCK`, [`UFFD_USER_MODE_ONLY`]).
pub fn userfaultfd(flags: i32) -> Result<OwnedFd> {
    // SAFETY: userfaultfd takes an integer and returns a new fd or -1.
    let fd = check("userfaultfd", unsafe {
        libc::syscall(libc::SYS_userfaultfd, flags)
    })?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `UFFDIO_API` handshake requesting `features`; returns the features the
/// kernel supports (when called with 0) or grants.
pub fn api(uffd: BorrowedFd, features: u64) -> Result<u64> {
    let mut a = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `a` is a valid uffdio_api the kernel reads and updates.
    check("ioctl(UFFDIO_API)", unsafe {
        libc::ioctl(uffd.as_raw_fd(), UFFDIO_API as _, &mut a as *mut UffdioApi) as libc::c_long
    })?;
    Ok(a.features)
}

/// `UFFDIO_REGISTER` of `[start, start+len)` with `mode`; returns the ioctls
/// available on the range.
pub fn register(uffd: BorrowedFd, start: u64, len: u64, mode: u64) -> Result<u64> {
    let mut r = UffdioRegister {
        range: UffdioRange { start, len },
        mode,
        ioctls: 0,
    };
    // SAFETY: `r` is a valid uffdio_register the kernel reads and updates.
    check("ioctl(UFFDIO_REGISTER)", unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_REGISTER as _,
            &mut r as *mut UffdioRegister,
        ) as libc::c_long
    })?;
    Ok(r.ioctls)
}

/// `UFFDIO_UNREGISTER` of `[start, start+len)`.
pub fn unregister(uffd: BorrowedFd, start: u64, len: u64) -> Result<()> {
    let mut r = UffdioRange { start, len };
    // SAFETY: `r` is a valid uffdio_range the kernel reads.
    check("ioctl(UFFDIO_UNREGISTER)", unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_UNREGISTER as _,
            &mut r as *mut UffdioRange,
        ) as libc::c_long
    })?;
    Ok(())
}

/// `UFFDIO_WRITEPROTECT`: write-protect (`wp`) or unprotect `[start, start+len)`.
pub fn writeprotect(uffd: BorrowedFd, start: u64, len: u64, wp: bool) -> Result<()> {
    let mut w = UffdioWriteprotect {
        range: UffdioRange { start, len },
        mode: if wp { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
    };
    // SAFETY: `w` is a valid uffdio_writeprotect the kernel reads.
    check("ioctl(UFFDIO_WRITEPROTECT)", unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_WRITEPROTECT as _,
            &mut w as *mut UffdioWriteprotect,
        ) as libc::c_long
    })?;
    Ok(())
}

/// `_IOWR(UFFDIO, 0x03, struct uffdio_copy)`.
pub const UFFDIO_COPY: u64 = 0xc028_aa03;
/// `UFFD_EVENT_PAGEFAULT` (include/uapi/linux/userfaultfd.h).
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `UFFDIO_COPY`: fills `[dst, dst+len)` of the registered address space with
/// `len` bytes from `src` in the calling process and wakes the faulting
/// thread; returns the number of bytes copied.
///
/// # Safety
/// `src` must be readable for `len` bytes in the calling process.
pub unsafe fn copy(uffd: BorrowedFd, dst: u64, src: *const u8, len: u64, mode: u64) -> Result<i64> {
    let mut c = UffdioCopy {
        dst,
        src: src as u64,
        len,
        mode,
        copy: 0,
    };
    // SAFETY: `c` is a valid uffdio_copy; the caller guarantees `src`.
    check("ioctl(UFFDIO_COPY)", unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_COPY as _,
            &mut c as *mut UffdioCopy,
        ) as libc::c_long
    })?;
    Ok(c.copy)
}

/// `UFFDIO_COPY` of all of `src` to `dst` in the registered address space,
/// going on after partial progress (EAGAIN with bytes copied); returns the
/// bytes copied before any error (all of `src` on success) and the error.
pub fn copy_all(uffd: BorrowedFd, dst: u64, src: &[u8]) -> (u64, Option<std::io::Error>) {
    let mut done = 0u64;
    while done < src.len() as u64 {
        let mut c = UffdioCopy {
            dst: dst + done,
            src: src.as_ptr() as u64 + done,
            len: src.len() as u64 - done,
            mode: 0,
            copy: 0,
        };
        // SAFETY: `c` is a valid uffdio_copy; its source lies inside `src`,
        // readable for the whole call.
        let ret = unsafe {
            libc::ioctl(
                uffd.as_raw_fd(),
                UFFDIO_COPY as _,
                &mut c as *mut UffdioCopy,
            )
        };
        let err = (ret == -1).then(std::io::Error::last_os_error);
        if c.copy > 0 {
            done += c.copy as u64;
        }
        match err {
            None => {}
            // Partial progress: go on with the rest.
            Some(e) if e.raw_os_error() == Some(libc::EAGAIN) && c.copy > 0 => {}
            Some(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

/// `struct uffd_msg` (include/uapi/linux/userfaultfd.h), 32 bytes. For a
/// page fault `arg[0]` holds the flags and `arg[1]` the address.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UffdMsg {
    pub event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    pub arg: [u64; 3],
}

const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);

/// Reads one message; `Ok(None)` when none is queued (non-blocking fd).
pub fn read_msg(uffd: BorrowedFd) -> Result<Option<UffdMsg>> {
    let mut m = UffdMsg::default();
    // SAFETY: reading at most 32 bytes into `m`, a plain-data struct.
    let n = unsafe {
        libc::read(
            uffd.as_raw_fd(),
            (&mut m as *mut UffdMsg).cast(),
            std::mem::size_of::<UffdMsg>(),
        )
    };
    if n == -1 {
        let e = crate::Error::last("read(userfaultfd)");
        if e.errno == nix::errno::Errno::EAGAIN {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(m))
}

/// Names of the `UFFD_FEATURE_*` bits set in `features`.
pub fn feature_names(features: u64) -> Vec<&'static str> {
    const NAMES: &[(u64, &str)] = &[
        (UFFD_FEATURE_PAGEFAULT_FLAG_WP, "pagefault_flag_wp"),
        (UFFD_FEATURE_EVENT_FORK, "event_fork"),
        (UFFD_FEATURE_EVENT_REMAP, "event_remap"),
        (UFFD_FEATURE_EVENT_REMOVE, "event_remove"),
        (UFFD_FEATURE_MISSING_HUGETLBFS, "missing_hugetlbfs"),
        (UFFD_FEATURE_MISSING_SHMEM, "missing_shmem"),
        (UFFD_FEATURE_EVENT_UNMAP, "event_unmap"),
        (UFFD_FEATURE_SIGBUS, "sigbus"),
        (UFFD_FEATURE_THREAD_ID, "thread_id"),
        (UFFD_FEATURE_MINOR_HUGETLBFS, "minor_hugetlbfs"),
        (UFFD_FEATURE_MINOR_SHMEM, "minor_shmem"),
        (UFFD_FEATURE_EXACT_ADDRESS, "exact_address"),
        (UFFD_FEATURE_WP_HUGETLBFS_SHMEM, "wp_hugetlbfs_shmem"),
        (UFFD_FEATURE_WP_UNPOPULATED, "wp_unpopulated"),
        (UFFD_FEATURE_POISON, "poison"),
        (UFFD_FEATURE_WP_ASYNC, "wp_async"),
        (UFFD_FEATURE_MOVE, "move"),
    ];
    NAMES
        .iter()
        .filter(|(b, _)| features & b != 0)
        .map(|(_, n)| *n)
        .collect()
}
