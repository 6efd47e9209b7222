//! Page contents. Dump: find the pages that exist (the kernel's pagemap), read
//! them with process_vm_readv (/proc/PID/mem for areas without read
//! permission) into small page-aligned buffers, and stream them into the
//! process's page file (`PageSink::append_streamed`: hashed on this thread,
//! written on a second one). Restore: UFFDIO_COPY of private anonymous memory
//! from the page file, process_vm_writev for the rest (`restore`).

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
/// offset. process_vm_readv reads from the task into the sink's buffers (as
/// many segments per call as fit); areas without read permission go through
/// /proc/PID/mem. Returns the number of pages written.
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
    sink.append_streamed(total, |at, window| {
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

/// Where a stretch of saved pages goes (`addr` in the task) and where its
/// bytes are (`off` in the page file).
#[derive(Clone, Copy, Debug)]
struct Seg {
    addr: u64,
    off: u64,
    len: u64,
}

/// Size of one read buffer: a quarter of the 1 MiB L2 cache per core, so the
/// bytes read from the page cache are still cached when they are copied into
/// the task.
const READ_BUF: usize = 256 << 10;
/// Processes with less than this in private anonymous areas are filled
/// without userfaultfd (setting it up costs a few injected syscalls).
const UFFD_MIN: u64 = 1 << 20;
/// Areas smaller than this are filled with process_vm_writev even when
/// userfaultfd is used: registering, copying and unregistering cost three
/// ioctls per area, more than a few iovecs of one process_vm_writev.
const UFFD_AREA_MIN: u64 = 64 << 10;
/// Below this many bytes the copy runs on one thread.
const PARALLEL_MIN: u64 = 16 << 20;
/// Runs at least this long are populated in bulk before process_vm_writev
/// (MADV_POPULATE_WRITE): one call instead of one fault per page.
const POPULATE_MIN: u64 = 256 << 10;
const MADV_POPULATE_WRITE: u64 = 23;
/// Most iovecs per process_vm_writev.
const IOV_BATCH: usize = 512;

/// Fills the pages of every area from the page file.
///
/// Private anonymous areas (nearly all of a large process's memory) are
/// filled with UFFDIO_COPY: a userfaultfd is created in the task by an
/// injected syscall, taken over with pidfd_getfd and closed in the task at
/// once; the areas are registered (missing mode) from here, filled, then
/// unregistered, and the descriptor closed, so the workload never sees it.
/// UFFDIO_COPY allocates each page and fills it with the data in one step:
/// no zeroing first, no fault per page, no pinning. The data comes from the
/// page file through small page-aligned buffers (pread), on two threads for
/// large images: the threads exist only inside this call and are joined
/// before it returns (nothing forks meanwhile).
///
/// Everything else (file-backed private areas, shared anonymous memory, any
/// part UFFDIO_COPY refused, or every area when userfaultfd is unavailable)
/// is written with process_vm_writev from the same kind of buffer, after an
/// injected MADV_POPULATE_WRITE of large runs. stasis's memory stays a few
/// buffers whatever the image's size.
pub fn restore(r: &mut Remote, vmas: &[Vma], pages: &File) -> Result<u64> {
    let mut total = 0u64;
    let eligible = |v: &Vma| {
        matches!(v.kind, VmaKind::Anon)
            && !v.shared
            && v.shared_object.is_none()
            && v.end - v.start >= UFFD_AREA_MIN
    };
    let direct_bytes: u64 = vmas
        .iter()
        .filter(|v| eligible(v))
        .flat_map(|v| v.pages.iter())
        .map(|r| r.npages * PAGE_SIZE)
        .sum();
    let mut uffd = if direct_bytes >= UFFD_MIN {
        match Registered::open(r) {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::debug!("process {}: filling memory without userfaultfd: {e}", r.tid);
                None
            }
        }
    } else {
        None
    };
    let mut direct: Vec<Seg> = Vec::new();
    let mut other: Vec<Seg> = Vec::new();
    for v in vmas {
        let segs = v.pages.iter().map(|run| Seg {
            addr: run.addr,
            off: run.offset,
            len: run.npages * PAGE_SIZE,
        });
        total += v.pages.iter().map(|run| run.npages).sum::<u64>();
        if v.pages.is_empty() {
            continue;
        }
        let registered = match &mut uffd {
            Some(u) if eligible(v) => u.register(v.start, v.end - v.start),
            _ => false,
        };
        if registered {
            direct.extend(segs);
        } else {
            other.extend(segs);
        }
    }
    if let Some(u) = uffd {
        if !direct.is_empty() {
            other.extend(copy_direct(u.fd(), pages, &direct, r.tid)?);
        }
        u.finish(r.tid)?;
    }
    write_other(r, pages, &other)?;
    Ok(total)
}

/// A userfaultfd of the task, held here only, and the ranges registered on
/// it. Dropped, it unregisters them (best effort: `finish` reports errors).
struct Registered {
    fd: std::os::fd::OwnedFd,
    ranges: Vec<(u64, u64)>,
}

impl Registered {
    /// Creates the task's userfaultfd and takes it over: the task's own
    /// descriptor is closed before this returns.
    fn open(r: &mut Remote) -> Result<Self> {
        use sys::uffd;
        // User-mode-only needs no privilege; nothing faults on the areas
        // while they are registered (the task is stopped, and this side only
        // fills them with UFFDIO_COPY).
        let tfd = r.call(
            "userfaultfd",
            libc::SYS_userfaultfd,
            [
                (libc::O_CLOEXEC | libc::O_NONBLOCK | uffd::UFFD_USER_MODE_ONLY) as u64,
                0,
                0,
                0,
                0,
                0,
            ],
        )?;
        let tid = r.tid;
        let got = sys::pidfd::pidfd_open(tid).and_then(|pidfd| {
            sys::pidfd::pidfd_getfd(std::os::fd::AsFd::as_fd(&pidfd), tfd as i32)
        });
        let closed = r.call("close(userfaultfd)", libc::SYS_close, [tfd, 0, 0, 0, 0, 0]);
        let fd = got.map_err(|e| Error::Process {
            pid: tid,
            reason: format!("taking the task's userfaultfd: {e}"),
        })?;
        closed?;
        uffd::api(std::os::fd::AsFd::as_fd(&fd), 0).map_err(|e| Error::Process {
            pid: tid,
            reason: format!("userfaultfd handshake: {e}"),
        })?;
        Ok(Registered {
            fd,
            ranges: Vec::new(),
        })
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// Registers an area for missing-page filling; false if the kernel
    /// refuses (the area is then filled the other way).
    fn register(&mut self, start: u64, len: u64) -> bool {
        use sys::uffd;
        match uffd::register(self.fd(), start, len, uffd::UFFDIO_REGISTER_MODE_MISSING) {
            Ok(ioctls) if ioctls & (1 << (uffd::UFFDIO_COPY & 0xff)) != 0 => {
                self.ranges.push((start, len));
                true
            }
            Ok(_) => {
                let _ = uffd::unregister(self.fd(), start, len);
                false
            }
            Err(e) => {
                tracing::debug!("area {start:#x}: userfaultfd registration refused: {e}");
                false
            }
        }
    }

    /// Unregisters every range and closes the descriptor.
    fn finish(mut self, tid: i32) -> Result<()> {
        for (start, len) in std::mem::take(&mut self.ranges) {
            sys::uffd::unregister(self.fd(), start, len).map_err(|e| Error::Process {
                pid: tid,
                reason: format!("unregistering area {start:#x} from userfaultfd: {e}"),
            })?;
        }
        Ok(())
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        for &(start, len) in &self.ranges {
            let _ = sys::uffd::unregister(std::os::fd::AsFd::as_fd(&self.fd), start, len);
        }
    }
}

/// Reads `segs` from the page file through `buf`: as many consecutive
/// segments (or parts) per pread as fit, handing `put` each batch as
/// (segment part, its offset in the buffer) and the bytes read.
fn stream(
    pages: &File,
    segs: &[Seg],
    buf: &mut [u8],
    mut put: impl FnMut(&[(Seg, usize)], &[u8]) -> Result<()>,
) -> Result<()> {
    let mut parts: Vec<(Seg, usize)> = Vec::new();
    let (mut i, mut done) = (0usize, 0u64);
    while i < segs.len() {
        parts.clear();
        let first = segs[i].off + done;
        let mut used = 0usize;
        while i < segs.len() && used < buf.len() && parts.len() < IOV_BATCH {
            let s = segs[i];
            if s.off + done != first + used as u64 {
                break;
            }
            let n = ((s.len - done) as usize).min(buf.len() - used);
            parts.push((
                Seg {
                    addr: s.addr + done,
                    off: s.off + done,
                    len: n as u64,
                },
                used,
            ));
            used += n;
            done += n as u64;
            if done == s.len {
                i += 1;
                done = 0;
            }
        }
        pages
            .read_exact_at(&mut buf[..used], first)
            .map_err(|e| Error::Other(format!("reading the page file at {first}: {e}")))?;
        put(&parts, &buf[..used])?;
    }
    Ok(())
}

/// UFFDIO_COPY of every segment, on two threads when there is enough to copy;
/// returns the parts the kernel refused (to be written the other way).
fn copy_direct(
    uffd: std::os::fd::BorrowedFd,
    pages: &File,
    segs: &[Seg],
    tid: i32,
) -> Result<Vec<Seg>> {
    let work = |segs: &[Seg]| -> Result<Vec<Seg>> {
        let mut buf = crate::memory::buf::AlignedBuf::new(READ_BUF)?;
        let mut refused = Vec::new();
        stream(pages, segs, &mut buf, |parts, bytes| {
            for &(s, at) in parts {
                let (n, err) = sys::uffd::copy_all(uffd, s.addr, &bytes[at..at + s.len as usize]);
                if let Some(e) = err {
                    tracing::debug!(
                        "process {tid}: UFFDIO_COPY at {:#x} stopped after {n} bytes: {e}",
                        s.addr
                    );
                    refused.push(Seg {
                        addr: s.addr + n,
                        off: s.off + n,
                        len: s.len - n,
                    });
                }
            }
            Ok(())
        })?;
        Ok(refused)
    };
    let bytes: u64 = segs.iter().map(|s| s.len).sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if bytes < PARALLEL_MIN || cores < 2 {
        return work(segs);
    }
    // Two halves of equal size, the segment at the middle split in two.
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let mut seen = 0u64;
    for &s in segs {
        let half = bytes / 2 / PAGE_SIZE * PAGE_SIZE;
        if seen + s.len <= half {
            first.push(s);
        } else if seen >= half {
            second.push(s);
        } else {
            let k = half - seen;
            first.push(Seg { len: k, ..s });
            second.push(Seg {
                addr: s.addr + k,
                off: s.off + k,
                len: s.len - k,
            });
        }
        seen += s.len;
    }
    let (a, b) = std::thread::scope(|sc| {
        let other = sc.spawn(|| work(&second));
        let a = work(&first);
        let b = other.join();
        (a, b)
    });
    let mut refused = a?;
    refused.extend(b.map_err(|_| Error::Process {
        pid: tid,
        reason: "a memory copy thread panicked".into(),
    })??);
    Ok(refused)
}

/// process_vm_writev of `segs` into the task, large runs populated first.
fn write_other(r: &mut Remote, pages: &File, segs: &[Seg]) -> Result<()> {
    if segs.is_empty() {
        return Ok(());
    }
    for s in segs {
        if s.len >= POPULATE_MIN {
            // Best effort: without it the pages fault in one by one.
            let _ = r.syscall_raw(
                libc::SYS_madvise,
                [s.addr, s.len, MADV_POPULATE_WRITE, 0, 0, 0],
            );
        }
    }
    let tid = r.tid;
    let mut buf = crate::memory::buf::AlignedBuf::new(READ_BUF)?;
    stream(pages, segs, &mut buf, |parts, bytes| {
        let mut i = 0usize; // first part not fully written
        let mut skip = 0usize; // bytes of it already written
        while i < parts.len() {
            let local: Vec<std::io::IoSlice> = parts[i..]
                .iter()
                .enumerate()
                .map(|(k, &(s, at))| {
                    let from = if k == 0 { skip } else { 0 };
                    std::io::IoSlice::new(&bytes[at + from..at + s.len as usize])
                })
                .collect();
            let remote: Vec<RemoteIoVec> = parts[i..]
                .iter()
                .enumerate()
                .map(|(k, &(s, _))| {
                    let from = if k == 0 { skip } else { 0 };
                    RemoteIoVec {
                        base: s.addr as usize + from,
                        len: s.len as usize - from,
                    }
                })
                .collect();
            let mut n = nix::sys::uio::process_vm_writev(Pid::from_raw(tid), &local, &remote)
                .map_err(|e| Error::Process {
                    pid: tid,
                    reason: format!("writing pages at {:#x}: {e}", remote[0].base),
                })?;
            if n == 0 {
                return Err(Error::Process {
                    pid: tid,
                    reason: format!("writing pages at {:#x} made no progress", remote[0].base),
                });
            }
            while n > 0 {
                let left = parts[i].0.len as usize - skip;
                if n >= left {
                    n -= left;
                    i += 1;
                    skip = 0;
                } else {
                    skip += n;
                    n = 0;
                }
            }
        }
        Ok(())
    })
}
