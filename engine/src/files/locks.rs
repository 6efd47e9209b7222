//! File locks, from the `lock:` lines of fdinfo (the locks of that fd's
//! description: its flock and OFD locks, and the POSIX locks the process
//! took through it). flock and OFD locks belong to the open file
//! description: restore takes them on the restored description. POSIX locks
//! belong to the process: the restored process takes them itself, through an
//! fd of the same description, once nothing will close an fd in it any more
//! (closing any fd of a file drops the process's POSIX locks on it).

use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd};

use super::last_os_error;
use crate::error::{Error, Result};
use crate::image::{FdEntry, FilesImage, LockImage, LockKind, ProcessImage};
use crate::remote::Remote;

/// Parses one lock line ("1: POSIX  ADVISORY  WRITE 123 fe:00:456 10 19").
fn parse(line: &str) -> std::result::Result<(LockKind, bool, u64, u64), String> {
    let t: Vec<&str> = line.split_whitespace().collect();
    if t.len() < 8 {
        return Err(format!("unreadable lock {line:?}"));
    }
    let kind = match (t[1], t[2]) {
        ("POSIX", "ADVISORY") => LockKind::Posix,
        ("OFDLCK", "ADVISORY") => LockKind::Ofd,
        ("FLOCK", "ADVISORY") => LockKind::Flock,
        (k, m) => {
            return Err(format!(
                "a {k} {m} lock (only advisory flock, POSIX and OFD locks are)"
            ))
        }
    };
    let write = match t[3] {
        "WRITE" => true,
        "READ" => false,
        o => return Err(format!("a lock of type {o}")),
    };
    let start: u64 = t[6]
        .parse()
        .map_err(|_| format!("unreadable lock {line:?}"))?;
    let len = match t[7] {
        "EOF" => 0,
        e => {
            let end: u64 = e.parse().map_err(|_| format!("unreadable lock {line:?}"))?;
            if end < start {
                return Err(format!("unreadable lock {line:?}"));
            }
            end - start + 1
        }
    };
    Ok((kind, write, start, len))
}

/// Records the locks shown in the fdinfo of fd `fd` of process `pid`, which
/// is description `file`. `new` says whether the description is seen for the
/// first time (its own locks show through every fd of it).
pub fn collect(
    pid: i32,
    fd: i32,
    file: u32,
    new: bool,
    fdinfo: &str,
    out: &mut Vec<LockImage>,
) -> Result<()> {
    for line in fdinfo.lines() {
        let Some(rest) = line.strip_prefix("lock:") else {
            continue;
        };
        let (kind, write, start, len) = parse(rest).map_err(|why| Error::Unsupported {
            pid,
            what: format!("fd {fd}: file lock"),
            detail: why,
        })?;
        let mut l = LockImage {
            kind,
            file,
            pid: 0,
            fd: -1,
            write,
            start,
            len,
        };
        match kind {
            LockKind::Posix => {
                l.pid = pid;
                l.fd = fd;
                let dup = out.iter().any(|o| {
                    o.kind == LockKind::Posix
                        && o.pid == pid
                        && o.file == file
                        && (o.write, o.start, o.len) == (write, start, len)
                });
                if !dup {
                    out.push(l);
                }
            }
            LockKind::Flock | LockKind::Ofd if new => out.push(l),
            _ => {}
        }
    }
    Ok(())
}

/// A lock of /proc/locks.
pub struct ProcLock<'a> {
    pub kind: &'a str,
    /// Holder, as a PID seen here.
    pub pid: i32,
    pub major: u32,
    pub minor: u32,
    pub ino: u64,
    pub start: u64,
    pub len: u64,
}

/// One line of /proc/locks; None for waiters and kinds not taken up here.
pub fn parse_proc_line(line: &str) -> Option<ProcLock<'_>> {
    let t: Vec<&str> = line.split_whitespace().collect();
    if t.len() < 8 || t[1] == "->" {
        return None;
    }
    let pid: i32 = t[4].parse().ok()?;
    let mut id = t[5].split(':');
    let major = u32::from_str_radix(id.next()?, 16).ok()?;
    let minor = u32::from_str_radix(id.next()?, 16).ok()?;
    let ino: u64 = id.next()?.parse().ok()?;
    let (_, _, start, len) = parse(line).ok()?;
    Some(ProcLock {
        kind: t[1],
        pid,
        major,
        minor,
        ino,
        start,
        len,
    })
}

/// Checks every lock names a description, and every POSIX lock an fd of
/// that description in its process.
pub fn validate(files: &FilesImage, procs: &[&ProcessImage]) -> Result<()> {
    for l in &files.locks {
        if l.file as usize >= files.files.len() {
            return Err(Error::Other(format!(
                "image: a lock on file {} of {}",
                l.file,
                files.files.len()
            )));
        }
        if l.kind == LockKind::Posix {
            let ok = procs.iter().any(|p| {
                p.pid == l.pid
                    && p.fds
                        .iter()
                        .any(|e: &FdEntry| e.fd == l.fd && e.file == l.file)
            });
            if !ok {
                return Err(Error::Other(format!(
                    "image: POSIX lock of process {} through fd {}, which is not file {} there",
                    l.pid, l.fd, l.file
                )));
            }
        }
    }
    Ok(())
}

fn flock_struct(l: &LockImage) -> libc::flock {
    // SAFETY: an all-zero flock is a valid value; the fields are set below.
    let mut f: libc::flock = unsafe { std::mem::zeroed() };
    f.l_type = if l.write {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    } as i16;
    f.l_whence = libc::SEEK_SET as i16;
    f.l_start = l.start as i64;
    f.l_len = l.len as i64;
    f
}

/// Takes the flock and OFD locks on the restored descriptions (`fds`, by id).
pub fn restore_desc(files: &FilesImage, fds: &[OwnedFd]) -> Result<()> {
    for l in &files.locks {
        let fd = fds[l.file as usize].as_raw_fd();
        let what = || {
            format!(
                "taking a {} {:?} lock on file {} (bytes {}+{})",
                if l.write { "write" } else { "read" },
                l.kind,
                l.file,
                l.start,
                l.len
            )
        };
        match l.kind {
            LockKind::Flock => {
                let op = if l.write {
                    libc::LOCK_EX
                } else {
                    libc::LOCK_SH
                };
                // SAFETY: flock on an fd we own.
                if unsafe { libc::flock(fd, op | libc::LOCK_NB) } != 0 {
                    return Err(last_os_error(what()));
                }
            }
            LockKind::Ofd => {
                let f = flock_struct(l);
                // SAFETY: F_OFD_SETLK reads our flock struct.
                if unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &f) } != 0 {
                    return Err(last_os_error(what()));
                }
            }
            LockKind::Posix => {}
        }
    }
    Ok(())
}

/// Takes the POSIX locks of process `p` from inside it (they belong to the
/// process that takes them). `scratch` is a page of the task's memory.
pub fn restore_posix(
    r: &mut Remote,
    p: &ProcessImage,
    files: &FilesImage,
    scratch: u64,
) -> Result<()> {
    let mut seen = HashSet::new();
    for l in files
        .locks
        .iter()
        .filter(|l| l.kind == LockKind::Posix && l.pid == p.pid)
    {
        if !seen.insert((l.file, l.start, l.len, l.write)) {
            continue;
        }
        let f = flock_struct(l);
        // SAFETY: viewing a plain C struct as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&f as *const libc::flock).cast::<u8>(),
                std::mem::size_of::<libc::flock>(),
            )
        };
        r.write_mem(scratch, bytes)?;
        r.call(
            &format!(
                "fcntl(fd {}, F_SETLK, {} lock on bytes {}+{})",
                l.fd,
                if l.write { "write" } else { "read" },
                l.start,
                l.len
            ),
            libc::SYS_fcntl,
            [l.fd as u64, libc::F_SETLK as u64, scratch, 0, 0, 0],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lines() {
        assert_eq!(
            parse("1: POSIX  ADVISORY  WRITE 5197 fe:00:10018878 10 19"),
            Ok((LockKind::Posix, true, 10, 10))
        );
        assert_eq!(
            parse("2: OFDLCK ADVISORY  READ -1 fe:00:10018878 100 EOF"),
            Ok((LockKind::Ofd, false, 100, 0))
        );
        assert_eq!(
            parse("1: FLOCK  ADVISORY  WRITE 5197 fe:00:10018875 0 EOF"),
            Ok((LockKind::Flock, true, 0, 0))
        );
        assert!(parse("1: LEASE  ACTIVE    READ 5197 fe:00:1 0 EOF").is_err());
    }
}
