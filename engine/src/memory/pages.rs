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
        if v.shared_object.is_some() {
            // Saved once for every process, by `shared`.
            continue;
        }
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
/// offset. The page file is filled in place, window by window, by
/// process_vm_readv straight from the task (one copy); areas without read
/// permission go through /proc/PID/mem. Returns the number of pages written.
pub fn dump(
    pid: i32,
    vmas: &mut [Vma],
    sink: &mut PageSink,
    progress: Option<impl Fn(u64, u64)>,
) -> Result<u64> {
    // Lay out the runs: offsets in file order.
    let base = sink.position();
    let mut off = base;
    let mut segs: Vec<(u64, u64, bool)> = Vec::new(); // (addr, len, readable)
    for v in vmas.iter_mut() {
        let readable = v.prot & libc::PROT_READ as u32 != 0;
        for run in v.pages.iter_mut() {
            run.offset = off;
            let len = run.npages * PAGE_SIZE;
            segs.push((run.addr, len, readable));
            off += len;
        }
    }
    let total = off - base;
    let mut mem: Option<File> = None;
    let mut seg = 0usize; // first segment not fully copied
    let mut seg_done = 0u64; // bytes of it already copied
    sink.append_in_place(total, CHUNK, |at, window| {
        if let Some(p) = &progress {
            p(at, total);
        }
        let mut filled = 0usize;
        while filled < window.len() {
            // Gather as many (parts of) readable segments as fit, for one call.
            let mut remote: Vec<RemoteIoVec> = Vec::new();
            let mut want = 0usize;
            let (mut s, mut sd) = (seg, seg_done);
            while s < segs.len() && filled + want < window.len() && remote.len() < 1024 {
                let (addr, len, readable) = segs[s];
                if !readable {
                    break;
                }
                let n = ((len - sd) as usize).min(window.len() - filled - want);
                remote.push(RemoteIoVec {
                    base: (addr + sd) as usize,
                    len: n,
                });
                want += n;
                sd += n as u64;
                if sd == len {
                    s += 1;
                    sd = 0;
                }
            }
            if want > 0 {
                let dst = &mut window[filled..filled + want];
                let got =
                    process_vm_readv(Pid::from_raw(pid), &mut [IoSliceMut::new(dst)], &remote)
                        .unwrap_or(0);
                if got == want {
                    filled += want;
                    seg = s;
                    seg_done = sd;
                    continue;
                }
                // A partial read: fall through to /proc/PID/mem for one segment.
            }
            let (addr, len, _) = segs[seg];
            let n = ((len - seg_done) as usize).min(window.len() - filled);
            if mem.is_none() {
                mem = Some(
                    File::open(format!("/proc/{pid}/mem")).map_err(|e| Error::Process {
                        pid,
                        reason: format!("opening /proc/{pid}/mem: {e}"),
                    })?,
                );
            }
            let at = addr + seg_done;
            mem.as_ref()
                .expect("opened above")
                .read_exact_at(&mut window[filled..filled + n], at)
                .map_err(|e| Error::Process {
                    pid,
                    reason: format!("reading memory {at:#x}-{:#x}: {e}", at + n as u64),
                })?;
            filled += n;
            seg_done += n as u64;
            if seg_done == len {
                seg += 1;
                seg_done = 0;
            }
        }
        Ok(())
    })?;
    if let Some(p) = &progress {
        p(total, total);
    }
    Ok(total / PAGE_SIZE)
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
                    && r.offset
                        .checked_add(len)
                        .is_some_and(|e| e <= page_file_size)
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

/// Runs at least this long are populated in bulk first (MADV_POPULATE_WRITE):
/// the kernel allocates their pages in one call instead of one fault each.
const POPULATE_MIN: u64 = 256 << 10;
const MADV_POPULATE_WRITE: u64 = 23;
/// Most iovecs per process_vm_writev.
const IOV_BATCH: usize = 512;
/// Most bytes per batch of process_vm_writev calls.
const BATCH_BYTES: usize = 32 << 20;
const MADV_POPULATE_READ: i32 = 22;

/// Fills the pages of every area from the page file, mapped here read-only
/// (page cache, no copy), with process_vm_writev straight into the task: one
/// copy, many runs per call, no syscall injected but the bulk populate.
pub fn restore(r: &mut Remote, vmas: &[Vma], pages: &File) -> Result<u64> {
    use std::os::fd::AsRawFd;
    let size = pages
        .metadata()
        .map_err(|e| Error::Other(format!("page file: {e}")))?
        .len();
    if size == 0 {
        return Ok(0);
    }
    // SAFETY: a private read-only mapping of a file we hold open; it is only
    // read, and unmapped below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            pages.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(Error::Other(format!(
            "mapping the page file: {}",
            std::io::Error::last_os_error()
        )));
    }
    struct Unmap(*mut libc::c_void, usize);
    impl Drop for Unmap {
        fn drop(&mut self) {
            // SAFETY: unmapping the mapping made above.
            unsafe { libc::munmap(self.0, self.1) };
        }
    }
    let _unmap = Unmap(base, size as usize);
    let mut total = 0u64;
    let tid = r.tid;
    let mut local: Vec<std::io::IoSlice> = Vec::with_capacity(IOV_BATCH);
    let mut remote: Vec<RemoteIoVec> = Vec::with_capacity(IOV_BATCH);
    let flush = |local: &mut Vec<std::io::IoSlice>, remote: &mut Vec<RemoteIoVec>| -> Result<()> {
        let want: usize = remote.iter().map(|v| v.len).sum();
        let mut done = 0;
        while done < want {
            // Skip what was written already.
            let (mut l, mut rm) = (Vec::new(), Vec::new());
            let mut skip = done;
            for (a, b) in local.iter().zip(remote.iter()) {
                if skip >= b.len {
                    skip -= b.len;
                    continue;
                }
                l.push(std::io::IoSlice::new(&a[skip..]));
                rm.push(RemoteIoVec {
                    base: b.base + skip,
                    len: b.len - skip,
                });
                skip = 0;
            }
            let n = nix::sys::uio::process_vm_writev(Pid::from_raw(tid), &l, &rm).map_err(|e| {
                Error::Process {
                    pid: tid,
                    reason: format!("writing pages at {:#x}: {e}", rm[0].base),
                }
            })?;
            if n == 0 {
                return Err(Error::Process {
                    pid: tid,
                    reason: "writing pages made no progress".into(),
                });
            }
            done += n;
        }
        // Our view of what was copied goes: stasis's memory stays bounded by
        // one batch whatever the image's size (the page cache keeps the data).
        for a in local.iter() {
            let start = (a.as_ptr() as usize) & !(PAGE_SIZE as usize - 1);
            let end = a.as_ptr() as usize + a.len();
            // SAFETY: dropping the page table entries of our own read-only
            // private file mapping; the pages are read again from the file if
            // touched.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
        local.clear();
        remote.clear();
        Ok(())
    };
    let mut batch_bytes = 0usize;
    for v in vmas {
        for run in &v.pages {
            let len = run.npages * PAGE_SIZE;
            if len >= POPULATE_MIN {
                // Best effort: without it the pages fault in one by one.
                let _ = r.syscall_raw(
                    libc::SYS_madvise,
                    [run.addr, len, MADV_POPULATE_WRITE, 0, 0, 0],
                );
            }
            // SAFETY: `validate` checked offset + len <= size of the mapping.
            let src = unsafe {
                std::slice::from_raw_parts(
                    (base as *const u8).add(run.offset as usize),
                    len as usize,
                )
            };
            // In pieces of at most one batch, each mapped in bulk on our side
            // (MADV_POPULATE_READ) rather than faulted page by page.
            for (i, piece) in src.chunks(BATCH_BYTES).enumerate() {
                // SAFETY: advice on a range of our own file mapping; failure
                // only costs speed.
                unsafe {
                    libc::madvise(
                        piece.as_ptr() as *mut libc::c_void,
                        piece.len(),
                        MADV_POPULATE_READ,
                    )
                };
                local.push(std::io::IoSlice::new(piece));
                remote.push(RemoteIoVec {
                    base: (run.addr + (i * BATCH_BYTES) as u64) as usize,
                    len: piece.len(),
                });
                batch_bytes += piece.len();
                if local.len() == IOV_BATCH || batch_bytes >= BATCH_BYTES {
                    flush(&mut local, &mut remote)?;
                    batch_bytes = 0;
                }
            }
            total += run.npages;
        }
    }
    flush(&mut local, &mut remote)?;
    Ok(total)
}
