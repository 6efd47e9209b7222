//! signalfd: the signals it accepts (`sigmask:` in fdinfo, a 64-bit hex set).

use std::os::fd::{FromRawFd, OwnedFd};

use super::{fdinfo_field, last_os_error};
use crate::error::{Error, Result};
use crate::image::FileKind;

pub fn collect(pid: i32, fd: i32, fdinfo: &str) -> Result<FileKind> {
    let sigmask = fdinfo_field(fdinfo, "sigmask:")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| Error::Process {
            pid,
            reason: format!("fd {fd} (signalfd): fdinfo has no sigmask"),
        })?;
    Ok(FileKind::Signalfd { sigmask })
}

pub fn open(id: u32, sigmask: u64) -> Result<OwnedFd> {
    let mask = sigmask.to_ne_bytes();
    // SAFETY: signalfd4 reads 8 bytes of mask from our buffer and creates a new fd.
    let raw = unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1,
            mask.as_ptr(),
            8usize,
            libc::SFD_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(last_os_error(format!("creating signalfd {id}")));
    }
    // SAFETY: `raw` is a new fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}
