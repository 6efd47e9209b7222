//! `--leave-running` dumps: private anonymous memory copied after the workload
//! runs again, yet holding what it held at the freeze.
//!
//! While the tree is stopped, each process gets a userfaultfd, made by a
//! syscall injected into it, fetched with `pidfd_getfd` and closed in the task
//! again. Its private anonymous areas are registered for write-protect faults
//! (synchronous: the kernel stops a writer until stasis answers) and the pages
//! to save are write-protected. Then the workload goes on, and stasis copies
//! the pages with `process_vm_readv` into the page file, looking at the faults
//! between pieces of 1 MiB: for a faulting page it saves the block around it
//! first (a page still protected still holds its frozen content), then lifts
//! the protection, which wakes the writer. A bitmap of saved pages makes the
//! copier skip what a fault handler saved: a page is unprotected only once it
//! is saved, so no page is read after the workload could have written it.
//! A piece copied in bulk is unprotected at once, so a workload faults only on
//! pages the copier has not reached.
//!
//! What the kernel cannot protect this way is copied while frozen, as for a
//! normal dump: shared memory (its pages are written through other mappings
//! and fds as well), private file mappings (userfaultfd write-protection needs
//! anonymous or shmem memory), and areas the kernel refuses to register.
//!
//! A discard (`madvise(MADV_DONTNEED)`), unmap or `mremap` of pages not yet
//! saved would lose their frozen content: the kernel reports those as events,
//! and the dump fails with an error naming the process and range (the
//! workload goes on untouched). Closing the userfaultfd, at the end or when
//! stasis dies, lifts every protection and wakes every waiting thread.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use sys::uffd;

use crate::error::{io, Error, Result};
use crate::image::{ImageWriter, PageRun, PageSink, Vma, VmaKind, PAGE_SIZE};
use crate::remote::Remote;

/// Bytes copied in bulk between two looks at the faults: a writer waits at
/// most about this long (a fraction of a millisecond) before it is served.
const PIECE: usize = 1 << 20;
/// Window of the page file mapped at once.
const WINDOW: usize = 8 << 20;
/// Pages saved per write fault: the aligned block around the faulting page
/// (a sequential writer then faults once per block).
const FAULT_BLOCK: u64 = 16;
/// Most iovecs per process_vm_readv (UIO_MAXIOV).
const IOV_MAX: usize = 1024;
/// How long a write-protect change may be refused while the task changes its
/// memory map (the kernel answers EAGAIN until the event is consumed).
const RETRY_FOR: Duration = Duration::from_secs(5);

/// `_UFFDIO_WRITEPROTECT` (include/uapi/linux/userfaultfd.h): its bit in the
/// ioctls a registration grants.
const UFFDIO_WRITEPROTECT_BIT: u64 = 1 << 0x06;
/// `UFFD_PAGEFAULT_FLAG_WP` (include/uapi/linux/userfaultfd.h).
const PAGEFAULT_FLAG_WP: u64 = 1 << 1;
// Event codes, include/uapi/linux/userfaultfd.h.
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;

const FEATURES: u64 = uffd::UFFD_FEATURE_PAGEFAULT_FLAG_WP
    | uffd::UFFD_FEATURE_EVENT_REMOVE
    | uffd::UFFD_FEATURE_EVENT_UNMAP
    | uffd::UFFD_FEATURE_EVENT_REMAP;

/// What the live copies did, for the dump's statistics.
#[derive(Debug, Default, Clone, Copy)]
pub struct LiveStats {
    /// Pages saved after the workload was released.
    pub pages: u64,
    /// Write faults served.
    pub faults: u64,
    /// Pages saved by the fault handler (before the copier reached them).
    pub fault_pages: u64,
}

/// A process whose private anonymous pages are write-protected, before its
/// page file is laid out.
pub struct Armed {
    pid: i32,
    uffd: OwnedFd,
    /// The frozen runs, by area index: taken out of the areas so that the
    /// frozen copy (`pages::dump`) skips them.
    taken: Vec<(usize, Vec<PageRun>)>,
}

/// Whether an area is private anonymous memory (what can be copied live).
fn live_kind(v: &Vma) -> bool {
    matches!(v.kind, VmaKind::Anon) && !v.shared && v.shared_object.is_none()
}

/// `USERFAULTFD_IOC_NEW` (include/uapi/linux/userfaultfd.h): `_IO(0xAA, 0x00)`
/// on /dev/userfaultfd makes a userfaultfd for the caller's memory.
const USERFAULTFD_IOC_NEW: u64 = 0xaa00;

/// Makes a userfaultfd inside stopped task `tid` of process `pid` and takes
/// it over; the task's fd table is as it was afterwards. The syscall needs
/// CAP_SYS_PTRACE (or vm.unprivileged_userfaultfd), which a sandbox's
/// workload lacks; /dev/userfaultfd, where the task can open it, needs only
/// access to the device. `Ok(None)` when the task can have neither (the
/// caller then copies while frozen).
fn take_uffd(pid: i32, tid: i32, gadget: u64, pidfd: BorrowedFd) -> Result<Option<OwnedFd>> {
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let mut r = Remote::new(tid, gadget)?;
    let res = (|| -> Result<Option<OwnedFd>> {
        let mut fd = r.syscall_raw(libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])?;
        if fd < 0 {
            let path = "/dev/userfaultfd";
            let at = r.scratch(PAGE_SIZE)?;
            crate::remote::put_cstr(&mut r, at, path)?;
            let dev = r.syscall_raw(
                libc::SYS_openat,
                [
                    libc::AT_FDCWD as u64,
                    at,
                    (libc::O_RDWR | libc::O_CLOEXEC) as u64,
                    0,
                    0,
                    0,
                ],
            )?;
            if dev < 0 {
                tracing::info!(
                    pid,
                    syscall_errno = -fd,
                    open_errno = -dev,
                    "no userfaultfd for the task: its memory is copied while frozen"
                );
                return Ok(None);
            }
            fd = r.syscall_raw(
                libc::SYS_ioctl,
                [dev as u64, USERFAULTFD_IOC_NEW, flags, 0, 0, 0],
            )?;
            r.call(
                &format!("close of {path} (fd {dev})"),
                libc::SYS_close,
                [dev as u64, 0, 0, 0, 0, 0],
            )?;
            if fd < 0 {
                tracing::info!(
                    pid,
                    errno = -fd,
                    "USERFAULTFD_IOC_NEW refused in the task: its memory is copied while frozen"
                );
                return Ok(None);
            }
        }
        let got = sys::pidfd::pidfd_getfd(pidfd, fd as i32);
        let closed = r.call(
            &format!("close of the userfaultfd (fd {fd})"),
            libc::SYS_close,
            [fd as u64, 0, 0, 0, 0, 0],
        );
        let got = got.map_err(|e| Error::Process {
            pid,
            reason: format!("taking over its userfaultfd (fd {fd}): {e}"),
        })?;
        closed?;
        Ok(Some(got))
    })();
    let fin = r.finish();
    let out = res?;
    fin?;
    Ok(out)
}

/// Private anonymous areas of `pid` with some access, from /proc/PID/maps
/// (cheap: no page walk), as (start, end).
fn anon_areas(pid: i32) -> Result<Vec<(u64, u64)>> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| Error::Process {
            pid,
            reason: format!("reading maps: {e}"),
        })?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let name = f.nth(3).unwrap_or("");
        let private = perms.as_bytes().get(3) == Some(&b'p');
        let no_access = perms.starts_with("---");
        if !private || no_access || !(name.is_empty() || name == "[heap]" || name == "[stack]") {
            continue;
        }
        if let Some((a, b)) = range.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                out.push((a, b));
            }
        }
    }
    Ok(out)
}

/// An area registered and write-protected, with the runs of pages to save
/// when `PAGEMAP_SCAN` could tell them.
struct Protected {
    start: u64,
    end: u64,
    runs: Option<Vec<PageRun>>,
}

/// The pages of `[start, end)` (an anonymous area) to save, in one
/// `PAGEMAP_SCAN` walk (`pages::present_regions`). `None` if the kernel
/// cannot.
fn scan_area(pagemap: Option<&File>, start: u64, end: u64) -> Option<Vec<PageRun>> {
    let regions = super::pages::present_regions(pagemap?.as_fd(), start, end).ok()?;
    let mut runs: Vec<PageRun> = Vec::new();
    for r in regions {
        match runs.last_mut() {
            Some(l) if l.addr + l.npages * PAGE_SIZE == r.start => {
                l.npages += (r.end - r.start) / PAGE_SIZE
            }
            _ => runs.push(PageRun {
                addr: r.start,
                npages: (r.end - r.start) / PAGE_SIZE,
                offset: 0,
                file: 0,
            }),
        }
    }
    Some(runs)
}

/// Registers `areas` for write-protect faults, write-protects them whole and
/// finds their pages to save; returns the areas done. An area the kernel
/// refuses is left out (its pages are copied while frozen).
fn protect(pid: i32, fd: BorrowedFd, areas: &[(u64, u64)]) -> Result<Vec<Protected>> {
    let pagemap = File::open(format!("/proc/{pid}/pagemap")).ok();
    let mut done = Vec::new();
    for &(start, end) in areas {
        // The whole area, so that registering splits nothing.
        match uffd::register(fd, start, end - start, uffd::UFFDIO_REGISTER_MODE_WP) {
            Ok(ioctls) if ioctls & UFFDIO_WRITEPROTECT_BIT != 0 => {}
            Ok(_) => {
                let _ = uffd::unregister(fd, start, end - start);
                tracing::debug!(
                    pid,
                    start,
                    "area without write-protection: copied while frozen"
                );
                continue;
            }
            Err(e) => {
                tracing::debug!(pid, start, "area not registered ({e}): copied while frozen");
                continue;
            }
        }
        uffd::writeprotect(fd, start, end - start, true).map_err(|e| Error::Process {
            pid,
            reason: format!("write-protecting memory {start:#x}-{end:#x}: {e}"),
        })?;
        done.push(Protected {
            start,
            end,
            runs: scan_area(pagemap.as_ref(), start, end),
        });
    }
    Ok(done)
}

type Protecting = std::thread::JoinHandle<(OwnedFd, Result<Vec<Protected>>)>;

/// A process whose private anonymous areas are being write-protected by a
/// helper thread (page-table walks: tens of milliseconds per GiB), while the
/// caller reads the areas and pages. `finish` joins the thread; dropping it
/// joins it too, so no thread outlives the dump.
pub struct Arming {
    pid: i32,
    /// The areas handed to the thread (sorted).
    areas: Vec<(u64, u64)>,
    started: Instant,
    thread: Option<Protecting>,
}

/// Starts write-protecting the private anonymous memory of stopped process
/// `pid` (whole areas; `finish` decides which pages are saved): a userfaultfd
/// is made in its thread `tid` (injected syscalls, so on the calling thread,
/// the tracer), then a thread registers and protects. `Ok(None)` when the
/// task can have no userfaultfd: then everything is copied while frozen.
pub fn begin(pid: i32, tid: i32, gadget: u64, pidfd: BorrowedFd) -> Result<Option<Arming>> {
    let started = Instant::now();
    let areas = anon_areas(pid)?;
    if areas.is_empty() {
        return Ok(None);
    }
    let Some(fd) = take_uffd(pid, tid, gadget, pidfd)? else {
        return Ok(None);
    };
    if let Err(e) = uffd::api(fd.as_fd(), FEATURES) {
        tracing::info!(
            pid,
            "userfaultfd write-protection unavailable ({e}): memory copied while frozen"
        );
        return Ok(None);
    }
    let mine = areas.clone();
    // The thread blocks every signal (it inherits the mask it is started
    // with): SIGCHLD of the tracees must reach the tracer thread's signalfd,
    // not be discarded by a thread that does not block it.
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old)).map_err(
        crate::error::errno("blocking signals for the write-protecting thread"),
    )?;
    let thread = std::thread::Builder::new()
        .name("stasis-protect".into())
        .spawn(move || {
            let r = protect(pid, fd.as_fd(), &mine);
            (fd, r)
        });
    let restored = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    let thread = thread.map_err(io("starting the write-protecting thread"))?;
    // From here on, dropping the Arming joins the thread.
    let arming = Arming {
        pid,
        areas,
        started,
        thread: Some(thread),
    };
    restored.map_err(crate::error::errno("restoring the signal mask"))?;
    Ok(Some(arming))
}

impl Arming {
    fn join(&mut self) -> Result<(OwnedFd, Vec<Protected>)> {
        let t = self.thread.take().expect("joined once");
        let (fd, r) = t.join().map_err(|_| Error::Process {
            pid: self.pid,
            reason: "the write-protecting thread panicked".into(),
        })?;
        Ok((fd, r?))
    }

    /// Whether the thread finds the pages of area `v` itself.
    fn covers(&self, v: &Vma) -> bool {
        live_kind(v) && self.areas.binary_search(&(v.start, v.end)).is_ok()
    }

    /// Waits for the protection, then takes the runs of the protected areas
    /// out of `vmas` (as `PAGEMAP_SCAN` found them, or `pages::scan` where
    /// it could not), so that the frozen copy skips them. `Ok(None)` when no
    /// area with pages to save is protected.
    pub fn finish(mut self, vmas: &mut [Vma]) -> Result<Option<Armed>> {
        let (fd, done) = self.join()?;
        let mut unscanned = Vec::new();
        let mut live = Vec::new();
        for (i, v) in vmas.iter_mut().enumerate() {
            if !self.covers(v) {
                continue;
            }
            let k = done.partition_point(|d| d.start < v.start);
            match done.get(k).filter(|d| d.start == v.start && d.end == v.end) {
                Some(d) => {
                    live.push(i);
                    match &d.runs {
                        Some(runs) => v.pages = runs.clone(),
                        None => unscanned.push(i),
                    }
                }
                None => unscanned.push(i),
            }
        }
        scan_only(self.pid, vmas, &unscanned)?;
        let mut taken = Vec::new();
        for i in live {
            if !vmas[i].pages.is_empty() {
                taken.push((i, std::mem::take(&mut vmas[i].pages)));
            }
        }
        tracing::debug!(
            pid = self.pid,
            areas = done.len(),
            with_pages = taken.len(),
            ms = self.started.elapsed().as_secs_f64() * 1e3,
            "memory write-protected for the live copy"
        );
        if taken.is_empty() {
            return Ok(None);
        }
        Ok(Some(Armed {
            pid: self.pid,
            uffd: fd,
            taken,
        }))
    }
}

/// `pages::scan` of the areas at `idx` only.
fn scan_only(pid: i32, vmas: &mut [Vma], idx: &[usize]) -> Result<()> {
    if idx.is_empty() {
        return Ok(());
    }
    let mut sub: Vec<Vma> = idx.iter().map(|&i| vmas[i].clone()).collect();
    super::pages::scan(pid, &mut sub, None)?;
    for (k, &i) in idx.iter().enumerate() {
        vmas[i].pages = std::mem::take(&mut sub[k].pages);
    }
    Ok(())
}

/// Finds the pages to save of every area with `pages::scan` (from
/// `present` where given), except the areas whose pages `arming`'s thread
/// finds while it protects them.
pub fn scan(
    pid: i32,
    arming: Option<&Arming>,
    vmas: &mut [Vma],
    present: Option<&super::pages::Present>,
) -> Result<()> {
    let Some(a) = arming else {
        return super::pages::scan(pid, vmas, present);
    };
    let idx: Vec<usize> = (0..vmas.len()).filter(|&i| !a.covers(&vmas[i])).collect();
    scan_only(pid, vmas, &idx)
}

impl Drop for Arming {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Closing the userfaultfd (with the joined result) lifts the protection.
            let _ = self.join();
        }
    }
}

impl Armed {
    /// Lays the protected runs out in `sink` after what it holds (the pages
    /// copied while frozen) and puts them back into their areas with their
    /// offsets. The copy itself is `copy_all`'s, after the release.
    pub fn plan(self, vmas: &mut [Vma], sink: PageSink, ns_pid: i32) -> Result<Job> {
        let file = sink.try_clone_file()?;
        let base = sink.position();
        let mut off = base;
        let mut segs = Vec::new();
        for (i, mut runs) in self.taken {
            for run in runs.iter_mut() {
                run.offset = off;
                segs.push(Seg {
                    addr: run.addr,
                    npages: run.npages,
                    first: (off - base) / PAGE_SIZE,
                });
                off += run.npages * PAGE_SIZE;
            }
            vmas[i].pages = runs;
        }
        let npages = (off - base) / PAGE_SIZE;
        let mem = File::open(format!("/proc/{}/mem", self.pid)).map_err(|e| Error::Process {
            pid: self.pid,
            reason: format!("opening /proc/{}/mem: {e}", self.pid),
        })?;
        Ok(Job {
            pid: self.pid,
            ns_pid,
            uffd: Some(self.uffd),
            mem,
            segs,
            saved: vec![0; npages.div_ceil(64) as usize],
            npages,
            file,
            base,
            sink: Some(sink),
            pending: VecDeque::new(),
            buf: vec![0; (FAULT_BLOCK * PAGE_SIZE) as usize],
            stats: LiveStats::default(),
        })
    }
}

/// A run of protected pages: `npages` at `addr`, the `first`-th page of the
/// process's live part of the page file.
#[derive(Debug, Clone, Copy)]
struct Seg {
    addr: u64,
    npages: u64,
    first: u64,
}

/// One process's live copy.
pub struct Job {
    pid: i32,
    ns_pid: i32,
    /// Closed when the copy is done (or the job dropped): the kernel then
    /// lifts every protection left and wakes every waiter.
    uffd: Option<OwnedFd>,
    /// The task's memory as it was at the freeze (bound to that address
    /// space): for pages process_vm_readv cannot read.
    mem: File,
    /// Sorted by address and by page index alike.
    segs: Vec<Seg>,
    /// One bit per page of `segs`: saved in the page file.
    saved: Vec<u64>,
    npages: u64,
    /// The page file, for pages saved by the fault handler.
    file: File,
    /// Offset of the first live page in the page file.
    base: u64,
    sink: Option<PageSink>,
    /// Faulting addresses read but not yet served.
    pending: VecDeque<u64>,
    buf: Vec<u8>,
    stats: LiveStats,
}

impl Job {
    /// Pages this job saves after the release.
    pub fn pages(&self) -> u64 {
        self.npages
    }

    fn is_saved(&self, i: u64) -> bool {
        self.saved[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn set_saved(&mut self, i: u64) {
        self.saved[(i / 64) as usize] |= 1 << (i % 64);
    }

    fn fd(&self) -> Result<BorrowedFd<'_>> {
        self.uffd
            .as_ref()
            .map(|f| f.as_fd())
            .ok_or_else(|| Error::Process {
                pid: self.pid,
                reason: "userfaultfd already closed".into(),
            })
    }

    /// Index of the segment holding `addr`.
    fn seg_at(&self, addr: u64) -> Option<usize> {
        let i = self
            .segs
            .partition_point(|s| s.addr + s.npages * PAGE_SIZE <= addr);
        (i < self.segs.len() && self.segs[i].addr <= addr).then_some(i)
    }

    /// Whether a page of `[start, end)` is protected and not saved yet.
    fn unsaved_in(&self, start: u64, end: u64) -> bool {
        let mut i = self
            .segs
            .partition_point(|s| s.addr + s.npages * PAGE_SIZE <= start);
        while i < self.segs.len() && self.segs[i].addr < end {
            let s = self.segs[i];
            let a = start.max(s.addr);
            let b = end.min(s.addr + s.npages * PAGE_SIZE);
            let mut p = (a - s.addr) / PAGE_SIZE;
            while s.addr + p * PAGE_SIZE < b {
                if !self.is_saved(s.first + p) {
                    return true;
                }
                p += 1;
            }
            i += 1;
        }
        false
    }

    /// Reads every queued message: faults are queued for `serve`, changes of
    /// the memory map are checked against what is still to be saved.
    fn drain(&mut self) -> Result<()> {
        let Some(fd) = self.uffd.as_ref() else {
            return Ok(());
        };
        while let Some(m) = uffd::read_msg(fd.as_fd()).map_err(|e| Error::Process {
            pid: self.pid,
            reason: format!("reading its userfaultfd: {e}"),
        })? {
            let (what, start, end) = match m.event {
                uffd::UFFD_EVENT_PAGEFAULT => {
                    if m.arg[0] & PAGEFAULT_FLAG_WP != 0 {
                        self.pending.push_back(m.arg[1] & !(PAGE_SIZE - 1));
                    }
                    continue;
                }
                EVENT_REMOVE => ("discarded (madvise)", m.arg[0], m.arg[1]),
                EVENT_UNMAP => ("unmapped", m.arg[0], m.arg[1]),
                EVENT_REMAP => ("moved (mremap)", m.arg[0], m.arg[0] + m.arg[2]),
                other => {
                    tracing::debug!(pid = self.pid, event = other, "userfaultfd event ignored");
                    continue;
                }
            };
            if self.unsaved_in(start, end) {
                return Err(Error::Process {
                    pid: self.pid,
                    reason: format!(
                        "memory {start:#x}-{end:#x} was {what} while the --leave-running dump \
                         was still copying it: its content at the freeze is lost (dump again)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Lifts the write-protection of `[addr, addr+len)`, which wakes the
    /// threads waiting there. While the task changes its memory map the
    /// kernel refuses (EAGAIN) until the event is read: read it and retry.
    fn unprotect(&mut self, addr: u64, len: u64) -> Result<()> {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            match uffd::writeprotect(self.fd()?, addr, len, false) {
                Ok(()) => return Ok(()),
                Err(e) if e.errno == nix::errno::Errno::EAGAIN && Instant::now() < deadline => {
                    self.drain()?;
                    std::thread::yield_now();
                }
                Err(e) => {
                    return Err(Error::Process {
                        pid: self.pid,
                        reason: format!(
                            "lifting the write-protection of {addr:#x}-{:#x}: {e}",
                            addr + len
                        ),
                    })
                }
            }
        }
    }

    /// Reads `(addr, len)` pairs of the task into the local slices, in one
    /// process_vm_readv when it can, else through /proc/PID/mem.
    fn read_into(&self, local: &mut [libc::iovec], remote: &[libc::iovec]) -> Result<()> {
        let want: usize = remote.iter().map(|v| v.iov_len).sum();
        // SAFETY: every local iovec points into a buffer of ours of at least
        // its length, borrowed mutably by the caller for this call; the remote
        // ones are addresses in the target, checked by the kernel.
        let got = unsafe {
            libc::process_vm_readv(
                self.pid,
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        if got >= 0 && got as usize == want {
            return Ok(());
        }
        for (l, r) in local.iter().zip(remote) {
            // SAFETY: as above: `l` describes a buffer of ours, mutably
            // borrowed by the caller.
            let dst = unsafe { std::slice::from_raw_parts_mut(l.iov_base as *mut u8, l.iov_len) };
            let at = r.iov_base as u64;
            self.mem
                .read_exact_at(dst, at)
                .map_err(|e| Error::Process {
                    pid: self.pid,
                    reason: format!(
                        "reading memory {at:#x}-{:#x} during the live copy: {e}",
                        at + r.iov_len as u64
                    ),
                })?;
        }
        Ok(())
    }

    /// Saves the unsaved pages of the aligned block around faulting `addr`
    /// into the page file, then unprotects the block (waking the writer).
    fn serve_fault(&mut self, addr: u64) -> Result<()> {
        self.stats.faults += 1;
        let Some(si) = self.seg_at(addr) else {
            // Not a page of ours (or not any more): just wake the writer.
            return self.unprotect(addr, PAGE_SIZE);
        };
        let s = self.segs[si];
        let block = FAULT_BLOCK * PAGE_SIZE;
        let start = (addr & !(block - 1)).max(s.addr);
        let end = ((addr & !(block - 1)) + block).min(s.addr + s.npages * PAGE_SIZE);
        let mut buf = std::mem::take(&mut self.buf);
        let res = (|| -> Result<()> {
            let mut a = start;
            while a < end {
                let i = s.first + (a - s.addr) / PAGE_SIZE;
                if self.is_saved(i) {
                    a += PAGE_SIZE;
                    continue;
                }
                // A run of unsaved pages from `a`.
                let mut b = a + PAGE_SIZE;
                while b < end && !self.is_saved(s.first + (b - s.addr) / PAGE_SIZE) {
                    b += PAGE_SIZE;
                }
                let n = (b - a) as usize;
                let mut local = [libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: n,
                }];
                let remote = [libc::iovec {
                    iov_base: a as *mut libc::c_void,
                    iov_len: n,
                }];
                self.read_into(&mut local, &remote)?;
                let off = self.base + i * PAGE_SIZE;
                self.file.write_all_at(&buf[..n], off).map_err(io(format!(
                    "writing the page file of process {}",
                    self.ns_pid
                )))?;
                for k in 0..(n as u64 / PAGE_SIZE) {
                    self.set_saved(i + k);
                }
                self.stats.fault_pages += n as u64 / PAGE_SIZE;
                a = b;
            }
            Ok(())
        })();
        self.buf = buf;
        res?;
        self.unprotect(start, end - start)
    }

    /// Serves every fault queued or waiting.
    fn serve(&mut self) -> Result<()> {
        if self.uffd.is_none() {
            return Ok(());
        }
        self.drain()?;
        while let Some(a) = self.pending.pop_front() {
            self.serve_fault(a)?;
            if self.pending.is_empty() {
                self.drain()?;
            }
        }
        Ok(())
    }

    /// Copies pages `[p0, p0 + dst.len()/PAGE_SIZE)` of the live part into
    /// `dst` (skipping those a fault already saved), marks them saved and
    /// unprotects them.
    fn copy_piece(&mut self, p0: u64, dst: &mut [u8]) -> Result<()> {
        let np = dst.len() as u64 / PAGE_SIZE;
        let p1 = p0 + np;
        let mut local: Vec<libc::iovec> = Vec::with_capacity(64);
        let mut remote: Vec<libc::iovec> = Vec::with_capacity(64);
        let first_seg = self.segs.partition_point(|s| s.first + s.npages <= p0);
        let mut spans = Vec::new(); // (addr, len) to unprotect
        let mut si = first_seg;
        while si < self.segs.len() && self.segs[si].first < p1 {
            let s = self.segs[si];
            let a = p0.max(s.first);
            let b = p1.min(s.first + s.npages);
            spans.push((s.addr + (a - s.first) * PAGE_SIZE, (b - a) * PAGE_SIZE));
            let mut p = a;
            while p < b {
                if self.is_saved(p) {
                    p += 1;
                    continue;
                }
                let mut q = p + 1;
                while q < b && !self.is_saved(q) {
                    q += 1;
                }
                let off = ((p - p0) * PAGE_SIZE) as usize;
                let len = ((q - p) * PAGE_SIZE) as usize;
                local.push(libc::iovec {
                    iov_base: dst[off..off + len].as_mut_ptr().cast(),
                    iov_len: len,
                });
                remote.push(libc::iovec {
                    iov_base: (s.addr + (p - s.first) * PAGE_SIZE) as *mut libc::c_void,
                    iov_len: len,
                });
                if local.len() == IOV_MAX {
                    self.read_into(&mut local, &remote)?;
                    local.clear();
                    remote.clear();
                }
                p = q;
            }
            si += 1;
        }
        if !local.is_empty() {
            self.read_into(&mut local, &remote)?;
        }
        for p in p0..p1 {
            self.set_saved(p);
        }
        for (addr, len) in spans {
            self.unprotect(addr, len)?;
        }
        Ok(())
    }
}

/// Copies every job's pages (the workload running again), serving the write
/// faults of all of them meanwhile, and commits each page file. Each job's
/// userfaultfd is closed as soon as its pages are all saved.
pub fn copy_all(
    jobs: &mut [Job],
    writer: &mut ImageWriter,
    progress: Option<fn(i32, u64, u64)>,
) -> Result<LiveStats> {
    let mut stats = LiveStats::default();
    crate::interrupt::pause_serving("live-copy", || {
        let mut fds: Vec<libc::pollfd> = jobs
            .iter()
            .filter_map(|j| j.uffd.as_ref())
            .map(|fd| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: poll on an array of valid pollfds of descriptors we hold.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1) };
        for job in jobs.iter_mut() {
            job.serve()?;
        }
        Ok(())
    })?;
    for j in 0..jobs.len() {
        let mut sink = jobs[j].sink.take().expect("each job is copied once");
        let total = jobs[j].npages * PAGE_SIZE;
        let ns_pid = jobs[j].ns_pid;
        let base = jobs[j].base;
        sink.append_in_place(total, WINDOW, |at, window| {
            if let Some(f) = progress {
                f(ns_pid, at, total);
            }
            let mut done = 0usize;
            while done < window.len() {
                for job in jobs.iter_mut() {
                    job.serve()?;
                }
                let n = PIECE.min(window.len() - done);
                let p0 = (at + done as u64) / PAGE_SIZE;
                jobs[j].copy_piece(p0, &mut window[done..done + n])?;
                done += n;
            }
            Ok(())
        })?;
        debug_assert_eq!(sink.position(), base + total);
        if let Some(f) = progress {
            f(ns_pid, total, total);
        }
        // Faults read but not yet answered are answered before the close.
        jobs[j].serve()?;
        writer.commit_file(sink)?;
        jobs[j].uffd = None;
        stats.pages += jobs[j].npages;
        stats.faults += jobs[j].stats.faults;
        stats.fault_pages += jobs[j].stats.fault_pages;
    }
    Ok(stats)
}
