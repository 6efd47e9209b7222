//! Rebuilding a process's mm description: PR_SET_MM_MAP with exe_fd, driven
//! inside a helper by syscall injection exactly as restore does, and the
//! single-field PR_SET_MM ops.

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use sys::mm::{self, PrctlMmMap};

use super::tracee::{ptrace_fail, Tracee};
use crate::feature::Feature::*;
use crate::report::Outcome;
use crate::runner::Unit;
use crate::util::{self, hex, Call, Fail, PResult};

pub(crate) static UNIT: Unit = Unit {
    name: "mm",
    features: &[MmSetMmMap, MmSetMmField],
    run: || {
        vec![
            (MmSetMmMap, util::outcome(set_mm_map())),
            (MmSetMmField, util::outcome(set_mm_field())),
        ]
    },
    cleanup: None,
};

const CMDLINE: &[u8] = b"stasis-probe\0";

/// Fields 26.. of /proc/PID/stat used by PR_SET_MM_MAP, by field number.
fn stat_fields(pid: &str) -> PResult<Vec<u64>> {
    let stat = util::read_trim(&format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .ok_or_else(|| Fail::error("read /proc/PID/stat", "no comm field"))?
        .1;
    // Field 3 (state) is the first after the comm.
    let mut v = vec![0, 0, 0];
    v.extend(
        rest.split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0)),
    );
    if v.len() < 52 {
        return Err(Fail::error("read /proc/PID/stat", "too few fields"));
    }
    Ok(v)
}

fn set_mm_field() -> PResult<Outcome> {
    let f = stat_fields("self")?;
    match mm::prctl_set_mm(mm::PR_SET_MM_ARG_START, f[48]) {
        Ok(()) => Ok(Outcome::ok("PR_SET_MM_ARG_START accepted")),
        Err(e) if e.errno == Errno::EPERM => Err(Fail::missing_call(
            "prctl(PR_SET_MM, PR_SET_MM_ARG_START)",
            e.errno,
            "refused without CAP_SYS_RESOURCE; restore uses PR_SET_MM_MAP",
        )),
        Err(e) => Err(Fail::from(e)),
    }
}

fn set_mm_map() -> PResult<Outcome> {
    match mm::prctl_mm_map_size() {
        Ok(104) => {}
        Ok(n) => {
            return Err(Fail::error(
                "prctl(PR_SET_MM_MAP_SIZE)",
                format!("struct size {n}, expected 104"),
            ))
        }
        Err(e) if e.errno == Errno::EINVAL => {
            return Err(Fail::missing_call(
                "prctl(PR_SET_MM_MAP_SIZE)",
                e.errno,
                "this kernel has no PR_SET_MM_MAP",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    let exe = std::fs::File::open("/proc/self/exe").call("open /proc/self/exe")?;
    let exe_fd = exe.as_raw_fd();
    let t = Tracee::plain()?;
    let pid = t.pid;
    t.seize_stop(sys::ptrace::PTRACE_O_TRACESYSGOOD | sys::ptrace::PTRACE_O_EXITKILL)?;
    let gadget = sys::inject::find_syscall_gadget(pid)?;
    let mut inj = sys::inject::Injector::new(pid, gadget).map_err(ptrace_fail)?;
    let mut sc = |nr: i64, args: [u64; 6], what: &str| -> PResult<i64> {
        let r = inj.syscall(nr, args).map_err(ptrace_fail)?;
        if r < 0 {
            return Err(Fail::call(
                format!("injected {what}"),
                Errno::from_raw(-r as i32),
            ));
        }
        Ok(r)
    };

    let brk = sc(libc::SYS_brk, [0; 6], "brk(0)")? as u64;
    let f = stat_fields(&pid.to_string())?;
    let auxv = std::fs::read(format!("/proc/{pid}/auxv")).call("read /proc/PID/auxv")?;
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let scratch = sc(libc::SYS_mmap, [0, 4096, prot, flags, u64::MAX, 0], "mmap")? as u64;
    let map = PrctlMmMap {
        start_code: f[26],
        end_code: f[27],
        start_stack: f[28],
        start_data: f[45],
        end_data: f[46],
        start_brk: f[47],
        brk,
        arg_start: scratch + 2048,
        arg_end: scratch + 2048 + CMDLINE.len() as u64,
        env_start: f[50],
        env_end: f[51],
        auxv: scratch + 128,
        auxv_size: auxv.len() as u32,
        exe_fd: exe_fd as u32,
    };
    let mut page = vec![0u8; 4096];
    page[..104].copy_from_slice(map.as_bytes());
    page[128..128 + auxv.len()].copy_from_slice(&auxv);
    page[2048..2048 + CMDLINE.len()].copy_from_slice(CMDLINE);
    let local = [std::io::IoSlice::new(&page)];
    let remote = [nix::sys::uio::RemoteIoVec {
        base: scratch as usize,
        len: 4096,
    }];
    nix::sys::uio::process_vm_writev(nix::unistd::Pid::from_raw(pid), &local, &remote)
        .call("process_vm_writev")?;

    // The old executable must be unmapped for exe_fd to be accepted.
    let exe_path = std::fs::read_link(format!("/proc/{pid}/exe")).call("readlink /proc/PID/exe")?;
    let exe_path = exe_path.to_string_lossy().into_owned();
    let maps = util::read_trim(&format!("/proc/{pid}/maps"))?;
    let mut unmapped = 0;
    for l in maps.lines() {
        let cols: Vec<&str> = l.split_whitespace().collect();
        if cols.len() >= 6 && cols[5..].join(" ") == exe_path {
            let (s, e) = cols[0].split_once('-').unwrap_or(("0", "0"));
            let (s, e) = (
                u64::from_str_radix(s, 16).unwrap_or(0),
                u64::from_str_radix(e, 16).unwrap_or(0),
            );
            sc(libc::SYS_munmap, [s, e - s, 0, 0, 0, 0], "munmap")?;
            unmapped += 1;
        }
    }
    let r = inj
        .syscall(
            libc::SYS_prctl,
            [
                libc::PR_SET_MM as u64,
                mm::PR_SET_MM_MAP,
                scratch,
                104,
                0,
                0,
            ],
        )
        .map_err(ptrace_fail)?;
    if r < 0 {
        return Err(Fail::call(
            "injected prctl(PR_SET_MM, PR_SET_MM_MAP)",
            Errno::from_raw(-r as i32),
        ));
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).call("read /proc/PID/cmdline")?;
    if cmdline != CMDLINE {
        return Err(Fail::error(
            "prctl(PR_SET_MM_MAP)",
            format!(
                "cmdline reads {:?} after the new arg area",
                String::from_utf8_lossy(&cmdline)
            ),
        ));
    }
    let exe_now = std::fs::read_link(format!("/proc/{pid}/exe")).call("readlink /proc/PID/exe")?;
    if exe_now.to_string_lossy() != exe_path {
        return Err(Fail::error(
            "prctl(PR_SET_MM_MAP)",
            "exe link points elsewhere",
        ));
    }
    drop(inj);
    drop(t);
    Ok(Outcome::ok(format!(
        "set brk {}, stack, args, env, auxv ({} bytes) and exe_fd in a helper after unmapping its {} executable mappings",
        hex(brk),
        auxv.len(),
        unmapped
    )))
}
