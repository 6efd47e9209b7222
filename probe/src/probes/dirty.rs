//! Tracking written pages: soft-dirty bits; userfaultfd (missing faults
//! served from outside, WP_ASYNC); dirty tracking from outside with
//! userfaultfd WP_ASYNC in the target and PAGEMAP_SCAN.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::time::Instant;

use nix::errno::Errno;
use sys::{mm, uffd};

use super::tracee::Tracee;
use super::STEP;
use crate::feature::Feature::{self, *};
use crate::report::Outcome;
use crate::runner::Unit;
use crate::util::{
    self, page_size, read_exact_timeout, Call, Exit, Fail, Mapping, PResult, Shared,
};

pub(crate) static SOFT_DIRTY_UNIT: Unit = Unit {
    name: "soft-dirty",
    features: &[SoftDirty],
    run: || vec![(SoftDirty, util::outcome(soft_dirty()))],
    cleanup: None,
};

pub(crate) static UFFD_UNIT: Unit = Unit {
    name: "userfaultfd",
    features: &[Userfaultfd, UffdWpAsync, DirtyTracking],
    run,
    cleanup: None,
};

const PM_SOFT_DIRTY: u64 = 1 << 55;

fn pagemap_entry(addr: u64) -> PResult<u64> {
    let f = std::fs::File::open("/proc/self/pagemap").call("open /proc/self/pagemap")?;
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, addr / page_size() as u64 * 8)
        .call("pread /proc/self/pagemap")?;
    Ok(u64::from_ne_bytes(b))
}

fn soft_dirty() -> PResult<Outcome> {
    let m = Mapping::anon(
        page_size(),
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE,
    )?;
    m.touch(0, 1);
    std::fs::write("/proc/self/clear_refs", "4").map_err(|e| {
        let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
        Fail::missing_call(
            "write /proc/self/clear_refs (4)",
            errno,
            "soft-dirty bits cannot be cleared",
        )
    })?;
    let cleared = pagemap_entry(m.addr)? & PM_SOFT_DIRTY == 0;
    m.touch(0, 2);
    let dirty = pagemap_entry(m.addr)? & PM_SOFT_DIRTY != 0;
    match (cleared, dirty) {
        (true, true) => Ok(Outcome::ok(
            "bit 55 cleared by clear_refs and set again by a write",
        )),
        (true, false) => Err(Fail::missing(
            "pread /proc/self/pagemap",
            "clear_refs is accepted, but bit 55 stays 0 after a write",
        )),
        (false, _) => Err(Fail::error(
            "write /proc/self/clear_refs (4)",
            "bit 55 not cleared",
        )),
    }
}

/// A userfaultfd for this process: non-blocking, falling back to
/// user-mode-only faults where unprivileged use is restricted.
fn new_uffd() -> Result<std::os::fd::OwnedFd, sys::Error> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    uffd::userfaultfd(flags).or_else(|e| {
        if e.errno == Errno::EPERM {
            uffd::userfaultfd(flags | uffd::UFFD_USER_MODE_ONLY)
        } else {
            Err(e)
        }
    })
}

fn run() -> Vec<(Feature, Outcome)> {
    // What the kernel offers.
    let offered = new_uffd().and_then(|fd| uffd::api(fd.as_fd(), 0));
    let features = match offered {
        Ok(f) => f,
        Err(e) => {
            let f = Fail::from(e);
            let f = if matches!(e.errno, Errno::ENOSYS | Errno::EPERM | Errno::EINVAL) {
                f.into_missing()
            } else {
                f
            };
            let o = f.into_outcome();
            return UFFD_UNIT.features.iter().map(|&f| (f, o.clone())).collect();
        }
    };
    let names = uffd::feature_names(features);
    let missing_faults = util::outcome(serve_missing_fault()).with("features", names.clone());
    let want = uffd::UFFD_FEATURE_WP_ASYNC | uffd::UFFD_FEATURE_WP_UNPOPULATED;
    let wp_async = if features & uffd::UFFD_FEATURE_WP_ASYNC == 0 {
        Outcome::missing("the kernel does not offer UFFD_FEATURE_WP_ASYNC")
            .with_call("ioctl(UFFDIO_API)", None)
    } else {
        util::outcome(
            new_uffd()
                .and_then(|fd| uffd::api(fd.as_fd(), want))
                .map_err(Fail::from)
                .map(|_| Outcome::ok("UFFD_FEATURE_WP_ASYNC and WP_UNPOPULATED granted")),
        )
    };
    let tracking = if wp_async.is_ok() {
        util::outcome(dirty_tracking())
    } else {
        Outcome::missing("needs uffd-wp-async")
    };
    vec![
        (Userfaultfd, missing_faults),
        (UffdWpAsync, wp_async),
        (DirtyTracking, tracking),
    ]
}

/// The helper registers a page for missing faults and touches it; the page
/// is served from this process with UFFDIO_COPY through a pidfd_getfd copy
/// of the helper's userfaultfd.
fn serve_missing_fault() -> PResult<Outcome> {
    const PATTERN: &[u8; 16] = b"served-by-stasis";
    let ps = page_size();
    let m = Mapping::anon(ps, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE)?;
    let addr = m.addr;
    let fdnum: Shared<i32> = Shared::new()?;
    let mut t = Tracee::spawn(
        || match new_uffd() {
            Ok(fd) => {
                let r = uffd::api(fd.as_fd(), 0).and_then(|_| {
                    uffd::register(
                        fd.as_fd(),
                        addr,
                        ps as u64,
                        uffd::UFFDIO_REGISTER_MODE_MISSING,
                    )
                });
                if let Err(e) = r {
                    return e.errno as i32;
                }
                fdnum.set(std::os::fd::IntoRawFd::into_raw_fd(fd));
                0
            }
            Err(e) => e.errno as i32,
        },
        || {
            // SAFETY: reading our own registered mapping; the fault is served from outside.
            let got = unsafe { std::slice::from_raw_parts(addr as *const u8, 16) };
            if got == PATTERN {
                0
            } else {
                1
            }
        },
    )?;
    let pidfd = sys::pidfd::pidfd_open(t.pid)?;
    let fd = sys::pidfd::pidfd_getfd(pidfd.as_fd(), fdnum.get())?;
    t.release()?;
    let msg = wait_msg(fd.as_fd(), Instant::now() + STEP)?;
    if msg.event != uffd::UFFD_EVENT_PAGEFAULT || msg.arg[1] & !(ps as u64 - 1) != addr {
        return Err(Fail::error(
            "read(userfaultfd)",
            format!("unexpected message {msg:?}"),
        ));
    }
    let mut page = vec![0u8; ps];
    page[..16].copy_from_slice(PATTERN);
    // SAFETY: `page` is readable for ps bytes.
    let n = unsafe { uffd::copy(fd.as_fd(), addr, page.as_ptr(), ps as u64, 0) }?;
    if n != ps as i64 {
        return Err(Fail::error(
            "ioctl(UFFDIO_COPY)",
            format!("copied {n} bytes"),
        ));
    }
    match t.wait()? {
        Exit::Code(0) => Ok(Outcome::ok(
            "a helper's page fault served from outside with UFFDIO_COPY",
        )),
        other => Err(Fail::error(
            "ioctl(UFFDIO_COPY)",
            format!("the helper saw other data: {other:?}"),
        )),
    }
}

fn wait_msg(fd: BorrowedFd, deadline: Instant) -> PResult<uffd::UffdMsg> {
    loop {
        util::wait_readable(fd, deadline)?;
        if let Some(m) = uffd::read_msg(fd)? {
            return Ok(m);
        }
    }
}

/// The helper write-protects 8 pages with WP_ASYNC, then writes pages 2 and
/// 6 on request; PAGEMAP_SCAN from outside must see exactly those, and
/// nothing once WP_MATCHING has protected them again.
fn dirty_tracking() -> PResult<Outcome> {
    let ps = page_size();
    let len = 8 * ps;
    let m = Mapping::anon(len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE)?;
    let addr = m.addr;
    let (done_rd, done_wr) = util::pipe()?;
    let done_wr_raw = done_wr.as_raw_fd();
    let mut t = Tracee::spawn(
        || {
            let setup = new_uffd().and_then(|fd| {
                uffd::api(
                    fd.as_fd(),
                    uffd::UFFD_FEATURE_WP_ASYNC | uffd::UFFD_FEATURE_WP_UNPOPULATED,
                )?;
                uffd::register(fd.as_fd(), addr, len as u64, uffd::UFFDIO_REGISTER_MODE_WP)?;
                uffd::writeprotect(fd.as_fd(), addr, len as u64, true)?;
                std::mem::forget(fd); // the registration lives as long as the fd
                Ok(())
            });
            match setup {
                Ok(()) => 0,
                Err(e) => e.errno as i32,
            }
        },
        move || {
            for i in [2usize, 6] {
                // SAFETY: writing into our own mapping; WP_ASYNC resolves the fault in the kernel.
                unsafe { std::ptr::write_volatile((addr as usize + i * ps) as *mut u8, 7) };
            }
            // SAFETY: one byte to our pipe end.
            unsafe { libc::write(done_wr_raw, b"d".as_ptr().cast(), 1) };
            // Stay alive until killed, so the probe can scan again.
            loop {
                // SAFETY: pause has no arguments.
                unsafe { libc::pause() };
            }
        },
    )?;
    drop(done_wr);
    let pm =
        std::fs::File::open(format!("/proc/{}/pagemap", t.pid)).call("open /proc/PID/pagemap")?;
    let scan = |what: &str| -> PResult<Vec<(usize, usize)>> {
        let req = mm::ScanRequest {
            start: addr,
            end: addr + len as u64,
            flags: mm::PM_SCAN_WP_MATCHING | mm::PM_SCAN_CHECK_WPASYNC,
            category_mask: mm::PAGE_IS_WRITTEN,
            return_mask: mm::PAGE_IS_WRITTEN,
            ..Default::default()
        };
        let regions = mm::pagemap_scan_with(pm.as_fd(), &req).map_err(|e| {
            let f = Fail::from(e);
            if matches!(e.errno, Errno::ENOTTY | Errno::EINVAL) {
                f.into_missing()
                    .because(format!("PAGEMAP_SCAN {what}: {}", e.errno.desc()))
            } else {
                f
            }
        })?;
        Ok(regions
            .iter()
            .map(|r| {
                (
                    ((r.start - addr) / ps as u64) as usize,
                    ((r.end - addr) / ps as u64) as usize,
                )
            })
            .collect())
    };
    let before = scan("before the writes")?;
    if !before.is_empty() {
        return Err(Fail::error(
            "ioctl(PAGEMAP_SCAN)",
            format!("pages {before:?} reported written before any write"),
        ));
    }
    t.release()?;
    let mut b = [0u8; 1];
    read_exact_timeout(&done_rd, &mut b, STEP)?;
    let written = scan("after the writes")?;
    if written != [(2, 3), (6, 7)] {
        return Err(Fail::error(
            "ioctl(PAGEMAP_SCAN)",
            format!("written pages {written:?}, expected [(2, 3), (6, 7)]"),
        ));
    }
    let again = scan("after re-protection")?;
    if !again.is_empty() {
        return Err(Fail::error(
            "ioctl(PAGEMAP_SCAN)",
            format!("pages {again:?} still written after WP_MATCHING"),
        ));
    }
    Ok(Outcome::ok(
        "exactly the 2 pages a helper wrote were seen from outside, then protected again",
    ))
}
