//! Process attributes: comm, personality, umask, cwd, root, no_new_privs,
//! dumpable, parent-death signal, rlimits, and credentials (uids, gids,
//! groups, capability sets). Credentials are put back last: everything else
//! is done while the task still runs as root with every capability.

use crate::error::{Error, Result};
use crate::image::{Core, Creds, Rlimit};
use crate::remote::{Remote, Staged};

fn perr(pid: i32, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Process {
        pid,
        reason: format!("{what}: {e}"),
    }
}

pub fn collect_core(
    pid: i32,
    status: &procfs::process::Status,
    r: &mut Remote,
) -> Result<(Core, Creds)> {
    let link = |name: &str| -> Result<String> {
        Ok(std::fs::read_link(format!("/proc/{pid}/{name}"))
            .map_err(|e| perr(pid, &format!("reading {name}"), e))?
            .to_string_lossy()
            .to_string())
    };
    let personality = std::fs::read_to_string(format!("/proc/{pid}/personality"))
        .map_err(|e| perr(pid, "reading personality", e))
        .and_then(|s| {
            u32::from_str_radix(s.trim(), 16).map_err(|e| perr(pid, "parsing personality", e))
        })?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_err(|e| perr(pid, "reading comm", e))?
        .trim_end_matches('\n')
        .to_string();
    let dumpable = r.call(
        "prctl(PR_GET_DUMPABLE)",
        libc::SYS_prctl,
        [libc::PR_GET_DUMPABLE as u64, 0, 0, 0, 0, 0],
    )? as i32;
    let scratch = r.scratch(crate::remote::SMALL_SCRATCH)?;
    r.call(
        "prctl(PR_GET_PDEATHSIG)",
        libc::SYS_prctl,
        [libc::PR_GET_PDEATHSIG as u64, scratch, 0, 0, 0, 0],
    )?;
    let pdeath_signal = i32::from_le_bytes(r.read_mem(scratch, 4)?.try_into().expect("4 bytes"));
    r.call(
        "prctl(PR_GET_CHILD_SUBREAPER)",
        libc::SYS_prctl,
        [libc::PR_GET_CHILD_SUBREAPER as u64, scratch, 0, 0, 0, 0],
    )?;
    let child_subreaper =
        i32::from_le_bytes(r.read_mem(scratch, 4)?.try_into().expect("4 bytes")) != 0;
    let cwd = link("cwd")?;
    let root = link("root")?;
    // The filters themselves are collected by `seccomp`.
    let seccomp_mode = status.seccomp.unwrap_or(0);
    if root != "/" {
        return Err(Error::Unsupported {
            pid,
            what: "a process with its own root directory (chroot)".into(),
            detail: root,
        });
    }
    let core = Core {
        comm,
        personality,
        umask: status.umask.unwrap_or(0o022),
        cwd,
        root,
        no_new_privs: status.nonewprivs.unwrap_or(0) != 0,
        dumpable,
        pdeath_signal,
        seccomp_mode,
        child_subreaper,
        stopped: None,
    };
    let mut creds = creds_of(status);
    creds.securebits = securebits(r)?;
    Ok((core, creds))
}

pub(crate) fn creds_of(s: &procfs::process::Status) -> Creds {
    Creds {
        uid: [s.ruid, s.euid, s.suid, s.fuid],
        gid: [s.rgid, s.egid, s.sgid, s.fgid],
        groups: s.groups.clone(),
        cap_inh: s.capinh,
        cap_prm: s.capprm,
        cap_eff: s.capeff,
        cap_bnd: s.capbnd.unwrap_or(u64::MAX),
        cap_amb: s.capamb.unwrap_or(0),
        securebits: 0,
    }
}

fn securebits(r: &mut Remote) -> Result<u32> {
    Ok(r.call(
        "prctl(PR_GET_SECUREBITS)",
        libc::SYS_prctl,
        [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0],
    )? as u32)
}

const RLIMITS: u32 = 16;

/// The rlimits of a process. prlimit from outside needs the same uids as
/// the target or CAP_SYS_RESOURCE (which root may lack: see the design
/// notes); /proc/PID/limits, readable by root, says the same.
pub fn collect_rlimits(pid: i32) -> Result<Vec<Rlimit>> {
    let mut out = Vec::new();
    for res in 0..RLIMITS {
        let mut old = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 with a null new limit only writes the old one into `old`.
        let rc = unsafe { libc::prlimit64(pid, res as _, std::ptr::null(), &mut old) };
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
            return rlimits_from_proc(pid);
        }
        if rc != 0 {
            return Err(perr(
                pid,
                &format!("prlimit({res})"),
                std::io::Error::last_os_error(),
            ));
        }
        out.push(Rlimit {
            resource: res,
            soft: old.rlim_cur,
            hard: old.rlim_max,
        });
    }
    Ok(out)
}

/// /proc/PID/limits: a header, then one row per resource in resource
/// order, the name in 25 columns, then the soft and the hard limit
/// ("unlimited" or a number).
fn rlimits_from_proc(pid: i32) -> Result<Vec<Rlimit>> {
    let path = format!("/proc/{pid}/limits");
    let text = std::fs::read_to_string(&path).map_err(|e| perr(pid, "reading limits", e))?;
    let bad = |line: &str| Error::Process {
        pid,
        reason: format!("{path}: unexpected line {line:?}"),
    };
    let value = |v: &str, line: &str| -> Result<u64> {
        if v == "unlimited" {
            Ok(libc::RLIM64_INFINITY)
        } else {
            v.parse().map_err(|_| bad(line))
        }
    };
    let mut out = Vec::new();
    for (res, line) in (0..RLIMITS).zip(text.lines().skip(1)) {
        let mut w = line.get(25..).ok_or_else(|| bad(line))?.split_whitespace();
        let (soft, hard) = (w.next(), w.next());
        let (Some(soft), Some(hard)) = (soft, hard) else {
            return Err(bad(line));
        };
        out.push(Rlimit {
            resource: res,
            soft: value(soft, line)?,
            hard: value(hard, line)?,
        });
    }
    if out.len() != RLIMITS as usize {
        return Err(Error::Process {
            pid,
            reason: format!("{path}: {} limits, expected {RLIMITS}", out.len()),
        });
    }
    Ok(out)
}

/// Sets the rlimits from outside. Raising a hard limit needs
/// CAP_SYS_RESOURCE: when it is missing the restore fails naming the limit.
pub fn restore_rlimits(pid: i32, limits: &[Rlimit]) -> Result<()> {
    for l in limits {
        if l.resource >= RLIMITS {
            continue;
        }
        let new = libc::rlimit64 {
            rlim_cur: l.soft,
            rlim_max: l.hard,
        };
        // SAFETY: prlimit64 reads `new`; the old limit is not requested.
        let rc = unsafe { libc::prlimit64(pid, l.resource as _, &new, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(perr(
                pid,
                &format!("setting rlimit {} to {}/{}", l.resource, l.soft, l.hard),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Stages everything but the credentials.
pub fn stage_core(st: &mut Staged, r: &mut Remote, c: &Core) -> Result<()> {
    st.call("umask", libc::SYS_umask, [c.umask as u64, 0, 0, 0, 0, 0]);
    let mut cwd = c.cwd.as_bytes().to_vec();
    cwd.push(0);
    let at = st.put(r, &cwd)?;
    st.call(
        format!("chdir({})", c.cwd),
        libc::SYS_chdir,
        [at, 0, 0, 0, 0, 0],
    );
    st.call(
        "personality",
        libc::SYS_personality,
        [c.personality as u64, 0, 0, 0, 0, 0],
    );
    let mut comm = c.comm.as_bytes().to_vec();
    comm.truncate(15);
    comm.push(0);
    let at = st.put(r, &comm)?;
    st.call(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        [libc::PR_SET_NAME as u64, at, 0, 0, 0, 0],
    );
    st.call(
        "prctl(PR_SET_PDEATHSIG)",
        libc::SYS_prctl,
        [
            libc::PR_SET_PDEATHSIG as u64,
            c.pdeath_signal as u64,
            0,
            0,
            0,
            0,
        ],
    );
    if c.child_subreaper {
        st.call(
            "prctl(PR_SET_CHILD_SUBREAPER)",
            libc::SYS_prctl,
            [libc::PR_SET_CHILD_SUBREAPER as u64, 1, 0, 0, 0, 0],
        );
    }
    Ok(())
}

/// The status of task `tid` (host TID); /proc/TID works for any thread,
/// listed or not.
pub(crate) fn thread_status(tid: i32) -> Result<procfs::process::Status> {
    use procfs::FromRead;
    procfs::process::Status::from_file(format!("/proc/{tid}/status"))
        .map_err(|e| perr(tid, "reading status", e))
}

/// Credentials of a task (host TID) as it has them now, securebits left 0.
pub(crate) fn current_creds(tid: i32) -> Result<Creds> {
    Ok(creds_of(&thread_status(tid)?))
}

/// The credentials of thread `tid` (host TID), with the `securebits` the
/// caller read in it: at restore, read once from a process's main thread
/// before it clones the others, which start with the same.
pub fn creds_now(tid: i32, securebits: u32) -> Result<Creds> {
    let mut now = current_creds(tid)?;
    now.securebits = securebits;
    Ok(now)
}

/// Stages a thread's credentials (`now`: what it has; nothing is changed
/// where that is what the image says), then no_new_privs, which must
/// follow them. The process-wide dumpable flag, which a change of
/// credentials resets, is put back by `restore_dumpable` after every
/// thread's credentials.
pub fn stage_creds(
    st: &mut Staged,
    r: &mut Remote,
    cr: &Creds,
    now: &Creds,
    core: &Core,
) -> Result<()> {
    if now != cr {
        stage_set_creds(st, r, cr, now)?;
    }
    if core.no_new_privs {
        st.call(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::SYS_prctl,
            [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
        );
    }
    Ok(())
}

/// Stages the process's dumpable flag (after every thread's credentials)
/// when prctl can set the image's value (0 or 1); false when it cannot be
/// staged (`restore_dumpable` then puts it back if it differs).
pub fn stage_dumpable(st: &mut Staged, core: &Core) -> bool {
    if !matches!(core.dumpable, 0 | 1) {
        return false;
    }
    st.call(
        "prctl(PR_SET_DUMPABLE)",
        libc::SYS_prctl,
        [
            libc::PR_SET_DUMPABLE as u64,
            core.dumpable as u64,
            0,
            0,
            0,
            0,
        ],
    );
    true
}

/// The process's dumpable flag, once every thread has its credentials.
pub fn restore_dumpable(r: &mut Remote, core: &Core) -> Result<()> {
    let dumpable = r.call(
        "prctl(PR_GET_DUMPABLE)",
        libc::SYS_prctl,
        [libc::PR_GET_DUMPABLE as u64, 0, 0, 0, 0, 0],
    )?;
    if dumpable as i32 != core.dumpable {
        r.call(
            "prctl(PR_SET_DUMPABLE)",
            libc::SYS_prctl,
            [
                libc::PR_SET_DUMPABLE as u64,
                core.dumpable as u64,
                0,
                0,
                0,
                0,
            ],
        )?;
    }
    Ok(())
}

/// Stages capset (version 3) of the task's own sets.
fn stage_capset(st: &mut Staged, r: &mut Remote, eff: u64, prm: u64, inh: u64) -> Result<()> {
    let mut b = Vec::with_capacity(8 + 24);
    b.extend_from_slice(&0x2008_0522u32.to_le_bytes());
    b.extend_from_slice(&0i32.to_le_bytes());
    for half in [0u32, 32] {
        b.extend_from_slice(&((eff >> half) as u32).to_le_bytes());
        b.extend_from_slice(&((prm >> half) as u32).to_le_bytes());
        b.extend_from_slice(&((inh >> half) as u32).to_le_bytes());
    }
    let at = st.put(r, &b)?;
    st.call("capset", libc::SYS_capset, [at, at + 8, 0, 0, 0, 0]);
    Ok(())
}

fn stage_raise_ambient(st: &mut Staged, amb: u64) {
    for cap in 0..64u64 {
        if amb & (1 << cap) != 0 {
            st.call(
                format!("prctl(PR_CAP_AMBIENT_RAISE, {cap})"),
                libc::SYS_prctl,
                [
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    cap,
                    0,
                    0,
                    0,
                ],
            );
        }
    }
}

fn stage_set_creds(st: &mut Staged, r: &mut Remote, cr: &Creds, now: &Creds) -> Result<()> {
    // The inheritable set first: it may hold capabilities the bounding set
    // loses below (the task dropped them from its bounding set later), and
    // it can only be raised within the bounding set.
    if now.cap_inh != cr.cap_inh {
        stage_capset(st, r, now.cap_eff, now.cap_prm, cr.cap_inh)?;
    }
    // Bounding set, while CAP_SETPCAP is still effective. `now` lists only
    // the capabilities this kernel knows; a failed drop is not fatal.
    for cap in 0..64u64 {
        if now.cap_bnd & (1 << cap) != 0 && cr.cap_bnd & (1 << cap) == 0 {
            st.call_may_fail(
                format!("prctl(PR_CAPBSET_DROP, {cap})"),
                libc::SYS_prctl,
                [libc::PR_CAPBSET_DROP as u64, cap, 0, 0, 0, 0],
            );
        }
    }
    let groups: Vec<u8> = cr.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    if groups.len() > 4000 {
        return Err(Error::Process {
            pid: r.tid,
            reason: format!("{} supplementary groups", cr.groups.len()),
        });
    }
    let at = st.put(r, &groups)?;
    st.call(
        "setgroups",
        libc::SYS_setgroups,
        [cr.groups.len() as u64, at, 0, 0, 0, 0],
    );
    st.call(
        "prctl(PR_SET_KEEPCAPS)",
        libc::SYS_prctl,
        [libc::PR_SET_KEEPCAPS as u64, 1, 0, 0, 0, 0],
    );
    st.call(
        "setresgid",
        libc::SYS_setresgid,
        [
            cr.gid[0] as u64,
            cr.gid[1] as u64,
            cr.gid[2] as u64,
            0,
            0,
            0,
        ],
    );
    st.call(
        "setfsgid",
        libc::SYS_setfsgid,
        [cr.gid[3] as u64, 0, 0, 0, 0, 0],
    );
    st.call(
        "setresuid",
        libc::SYS_setresuid,
        [
            cr.uid[0] as u64,
            cr.uid[1] as u64,
            cr.uid[2] as u64,
            0,
            0,
            0,
        ],
    );
    st.call(
        "setfsuid",
        libc::SYS_setfsuid,
        [cr.uid[3] as u64, 0, 0, 0, 0, 0],
    );
    if cr.securebits != 0 {
        // PR_SET_SECUREBITS needs CAP_SETPCAP, which the image's sets may
        // lack, and SECBIT_NO_CAP_AMBIENT_RAISE forbids raising the ambient
        // set: the effective set back to the (still full) permitted one,
        // the ambient set, the securebits (KEEP_CAPS included), and only
        // then the image's sets. The permitted set is still `now`'s: the
        // capset above keeps it, and KEEP_CAPS keeps it across setresuid.
        let prm = now.cap_prm;
        stage_capset(st, r, prm, prm, cr.cap_inh)?;
        stage_raise_ambient(st, cr.cap_amb);
        st.call(
            "prctl(PR_SET_SECUREBITS)",
            libc::SYS_prctl,
            [
                libc::PR_SET_SECUREBITS as u64,
                cr.securebits as u64,
                0,
                0,
                0,
                0,
            ],
        );
        stage_capset(st, r, cr.cap_eff, cr.cap_prm, cr.cap_inh)?;
        return Ok(());
    }
    stage_capset(st, r, cr.cap_eff, cr.cap_prm, cr.cap_inh)?;
    st.call(
        "prctl(PR_SET_KEEPCAPS)",
        libc::SYS_prctl,
        [libc::PR_SET_KEEPCAPS as u64, 0, 0, 0, 0, 0],
    );
    stage_raise_ambient(st, cr.cap_amb);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/PID/limits says what prlimit says.
    #[test]
    fn limits_from_proc_match_prlimit() {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let from_proc = rlimits_from_proc(pid).expect("parsing /proc/self/limits");
        let direct = collect_rlimits(pid).expect("prlimit of our own process");
        assert_eq!(from_proc.len(), direct.len());
        for (a, b) in from_proc.iter().zip(&direct) {
            assert_eq!(
                (a.resource, a.soft, a.hard),
                (b.resource, b.soft, b.hard),
                "rlimit {}",
                a.resource
            );
        }
    }
}
