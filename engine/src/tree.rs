//! The process tree: PIDs, parents, process groups, sessions and zombies.
//!
//! Restore forks the tree inside the new sandbox's init: init forks the roots
//! with clone3(set_tid = [pid]) and every restored process forks its own
//! children the same way, so PIDs, parents, getppid() and wait() are as they
//! were. A session leader calls setsid() and a group leader setpgid() before
//! forking, so members inherit both. Each process then puts its fds in place,
//! reports on the ready pipe, and waits to be seized and turned into the
//! dumped process from outside.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::image::ProcessEntry;

/// Checks that the tree can be rebuilt by forking alone: every process's
/// session and group is its own or its parent's.
pub fn check_rebuildable(procs: &[ProcessEntry]) -> Result<()> {
    let by_pid: BTreeMap<i32, &ProcessEntry> = procs.iter().map(|p| (p.pid, p)).collect();
    for p in procs {
        let parent = by_pid.get(&p.ppid);
        if p.ppid != 1 && parent.is_none() {
            return Err(Error::Other(format!(
                "process {}: parent {} is not in the tree",
                p.pid, p.ppid
            )));
        }
        let (psid, ppgid) = parent.map(|q| (q.sid, q.pgid)).unwrap_or((0, 0));
        let sid_ok = p.sid == p.pid || (parent.is_some() && p.sid == psid);
        let pgid_ok = p.pgid == p.pid || (parent.is_some() && p.pgid == ppgid);
        if p.zombie.is_none() && !(sid_ok && pgid_ok) {
            return Err(Error::Unsupported {
                pid: p.pid,
                what:
                    "a process whose session or process group is neither its own nor its parent's"
                        .into(),
                detail: format!("sid {}, pgid {}, parent {}", p.sid, p.pgid, p.ppid),
            });
        }
    }
    Ok(())
}

/// What one process does between its fork and being seized.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub zombie: Option<i32>,
    /// Indexes of the children in the plan list.
    pub children: Vec<usize>,
    /// (fd number in the process, fd holding the description, close-on-exec).
    pub fds: Vec<(i32, i32, bool)>,
}

/// A record on the ready pipe: the process's PID and 0, or an errno.
pub const READY_RECORD: usize = 8;

fn report(ready_fd: i32, pid: i32, err: i32) {
    let mut rec = [0u8; READY_RECORD];
    rec[..4].copy_from_slice(&pid.to_le_bytes());
    rec[4..].copy_from_slice(&err.to_le_bytes());
    // SAFETY: writing 8 bytes of our buffer to the pipe (atomic below PIPE_BUF).
    unsafe { libc::write(ready_fd, rec.as_ptr().cast(), READY_RECORD) };
}

/// Forks plan `idx` with its PID. Returns the child's PID in the parent; the
/// child never returns.
fn spawn(plans: &[Plan], idx: usize, ready_fd: i32) -> std::result::Result<i32, i32> {
    let p = &plans[idx];
    // SAFETY: the caller is single-threaded (the sandbox's init or a restored
    // process running this code); the child only runs `child_main`.
    let pid = unsafe { sys::clone3::clone3(0, libc::SIGCHLD as u64, &[p.pid]) }
        .map_err(|e| e.errno as i32)?;
    if pid == 0 {
        let err = child_main(plans, idx, ready_fd);
        report(ready_fd, p.pid, err);
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(1) };
    }
    Ok(pid)
}

/// What a clone3(set_tid) errno means for the PID asked for.
pub fn pid_hint(errno: i32) -> &'static str {
    match errno {
        libc::EEXIST => " (the PID is taken in the sandbox's PID namespace)",
        libc::EINVAL => " (the PID is beyond the PID namespace's pid_max)",
        _ => "",
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Body of a restored process until it is seized. Returns an errno on failure.
fn child_main(plans: &[Plan], idx: usize, ready_fd: i32) -> i32 {
    let p = &plans[idx];
    if let Some(status) = p.zombie {
        become_zombie(status);
    }
    // SAFETY: setsid/setpgid on ourselves.
    unsafe {
        if p.sid == p.pid {
            if libc::setsid() < 0 {
                return errno();
            }
        } else if p.pgid == p.pid && libc::setpgid(0, 0) < 0 {
            return errno();
        }
    }
    for &c in &p.children {
        if let Err(e) = spawn(plans, c, ready_fd) {
            return e;
        }
    }
    for &(target, src, cloexec) in &p.fds {
        let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
        // SAFETY: dup3 between fd numbers; no source is any process's target
        // (`files::FdPlan`), so none is overwritten before it is used.
        if unsafe { libc::dup3(src, target, flags) } < 0 {
            return errno();
        }
    }
    // Close everything else but the ready pipe.
    let mut keep: Vec<u32> = p.fds.iter().map(|f| f.0 as u32).collect();
    keep.push(ready_fd as u32);
    keep.sort_unstable();
    keep.dedup();
    let mut lo = 0u32;
    for &k in &keep {
        if k > lo {
            // SAFETY: close_range closes fds in [lo, k-1] of our own table.
            unsafe { libc::syscall(libc::SYS_close_range, lo, k - 1, 0) };
        }
        lo = k.saturating_add(1);
    }
    // SAFETY: as above, the rest of the table.
    unsafe { libc::syscall(libc::SYS_close_range, lo, u32::MAX, 0) };
    report(ready_fd, p.pid, 0);
    // SAFETY: closing our copy of the ready pipe; then wait to be seized.
    unsafe {
        libc::close(ready_fd);
        loop {
            libc::pause();
        }
    }
}

fn become_zombie(status: i32) -> ! {
    let termsig = status & 0x7f;
    // SAFETY: ending this process with the recorded status.
    unsafe {
        if termsig != 0 && termsig != 0x7f {
            libc::signal(termsig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, termsig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), termsig);
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        libc::_exit((status >> 8) & 0xff)
    }
}

/// Run in the sandbox's init: forks the roots (processes whose parent was
/// init). Returns their PIDs.
pub fn fork_roots(
    plans: &[Plan],
    roots: &[usize],
    ready_fd: i32,
) -> std::result::Result<Vec<i32>, String> {
    let mut out = Vec::new();
    for &r in roots {
        let pid = spawn(plans, r, ready_fd).map_err(|e| {
            format!(
                "forking process {} with its PID: {}{}",
                plans[r].pid,
                std::io::Error::from_raw_os_error(e),
                pid_hint(e)
            )
        })?;
        out.push(pid);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(pid: i32, ppid: i32, pgid: i32, sid: i32) -> ProcessEntry {
        ProcessEntry {
            pid,
            ppid,
            pgid,
            sid,
            zombie: None,
        }
    }

    #[test]
    fn rebuildable_trees() {
        check_rebuildable(&[e(2, 1, 2, 2), e(3, 2, 2, 2), e(4, 3, 4, 2), e(5, 4, 4, 2)]).unwrap();
        // A session joined from a sibling branch cannot be had by forking.
        assert!(check_rebuildable(&[e(2, 1, 2, 2), e(3, 1, 3, 2)]).is_err());
        assert!(check_rebuildable(&[e(2, 1, 2, 2), e(3, 2, 7, 2)]).is_err());
    }
}
