//! Page-aligned copy buffers for the page streams of dump and restore.
//!
//! The kernel copies (`rep movsb` in `copy_to_user`/`copy_from_user`) run
//! about three times slower on this kind of CPU when the user buffer is not
//! 64-byte aligned, and glibc's large `malloc` chunks start 16 bytes past a
//! page boundary; an anonymous mapping is page-aligned. The buffers are small
//! (a fraction of the L2 cache), so the data copied in is still cached when it
//! is copied out again.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use crate::error::{Error, Result};

/// An anonymous private mapping of `len` bytes, populated up front.
///
/// Each thread keeps the last buffer it dropped and hands it out again for
/// the next one of the same length: restoring many small processes one after
/// the other would otherwise map, populate and unmap a buffer per process.
/// A reused buffer holds what it held before; callers read only what they
/// filled.
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone (no aliasing pointer is
// kept elsewhere); moving it to another thread moves that ownership.
unsafe impl Send for AlignedBuf {}

/// A dropped buffer's mapping, kept by its thread (unmapped when the thread ends).
struct Spare {
    ptr: *mut u8,
    len: usize,
}

impl Drop for Spare {
    fn drop(&mut self) {
        unmap(self.ptr, self.len);
    }
}

thread_local! {
    static SPARE: RefCell<Option<Spare>> = const { RefCell::new(None) };
}

fn unmap(ptr: *mut u8, len: usize) {
    // SAFETY: `ptr` is a mapping of `len` bytes made by `AlignedBuf::new`
    // and owned by the caller, which gives it up here; nothing refers to it.
    unsafe { libc::munmap(ptr.cast(), len.max(1)) };
}

impl AlignedBuf {
    pub fn new(len: usize) -> Result<Self> {
        let spare = SPARE
            .try_with(|s| {
                let mut s = s.try_borrow_mut().ok()?;
                if s.as_ref().is_some_and(|b| b.len == len) {
                    s.take()
                } else {
                    None
                }
            })
            .ok()
            .flatten();
        if let Some(b) = spare {
            let b = std::mem::ManuallyDrop::new(b);
            return Ok(AlignedBuf {
                ptr: b.ptr,
                len: b.len,
            });
        }
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
    /// Kept as the thread's spare when it has none, else unmapped.
    fn drop(&mut self) {
        let (ptr, len) = (self.ptr, self.len);
        let kept = SPARE
            .try_with(|s| match s.try_borrow_mut() {
                Ok(mut s) if s.is_none() => {
                    *s = Some(Spare { ptr, len });
                    true
                }
                _ => false,
            })
            .unwrap_or(false);
        if !kept {
            unmap(ptr, len);
        }
    }
}
