//! Signals: handlers with their flags, restorers and masks (process-wide),
//! blocked masks, pending signals (per thread and shared) and the alternate
//! signal stack (per thread).

use crate::error::Result;
use crate::image::{AltStack, SigAction, SigInfo};
use crate::remote::{Remote, Staged};

const NSIG: i32 = 64;

/// Handlers of every signal that is caught or ignored, and of SIGCHLD (whose
/// flags matter even at SIG_DFL). The rest are SIG_DFL.
pub fn collect_actions(status: &procfs::process::Status, r: &mut Remote) -> Result<Vec<SigAction>> {
    let interesting = status.sigcgt | status.sigign | (1 << (libc::SIGCHLD - 1));
    let scratch = r.scratch(crate::remote::SMALL_SCRATCH)?;
    let mut out = Vec::new();
    for signo in 1..=NSIG {
        if interesting & (1u64 << (signo - 1)) == 0
            || signo == libc::SIGKILL
            || signo == libc::SIGSTOP
        {
            continue;
        }
        r.call(
            &format!("rt_sigaction({signo})"),
            libc::SYS_rt_sigaction,
            [signo as u64, 0, scratch, 8, 0, 0],
        )?;
        let b = r.read_mem(scratch, 32)?;
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        out.push(SigAction {
            signo,
            handler: w(0),
            flags: w(1),
            restorer: w(2),
            mask: w(3),
        });
    }
    Ok(out)
}

/// Stages every signal's action: the recorded ones, SIG_DFL for the rest
/// (the restorer's own handlers must not survive). Signals at SIG_DFL in
/// both the task and the image are left alone.
pub fn stage_actions(st: &mut Staged, r: &mut Remote, actions: &[SigAction]) -> Result<()> {
    let status = procfs::process::Process::new(r.tid)
        .and_then(|p| p.status())
        .map_err(|e| crate::error::Error::Process {
            pid: r.tid,
            reason: format!("reading status: {e}"),
        })?;
    let current = status.sigcgt | status.sigign;
    for signo in 1..=NSIG {
        if signo == libc::SIGKILL || signo == libc::SIGSTOP {
            continue;
        }
        let a = actions.iter().find(|a| a.signo == signo);
        let target_default = a.is_none_or(|a| a.handler == 0 && a.flags == 0 && a.mask == 0);
        if target_default && current & (1u64 << (signo - 1)) == 0 {
            continue;
        }
        let words = match a {
            Some(a) => [a.handler, a.flags, a.restorer, a.mask],
            None => [0, 0, 0, 0],
        };
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let at = st.put(r, &bytes)?;
        st.call(
            format!("rt_sigaction({signo})"),
            libc::SYS_rt_sigaction,
            [signo as u64, at, 0, 8, 0, 0],
        );
    }
    Ok(())
}

/// Queued signals of a thread (`shared` = false) or of its process.
pub fn peek_pending(tid: i32, shared: bool) -> Result<Vec<SigInfo>> {
    let infos = sys::ptrace::peek_siginfo(tid, shared)?;
    Ok(infos
        .iter()
        .map(|si| {
            // SAFETY: siginfo_t is a plain 128-byte C struct; we copy its bytes.
            let raw = unsafe {
                std::slice::from_raw_parts(
                    si as *const libc::siginfo_t as *const u8,
                    std::mem::size_of::<libc::siginfo_t>(),
                )
            }
            .to_vec();
            SigInfo {
                signo: si.si_signo,
                raw,
            }
        })
        .collect())
}

/// A siginfo as kill(2) from the kernel would queue it (SI_KERNEL), for a
/// signal that arrived while the tree was being stopped.
pub fn synthetic_siginfo(signo: i32) -> SigInfo {
    let mut raw = vec![0u8; 128];
    raw[0..4].copy_from_slice(&signo.to_le_bytes());
    raw[8..12].copy_from_slice(&0x80i32.to_le_bytes());
    SigInfo { signo, raw }
}

/// Stages the queueing of signals in the task: to the thread, or to the
/// process.
pub fn stage_pending(
    st: &mut Staged,
    r: &mut Remote,
    tgid: i32,
    tid: i32,
    infos: &[SigInfo],
    shared: bool,
) -> Result<()> {
    for si in infos {
        if si.raw.len() != 128 || !(1..=NSIG).contains(&si.signo) {
            return Err(crate::error::Error::Other(format!(
                "image: bad pending signal {} for thread {tid}",
                si.signo
            )));
        }
        let at = st.put(r, &si.raw)?;
        if shared {
            st.call(
                format!("rt_sigqueueinfo({})", si.signo),
                libc::SYS_rt_sigqueueinfo,
                [tgid as u64, si.signo as u64, at, 0, 0, 0],
            );
        } else {
            st.call(
                format!("rt_tgsigqueueinfo({})", si.signo),
                libc::SYS_rt_tgsigqueueinfo,
                [tgid as u64, tid as u64, si.signo as u64, at, 0, 0],
            );
        }
    }
    Ok(())
}

/// A `stack_t` (24 bytes) as sigaltstack wrote it.
pub fn altstack_from(b: &[u8]) -> AltStack {
    AltStack {
        sp: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
        flags: i32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
        size: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
    }
}

/// Stages the thread's alternate signal stack.
pub fn stage_altstack(st: &mut Staged, r: &mut Remote, a: &AltStack) -> Result<()> {
    let mut b = vec![0u8; 24];
    let flags = if a.flags & libc::SS_DISABLE != 0 || a.size == 0 {
        libc::SS_DISABLE
    } else {
        // SS_ONSTACK is a report, not a request; SS_AUTODISARM stays.
        a.flags & !libc::SS_ONSTACK
    };
    b[0..8].copy_from_slice(&a.sp.to_le_bytes());
    b[8..12].copy_from_slice(&flags.to_le_bytes());
    b[16..24].copy_from_slice(&a.size.to_le_bytes());
    let at = st.put(r, &b)?;
    st.call("sigaltstack", libc::SYS_sigaltstack, [at, 0, 0, 0, 0, 0]);
    Ok(())
}
