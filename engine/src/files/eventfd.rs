//! eventfd: the counter (`eventfd-count:`, hex) and EFD_SEMAPHORE
//! (`eventfd-semaphore:`) from fdinfo. Restore creates the eventfd empty and
//! writes the count into it (eventfd2 takes only 32 bits of initial value).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{fdinfo_field, last_os_error};
use crate::error::{Error, Result};
use crate::image::FileKind;

pub fn collect(pid: i32, fd: i32, fdinfo: &str) -> Result<FileKind> {
    let bad = |what: &str| Error::Process {
        pid,
        reason: format!("fd {fd} (eventfd): fdinfo has no {what}"),
    };
    let count = fdinfo_field(fdinfo, "eventfd-count:")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| bad("eventfd-count"))?;
    let semaphore = fdinfo_field(fdinfo, "eventfd-semaphore:")
        .map(|v| v == "1")
        .ok_or_else(|| bad("eventfd-semaphore"))?;
    Ok(FileKind::Eventfd { count, semaphore })
}

pub fn open(id: u32, count: u64, semaphore: bool) -> Result<OwnedFd> {
    if count == u64::MAX {
        return Err(Error::Other(format!(
            "image: eventfd {id} holds the impossible count {count}"
        )));
    }
    let mut flags = libc::EFD_CLOEXEC;
    if semaphore {
        flags |= libc::EFD_SEMAPHORE;
    }
    // SAFETY: eventfd creates a new fd; nothing of ours is touched.
    let raw = unsafe { libc::eventfd(0, flags) };
    if raw < 0 {
        return Err(last_os_error(format!("creating eventfd {id}")));
    }
    // SAFETY: `raw` is a new fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if count > 0 {
        let buf = count.to_ne_bytes();
        // SAFETY: writing 8 bytes of our buffer to our eventfd; a count below
        // u64::MAX never blocks on an empty eventfd.
        let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), 8) };
        if n != 8 {
            return Err(last_os_error(format!("setting the count of eventfd {id}")));
        }
    }
    Ok(fd)
}
