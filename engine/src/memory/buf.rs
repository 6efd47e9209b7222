//! Page-aligned copy buffers for the page streams of dump and restore.
//!
//! The kernel copies (`rep movsb` in `copy_to_user`/`copy_from_user`) run
//! about three times slower on this kind of CPU when the user buffer is not
//! 64-byte aligned, and glibc's large `malloc` chunks start 16 bytes past a
//! page boundary; an anonymous mapping is page-aligned. The buffers are small
//! (a fraction of the L2 cache), so the data copied in is still cached when it
//! is copied out again.

use std::ops::{Deref, DerefMut};

use crate::error::{Error, Result};

/// An anonymous private mapping of `len` bytes, populated up front.
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone (no aliasing pointer is
// kept elsewhere); moving it to another thread moves that ownership.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize) -> Result<Self> {
        // SAFETY: a fresh private anonymous mapping; unmapped in `drop`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Other(format!(
                "mapping a copy buffer of {len} bytes: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(AlignedBuf { ptr: p.cast(), len })
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live mapping of `len` writable bytes, borrowed
        // mutably through self only.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `new`; no slice outlives self.
        unsafe { libc::munmap(self.ptr.cast(), self.len.max(1)) };
    }
}
