//! Page contents. Dump: find the pages that exist (the kernel's pagemap), read
//! them with process_vm_readv in large chunks (/proc/PID/mem for areas without
//! read permission) and stream them into the process's page file through one
//! bounded buffer. Restore: an injected pread64 from the page file straight
//! into the task's memory, one call per run of pages.

use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::image::{PageRun, PageSink, Vma, VmaKind, PAGE_SIZE};
use crate::remote::Remote;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE_OR_SHARED: u64 = 1 << 61;
const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// Size of the copy buffer: the dumper's memory does not grow with the image.
pub const CHUNK: usize = 8 << 20;

/// PFN of the shared zero page (pages that were only read are not saved).
fn zero_pfn() -> u64 {
    static PFN: OnceLock<u64> = OnceLock::new();
    *PFN.get_or_init(|| {
        // SAFETY: a fresh private anonymous read-only mapping; reading it maps
        // the zero page; it is unmapped before returning.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                PAGE_SIZE as usize,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return u64::MAX;
            }
            std::ptr::read_volatile(p as *const u8);
            let pfn = File::open("/proc/self/pagemap")
                .and_then(|f| {
                    let mut b = [0u8; 8];
                    f.read_exact_at(&mut b, (p as u64 / PAGE_SIZE) * 8)?;
                    Ok(u64::from_le_bytes(b))
                })
                .map(|e| e & PM_PFN_MASK)
                .unwrap_or(u64::MAX);
            libc::munmap(p, PAGE_SIZE as usize);
            if pfn == 0 {
                u64::MAX
            } else {
                pfn
            }
        }
    })
}

/// Which pages of each area to save, as runs (`offset` still 0), from
/// /proc/PID/pagemap: private areas keep their present or swapped pages that
/// are neither the zero page nor file pages; shared anonymous areas keep every
/// page; shared file mappings and special mappings keep none.
pub fn scan(pid: i32, vmas: &mut [Vma]) -> Result<()> {
    let pagemap = File::open(format!("/proc/{pid}/pagemap")).map_err(|e| Error::Process {
        pid,
        reason: format!("opening pagemap: {e}"),
    })?;
    let zero = zero_pfn();
    let mut buf = vec![0u8; 64 << 10];
    for v in vmas.iter_mut() {
        v.pages.clear();
        match (&v.kind, v.shared) {
            (VmaKind::Special { .. }, _) | (VmaKind::File { .. }, true) => continue,
            (VmaKind::Anon, true) => {
                v.pages.push(PageRun {
                    addr: v.start,
                    npages: (v.end - v.start) / PAGE_SIZE,
                    offset: 0,
                });
                continue;
            }
            _ => {}
        }
        let file = matches!(v.kind, VmaKind::File { .. });
        let mut addr = v.start;
        while addr < v.end {
            let n = (((v.end - addr) / PAGE_SIZE) as usize).min(buf.len() / 8);
            let bytes = &mut buf[..n * 8];
            pagemap
                .read_exact_at(bytes, addr / PAGE_SIZE * 8)
                .map_err(|e| Error::Process {
                    pid,
                    reason: format!("reading pagemap at {addr:#x}: {e}"),
                })?;
            for (i, e) in bytes.chunks_exact(8).enumerate() {
                let e = u64::from_le_bytes(e.try_into().expect("8 bytes"));
                let keep = if e & PM_SWAPPED != 0 {
                    true
                } else if e & PM_PRESENT != 0 {
                    if file {
                        e & PM_FILE_OR_SHARED == 0
                    } else {
                        e & PM_PFN_MASK != zero || zero == u64::MAX
                    }
                } else {
                    false
                };
                if keep {
                    let a = addr + i as u64 * PAGE_SIZE;
                    match v.pages.last_mut() {
                        Some(r) if r.addr + r.npages * PAGE_SIZE == a => r.npages += 1,
                        _ => v.pages.push(PageRun {
                            addr: a,
                            npages: 1,
                            offset: 0,
                        }),
                    }
                }
            }
            addr += n as u64 * PAGE_SIZE;
        }
    }
    Ok(())
}

/// Copies the scanned pages of every area into `sink`, setting each run's
/// offset. Returns the number of pages written.
pub fn dump(pid: i32, vmas: &mut [Vma], sink: &mut PageSink) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut mem: Option<File> = None;
    let mut total = 0u64;
    for v in vmas.iter_mut() {
        let readable = v.prot & libc::PROT_READ as u32 != 0;
        for run in v.pages.iter_mut() {
            run.offset = sink.position();
            let mut addr = run.addr;
            let end = run.addr + run.npages * PAGE_SIZE;
            while addr < end {
                let n = ((end - addr) as usize).min(CHUNK);
                let chunk = &mut buf[..n];
                let got = if readable {
                    let remote = [RemoteIoVec { base: addr as usize, len: n }];
                    process_vm_readv(Pid::from_raw(pid), &mut [IoSliceMut::new(chunk)], &remote)
                        .ok()
                        .filter(|&got| got == n)
                } else {
                    None
                };
                if got.is_none() {
                    // No read permission (or a partial read): /proc/PID/mem reads through it.
                    if mem.is_none() {
                        mem = Some(File::open(format!("/proc/{pid}/mem")).map_err(|e| {
                            Error::Process {
                                pid,
                                reason: format!("opening /proc/{pid}/mem: {e}"),
                            }
                        })?);
                    }
                    let m = mem.as_ref().expect("opened above");
                    m.read_exact_at(chunk, addr).map_err(|e| Error::Process {
                        pid,
                        reason: format!(
                            "reading memory {addr:#x}-{:#x} of area {:#x}-{:#x}: {e}",
                            addr + n as u64,
                            v.start,
                            v.end
                        ),
                    })?;
                }
                sink.write_all(chunk)?;
                addr += n as u64;
            }
            total += run.npages;
        }
    }
    Ok(total)
}

/// Checks that every run lies inside its area and inside the page file.
pub fn validate(pid: i32, vmas: &[Vma], page_file_size: u64) -> Result<()> {
    for v in vmas {
        if v.start >= v.end || v.start % PAGE_SIZE != 0 || v.end % PAGE_SIZE != 0 {
            return Err(Error::Other(format!(
                "image of process {pid}: bad memory area {:#x}-{:#x}",
                v.start, v.end
            )));
        }
        for r in &v.pages {
            let len = r.npages.checked_mul(PAGE_SIZE);
            let ok = len.is_some_and(|len| {
                r.addr >= v.start
                    && r.addr % PAGE_SIZE == 0
                    && r.addr.checked_add(len).is_some_and(|e| e <= v.end)
                    && r.offset.checked_add(len).is_some_and(|e| e <= page_file_size)
            });
            if !ok {
                return Err(Error::Other(format!(
                    "image of process {pid}: page run at {:#x} ({} pages, offset {}) lies outside its area or the page file",
                    r.addr, r.npages, r.offset
                )));
            }
        }
    }
    Ok(())
}

/// Fills the pages of every area with an injected pread64 from the page file
/// (open in the task as `fd`), merging runs that are contiguous in both.
pub fn restore(r: &mut Remote, vmas: &[Vma], fd: i32) -> Result<u64> {
    let mut total = 0;
    for v in vmas {
        let mut i = 0;
        while i < v.pages.len() {
            let first = v.pages[i];
            let mut len = first.npages * PAGE_SIZE;
            let mut j = i + 1;
            while j < v.pages.len()
                && v.pages[j].addr == first.addr + len
                && v.pages[j].offset == first.offset + len
            {
                len += v.pages[j].npages * PAGE_SIZE;
                j += 1;
            }
            let mut done = 0;
            while done < len {
                let n = r.call(
                    &format!("pread64 of pages at {:#x}", first.addr + done),
                    libc::SYS_pread64,
                    [fd as u64, first.addr + done, len - done, first.offset + done, 0, 0],
                )?;
                if n == 0 {
                    return Err(Error::Process {
                        pid: r.tid,
                        reason: format!("page file ended early at offset {}", first.offset + done),
                    });
                }
                done += n;
            }
            total += len / PAGE_SIZE;
            i = j;
        }
    }
    Ok(total)
}
