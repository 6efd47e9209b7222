//! Scheduling and OOM attributes: each thread's scheduling policy, priority,
//! nice value and flags (`sched_getattr`), and the process's
//! `oom_score_adj`. Both are read and set from outside, by host TID, with no
//! syscall injected: the dump reads them while the tree is stopped; the
//! restore sets them once the threads exist, before anything runs.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `struct sched_attr` (include/uapi/linux/sched/types.h), version 1 (56
/// bytes: with the utilization clamps).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
    sched_util_min: u32,
    sched_util_max: u32,
}

const SCHED_OTHER: u32 = 0;
const SCHED_FIFO: u32 = 1;
const SCHED_RR: u32 = 2;
const SCHED_BATCH: u32 = 3;
const SCHED_IDLE: u32 = 5;
const SCHED_DEADLINE: u32 = 6;
/// The sched_flags a restore puts back: SCHED_FLAG_RESET_ON_FORK,
/// SCHED_FLAG_RECLAIM, SCHED_FLAG_DL_OVERRUN.
const FLAGS_KEPT: u64 = 0x1 | 0x2 | 0x4;

/// One thread's scheduling attributes, saved only where they differ from a
/// new thread's (SCHED_OTHER, nice 0, no flags).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ThreadSched {
    /// TID in the sandbox.
    pub tid: i32,
    pub policy: u32,
    #[serde(default)]
    pub flags: u64,
    #[serde(default)]
    pub nice: i32,
    #[serde(default)]
    pub priority: u32,
    /// SCHED_DEADLINE parameters (ns).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub runtime: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deadline: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub period: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The scheduling and OOM attributes of a process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SchedImage {
    /// Threads whose attributes are not a new thread's.
    #[serde(default)]
    pub threads: Vec<ThreadSched>,
    /// /proc/PID/oom_score_adj.
    #[serde(default)]
    pub oom_score_adj: i32,
}

fn getattr(tid: i32) -> std::io::Result<SchedAttr> {
    let mut a = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        ..Default::default()
    };
    // SAFETY: sched_getattr writes at most `size` bytes into `a`, which is
    // that large; the other arguments are plain integers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &mut a as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as u32,
            0u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(a)
}

fn setattr(tid: i32, a: &SchedAttr) -> std::io::Result<()> {
    // SAFETY: sched_setattr reads `a.size` bytes from `a`, a valid struct of
    // that size.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, tid, a as *const SchedAttr, 0u32) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the attributes of process `pid` whose threads are `tids` (host
/// TID, TID in the sandbox).
pub fn collect(pid: i32, tids: &[(i32, i32)]) -> Result<SchedImage> {
    let mut img = SchedImage::default();
    for &(tid, ns_tid) in tids {
        let a = getattr(tid).map_err(|e| Error::Process {
            pid,
            reason: format!("sched_getattr of thread {ns_tid}: {e}"),
        })?;
        let flags = a.sched_flags & FLAGS_KEPT;
        if a.sched_policy == SCHED_OTHER && a.sched_nice == 0 && flags == 0 {
            continue;
        }
        img.threads.push(ThreadSched {
            tid: ns_tid,
            policy: a.sched_policy,
            flags,
            nice: a.sched_nice,
            priority: a.sched_priority,
            runtime: a.sched_runtime,
            deadline: a.sched_deadline,
            period: a.sched_period,
        });
    }
    let adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).map_err(|e| {
        Error::Process {
            pid,
            reason: format!("reading oom_score_adj: {e}"),
        }
    })?;
    img.oom_score_adj = adj.trim().parse().map_err(|e| Error::Process {
        pid,
        reason: format!("parsing oom_score_adj {adj:?}: {e}"),
    })?;
    Ok(img)
}

/// Checks what a restore will pass to the kernel.
pub fn validate(pid: i32, img: &SchedImage, tids: &[i32]) -> Result<()> {
    let bad = |what: String| Error::BadImage {
        path: format!("proc-{pid}.json").into(),
        reason: format!("process {pid}: {what}"),
    };
    if !(-1000..=1000).contains(&img.oom_score_adj) {
        return Err(bad(format!("oom_score_adj {}", img.oom_score_adj)));
    }
    if img.threads.len() > tids.len() {
        return Err(bad(format!(
            "{} scheduling records for {} threads",
            img.threads.len(),
            tids.len()
        )));
    }
    for t in &img.threads {
        if !tids.contains(&t.tid) {
            return Err(bad(format!(
                "scheduling attributes of thread {}, which it does not have",
                t.tid
            )));
        }
        let ok = match t.policy {
            SCHED_OTHER | SCHED_BATCH | SCHED_IDLE => t.priority == 0,
            SCHED_FIFO | SCHED_RR => (1..=99).contains(&t.priority),
            SCHED_DEADLINE => t.runtime <= t.deadline && (t.period == 0 || t.deadline <= t.period),
            _ => false,
        };
        if !ok || !(-20..=19).contains(&t.nice) || t.flags & !FLAGS_KEPT != 0 {
            return Err(bad(format!(
                "thread {}: scheduling policy {} priority {} nice {} flags {:#x}",
                t.tid, t.policy, t.priority, t.nice, t.flags
            )));
        }
    }
    Ok(())
}

/// Puts the attributes back on process `pid` (host PID) whose threads are
/// `hosts` (TID in the sandbox, host TID).
pub fn restore(pid: i32, ns_pid: i32, img: &SchedImage, hosts: &[(i32, i32)]) -> Result<()> {
    for t in &img.threads {
        let Some(&(_, host)) = hosts.iter().find(|(ns, _)| *ns == t.tid) else {
            continue;
        };
        let a = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            sched_policy: t.policy,
            sched_flags: t.flags,
            sched_nice: t.nice,
            sched_priority: t.priority,
            sched_runtime: t.runtime,
            sched_deadline: t.deadline,
            sched_period: t.period,
            ..Default::default()
        };
        setattr(host, &a).map_err(|e| Error::Process {
            pid: ns_pid,
            reason: format!(
                "setting thread {}'s scheduling policy {} (priority {}, nice {}): {e}",
                t.tid, t.policy, t.priority, t.nice
            ),
        })?;
    }
    let path = format!("/proc/{pid}/oom_score_adj");
    let now = std::fs::read_to_string(&path).unwrap_or_default();
    if now.trim().parse::<i32>().ok() != Some(img.oom_score_adj) {
        std::fs::write(&path, img.oom_score_adj.to_string()).map_err(|e| Error::Process {
            pid: ns_pid,
            reason: format!("setting oom_score_adj to {}: {e}", img.oom_score_adj),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_is_the_kernels_size() {
        assert_eq!(std::mem::size_of::<SchedAttr>(), 56);
    }

    #[test]
    fn own_thread_reads_and_validation() {
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        let img = collect(std::process::id() as i32, &[(tid, 7)]).unwrap();
        assert!(validate(2, &img, &[7]).is_ok());
        let mut bad = img.clone();
        bad.threads.push(ThreadSched {
            tid: 8,
            policy: SCHED_FIFO,
            flags: 0,
            nice: 0,
            priority: 5,
            runtime: 0,
            deadline: 0,
            period: 0,
        });
        let e = validate(2, &bad, &[7]).unwrap_err().to_string();
        assert!(e.contains("thread 8"), "{e}");
        bad.threads[0].tid = 7;
        bad.threads[0].priority = 0;
        assert!(validate(2, &bad, &[7]).is_err());
        bad.threads.clear();
        bad.oom_score_adj = 5000;
        assert!(validate(2, &bad, &[7]).is_err());
    }
}
