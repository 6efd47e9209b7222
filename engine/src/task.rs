//! Process attributes: comm, personality, umask, cwd, root, no_new_privs,
//! dumpable, parent-death signal, rlimits, and credentials (uids, gids,
//! groups, capability sets). Credentials are put back last: everything else
//! is done while the task still runs as root with every capability.

use crate::error::{Error, Result};
use crate::image::{Core, Creds, Rlimit};
use crate::remote::{put_cstr, Remote};

fn perr(pid: i32, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Process {
        pid,
        reason: format!("{what}: {e}"),
    }
}

/// /proc/PID/status, read once per process and shared by the collectors.
pub fn read_status(pid: i32) -> Result<procfs::process::Status> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.status())
        .map_err(|e| perr(pid, "reading status", e))
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
    };
    let creds = Creds {
        uid: [status.ruid, status.euid, status.suid, status.fuid],
        gid: [status.rgid, status.egid, status.sgid, status.fgid],
        groups: status.groups.clone(),
        cap_inh: status.capinh,
        cap_prm: status.capprm,
        cap_eff: status.capeff,
        cap_bnd: status.capbnd.unwrap_or(u64::MAX),
        cap_amb: status.capamb.unwrap_or(0),
    };
    Ok((core, creds))
}

const RLIMITS: u32 = 16;

pub fn collect_rlimits(pid: i32) -> Result<Vec<Rlimit>> {
    let mut out = Vec::new();
    for res in 0..RLIMITS {
        let mut old = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 with a null new limit only writes the old one into `old`.
        let rc = unsafe { libc::prlimit64(pid, res as _, std::ptr::null(), &mut old) };
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

/// Puts back everything but the credentials.
pub fn restore_core(r: &mut Remote, c: &Core, scratch: u64) -> Result<()> {
    r.call("umask", libc::SYS_umask, [c.umask as u64, 0, 0, 0, 0, 0])?;
    put_cstr(r, scratch, &c.cwd)?;
    r.call(
        &format!("chdir({})", c.cwd),
        libc::SYS_chdir,
        [scratch, 0, 0, 0, 0, 0],
    )?;
    r.call(
        "personality",
        libc::SYS_personality,
        [c.personality as u64, 0, 0, 0, 0, 0],
    )?;
    let mut comm = c.comm.as_bytes().to_vec();
    comm.truncate(15);
    comm.push(0);
    r.write_mem(scratch, &comm)?;
    r.call(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        [libc::PR_SET_NAME as u64, scratch, 0, 0, 0, 0],
    )?;
    r.call(
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
    )?;
    Ok(())
}

/// Credentials as the task has them now.
fn current_creds(pid: i32) -> Result<Creds> {
    let s = procfs::process::Process::new(pid)
        .and_then(|p| p.status())
        .map_err(|e| perr(pid, "reading status", e))?;
    Ok(Creds {
        uid: [s.ruid, s.euid, s.suid, s.fuid],
        gid: [s.rgid, s.egid, s.sgid, s.fgid],
        groups: s.groups.clone(),
        cap_inh: s.capinh,
        cap_prm: s.capprm,
        cap_eff: s.capeff,
        cap_bnd: s.capbnd.unwrap_or(u64::MAX),
        cap_amb: s.capamb.unwrap_or(0),
    })
}

/// Credentials, then the prctl flags that must follow them. Nothing is
/// changed where the task already has what the image says.
pub fn restore_creds(r: &mut Remote, cr: &Creds, core: &Core, scratch: u64) -> Result<()> {
    let now = current_creds(r.tid)?;
    if now != *cr {
        set_creds(r, cr, &now, scratch)?;
    }
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
    if core.no_new_privs {
        r.call(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::SYS_prctl,
            [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

fn set_creds(r: &mut Remote, cr: &Creds, now: &Creds, scratch: u64) -> Result<()> {
    // Bounding set first, while CAP_SETPCAP is still effective.
    for cap in 0..64u64 {
        if now.cap_bnd & (1 << cap) == 0 {
            continue;
        }
        if cr.cap_bnd & (1 << cap) == 0 {
            let rc = r.syscall_raw(
                libc::SYS_prctl,
                [libc::PR_CAPBSET_DROP as u64, cap, 0, 0, 0, 0],
            )?;
            if rc == -(libc::EINVAL as i64) {
                break; // past the last capability this kernel knows
            }
        }
    }
    let groups: Vec<u8> = cr.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    if groups.len() > 4000 {
        return Err(Error::Process {
            pid: r.tid,
            reason: format!("{} supplementary groups", cr.groups.len()),
        });
    }
    r.write_mem(scratch, &groups)?;
    r.call(
        "setgroups",
        libc::SYS_setgroups,
        [cr.groups.len() as u64, scratch, 0, 0, 0, 0],
    )?;
    r.call(
        "prctl(PR_SET_KEEPCAPS)",
        libc::SYS_prctl,
        [libc::PR_SET_KEEPCAPS as u64, 1, 0, 0, 0, 0],
    )?;
    r.call(
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
    )?;
    r.call(
        "setfsgid",
        libc::SYS_setfsgid,
        [cr.gid[3] as u64, 0, 0, 0, 0, 0],
    )?;
    r.call(
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
    )?;
    r.call(
        "setfsuid",
        libc::SYS_setfsuid,
        [cr.uid[3] as u64, 0, 0, 0, 0, 0],
    )?;
    // capset, version 3: a header and two data words.
    let mut b = Vec::with_capacity(8 + 24);
    b.extend_from_slice(&0x2008_0522u32.to_le_bytes());
    b.extend_from_slice(&0i32.to_le_bytes());
    for half in [0u32, 32] {
        b.extend_from_slice(&((cr.cap_eff >> half) as u32).to_le_bytes());
        b.extend_from_slice(&((cr.cap_prm >> half) as u32).to_le_bytes());
        b.extend_from_slice(&((cr.cap_inh >> half) as u32).to_le_bytes());
    }
    r.write_mem(scratch, &b)?;
    r.call(
        "capset",
        libc::SYS_capset,
        [scratch, scratch + 8, 0, 0, 0, 0],
    )?;
    r.call(
        "prctl(PR_SET_KEEPCAPS)",
        libc::SYS_prctl,
        [libc::PR_SET_KEEPCAPS as u64, 0, 0, 0, 0, 0],
    )?;
    for cap in 0..64u64 {
        if cr.cap_amb & (1 << cap) != 0 {
            r.call(
                "prctl(PR_CAP_AMBIENT_RAISE)",
                libc::SYS_prctl,
                [
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    cap,
                    0,
                    0,
                    0,
                ],
            )?;
        }
    }
    Ok(())
}
