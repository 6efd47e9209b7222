//! Per-thread state: registers and the full xstate, how a thread stopped in a
//! syscall resumes, rseq, clear_child_tid and the robust futex list.

use crate::error::{Error, Result};
use crate::image::{limits, Creds, Regs, Rseq, SyscallState, ThreadImage};
use crate::remote::{BatchCall, BatchSite, Remote, Staged};
use crate::signals;

const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;

/// The registers a thread stopped inside a syscall resumes with, as the kernel
/// would set them after a signal without a handler: the syscall restarts
/// (rip back over the 2-byte `syscall`, rax = the syscall number). A syscall
/// that restarts through the kernel's restart block (nanosleep, poll with a
/// timeout, ...) restarts through restart_syscall in the same task, and
/// returns EINTR in a restored task, where that block is gone; that is what
/// a handled signal gives too.
pub fn resume_regs(regs: &Regs, same_task: bool) -> (Regs, Option<SyscallState>) {
    let mut r = *regs;
    if (regs.orig_rax as i64) < 0 {
        return (r, None);
    }
    let nr = regs.orig_rax as i64;
    let action = match regs.rax as i64 {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            r.rax = regs.orig_rax;
            r.rip -= 2;
            "restart"
        }
        ERESTART_RESTARTBLOCK if same_task => {
            r.rax = libc::SYS_restart_syscall as u64;
            r.rip -= 2;
            "restart_block"
        }
        ERESTART_RESTARTBLOCK => {
            r.rax = (-libc::EINTR) as i64 as u64;
            "eintr"
        }
        _ => "none",
    };
    r.orig_rax = u64::MAX;
    (
        r,
        Some(SyscallState {
            nr,
            action: action.into(),
        }),
    )
}

/// A seized, stopped thread to collect.
pub struct ThreadRef {
    /// Host TID.
    pub tid: i32,
    /// TID in the sandbox.
    pub ns_tid: i32,
    /// The signal its seizing took (given back as pending).
    pub deferred: Option<i32>,
    /// Its credentials from its status (securebits still to be read).
    pub creds: Creds,
}

/// Collects the threads `ts` of one process, `rs[i]` controlling `ts[i]`
/// (scratch memory available). The syscalls run inside them (three per
/// thread: alternate stack, clear_child_tid, securebits) run in every thread
/// at once, one call after the other: a call costs two ptrace stops, which
/// overlap across the threads instead of adding up.
pub fn collect_all(ts: Vec<ThreadRef>, rs: &mut [Remote]) -> Result<Vec<ThreadImage>> {
    // Each thread's scratch: the stack_t at 0, the clear_child_tid at 32.
    let scratch: Vec<u64> = rs
        .iter_mut()
        .map(|r| r.scratch(crate::remote::SMALL_SCRATCH))
        .collect::<Result<_>>()?;
    Remote::call_all(rs, "sigaltstack", libc::SYS_sigaltstack, |i| {
        [0, scratch[i], 0, 0, 0, 0]
    })?;
    Remote::call_all(rs, "prctl(PR_GET_TID_ADDRESS)", libc::SYS_prctl, |i| {
        [libc::PR_GET_TID_ADDRESS as u64, scratch[i] + 32, 0, 0, 0, 0]
    })?;
    let securebits = Remote::call_all(rs, "prctl(PR_GET_SECUREBITS)", libc::SYS_prctl, |_| {
        [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0]
    })?;
    let mut out = Vec::with_capacity(ts.len());
    for (i, t) in ts.into_iter().enumerate() {
        let r = &rs[i];
        let b = r.read_mem(scratch[i], 40)?;
        let mut creds = t.creds;
        creds.securebits = securebits[i] as u32;
        let regs = Regs::from(&r.saved_regs());
        let (regs, in_syscall) = resume_regs(&regs, false);
        let mut pending = signals::peek_pending(t.tid, false)?;
        if let Some(sig) = t.deferred {
            pending.push(signals::synthetic_siginfo(sig));
        }
        let rseq = match sys::ptrace::get_rseq_config(t.tid) {
            Ok(c) if c.rseq_abi_pointer != 0 => Some(Rseq {
                addr: c.rseq_abi_pointer,
                len: c.rseq_abi_size,
                signature: c.signature,
            }),
            _ => None,
        };
        let (robust_list, robust_list_len) = robust_list(t.tid)?;
        out.push(ThreadImage {
            tid: t.ns_tid,
            regs,
            xstate: sys::ptrace::get_xstate(t.tid)?,
            sigmask: r.saved_sigmask(),
            pending,
            altstack: signals::altstack_from(&b[..24]),
            rseq,
            clear_child_tid: u64::from_le_bytes(b[32..40].try_into().expect("8 bytes")),
            robust_list,
            robust_list_len,
            in_syscall,
            creds: Some(creds),
        });
    }
    Ok(out)
}

fn robust_list(tid: i32) -> Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: u64 = 0;
    // SAFETY: get_robust_list writes one pointer and one size_t into the two
    // locals whose addresses we pass.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut u64,
        )
    };
    if rc != 0 {
        return Err(Error::Process {
            pid: tid,
            reason: format!("get_robust_list: {}", std::io::Error::last_os_error()),
        });
    }
    Ok((head, len))
}

pub fn validate(pid: i32, t: &ThreadImage) -> Result<()> {
    if t.xstate.len() > limits::MAX_XSTATE {
        return Err(Error::Other(format!(
            "image of process {pid}: xstate of {} bytes",
            t.xstate.len()
        )));
    }
    // NGROUPS_MAX
    if let Some(c) = &t.creds {
        if c.groups.len() > 65536 {
            return Err(Error::Other(format!(
                "image of process {pid}: thread {} has {} supplementary groups",
                t.tid,
                c.groups.len()
            )));
        }
    }
    Ok(())
}

/// The call that drops the restorer's own rseq registration, to run before
/// its memory goes away (the kernel would write into the unmapped area on
/// the way to user space); None when the thread has none.
pub fn unregister_rseq(r: &Remote) -> Option<BatchCall> {
    let c = sys::ptrace::get_rseq_config(r.tid).ok()?;
    (c.rseq_abi_pointer != 0).then(|| BatchCall {
        what: "rseq(unregister)".into(),
        nr: libc::SYS_rseq,
        args: [
            c.rseq_abi_pointer,
            c.rseq_abi_size as u64,
            1,
            c.signature as u64,
            0,
            0,
        ],
        may_fail: false,
    })
}

/// Stages the per-thread kernel registrations (to run in the thread itself):
/// alternate signal stack, clear_child_tid, robust list, rseq.
pub fn stage_registrations(st: &mut Staged, r: &mut Remote, t: &ThreadImage) -> Result<()> {
    signals::stage_altstack(st, r, &t.altstack)?;
    st.call(
        "set_tid_address",
        libc::SYS_set_tid_address,
        [t.clear_child_tid, 0, 0, 0, 0, 0],
    );
    if t.robust_list != 0 {
        st.call(
            "set_robust_list",
            libc::SYS_set_robust_list,
            [t.robust_list, t.robust_list_len, 0, 0, 0, 0],
        );
    }
    if let Some(rs) = &t.rseq {
        st.call(
            format!("rseq registration at {:#x}", rs.addr),
            libc::SYS_rseq,
            [rs.addr, rs.len as u64, 0, rs.signature as u64, 0, 0],
        );
    }
    Ok(())
}

/// Final step for a thread: signal mask, xstate and registers. The thread
/// runs on from there once detached.
pub fn restore_cpu(tid: i32, t: &ThreadImage) -> Result<()> {
    sys::ptrace::set_xstate(tid, &t.xstate)?;
    sys::ptrace::set_regs(tid, &libc::user_regs_struct::from(&t.regs))?;
    sys::ptrace::set_sigmask(tid, t.sigmask)?;
    Ok(())
}

const CLONE_THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

/// Bytes of a `struct clone_args` up to `set_tid_size` (CLONE_ARGS_SIZE_VER1 + 8).
const CLONE_ARGS_LEN: usize = 88;

/// Creates threads `ns_tids` (TIDs in the sandbox) in the task `r` drives,
/// at a restore trampoline: clone3(set_tid) calls run as batches at `site`,
/// one ptrace stop per thread (its clone event) instead of an injected call
/// each. The new threads are auto-attached (PTRACE_O_TRACECLONE) and wait in
/// their first ptrace stop, sharing the creator's registers until they are
/// given their own. Returns their host TIDs, in the order of `ns_tids`.
pub fn clone_threads(
    r: &mut Remote,
    pid: i32,
    ns_tids: &[i32],
    site: BatchSite,
) -> Result<Vec<i32>> {
    if ns_tids.is_empty() {
        return Ok(Vec::new());
    }
    sys::ptrace::set_options(r.tid, crate::seize::options() | libc::PTRACE_O_TRACECLONE)?;
    r.take_children();
    let mut st = Staged::new(site);
    for &ns_tid in ns_tids {
        let at = st.put_with(r, CLONE_ARGS_LEN + 8, |at| {
            let mut args = [0u64; 11];
            args[0] = CLONE_THREAD_FLAGS;
            args[8] = at + CLONE_ARGS_LEN as u64;
            args[9] = 1;
            let mut bytes: Vec<u8> = args.iter().flat_map(|w| w.to_le_bytes()).collect();
            bytes.extend_from_slice(&(ns_tid as i64).to_le_bytes());
            bytes
        })?;
        st.call(
            format!("clone3 of thread {ns_tid}"),
            libc::SYS_clone3,
            [at, CLONE_ARGS_LEN as u64, 0, 0, 0, 0],
        );
    }
    let got = st.finish(r);
    // Every thread created, even by a batch that failed later on, is
    // waited for: none is left in its first stop unseen.
    let created = r.take_children();
    for &host in &created {
        wait_new_thread(pid, host)?;
    }
    let got = got?;
    let mut hosts = Vec::with_capacity(ns_tids.len());
    for (k, (&ns_tid, &g)) in ns_tids.iter().zip(&got).enumerate() {
        if g as i32 != ns_tid {
            return Err(Error::Process {
                pid,
                reason: format!("thread {ns_tid} was created as {g}"),
            });
        }
        // Its host TID, from the clone event; else found by its TID in the
        // namespace (a search of every thread).
        let host = if created.len() == ns_tids.len() {
            created[k]
        } else {
            let t = find_thread(pid, ns_tid)?;
            if !created.contains(&t) {
                wait_new_thread(pid, t)?;
            }
            t
        };
        hosts.push(host);
    }
    Ok(hosts)
}

/// Waits for a new thread's first ptrace stop.
fn wait_new_thread(pid: i32, host: i32) -> Result<()> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    match waitpid(nix::unistd::Pid::from_raw(host), Some(WaitPidFlag::__WALL)) {
        Ok(WaitStatus::PtraceEvent(..)) | Ok(WaitStatus::Stopped(..)) => Ok(()),
        Ok(other) => Err(Error::Process {
            pid,
            reason: format!("new thread {host}: unexpected wait status {other:?}"),
        }),
        Err(e) => Err(Error::Process {
            pid,
            reason: format!("waiting for new thread {host}: {e}"),
        }),
    }
}

/// The host TID of thread `ns_tid` (its TID in the sandbox) of process `pid`.
fn find_thread(pid: i32, ns_tid: i32) -> Result<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| Error::Process {
            pid,
            reason: format!("listing threads: {e}"),
        })?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|&t| {
            procfs::process::Process::new(t)
                .and_then(|p| p.status())
                .ok()
                .and_then(|s| s.nspid.and_then(|v| v.last().copied()))
                == Some(ns_tid)
        })
        .ok_or_else(|| Error::Process {
            pid,
            reason: format!("thread {ns_tid} not found after its clone"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_rules() {
        let base = Regs {
            orig_rax: 35,
            rip: 0x1002,
            ..Default::default()
        };
        let r = Regs {
            rax: ERESTARTNOHAND as u64,
            ..base
        };
        let (f, s) = resume_regs(&r, false);
        assert_eq!((f.rax, f.rip, f.orig_rax), (35, 0x1000, u64::MAX));
        assert_eq!(s.unwrap().action, "restart");

        let r = Regs {
            rax: ERESTART_RESTARTBLOCK as u64,
            ..base
        };
        let (f, _) = resume_regs(&r, false);
        assert_eq!(f.rax as i64, -(libc::EINTR as i64));
        assert_eq!(f.rip, 0x1002);
        let (f, _) = resume_regs(&r, true);
        assert_eq!(f.rax, libc::SYS_restart_syscall as u64);
        assert_eq!(f.rip, 0x1000);

        let r = Regs {
            orig_rax: u64::MAX,
            rax: 7,
            ..base
        };
        assert_eq!(resume_regs(&r, false), (r, None));
    }
}
