//! seccomp: the filters a workload installed, and strict mode.
//!
//! Dump: every thread is seized with PTRACE_O_SUSPEND_SECCOMP, so the
//! syscalls stasis injects are not filtered. Each thread's mode comes from
//! /proc/PID/task/TID/status, its filters from PTRACE_SECCOMP_GET_FILTER
//! (index 0 is the oldest) and their flags from PTRACE_SECCOMP_GET_METADATA (only
//! SECCOMP_FILTER_FLAG_LOG is reported). Identical programs are stored once;
//! each thread records its chain, oldest first.
//!
//! Restore: the restored tasks are seized with PTRACE_O_SUSPEND_SECCOMP too,
//! so the filters go in before the credentials (installing one without
//! no_new_privs needs CAP_SYS_ADMIN, which the credentials may drop) and
//! every later injected syscall still runs. The longest chain all threads of
//! a process share is installed from the main thread with
//! SECCOMP_FILTER_FLAG_TSYNC, filter by filter, so that the threads share
//! those filters as they did after a TSYNC or a clone (a later TSYNC by the
//! workload then works as before); each thread then installs the rest of its
//! own chain. A thread in strict mode enters it last.

use crate::error::{Error, Result};
use crate::image::{SeccompFilter, SeccompImage, ThreadSeccomp, PAGE_SIZE};
use crate::remote::Remote;

const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
const SECCOMP_SET_MODE_STRICT: u64 = 0;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;
const SECCOMP_FILTER_FLAG_LOG: u64 = 2;
/// BPF_MAXINSNS.
const MAX_INSNS: usize = 4096;
/// Most filters in one chain (the kernel allows 32768 instructions in all,
/// counting 4 more per filter).
const MAX_CHAIN: usize = 8192;

fn perr(pid: i32, reason: impl Into<String>) -> Error {
    Error::Process {
        pid,
        reason: reason.into(),
    }
}

fn filter_flags(tid: i32, index: u64) -> Result<u64> {
    let mut md = [index, 0u64];
    // SAFETY: PTRACE_SECCOMP_GET_METADATA reads filter_off from and writes
    // flags into the 16-byte struct we pass, with its size as `addr`.
    let rc = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_METADATA,
            tid,
            std::mem::size_of_val(&md),
            md.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(perr(
            tid,
            format!(
                "PTRACE_SECCOMP_GET_METADATA({index}): {}",
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(md[1])
}

/// Reads the seccomp state of every thread of process `pid` (`ns_pid` in
/// the sandbox); `threads` are (host TID, TID in the sandbox, the mode its
/// status says), all seized and stopped.
pub fn collect(pid: i32, ns_pid: i32, threads: &[(i32, i32, u32)]) -> Result<SeccompImage> {
    let mut img = SeccompImage::default();
    for &(tid, ns_tid, mode) in threads {
        if mode != 0 && !crate::seize::seccomp_suspended() {
            return Err(Error::Unsupported {
                pid: ns_pid,
                what: format!("seccomp mode {mode} of thread {ns_tid}"),
                detail: "the kernel refused to suspend seccomp for stasis (PTRACE_O_SUSPEND_SECCOMP; feature: ptrace-suspend-seccomp)".into(),
            });
        }
        match mode {
            0 => continue,
            1 => {
                img.threads.push(ThreadSeccomp {
                    tid: ns_tid,
                    mode,
                    chain: Vec::new(),
                });
                continue;
            }
            2 => {}
            m => {
                return Err(Error::Unsupported {
                    pid: ns_pid,
                    what: format!("seccomp mode {m} of thread {ns_tid}"),
                    detail: "unknown mode".into(),
                })
            }
        }
        let mut chain = Vec::new();
        for index in 0.. {
            let prog = sys::ptrace::seccomp_get_filter(tid, index).map_err(|e| {
                perr(
                    pid,
                    format!("reading seccomp filter {index} of thread {ns_tid}: {e}"),
                )
            })?;
            let Some(prog) = prog else { break };
            if chain.len() >= MAX_CHAIN {
                return Err(perr(
                    pid,
                    format!("thread {ns_tid}: too many seccomp filters"),
                ));
            }
            let program: Vec<u8> = prog
                .iter()
                .flat_map(|i| {
                    let mut b = [0u8; 8];
                    b[0..2].copy_from_slice(&i.code.to_le_bytes());
                    b[2] = i.jt;
                    b[3] = i.jf;
                    b[4..8].copy_from_slice(&i.k.to_le_bytes());
                    b
                })
                .collect();
            let log = filter_flags(tid, index)? & SECCOMP_FILTER_FLAG_LOG != 0;
            let f = SeccompFilter { program, log };
            let idx = match img.filters.iter().position(|g| *g == f) {
                Some(i) => i,
                None => {
                    img.filters.push(f);
                    img.filters.len() - 1
                }
            };
            chain.push(idx as u32);
        }
        img.threads.push(ThreadSeccomp {
            tid: ns_tid,
            mode,
            chain,
        });
    }
    Ok(img)
}

pub fn validate(pid: i32, img: &SeccompImage, tids: &[i32]) -> Result<()> {
    let bad = |what: String| Error::Other(format!("image of process {pid}: seccomp: {what}"));
    for (i, f) in img.filters.iter().enumerate() {
        let n = f.program.len() / 8;
        if f.program.len() % 8 != 0 || n == 0 || n > MAX_INSNS {
            return Err(bad(format!("filter {i} of {} bytes", f.program.len())));
        }
    }
    let mut seen = Vec::new();
    for t in &img.threads {
        let ok = tids.contains(&t.tid)
            && !seen.contains(&t.tid)
            && match t.mode {
                1 => t.chain.is_empty(),
                2 => {
                    !t.chain.is_empty()
                        && t.chain.len() <= MAX_CHAIN
                        && t.chain.iter().all(|&i| (i as usize) < img.filters.len())
                }
                _ => false,
            };
        if !ok {
            return Err(bad(format!("thread {} (mode {})", t.tid, t.mode)));
        }
        seen.push(t.tid);
    }
    Ok(())
}

/// The chain every thread of the process starts with (`all_tids` lists them).
pub fn shared_prefix(img: &SeccompImage, all_tids: &[i32]) -> Vec<u32> {
    let mut chains = Vec::new();
    for tid in all_tids {
        match img.threads.iter().find(|t| t.tid == *tid) {
            Some(t) if t.mode == 2 => chains.push(&t.chain),
            _ => return Vec::new(),
        }
    }
    let Some(first) = chains.first() else {
        return Vec::new();
    };
    let mut n = first.len();
    for c in &chains[1..] {
        n = n.min(
            c.iter()
                .zip(first.iter())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    first[..n].to_vec()
}

/// Installs `filters` (indexes, oldest first) in the thread `r` drives.
/// `scratch` is task memory of `scratch_len` bytes.
pub fn install(
    r: &mut Remote,
    img: &SeccompImage,
    filters: &[u32],
    tsync: bool,
    scratch: u64,
    scratch_len: u64,
) -> Result<()> {
    for &i in filters {
        let f = &img.filters[i as usize];
        let need = 16 + f.program.len() as u64;
        // A program larger than the scratch area gets a mapping of its own,
        // wherever the kernel finds room in the rebuilt address space.
        let (at, own) = if need <= scratch_len {
            (scratch, None)
        } else {
            let len = need.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            let a = r.call(
                "mmap(seccomp program)",
                libc::SYS_mmap,
                [
                    0,
                    len,
                    (libc::PROT_READ | libc::PROT_WRITE) as u64,
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                    u64::MAX,
                    0,
                ],
            )?;
            (a, Some(len))
        };
        let mut fprog = [0u8; 16];
        fprog[0..2].copy_from_slice(&((f.program.len() / 8) as u16).to_le_bytes());
        fprog[8..16].copy_from_slice(&(at + 16).to_le_bytes());
        r.write_mem(at, &fprog)?;
        r.write_mem(at + 16, &f.program)?;
        let mut flags = 0;
        if tsync {
            flags |= SECCOMP_FILTER_FLAG_TSYNC;
        }
        if f.log {
            flags |= SECCOMP_FILTER_FLAG_LOG;
        }
        let rc = r.syscall_raw(
            libc::SYS_seccomp,
            [SECCOMP_SET_MODE_FILTER, flags, at, 0, 0, 0],
        );
        if let Some(len) = own {
            r.call(
                "munmap(seccomp program)",
                libc::SYS_munmap,
                [at, len, 0, 0, 0, 0],
            )?;
        }
        let rc = rc?;
        if rc != 0 {
            let why = if rc > 0 {
                format!("thread {rc} could not be synchronised")
            } else {
                std::io::Error::from_raw_os_error((-rc) as i32).to_string()
            };
            return Err(perr(r.tid, format!("installing seccomp filter {i}: {why}")));
        }
    }
    Ok(())
}

/// The rest of thread `tid`'s seccomp state once the shared prefix of
/// `prefix_len` filters is in: its own filters, then strict mode.
pub fn restore_thread(
    r: &mut Remote,
    img: &SeccompImage,
    tid: i32,
    prefix_len: usize,
    scratch: u64,
    scratch_len: u64,
) -> Result<()> {
    let Some(t) = img.threads.iter().find(|t| t.tid == tid) else {
        return Ok(());
    };
    if t.mode == 2 && t.chain.len() > prefix_len {
        install(r, img, &t.chain[prefix_len..], false, scratch, scratch_len)?;
    }
    if t.mode == 1 {
        r.call(
            "seccomp(SECCOMP_SET_MODE_STRICT)",
            libc::SYS_seccomp,
            [SECCOMP_SET_MODE_STRICT, 0, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tid: i32, mode: u32, chain: &[u32]) -> ThreadSeccomp {
        ThreadSeccomp {
            tid,
            mode,
            chain: chain.to_vec(),
        }
    }

    #[test]
    fn prefix() {
        let img = SeccompImage {
            filters: Vec::new(),
            threads: vec![t(2, 2, &[0, 1]), t(3, 2, &[0, 1, 2]), t(4, 2, &[0, 3])],
        };
        assert_eq!(shared_prefix(&img, &[2, 3, 4]), vec![0]);
        assert_eq!(shared_prefix(&img, &[2, 3]), vec![0, 1]);
        // A thread without filters: nothing is shared.
        assert_eq!(shared_prefix(&img, &[2, 3, 5]), Vec::<u32>::new());
        let strict = SeccompImage {
            filters: Vec::new(),
            threads: vec![t(2, 1, &[])],
        };
        assert_eq!(shared_prefix(&strict, &[2]), Vec::<u32>::new());
    }
}
