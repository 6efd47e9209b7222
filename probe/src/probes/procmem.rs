//! Reaching into another process: pidfds, kcmp, process_vm_readv/writev,
//! /proc/PID/mem, map_files, pagemap and PAGEMAP_SCAN. The helper process
//! checks from inside that the writes made from outside landed.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use nix::errno::Errno;
use sys::kcmp::{kcmp, KcmpType};
use sys::mm;

use super::tracee::Tracee;
use crate::feature::Feature::{self, *};
use crate::report::{Outcome, Status};
use crate::runner::Unit;
use crate::util::{self, page_size, Call, Exit, Fail, Mapping, PResult};

pub(crate) static UNIT: Unit = Unit {
    name: "process-memory",
    features: &[
        PidfdOpen,
        PidfdGetfd,
        PidfdSendSignal,
        Kcmp,
        ProcessVm,
        ProcMemWrite,
        MapFiles,
        Pagemap,
        PagemapPfn,
        PagemapScan,
    ],
    run,
    cleanup: None,
};

const VM_PATTERN: &[u8; 16] = b"process_vm_write";
const MEM_PATTERN: &[u8; 16] = b"proc-mem-write!!";
const PRESENT_PAGES: [usize; 5] = [0, 1, 2, 3, 5];
const PM_PRESENT: u64 = 1 << 63;
const PM_PFN_MASK: u64 = (1 << 55) - 1;

fn run() -> Vec<(Feature, Outcome)> {
    match sequence() {
        Ok(v) => v,
        Err(f) => {
            let o = f.into_outcome();
            UNIT.features.iter().map(|&f| (f, o.clone())).collect()
        }
    }
}

fn bytes_at(addr: u64, len: usize) -> Vec<u8> {
    // SAFETY: callers pass ranges inside mappings of this process.
    unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec()
}

fn sequence() -> PResult<Vec<(Feature, Outcome)>> {
    let ps = page_size();
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let shared = Mapping::anon(ps, rw, libc::MAP_SHARED)?;
    shared.touch(0, 1);
    let private = Mapping::anon(8 * ps, rw, libc::MAP_PRIVATE)?;
    for i in PRESENT_PAGES {
        private.touch(i, 0x5a);
    }
    let ro = Mapping::anon(ps, rw, libc::MAP_PRIVATE)?;
    ro.touch(0, b'r');
    // SAFETY: changing the protection of our own mapping.
    util::cvt("mprotect", unsafe {
        libc::mprotect(ro.addr as *mut libc::c_void, ps, libc::PROT_READ)
    } as libc::c_long)?;
    let (k_rd, _k_wr) = util::pipe()?;
    let (p_addr, r_addr) = (private.addr, ro.addr);

    let mut t = Tracee::spawn(
        || 0,
        move || {
            if bytes_at(p_addr, 16) != VM_PATTERN {
                return 1;
            }
            if bytes_at(r_addr, 16) != MEM_PATTERN {
                return 2;
            }
            0
        },
    )?;
    let pid = t.pid;
    let me = std::process::id() as i32;
    let mut out = Vec::new();

    // pidfd_open: a handle that is not readable while the process lives.
    let pidfd = sys::pidfd::pidfd_open(pid);
    out.push((
        PidfdOpen,
        util::outcome(pidfd.as_ref().map_err(|e| Fail::from(*e)).and_then(|fd| {
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut p, 1, 0) };
            if n != 0 {
                return Err(Fail::error(
                    "poll(pidfd)",
                    "readable while the process runs",
                ));
            }
            Ok(Outcome::ok("pidfd of a live process, not yet readable"))
        })),
    ));

    // pidfd_getfd: the duplicate is the same pipe.
    let dup = pidfd
        .as_ref()
        .map_err(|e| Fail::from(*e))
        .and_then(|fd| sys::pidfd::pidfd_getfd(fd.as_fd(), k_rd.as_raw_fd()).map_err(Fail::from));
    out.push((
        PidfdGetfd,
        util::outcome(dup.as_ref().map_err(Clone::clone).and_then(|d| {
            let a = nix::sys::stat::fstat(d).call("fstat")?;
            let b = nix::sys::stat::fstat(&k_rd).call("fstat")?;
            if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
                return Err(Fail::error("pidfd_getfd", "the duplicate is another file"));
            }
            Ok(Outcome::ok("duplicated the helper's pipe fd"))
        })),
    ));

    // kcmp: inherited fd is the same description; address spaces differ.
    out.push((
        Kcmp,
        util::outcome((|| {
            let same = kcmp(
                me,
                pid,
                KcmpType::File,
                k_rd.as_raw_fd() as u64,
                k_rd.as_raw_fd() as u64,
            )?;
            let vm = kcmp(me, pid, KcmpType::Vm, 0, 0)?;
            if !same.is_equal() || vm.is_equal() {
                return Err(Fail::error(
                    "kcmp",
                    "wrong answer for a shared file or separate memory",
                ));
            }
            if let Ok(d) = &dup {
                let d = kcmp(
                    me,
                    me,
                    KcmpType::File,
                    d.as_raw_fd() as u64,
                    k_rd.as_raw_fd() as u64,
                )?;
                if !d.is_equal() {
                    return Err(Fail::error(
                        "kcmp",
                        "a pidfd_getfd duplicate is not the same file",
                    ));
                }
            }
            Ok(Outcome::ok(
                "tells a shared open file from separate address spaces",
            ))
        })()),
    ));

    // process_vm_readv/writev.
    let vm = (|| {
        let mut buf = [0u8; 16];
        let local = [std::io::IoSliceMut::new(&mut buf)];
        let remote = [nix::sys::uio::RemoteIoVec {
            base: p_addr as usize,
            len: 16,
        }];
        let n = nix::sys::uio::process_vm_readv(
            nix::unistd::Pid::from_raw(pid),
            &mut { local },
            &remote,
        )
        .call("process_vm_readv")?;
        if n != 16 || buf[0] != 0x5a || buf[1..].iter().any(|&b| b != 0) {
            return Err(Fail::error("process_vm_readv", "read back other data"));
        }
        let local = [std::io::IoSlice::new(VM_PATTERN)];
        nix::sys::uio::process_vm_writev(nix::unistd::Pid::from_raw(pid), &local, &remote)
            .call("process_vm_writev")?;
        let mut back = [0u8; 16];
        let mut l = [std::io::IoSliceMut::new(&mut back)];
        nix::sys::uio::process_vm_readv(nix::unistd::Pid::from_raw(pid), &mut l, &remote)
            .call("process_vm_readv")?;
        if &back != VM_PATTERN {
            return Err(Fail::error("process_vm_writev", "the write did not land"));
        }
        Ok(Outcome::ok("read and wrote the helper's memory"))
    })();

    // /proc/PID/mem into a read-only page.
    let mem = (|| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .call("open /proc/PID/mem")?;
        f.write_all_at(MEM_PATTERN, r_addr).map_err(|e| {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
            Fail::missing_call(
                "pwrite /proc/PID/mem",
                errno,
                "writes to a read-only page are refused",
            )
        })?;
        let mut back = [0u8; 16];
        f.read_exact_at(&mut back, r_addr)
            .call("pread /proc/PID/mem")?;
        if &back != MEM_PATTERN {
            return Err(Fail::error(
                "pwrite /proc/PID/mem",
                "the write did not land",
            ));
        }
        Ok(Outcome::ok(
            "wrote into a read-only private page of the helper",
        ))
    })();

    // map_files: the helper's shared mapping is the same object as ours.
    out.push((
        MapFiles,
        util::outcome((|| {
            let name = format!("{:x}-{:x}", shared.addr, shared.addr + ps as u64);
            let theirs = format!("/proc/{pid}/map_files/{name}");
            let target = std::fs::read_link(&theirs).call(&format!("readlink {theirs}"))?;
            let a = std::fs::File::open(&theirs).call(&format!("open {theirs}"))?;
            let b = std::fs::File::open(format!("/proc/self/map_files/{name}"))
                .call("open /proc/self/map_files")?;
            let (a, b) = (a.metadata().call("fstat")?, b.metadata().call("fstat")?);
            if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
                return Err(Fail::error(
                    "open map_files",
                    "shared memory seen as two objects",
                ));
            }
            Ok(Outcome::ok(format!(
                "opened the helper's shared mapping ({}), same object as ours",
                target.display()
            )))
        })()),
    ));

    // pagemap: present bits and PFNs.
    let pm_path = format!("/proc/{pid}/pagemap");
    let pm = std::fs::File::open(&pm_path).call(&format!("open {pm_path}"));
    let entries = pm.as_ref().map_err(Clone::clone).and_then(|f| {
        let mut buf = vec![0u8; 8 * 8];
        f.read_exact_at(&mut buf, p_addr / ps as u64 * 8)
            .call(&format!("pread {pm_path}"))?;
        Ok(buf
            .chunks(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect::<Vec<_>>())
    });
    out.push((
        Pagemap,
        util::outcome(entries.as_ref().map_err(Clone::clone).and_then(|e| {
            let present: Vec<usize> = (0..8).filter(|&i| e[i] & PM_PRESENT != 0).collect();
            if present != PRESENT_PAGES {
                return Err(Fail::error(
                    format!("pread {pm_path}"),
                    format!("present pages {present:?}, expected {PRESENT_PAGES:?}"),
                ));
            }
            Ok(Outcome::ok(
                "present bits match the pages the helper touched",
            ))
        })),
    ));
    out.push((
        PagemapPfn,
        util::outcome(entries.and_then(|e| {
            if PRESENT_PAGES.iter().all(|&i| e[i] & PM_PFN_MASK != 0) {
                Ok(Outcome::ok("page frame numbers visible"))
            } else {
                Err(Fail::missing(
                    format!("pread {pm_path}"),
                    "page frame numbers read as 0",
                ))
            }
        })),
    ));

    out.push((
        PagemapScan,
        util::outcome(pm.and_then(|f| {
            let regions = mm::pagemap_scan(
                f.as_fd(),
                p_addr,
                p_addr + 8 * ps as u64,
                mm::PAGE_IS_PRESENT,
                mm::PAGE_IS_PRESENT,
            )
            .map_err(|e| {
                let fl = Fail::from(e);
                if matches!(e.errno, Errno::ENOTTY | Errno::EINVAL) {
                    fl.into_missing()
                } else {
                    fl
                }
            })?;
            let p = ps as u64;
            let want = [(p_addr, p_addr + 4 * p), (p_addr + 5 * p, p_addr + 6 * p)];
            let got: Vec<(u64, u64)> = regions.iter().map(|r| (r.start, r.end)).collect();
            if got != want {
                return Err(Fail::error(
                    "ioctl(PAGEMAP_SCAN)",
                    format!("ranges {got:x?}, expected {want:x?}"),
                ));
            }
            let cats: Vec<&str> = mm::PAGE_CATEGORIES
                .iter()
                .filter(|(bit, _)| {
                    mm::pagemap_scan(f.as_fd(), p_addr, p_addr + p, *bit, *bit).is_ok()
                })
                .map(|(_, n)| *n)
                .collect();
            Ok(Outcome::ok(format!(
                "present pages as 2 ranges in one call; categories: {}",
                cats.join(", ")
            ))
            .with("categories", cats))
        })),
    ));

    // The helper checks from inside that both writes landed.
    let verdict = t.release().and_then(|()| t.wait());
    let (vm, mem) = match verdict {
        Ok(Exit::Code(0)) => (vm, mem),
        Ok(Exit::Code(1)) => (
            vm.and(Err(Fail::error(
                "process_vm_writev",
                "the helper does not see the write",
            ))),
            mem,
        ),
        Ok(Exit::Code(2)) => (
            vm,
            mem.and(Err(Fail::error(
                "pwrite /proc/PID/mem",
                "the helper does not see the write",
            ))),
        ),
        Ok(other) => {
            let f = Fail::error("helper", format!("ended with {other:?}"));
            (vm.and(Err(f.clone())), mem.and(Err(f)))
        }
        Err(f) => (vm.and(Err(f.clone())), mem.and(Err(f))),
    };
    out.push((ProcessVm, util::outcome(vm)));
    out.push((ProcMemWrite, util::outcome(mem)));

    out.push((PidfdSendSignal, util::outcome(send_signal())));
    debug_assert!(out
        .iter()
        .all(|(_, o)| o.status != Status::Ok || o.detail.is_some()));
    Ok(out)
}

fn send_signal() -> PResult<Outcome> {
    let mut u = Tracee::plain()?;
    let fd = sys::pidfd::pidfd_open(u.pid)?;
    sys::pidfd::pidfd_send_signal(fd.as_fd(), libc::SIGKILL)?;
    match u.wait()? {
        Exit::Signal(libc::SIGKILL) => Ok(Outcome::ok("SIGKILL through a pidfd ended the helper")),
        other => Err(Fail::error(
            "pidfd_send_signal",
            format!("the helper ended with {other:?}"),
        )),
    }
}
