//! The mm fields (code, data, brk, stack, arguments, environment), the auxv and
//! the executable: read from /proc at dump, put back with one PR_SET_MM_MAP at
//! restore. And the vDSO: glibc caches pointers into it, so [vvar],
//! [vvar_vclock] and [vdso] come back at their dumped addresses.

use crate::error::{Error, Result};
use crate::image::{limits, MmImage, Vma, VmaKind, PAGE_SIZE};
use crate::remote::{BatchCall, Remote, Staged};

fn perr(pid: i32, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Process {
        pid,
        reason: format!("{what}: {e}"),
    }
}

/// Reads the mm fields; `brk` comes from an injected brk(0) (not in /proc).
pub fn collect(pid: i32, r: &mut Remote) -> Result<MmImage> {
    let proc = procfs::process::Process::new(pid).map_err(|e| perr(pid, "opening /proc", e))?;
    let st = proc.stat().map_err(|e| perr(pid, "reading stat", e))?;
    let auxv_raw =
        std::fs::read(format!("/proc/{pid}/auxv")).map_err(|e| perr(pid, "reading auxv", e))?;
    let auxv: Vec<u64> = auxv_raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|e| perr(pid, "reading exe link", e))?
        .to_string_lossy()
        .to_string();
    if exe.ends_with(" (deleted)") {
        return Err(Error::Unsupported {
            pid,
            what: "an executable deleted since it started".into(),
            detail: exe,
        });
    }
    let brk = r.call("brk(0)", libc::SYS_brk, [0; 6])?;
    let thp_disable = r.call(
        "prctl(PR_GET_THP_DISABLE)",
        libc::SYS_prctl,
        [libc::PR_GET_THP_DISABLE as u64, 0, 0, 0, 0, 0],
    )?;
    let mlock_future = mlock_future(pid, r)?;
    let membarrier = membarrier_registrations(r)?;
    Ok(MmImage {
        start_code: st.startcode,
        end_code: st.endcode,
        start_data: st.start_data.unwrap_or(0),
        end_data: st.end_data.unwrap_or(0),
        start_brk: st.start_brk.unwrap_or(0),
        brk,
        start_stack: st.startstack,
        arg_start: st.arg_start.unwrap_or(0),
        arg_end: st.arg_end.unwrap_or(0),
        env_start: st.env_start.unwrap_or(0),
        env_end: st.env_end.unwrap_or(0),
        auxv,
        exe,
        thp_disable,
        mlock_future,
        membarrier,
    })
}

/// membarrier's registration commands (MEMBARRIER_CMD_REGISTER_*) that
/// stasis puts back: global, private, private sync-core and private rseq
/// expedited.
const MEMBARRIER_REGISTER: [u64; 4] = [1 << 2, 1 << 4, 1 << 6, 1 << 8];
const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;

/// The membarrier registrations of the process, as register commands.
/// MEMBARRIER_CMD_GET_REGISTRATIONS (Linux 6.3) tells them at once; before
/// it, each private expedited kind is issued (a registered process gets 0,
/// an unregistered EPERM).
fn membarrier_registrations(r: &mut Remote) -> Result<u64> {
    let mask = r.syscall_raw(
        libc::SYS_membarrier,
        [MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0, 0, 0, 0],
    )?;
    if mask >= 0 {
        return Ok(mask as u64 & MEMBARRIER_REGISTER.iter().sum::<u64>());
    }
    let mut mask = 0;
    for reg in &MEMBARRIER_REGISTER[1..] {
        // The barrier command is its register command's bit shifted down by one.
        if r.syscall_raw(libc::SYS_membarrier, [reg >> 1, 0, 0, 0, 0, 0])? == 0 {
            mask |= reg;
        }
    }
    Ok(mask)
}

/// Locked memory of `pid` in KiB (VmLck).
fn locked_kib(pid: i32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| perr(pid, "reading status", e))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0))
}

/// The mlockall flags in force for future mappings, which /proc does not
/// show: asked only of a process holding locked memory, by mapping one
/// page in it and looking whether the page was locked (VmLck grows) and
/// populated (not with MCL_ONFAULT). The page is unmapped before anything
/// else happens.
fn mlock_future(pid: i32, r: &mut Remote) -> Result<u64> {
    let before = locked_kib(pid)?;
    if before == 0 {
        return Ok(0);
    }
    let len = PAGE_SIZE;
    let addr = r.syscall_raw(
        libc::SYS_mmap,
        [
            0,
            len,
            libc::PROT_READ as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
    )?;
    if addr == -(libc::EAGAIN as i64) {
        // Locked, and over the task's RLIMIT_MEMLOCK: locked all the same.
        return Ok(libc::MCL_FUTURE as u64);
    }
    if addr < 0 {
        return Err(perr(
            pid,
            "mmap of a probe page",
            std::io::Error::from_raw_os_error(-addr as i32),
        ));
    }
    let addr = addr as u64;
    let probe = (|| -> Result<u64> {
        if locked_kib(pid)? <= before {
            return Ok(0);
        }
        let vec = r.scratch(8)?;
        r.call(
            "mincore(probe page)",
            libc::SYS_mincore,
            [addr, len, vec, 0, 0, 0],
        )?;
        let resident = r.read_mem(vec, 1)?.first().is_some_and(|b| b & 1 != 0);
        let mut flags = libc::MCL_FUTURE as u64;
        if !resident {
            flags |= libc::MCL_ONFAULT as u64;
        }
        Ok(flags)
    })();
    let unmapped = r.call(
        "munmap(probe page)",
        libc::SYS_munmap,
        [addr, len, 0, 0, 0, 0],
    );
    let flags = probe?;
    unmapped?;
    Ok(flags)
}

/// Stages what the mm carries besides its fields: transparent huge pages
/// disabled for the process, its membarrier registrations, and mlockall's
/// flags for future mappings.
pub fn stage_mm_flags(st: &mut Staged, mm: &MmImage) {
    if mm.thp_disable != 0 {
        // Bit 0: disabled; bit 1: PR_THP_DISABLE_EXCEPT_ADVISED.
        st.call(
            "prctl(PR_SET_THP_DISABLE)",
            libc::SYS_prctl,
            [
                libc::PR_SET_THP_DISABLE as u64,
                1,
                mm.thp_disable & 2,
                0,
                0,
                0,
            ],
        );
    }
    for reg in MEMBARRIER_REGISTER {
        if mm.membarrier & reg != 0 {
            st.call(
                format!("membarrier({reg:#x}): registration"),
                libc::SYS_membarrier,
                [reg, 0, 0, 0, 0, 0],
            );
        }
    }
    if mm.mlock_future != 0 {
        st.call(
            "mlockall(future mappings)",
            libc::SYS_mlockall,
            [
                mm.mlock_future & (libc::MCL_FUTURE | libc::MCL_ONFAULT) as u64,
                0,
                0,
                0,
                0,
                0,
            ],
        );
    }
}

pub fn validate(pid: i32, mm: &MmImage) -> Result<()> {
    if mm.auxv.len() > limits::MAX_AUXV_WORDS || !mm.auxv.len().is_multiple_of(2) {
        return Err(Error::Other(format!(
            "image of process {pid}: auxv of {} words",
            mm.auxv.len()
        )));
    }
    Ok(())
}

const ARCH_MAP_VDSO_64: u64 = 0x2003;

/// The call that maps the vDSO block ([vvar], [vvar_vclock], [vdso]) at its
/// dumped place, once all of the task's old mappings, its old vDSO
/// included, are gone; None when the image has no vDSO. `check_vdso`
/// verifies the result.
pub fn vdso_call(vmas: &[Vma]) -> Option<BatchCall> {
    let first = vmas
        .iter()
        .find(|v| matches!(v.kind, VmaKind::Special { .. }))?;
    Some(BatchCall {
        what: format!("arch_prctl(ARCH_MAP_VDSO_64, {:#x})", first.start),
        nr: libc::SYS_arch_prctl,
        args: [ARCH_MAP_VDSO_64, first.start, 0, 0, 0, 0],
        may_fail: false,
    })
}

/// Checks that the vDSO block `vdso_call` mapped is laid out as in the image.
pub fn check_vdso(r: &Remote, vmas: &[Vma]) -> Result<()> {
    let special: Vec<&Vma> = vmas
        .iter()
        .filter(|v| matches!(v.kind, VmaKind::Special { .. }))
        .collect();
    if special.is_empty() {
        return Ok(());
    }
    // The kernel's layout must match the dumped one, area by area: asked of
    // /proc/PID/maps one area at a time (PROCMAP_QUERY), or, on kernels
    // without it, read from the whole list (thousands of lines for a
    // process of many areas; smaps would cost a page-table walk of each).
    let now = match queried(r.tid, &special) {
        Some(now) => now,
        None => listed(r.tid)?,
    };
    for v in &special {
        let VmaKind::Special { name } = &v.kind else {
            continue;
        };
        let ok = now
            .iter()
            .any(|(a, b, n)| *a == v.start && *b == v.end && n == name);
        if !ok {
            return Err(Error::Process {
                pid: r.tid,
                reason: format!(
                    "the kernel's vDSO layout differs from the image: {} at {:#x}-{:#x} cannot be put back",
                    v.label, v.start, v.end
                ),
            });
        }
    }
    Ok(())
}

/// The areas at the start of each of `special` in `tid` (start, end, name),
/// by PROCMAP_QUERY; None when that cannot be asked (the caller reads the
/// whole list instead).
fn queried(tid: i32, special: &[&Vma]) -> Option<Vec<(u64, u64, String)>> {
    let maps = std::fs::File::open(format!("/proc/{tid}/maps")).ok()?;
    let mut now = Vec::with_capacity(special.len());
    for v in special {
        match sys::mm::procmap_query(std::os::fd::AsFd::as_fd(&maps), v.start) {
            Ok(Some(area)) => now.push(area),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!("process {tid}: {e}; reading the whole maps list");
                return None;
            }
        }
    }
    Some(now)
}

/// The special areas of `tid` (names in brackets) from /proc/PID/maps.
fn listed(tid: i32) -> Result<Vec<(u64, u64, String)>> {
    let maps =
        std::fs::read_to_string(format!("/proc/{tid}/maps")).map_err(|e| Error::Process {
            pid: tid,
            reason: format!("reading maps: {e}"),
        })?;
    Ok(maps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (a, b) = f.next()?.split_once('-')?;
            let name = f.nth(4)?;
            let a = u64::from_str_radix(a, 16).ok()?;
            let b = u64::from_str_radix(b, 16).ok()?;
            name.starts_with('[').then(|| (a, b, name.to_string()))
        })
        .collect())
}

/// Stages PR_SET_MM_MAP with the executable: `exe_fd` is open in the task.
/// The struct and the auxv go to the batch's data area.
pub fn stage_mm(st: &mut Staged, r: &mut Remote, mm: &MmImage, exe_fd: u64) -> Result<()> {
    let auxv_bytes: Vec<u8> = mm.auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
    if auxv_bytes.len() as u64 > PAGE_SIZE {
        return Err(Error::Process {
            pid: r.tid,
            reason: "auxv too large".into(),
        });
    }
    let map_len = sys::mm::PrctlMmMap::default().as_bytes().len();
    // The struct, then the auxv at an 8-byte boundary after it.
    let auxv_off = map_len.div_ceil(8) * 8;
    let at = st.put_with(r, auxv_off + auxv_bytes.len(), |at| {
        let map = sys::mm::PrctlMmMap {
            start_code: mm.start_code,
            end_code: mm.end_code,
            start_data: mm.start_data,
            end_data: mm.end_data,
            start_brk: mm.start_brk,
            brk: mm.brk,
            start_stack: mm.start_stack,
            arg_start: mm.arg_start,
            arg_end: mm.arg_end,
            env_start: mm.env_start,
            env_end: mm.env_end,
            auxv: at + auxv_off as u64,
            auxv_size: auxv_bytes.len() as u32,
            exe_fd: exe_fd as u32,
        };
        let mut b = map.as_bytes().to_vec();
        b.resize(auxv_off, 0);
        b.extend_from_slice(&auxv_bytes);
        b
    })?;
    st.call(
        "prctl(PR_SET_MM, PR_SET_MM_MAP)",
        libc::SYS_prctl,
        [
            libc::PR_SET_MM as u64,
            libc::PR_SET_MM_MAP as u64,
            at,
            map_len as u64,
            0,
            0,
        ],
    );
    Ok(())
}
