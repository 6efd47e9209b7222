//! Page contents. Dump: find the pages that exist (the kernel's pagemap), read
//! them with process_vm_readv (/proc/PID/mem for areas without read
//! permission) into small page-aligned buffers, hash them and write them to
//! the process's page file, or to two page files written at once by two
//! threads for a large process (`dump`). Restore: each page file read once,
//! start to end, verified on the way, its bytes put in place with
//! UFFDIO_COPY (private anonymous memory) or process_vm_writev (the rest)
//! as they pass, one thread per file (`restore`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::image::{page_file_name, PageRun, PageSink, StreamedFile, Vma, VmaKind, PAGE_SIZE};
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

/// The pages worth saving in a whole address space, as one `PAGEMAP_SCAN`
/// walk found them: present or swapped, and neither the shared zero page
/// nor a file page (in a private file mapping, only the pages copied on
/// write are the process's own). Sorted, not overlapping; a region may span
/// two adjacent areas.
pub struct Present(Vec<sys::mm::PageRegion>);

/// End of the walk: the 47-bit user address space. Areas above it (57-bit
/// address spaces) are read from pagemap page by page.
const PRESENT_END: u64 = 0x7fff_ffff_f000;

impl Present {
    /// Walks the address space of `pid` once. None where the kernel has no
    /// `PAGEMAP_SCAN` (before Linux 6.7): `scan` reads pagemap then.
    pub fn find(pid: i32) -> Result<Option<Present>> {
        use std::os::fd::AsFd;
        let pagemap = open_pagemap(pid)?;
        match present_regions(pagemap.as_fd(), 0, PRESENT_END) {
            Ok(regions) => Ok(Some(Present(regions))),
            Err(e)
                if matches!(
                    e.errno,
                    nix::errno::Errno::ENOTTY | nix::errno::Errno::EINVAL
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::Process {
                pid,
                reason: format!("scanning pagemap: {e}"),
            }),
        }
    }
}

/// The pages worth saving in `[start, end)`, by one `PAGEMAP_SCAN` walk of
/// an open /proc/PID/pagemap: present or swapped, neither the shared zero
/// page nor a file page (in an anonymous area, no page is a file page).
pub fn present_regions(
    pagemap: std::os::fd::BorrowedFd,
    start: u64,
    end: u64,
) -> sys::Result<Vec<sys::mm::PageRegion>> {
    use sys::mm::{PAGE_IS_FILE, PAGE_IS_GUARD, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED};
    let mut req = sys::mm::ScanRequest {
        start,
        end,
        category_inverted: PAGE_IS_FILE | PAGE_IS_PFNZERO,
        category_mask: PAGE_IS_FILE | PAGE_IS_PFNZERO,
        category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        // Guard regions (their markers count as swapped) told apart.
        return_mask: PAGE_IS_GUARD,
        ..Default::default()
    };
    match sys::mm::pagemap_scan_with(pagemap, &req) {
        // Before Linux 6.14 there is no guard category (nor guard regions
        // to find).
        Err(e) if e.errno == nix::errno::Errno::EINVAL => {
            req.return_mask = 0;
            sys::mm::pagemap_scan_with(pagemap, &req)
        }
        other => other,
    }
}

/// [`Present::find`] on a thread of its own, started before the areas are
/// read: both walk the page tables, and a large process's two walks then
/// take the time of one on two CPUs. The thread only reads pagemap (no
/// ptrace: the tracer is the calling thread) and is joined before the
/// dump goes on, or on drop.
pub struct PresentScan {
    pid: i32,
    thread: Option<std::thread::JoinHandle<Result<Option<Present>>>>,
}

impl PresentScan {
    pub fn start(pid: i32) -> PresentScan {
        let thread = std::thread::Builder::new()
            .name("stasis-pagemap".into())
            .stack_size(256 * 1024)
            .spawn(move || Present::find(pid))
            .ok();
        PresentScan { pid, thread }
    }

    /// The walk's result (found on this thread when no thread could start).
    pub fn join(mut self) -> Result<Option<Present>> {
        match self.thread.take() {
            Some(h) => h.join().map_err(|_| Error::Process {
                pid: self.pid,
                reason: "the thread scanning pagemap panicked".into(),
            })?,
            None => Present::find(self.pid),
        }
    }
}

impl Drop for PresentScan {
    fn drop(&mut self) {
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

fn open_pagemap(pid: i32) -> Result<File> {
    File::open(format!("/proc/{pid}/pagemap")).map_err(|e| Error::Process {
        pid,
        reason: format!("opening pagemap: {e}"),
    })
}

/// Which pages of each area to save, as runs (`offset` still 0): private
/// areas keep their present or swapped pages that are neither the zero page
/// nor file pages; shared anonymous areas keep every page; shared file
/// mappings, special mappings and MAP_DROPPABLE areas keep none. The pages come from `present`
/// (one walk of the whole address space) where given, else from
/// /proc/PID/pagemap read area by area.
pub fn scan(pid: i32, vmas: &mut [Vma], present: Option<&Present>) -> Result<()> {
    let mut pagemap: Option<(File, u64, Vec<u8>)> = None;
    // First region that may still overlap an area (areas are sorted).
    let mut at = 0usize;
    for v in vmas.iter_mut() {
        v.pages.clear();
        v.guards.clear();
        if v.shared_object.is_some() {
            // Saved once for every process, by `shared`.
            continue;
        }
        if v.advice.iter().any(|a| a == super::DROPPABLE) {
            // MAP_DROPPABLE: the kernel may free these pages whenever it
            // likes; they come back empty, as after such a drop.
            continue;
        }
        match (&v.kind, v.shared) {
            (VmaKind::Special { .. }, _) | (VmaKind::File { .. }, true) => continue,
            (VmaKind::Anon, true) | (VmaKind::Aio { .. }, _) => {
                v.pages.push(PageRun {
                    addr: v.start,
                    npages: (v.end - v.start) / PAGE_SIZE,
                    offset: 0,
                    file: 0,
                });
                continue;
            }
            _ => {}
        }
        match present {
            Some(Present(regions)) if v.end <= PRESENT_END => {
                while at < regions.len() && regions[at].end <= v.start {
                    at += 1;
                }
                for r in regions[at..].iter().take_while(|r| r.start < v.end) {
                    let (s, e) = (r.start.max(v.start), r.end.min(v.end));
                    if r.categories & sys::mm::PAGE_IS_GUARD != 0 {
                        v.guards.push([s, e]);
                        continue;
                    }
                    v.pages.push(PageRun {
                        addr: s,
                        npages: (e - s) / PAGE_SIZE,
                        offset: 0,
                        file: 0,
                    });
                }
            }
            _ => {
                if pagemap.is_none() {
                    pagemap = Some((open_pagemap(pid)?, zero_pfn(), vec![0u8; 64 << 10]));
                }
                let (f, zero, buf) = pagemap.as_mut().expect("opened above");
                scan_area(pid, f, *zero, buf, v)?;
            }
        }
    }
    Ok(())
}

/// The pages of one private area from /proc/PID/pagemap, 8 bytes a page.
fn scan_area(pid: i32, pagemap: &File, zero: u64, buf: &mut [u8], v: &mut Vma) -> Result<()> {
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
                        file: 0,
                    }),
                }
            }
        }
        addr += n as u64 * PAGE_SIZE;
    }
    Ok(())
}

/// Pages of a process worth two page files, written by two threads at once
/// (on at least two CPUs): tmpfs takes a file's inode lock for every write,
/// so one file is written no faster than by one writer. Measured on two
/// cores, two files already shorten the dump's and the restore's memory
/// phases by a quarter at 16 MiB (a fifth at 8 MiB); small processes keep
/// one file.
pub const SPLIT_MIN: u64 = 16 << 20;

/// Whether a process with `bytes` of pages to save gets two page files.
pub fn split_pages(bytes: u64) -> bool {
    bytes >= SPLIT_MIN && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

/// Bytes of the scanned pages of `vmas`.
pub fn scanned_bytes(vmas: &[Vma]) -> u64 {
    vmas.iter()
        .flat_map(|v| v.pages.iter())
        .map(|r| r.npages * PAGE_SIZE)
        .sum()
}

/// Copies the scanned pages of every area into the page files `sinks` (one
/// or two), setting each run's file and offset. With one, the sink's own
/// two-thread pipeline fills and writes it. With two, two threads (this one
/// and a scoped one) each write one file, taking the pages in order a
/// stretch of [`SHARE_CHUNK`] bytes at a time, whichever is free next, so
/// both end together however the CPUs are shared out; each file holds its
/// stretches in address order, and a run that crosses from one stretch to
/// the next may continue in the other file (it is cut in two).
/// process_vm_readv reads from the task into the sinks' buffers (as many
/// segments per call as fit); areas without read permission go through
/// /proc/PID/mem. Returns the number of pages written.
pub fn dump(
    pid: i32,
    vmas: &mut [Vma],
    sinks: &mut [PageSink],
    progress: Option<impl Fn(u64, u64) + Sync>,
) -> Result<u64> {
    let total = scanned_bytes(vmas);
    let done = std::sync::atomic::AtomicU64::new(0);
    let report = |n: usize| {
        if let Some(p) = &progress {
            let at = done.fetch_add(n as u64, Ordering::Relaxed);
            p(at, total);
        }
    };
    match sinks {
        [one] => {
            let mut r = TaskReader::new(pid);
            let mut off = one.position();
            for v in vmas.iter_mut() {
                let readable = v.prot & libc::PROT_READ as u32 != 0;
                for run in v.pages.iter_mut() {
                    let len = run.npages * PAGE_SIZE;
                    run.offset = off;
                    run.file = 0;
                    r.segs.push((run.addr, len, readable));
                    off += len;
                }
            }
            let len = r.bytes();
            one.append_streamed(len, |_, window| {
                report(window.len());
                r.fill(window)
            })?;
        }
        [first, second] => dump_two(pid, vmas, [first, second], &report)?,
        _ => {
            return Err(Error::Other(format!(
                "process {pid}: {} page files (one or two)",
                sinks.len()
            )))
        }
    }
    if let Some(p) = &progress {
        p(total, total);
    }
    Ok(total / PAGE_SIZE)
}

/// Bytes of pages a page-file thread takes at a time: small enough that the
/// two threads end within a few milliseconds of each other, large enough
/// that the runs cut at its edges stay few (256 a GiB).
const SHARE_CHUNK: u64 = 4 << 20;

/// A stretch of pages taken by one thread: its segments in the task
/// (address, length, readable), in order.
#[derive(Default)]
struct Stretch {
    segs: Vec<(u64, u64, bool)>,
    len: u64,
}

/// A part of a run inside one stretch: area `vma`, `len` bytes at `addr`,
/// `at` bytes into stretch `stretch`.
struct Piece {
    vma: usize,
    addr: u64,
    len: u64,
    stretch: usize,
    at: u64,
}

/// Where a stretch went: page file (top bit) and offset in it.
const FILE_BIT: u64 = 1 << 63;

fn dump_two(
    pid: i32,
    vmas: &mut [Vma],
    sinks: [&mut PageSink; 2],
    report: &(dyn Fn(usize) + Sync),
) -> Result<()> {
    use std::sync::atomic::AtomicU64;
    let mut stretches: Vec<Stretch> = Vec::new();
    let mut pieces: Vec<Piece> = Vec::new();
    let mut cur = Stretch::default();
    for (i, v) in vmas.iter().enumerate() {
        let readable = v.prot & libc::PROT_READ as u32 != 0;
        for run in &v.pages {
            let (mut addr, mut left) = (run.addr, run.npages * PAGE_SIZE);
            while left > 0 {
                let n = left.min(SHARE_CHUNK - cur.len);
                cur.segs.push((addr, n, readable));
                pieces.push(Piece {
                    vma: i,
                    addr,
                    len: n,
                    stretch: stretches.len(),
                    at: cur.len,
                });
                cur.len += n;
                addr += n;
                left -= n;
                if cur.len == SHARE_CHUNK {
                    stretches.push(std::mem::take(&mut cur));
                }
            }
        }
    }
    if cur.len > 0 {
        stretches.push(cur);
    }
    let next = AtomicUsize::new(0);
    // The first failure is the one to report: the other thread stops at its
    // next stretch.
    let failed = AtomicUsize::new(usize::MAX);
    let placed: Vec<AtomicU64> = stretches.iter().map(|_| AtomicU64::new(0)).collect();
    let t0 = std::time::Instant::now();
    let run = |k: usize, sink: &mut PageSink| -> Result<()> {
        let mut r = TaskReader::new(pid);
        let mut bytes = 0u64;
        let res = (|| -> Result<()> {
            loop {
                if failed.load(Ordering::Relaxed) != usize::MAX {
                    return Err(Error::Other("stopped".into()));
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(st) = stretches.get(i) else {
                    return Ok(());
                };
                let at = sink.position();
                r.reset(&st.segs);
                sink.append_direct(st.len, |_, window| {
                    report(window.len());
                    r.fill(window)
                })?;
                placed[i].store(at | if k == 1 { FILE_BIT } else { 0 }, Ordering::Relaxed);
                bytes += st.len;
            }
        })();
        if res.is_err() {
            let _ = failed.compare_exchange(usize::MAX, k, Ordering::Relaxed, Ordering::Relaxed);
        }
        tracing::debug!(
            pid,
            file = k,
            bytes,
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "page file written"
        );
        res
    };
    let [s0, s1] = sinks;
    let (a, b) = std::thread::scope(|sc| {
        let second = sc.spawn(|| run(1, s1));
        let a = run(0, s0);
        (a, second.join())
    });
    let b = b.map_err(|_| Error::Process {
        pid,
        reason: "the thread writing the second page file panicked".into(),
    })?;
    let (first, other) = if failed.load(Ordering::Relaxed) == 1 {
        (b, a)
    } else {
        (a, b)
    };
    first?;
    other?;
    // Every stretch is written (joined above): lay the runs out again.
    for v in vmas.iter_mut() {
        v.pages.clear();
    }
    for p in &pieces {
        let w = placed[p.stretch].load(Ordering::Relaxed);
        let file = u32::from(w & FILE_BIT != 0);
        let offset = (w & !FILE_BIT) + p.at;
        let runs = &mut vmas[p.vma].pages;
        match runs.last_mut() {
            Some(r)
                if r.file == file
                    && r.addr + r.npages * PAGE_SIZE == p.addr
                    && r.offset + r.npages * PAGE_SIZE == offset =>
            {
                r.npages += p.len / PAGE_SIZE
            }
            _ => runs.push(PageRun {
                addr: p.addr,
                npages: p.len / PAGE_SIZE,
                offset,
                file,
            }),
        }
    }
    Ok(())
}

/// Reads a list of segments of a task's memory, in order, into the buffers
/// it is given.
struct TaskReader {
    pid: i32,
    /// (address, length, readable)
    segs: Vec<(u64, u64, bool)>,
    /// First segment not fully copied, and the bytes of it already copied.
    seg: usize,
    seg_done: u64,
    mem: Option<File>,
}

impl TaskReader {
    fn new(pid: i32) -> Self {
        TaskReader {
            pid,
            segs: Vec::new(),
            seg: 0,
            seg_done: 0,
            mem: None,
        }
    }

    fn bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.1).sum()
    }

    /// Reads `segs` next (the /proc/PID/mem handle, if opened, is kept).
    fn reset(&mut self, segs: &[(u64, u64, bool)]) {
        self.segs.clear();
        self.segs.extend_from_slice(segs);
        self.seg = 0;
        self.seg_done = 0;
    }

    /// Fills `window` with the next bytes of the segments.
    fn fill(&mut self, window: &mut [u8]) -> Result<()> {
        let pid = self.pid;
        let segs = &self.segs;
        let mut filled = 0usize;
        while filled < window.len() {
            // Gather as many (parts of) readable segments as fit, for one call.
            let mut remote: Vec<RemoteIoVec> = Vec::new();
            let mut want = 0usize;
            let (mut s, mut sd) = (self.seg, self.seg_done);
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
                    self.seg = s;
                    self.seg_done = sd;
                    continue;
                }
                // A partial read: fall through to /proc/PID/mem for one segment.
            }
            let (addr, len, _) = segs[self.seg];
            let n = ((len - self.seg_done) as usize).min(window.len() - filled);
            if self.mem.is_none() {
                self.mem =
                    Some(
                        File::open(format!("/proc/{pid}/mem")).map_err(|e| Error::Process {
                            pid,
                            reason: format!("opening /proc/{pid}/mem: {e}"),
                        })?,
                    );
            }
            let at = addr + self.seg_done;
            self.mem
                .as_ref()
                .expect("opened above")
                .read_exact_at(&mut window[filled..filled + n], at)
                .map_err(|e| Error::Process {
                    pid,
                    reason: format!("reading memory {at:#x}-{:#x}: {e}", at + n as u64),
                })?;
            filled += n;
            self.seg_done += n as u64;
            if self.seg_done == len {
                self.seg += 1;
                self.seg_done = 0;
            }
        }
        Ok(())
    }
}

/// The page files of one process that its runs use, by file index, opened
/// to be read whole once (`restore`).
pub type PageFiles = BTreeMap<u32, StreamedFile>;

/// The indexes of the page files the runs of `vmas` use: `restore` reads
/// each of them whole and verifies it as it goes.
pub fn files_used(vmas: &[Vma]) -> BTreeSet<u32> {
    vmas.iter()
        .flat_map(|v| v.pages.iter())
        .map(|r| r.file)
        .collect()
}

/// Checks that every run lies inside its area and inside its page file, and
/// that no two runs share bytes of a page file. `file_size(k)` is the size of
/// page file `k` of the process (None: the image lacks it).
pub fn validate(pid: i32, vmas: &[Vma], file_size: impl Fn(u32) -> Option<u64>) -> Result<()> {
    let mut used: Vec<(u32, u64, u64)> = Vec::new();
    for v in vmas {
        super::aio::validate(pid, v)?;
        let mut last = v.start;
        for &[s, e] in &v.guards {
            if s < last || s >= e || e > v.end || s % PAGE_SIZE != 0 || e % PAGE_SIZE != 0 {
                return Err(Error::Other(format!(
                    "image of process {pid}: guard region {s:#x}-{e:#x} lies outside its area {:#x}-{:#x} or out of order",
                    v.start, v.end
                )));
            }
            last = e;
        }
        if v.start >= v.end || v.start % PAGE_SIZE != 0 || v.end % PAGE_SIZE != 0 {
            return Err(Error::Other(format!(
                "image of process {pid}: bad memory area {:#x}-{:#x}",
                v.start, v.end
            )));
        }
        for r in &v.pages {
            let Some(size) = file_size(r.file) else {
                return Err(Error::Other(format!(
                    "image of process {pid}: page run at {:#x} is in {}, which the image lacks",
                    r.addr,
                    page_file_name(pid, r.file)
                )));
            };
            let len = r.npages.checked_mul(PAGE_SIZE);
            let ok = len.is_some_and(|len| {
                r.addr >= v.start
                    && r.addr % PAGE_SIZE == 0
                    && r.addr.checked_add(len).is_some_and(|e| e <= v.end)
                    && r.offset.checked_add(len).is_some_and(|e| e <= size)
            });
            if !ok {
                return Err(Error::Other(format!(
                    "image of process {pid}: page run at {:#x} ({} pages, offset {} of {}) lies outside its area or its page file",
                    r.addr, r.npages, r.offset, page_file_name(pid, r.file)
                )));
            }
            if r.npages > 0 {
                used.push((r.file, r.offset, r.offset + r.npages * PAGE_SIZE));
            }
        }
    }
    // Each page file is read once, in order: no byte of it feeds two runs.
    used.sort_unstable();
    for w in used.windows(2) {
        if w[0].0 == w[1].0 && w[1].1 < w[0].2 {
            return Err(Error::Other(format!(
                "image of process {pid}: page runs at offsets {} and {} of {} overlap",
                w[0].1,
                w[1].1,
                page_file_name(pid, w[0].0)
            )));
        }
    }
    Ok(())
}

/// Where a stretch of saved pages goes (`addr` in the task), where its
/// bytes are (`off` in its page file), and whether it goes in with
/// UFFDIO_COPY (`direct`: its area is registered) or process_vm_writev.
#[derive(Clone, Copy, Debug)]
struct Seg {
    addr: u64,
    off: u64,
    len: u64,
    direct: bool,
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
/// Runs at least this long are populated in bulk before process_vm_writev
/// (MADV_POPULATE_WRITE): one call instead of one fault per page.
const POPULATE_MIN: u64 = 256 << 10;
const MADV_POPULATE_WRITE: u64 = 23;
/// Most iovecs per process_vm_writev.
const IOV_BATCH: usize = 512;

/// Fills the pages of every area from the process's page files, verifying
/// them on the way.
///
/// Each page file the runs use is read once, sequentially, from its first
/// byte to its last (gaps between runs included), by a thread of its own
/// (the files of a large process are read in parallel), and every byte read
/// is hashed; at the end its size and xxh3 are compared with the manifest's,
/// and a mismatch is `Error::BadImage` naming the file. The bytes are put in
/// place as they are read, before the file is known to be intact: the caller
/// must discard the process (restore removes the whole sandbox) when this
/// fails. The threads exist only inside this call and are joined before it
/// returns (nothing forks meanwhile).
///
/// Private anonymous areas (nearly all of a large process's memory) are
/// filled with UFFDIO_COPY: a userfaultfd is created in the task by an
/// injected syscall, taken over with pidfd_getfd and closed in the task at
/// once; the areas are registered (missing mode) from here, filled, then
/// unregistered, and the descriptor closed, so the workload never sees it.
/// UFFDIO_COPY allocates each page and fills it with the data in one step:
/// no zeroing first, no fault per page, no pinning.
///
/// Everything else (file-backed private areas, shared anonymous memory, or
/// every area when userfaultfd is unavailable) is written with
/// process_vm_writev from the same buffer, after an injected
/// MADV_POPULATE_WRITE of large runs; any part UFFDIO_COPY refused is
/// written that way too once the areas are unregistered. stasis's memory
/// stays a few buffers whatever the image's size.
pub fn restore(r: &mut Remote, vmas: &[Vma], files: &PageFiles) -> Result<u64> {
    let tid = r.tid;
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
    let mut segs: BTreeMap<u32, Vec<Seg>> = BTreeMap::new();
    for v in vmas {
        total += v.pages.iter().map(|run| run.npages).sum::<u64>();
        if v.pages.is_empty() {
            continue;
        }
        let registered = match &mut uffd {
            Some(u) if eligible(v) => u.register(v.start, v.end - v.start),
            _ => false,
        };
        for run in &v.pages {
            let len = run.npages * PAGE_SIZE;
            if len == 0 {
                continue;
            }
            if !registered && len >= POPULATE_MIN {
                // Best effort: without it the pages fault in one by one.
                let _ = r.syscall_raw(
                    libc::SYS_madvise,
                    [run.addr, len, MADV_POPULATE_WRITE, 0, 0, 0],
                );
            }
            segs.entry(run.file).or_default().push(Seg {
                addr: run.addr,
                off: run.offset,
                len,
                direct: registered,
            });
        }
    }
    let mut work: Vec<(&StreamedFile, Vec<Seg>)> = Vec::with_capacity(segs.len());
    for (k, mut list) in segs {
        let file = files.get(&k).ok_or_else(|| Error::Process {
            pid: tid,
            reason: format!("page file {k} of the process was not opened"),
        })?;
        list.sort_unstable_by_key(|s| s.off);
        work.push((file, list));
    }
    let ufd = uffd.as_ref().map(|u| u.fd());
    // The first failure is the one to report: the other threads stop at
    // their next buffer.
    let failed = AtomicUsize::new(usize::MAX);
    let fill = |k: usize, file: &StreamedFile, segs: &[Seg]| {
        let res = fill_file(file, segs, ufd, tid, &failed);
        if res.is_err() {
            let _ = failed.compare_exchange(usize::MAX, k, Ordering::Relaxed, Ordering::Relaxed);
        }
        res
    };
    // One thread per page file; the first on this one.
    let results: Vec<Result<Vec<Seg>>> = std::thread::scope(|sc| {
        let others: Vec<_> = work
            .iter()
            .enumerate()
            .skip(1)
            .map(|(k, (file, list))| sc.spawn(move || fill(k, file, list)))
            .collect();
        let mut results = Vec::with_capacity(work.len());
        if let Some((file, list)) = work.first() {
            results.push(fill(0, file, list));
        }
        for t in others {
            results.push(t.join().unwrap_or_else(|_| {
                Err(Error::Process {
                    pid: tid,
                    reason: "a memory copy thread panicked".into(),
                })
            }))
        }
        results
    });
    let first = failed.load(Ordering::Relaxed);
    let mut refused: Vec<(usize, Vec<Seg>)> = Vec::new();
    let mut errors: Vec<(usize, Error)> = Vec::new();
    for (k, res) in results.into_iter().enumerate() {
        match res {
            Ok(v) => refused.push((k, v)),
            Err(e) => errors.push((k, e)),
        }
    }
    if !errors.is_empty() {
        let at = errors.iter().position(|(k, _)| *k == first).unwrap_or(0);
        return Err(errors.swap_remove(at).1);
    }
    if let Some(u) = uffd {
        u.finish(tid)?;
    }
    for (i, segs) in refused {
        write_other(r, work[i].0.file(), &segs)?;
    }
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
                    direct: s.direct,
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

/// Reads one page file whole (`StreamedFile::read_verified`), putting each
/// segment's bytes in place as they pass: UFFDIO_COPY for `direct` ones,
/// process_vm_writev for the rest. `segs` are sorted by offset and do not
/// overlap (`validate`). Returns the parts UFFDIO_COPY refused, to be written
/// once the areas are unregistered.
fn fill_file(
    file: &StreamedFile,
    segs: &[Seg],
    uffd: Option<std::os::fd::BorrowedFd>,
    tid: i32,
    failed: &AtomicUsize,
) -> Result<Vec<Seg>> {
    let mut buf = crate::memory::buf::AlignedBuf::new(READ_BUF)?;
    let mut refused = Vec::new();
    let mut writes: Vec<(u64, std::ops::Range<usize>)> = Vec::new();
    let mut i = 0usize; // first segment not fully put in place
    file.read_verified(&mut buf, |at, bytes| {
        if failed.load(Ordering::Relaxed) != usize::MAX {
            return Err(Error::Other("stopped: another page file failed".into()));
        }
        let end = at + bytes.len() as u64;
        writes.clear();
        while i < segs.len() && segs[i].off < end {
            let s = segs[i];
            let from = s.off.max(at);
            let to = (s.off + s.len).min(end);
            if from < to {
                let addr = s.addr + (from - s.off);
                let range = (from - at) as usize..(to - at) as usize;
                match (s.direct, uffd) {
                    (true, Some(u)) => {
                        let (n, err) = sys::uffd::copy_all(u, addr, &bytes[range.clone()]);
                        if let Some(e) = err {
                            tracing::debug!(
                                "process {tid}: UFFDIO_COPY at {addr:#x} stopped after {n} bytes: {e}"
                            );
                            refused.push(Seg {
                                addr: addr + n,
                                off: from + n,
                                len: range.len() as u64 - n,
                                direct: false,
                            });
                        }
                    }
                    _ => writes.push((addr, range)),
                }
            }
            if s.off + s.len <= end {
                i += 1;
            } else {
                break;
            }
        }
        for batch in writes.chunks(IOV_BATCH) {
            let parts: Vec<(u64, &[u8])> = batch
                .iter()
                .map(|(addr, range)| (*addr, &bytes[range.clone()]))
                .collect();
            writev_all(tid, &parts)?;
        }
        Ok(())
    })?;
    Ok(refused)
}

/// process_vm_writev of `parts` (address in the task, bytes) into the task,
/// until every byte is written.
fn writev_all(tid: i32, parts: &[(u64, &[u8])]) -> Result<()> {
    let mut i = 0usize; // first part not fully written
    let mut skip = 0usize; // bytes of it already written
    while i < parts.len() {
        let end = parts.len().min(i + IOV_BATCH);
        let local: Vec<std::io::IoSlice> = parts[i..end]
            .iter()
            .enumerate()
            .map(|(k, (_, b))| std::io::IoSlice::new(&b[if k == 0 { skip } else { 0 }..]))
            .collect();
        let remote: Vec<RemoteIoVec> = parts[i..end]
            .iter()
            .enumerate()
            .map(|(k, (addr, b))| {
                let from = if k == 0 { skip } else { 0 };
                RemoteIoVec {
                    base: *addr as usize + from,
                    len: b.len() - from,
                }
            })
            .collect();
        let mut n =
            nix::sys::uio::process_vm_writev(Pid::from_raw(tid), &local, &remote).map_err(|e| {
                Error::Process {
                    pid: tid,
                    reason: format!("writing pages at {:#x}: {e}", remote[0].base),
                }
            })?;
        if n == 0 {
            return Err(Error::Process {
                pid: tid,
                reason: format!("writing pages at {:#x} made no progress", remote[0].base),
            });
        }
        while n > 0 && i < parts.len() {
            let left = parts[i].1.len() - skip;
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
}

/// process_vm_writev of `segs` (read again from a page file already
/// verified) into the task, large runs populated first.
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
        let parts: Vec<(u64, &[u8])> = parts
            .iter()
            .map(|&(s, at)| (s.addr, &bytes[at..at + s.len as usize]))
            .collect();
        writev_all(tid, &parts)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(runs: &[(u64, u64, u64, u32)]) -> Vma {
        Vma {
            start: 0x10000,
            end: 0x10000 + 64 * PAGE_SIZE,
            prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
            shared: false,
            growsdown: false,
            advice: Vec::new(),
            guards: Vec::new(),
            label: String::new(),
            kind: VmaKind::Anon,
            pages: runs
                .iter()
                .map(|&(page, npages, offset, file)| PageRun {
                    addr: 0x10000 + page * PAGE_SIZE,
                    npages,
                    offset,
                    file,
                })
                .collect(),
            shared_object: None,
        }
    }

    fn sizes(k: u32) -> Option<u64> {
        (k < 2).then_some(8 * PAGE_SIZE)
    }

    #[test]
    fn runs_in_two_files_validate() {
        // The same offsets in two files: fine; a run cut in two at the middle.
        let v = area(&[(0, 8, 0, 0), (8, 8, 0, 1)]);
        validate(2, &[v], sizes).unwrap();
        assert_eq!(
            files_used(&[area(&[(0, 8, 0, 0), (8, 8, 0, 1)])]),
            BTreeSet::from([0, 1])
        );
    }

    #[test]
    fn overlapping_runs_and_missing_files_are_refused() {
        let v = area(&[(0, 4, 0, 1), (8, 4, 3 * PAGE_SIZE, 1)]);
        let err = validate(2, &[v], sizes).unwrap_err().to_string();
        assert!(
            err.contains("overlap") && err.contains("pages-2-1.img"),
            "{err}"
        );
        let v = area(&[(0, 4, 0, 2)]);
        let err = validate(2, &[v], sizes).unwrap_err().to_string();
        assert!(err.contains("pages-2-2.img"), "{err}");
        let v = area(&[(0, 4, 6 * PAGE_SIZE, 1)]);
        let err = validate(2, &[v], sizes).unwrap_err().to_string();
        assert!(err.contains("outside"), "{err}");
    }
}
