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
                    file: 0,
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
                            file: 0,
                        }),
                    }
                }
            }
            addr += n as u64 * PAGE_SIZE;
        }
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
/// or two), setting each run's file and offset. With two, the runs are split
/// by bytes (about half in each, a run at the middle cut in two) and each
/// file is filled and written by a thread of its own; with one, the sink's
/// own two-thread pipeline does it. process_vm_readv reads from the task into
/// the sinks' buffers (as many segments per call as fit); areas without read
/// permission go through /proc/PID/mem. Returns the number of pages written.
pub fn dump(
    pid: i32,
    vmas: &mut [Vma],
    sinks: &mut [PageSink],
    progress: Option<impl Fn(u64, u64) + Sync>,
) -> Result<u64> {
    let total = scanned_bytes(vmas);
    let nfiles = sinks.len().clamp(1, 2);
    // Bytes that go to the first file.
    let share = if nfiles == 2 {
        total / 2 / PAGE_SIZE * PAGE_SIZE
    } else {
        total
    };
    let mut offs: Vec<u64> = sinks.iter().map(|s| s.position()).collect();
    let mut readers: Vec<TaskReader> = (0..nfiles).map(|_| TaskReader::new(pid)).collect();
    let mut k = 0usize; // file being laid out
    let mut in_first = 0u64;
    for v in vmas.iter_mut() {
        let readable = v.prot & libc::PROT_READ as u32 != 0;
        let mut runs = Vec::with_capacity(v.pages.len());
        for run in v.pages.drain(..) {
            let mut run = run;
            loop {
                let len = run.npages * PAGE_SIZE;
                if k == 0 && nfiles == 2 && in_first + len > share {
                    // Cut at the middle: the head stays in the first file.
                    let head = (share - in_first) / PAGE_SIZE;
                    if head > 0 {
                        runs.push(PageRun {
                            addr: run.addr,
                            npages: head,
                            offset: offs[0],
                            file: 0,
                        });
                        readers[0].segs.push((run.addr, head * PAGE_SIZE, readable));
                        offs[0] += head * PAGE_SIZE;
                        run.addr += head * PAGE_SIZE;
                        run.npages -= head;
                    }
                    k = 1;
                    continue;
                }
                run.offset = offs[k];
                run.file = k as u32;
                readers[k].segs.push((run.addr, len, readable));
                offs[k] += len;
                if k == 0 {
                    in_first += len;
                }
                runs.push(run);
                break;
            }
        }
        v.pages = runs;
    }
    let lens: Vec<u64> = readers.iter().map(|r| r.bytes()).collect();
    let done = std::sync::atomic::AtomicU64::new(0);
    let report = |n: usize| {
        if let Some(p) = &progress {
            let at = done.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            p(at, total);
        }
    };
    if nfiles == 1 {
        let r = &mut readers[0];
        sinks[0].append_streamed(lens[0], |_, window| {
            report(window.len());
            r.fill(window)
        })?;
    } else {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // The first failure is the one to report: the other stream stops at
        // its next buffer.
        let failed = AtomicUsize::new(usize::MAX);
        let (s0, s1) = sinks.split_at_mut(1);
        let (r0, r1) = readers.split_at_mut(1);
        let t0 = std::time::Instant::now();
        let run = |k: usize, sink: &mut PageSink, r: &mut TaskReader| {
            let res = sink.append_direct(lens[k], |_, window| {
                if failed.load(Ordering::Relaxed) != usize::MAX {
                    return Err(Error::Other("stopped".into()));
                }
                report(window.len());
                r.fill(window)
            });
            if res.is_err() {
                let _ =
                    failed.compare_exchange(usize::MAX, k, Ordering::Relaxed, Ordering::Relaxed);
            }
            tracing::debug!(
                pid,
                file = k,
                bytes = lens[k],
                ms = t0.elapsed().as_secs_f64() * 1e3,
                "page file written"
            );
            res
        };
        let (a, b) = std::thread::scope(|sc| {
            let second = sc.spawn(|| run(1, &mut s1[0], &mut r1[0]));
            let a = run(0, &mut s0[0], &mut r0[0]);
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
    }
    if let Some(p) = &progress {
        p(total, total);
    }
    Ok(total / PAGE_SIZE)
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
