//! File locks, from the `lock:` lines of fdinfo (the locks of that fd's
//! description: its flock and OFD locks, and the POSIX locks the process
//! took through it). flock and OFD locks belong to the open file
//! description: restore takes them on the restored description. POSIX locks
//! belong to the process: the restored process takes them itself, through an
//! fd of the same description, once nothing will close an fd in it any more
//! (closing any fd of a file drops the process's POSIX locks on it).
//!
//! A flock or OFD lock may also be held by a description that no fd shows
//! any more: a program opens a file, locks it, maps it and closes the fd (a
//! JVM does so with its performance-data file), and the mapping keeps the
//! description, and so the lock, alive. Such a lock shows only in
//! /proc/locks, by inode; the dump finds the tree's mappings of that inode
//! and records the lock against one process's mappings of the file
//! ([`MappedLock`]); restore opens the file in that process, takes the lock,
//! maps the process's areas of the file through that fd and closes it.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};

use super::last_os_error;
use crate::error::{Error, Result};
use crate::image::{
    FdEntry, FilesImage, LockImage, LockKind, MappedLock, ProcessImage, Vma, VmaKind,
};
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
    pub write: bool,
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
    let (_, write, start, len) = parse(line).ok()?;
    Some(ProcLock {
        kind: t[1],
        pid,
        major,
        minor,
        ino,
        write,
        start,
        len,
    })
}

/// (major, minor, inode) of a file, as /proc/locks names it.
pub type InodeId = (u32, u32, u64);

/// One file mapping of the tree.
struct Mapping {
    /// PID in the sandbox.
    pid: i32,
    /// The area's start.
    area: u64,
    /// The file mapped, as the area names it.
    path: String,
    memfd: bool,
}

/// The tree's file mappings by the inode they map, in the order the
/// processes were collected: where a lock no fd shows may be held.
#[derive(Default)]
pub struct Mappings(HashMap<InodeId, Vec<Mapping>>);

impl Mappings {
    /// Notes the file mappings of process `pid` (PID in the sandbox).
    pub fn note(&mut self, pid: i32, vmas: &[Vma]) {
        for v in vmas {
            if let VmaKind::File {
                path,
                dev,
                ino,
                memfd,
                ..
            } = &v.kind
            {
                let id = (libc::major(*dev), libc::minor(*dev), *ino);
                self.0.entry(id).or_default().push(Mapping {
                    pid,
                    area: v.start,
                    path: path.clone(),
                    memfd: memfd.is_some() || path.starts_with("/memfd:"),
                });
            }
        }
    }
}

/// Cross-checks /proc/locks (`listing`) with what the fds showed, once
/// every process is collected. `tree` maps host PIDs to PIDs in the
/// sandbox; `seen(kind, inode, start, len, pid)` says whether a lock was
/// recorded through an fd (a flock or OFD record accounts for one line). A flock or OFD lock no fd shows, on a file the
/// tree maps, is held through a mapping: it is returned, to be restored on
/// the mappings of the process that took it (a flock's holder, when it maps
/// the file) or else of the first process that maps the file. A POSIX or
/// flock lock of the tree found neither way, and leases, are refused. OFD
/// locks carry no holder: one on a file the tree neither shows nor maps
/// belongs to another process.
pub fn check(
    listing: &str,
    tree: &HashMap<i32, i32>,
    mut seen: impl FnMut(LockKind, InodeId, u64, u64, i32) -> bool,
    maps: &Mappings,
) -> Result<Vec<MappedLock>> {
    let mut out: Vec<MappedLock> = Vec::new();
    for line in listing.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        let Some(ProcLock {
            kind,
            pid: host,
            major,
            minor,
            ino,
            write,
            start,
            len,
        }) = parse_proc_line(line)
        else {
            let holder = t.get(4).and_then(|p| p.parse::<i32>().ok());
            if let Some(&pid) = holder.and_then(|h| tree.get(&h)) {
                if t.get(1) != Some(&"->") {
                    return Err(Error::Unsupported {
                        pid,
                        what: "a file lease or lock of this kind".into(),
                        detail: line.trim().to_string(),
                    });
                }
            }
            continue;
        };
        let kind = match kind {
            "POSIX" => LockKind::Posix,
            "FLOCK" => LockKind::Flock,
            "OFDLCK" => LockKind::Ofd,
            _ => continue,
        };
        let holder = tree.get(&host).copied();
        if kind != LockKind::Ofd && holder.is_none() {
            continue;
        }
        let inode = (major, minor, ino);
        if seen(kind, inode, start, len, holder.unwrap_or(0)) {
            continue;
        }
        let name = match kind {
            LockKind::Posix => "POSIX",
            LockKind::Flock => "flock",
            LockKind::Ofd => "OFD",
        };
        let candidates = maps.0.get(&inode).map(Vec::as_slice).unwrap_or(&[]);
        let chosen = candidates
            .iter()
            .find(|m| Some(m.pid) == holder)
            .or(candidates.first());
        let Some(m) = chosen.filter(|_| kind != LockKind::Posix) else {
            match holder {
                // An OFD lock of no fd and no mapping of the tree.
                None => continue,
                Some(pid) => {
                    return Err(Error::Unsupported {
                        pid,
                        what: format!(
                            "a {name} lock on inode {major:x}:{minor:x}:{ino} that none of its fds shows{}",
                            if kind == LockKind::Posix {
                                ""
                            } else {
                                " and no memory mapping of the tree maps"
                            }
                        ),
                        detail: line.trim().to_string(),
                    })
                }
            }
        };
        if m.memfd {
            return Err(Error::Unsupported {
                pid: m.pid,
                what: format!(
                    "a {name} lock held through the mapping of memfd {} at {:#x}",
                    m.path, m.area
                ),
                detail: line.trim().to_string(),
            });
        }
        let l = MappedLock {
            kind,
            pid: m.pid,
            area: m.area,
            write,
            start,
            len,
        };
        tracing::debug!(pid = m.pid, path = %m.path, ?kind, "lock held through a mapping");
        if !out.contains(&l) {
            out.push(l);
        }
    }
    Ok(out)
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
        check_range(l.start, l.len)?;
    }
    for l in &files.mapped_locks {
        let Some(p) = procs.iter().find(|p| p.pid == l.pid) else {
            return Err(Error::Other(format!(
                "image: a {:?} lock held through a mapping of process {}, which is not a live process of the image",
                l.kind, l.pid
            )));
        };
        let file = p
            .vmas
            .iter()
            .find(|v| v.start == l.area)
            .and_then(|v| match &v.kind {
                VmaKind::File {
                    deleted: false,
                    memfd: None,
                    path,
                    ..
                } => Some(path),
                _ => None,
            });
        if l.kind == LockKind::Posix || file.is_none() {
            return Err(Error::Other(format!(
                "image: a {:?} lock held through area {:#x} of process {}, which is {}",
                l.kind,
                l.area,
                l.pid,
                if l.kind == LockKind::Posix {
                    "a POSIX lock's owner, not a mapping's"
                } else {
                    "not a mapping of a file there"
                }
            )));
        }
        check_range(l.start, l.len)?;
    }
    Ok(())
}

/// A lock's range must fit `struct flock`'s signed fields.
fn check_range(start: u64, len: u64) -> Result<()> {
    if start > i64::MAX as u64 || len > i64::MAX as u64 {
        return Err(Error::Other(format!(
            "image: a lock on bytes {start}+{len}, beyond any file"
        )));
    }
    Ok(())
}

/// A file whose description process's mappings hold locks on.
#[derive(Debug, Clone)]
pub struct MappedFile {
    /// The file as the areas name it (in the sandbox).
    pub path: String,
    /// O_RDWR when a shared writable area maps it or an OFD write lock is
    /// taken on it, else O_RDONLY.
    pub oflags: i32,
    pub locks: Vec<MappedLock>,
}

/// The files process `p` holds locks on through its mappings (the image is
/// validated: every lock names an area of a file of `p`).
pub fn mapped_in(p: &ProcessImage, files: &FilesImage) -> Vec<MappedFile> {
    let mut out: Vec<MappedFile> = Vec::new();
    for l in files.mapped_locks.iter().filter(|l| l.pid == p.pid) {
        let Some(path) = p
            .vmas
            .iter()
            .find(|v| v.start == l.area)
            .and_then(|v| match &v.kind {
                VmaKind::File { path, .. } => Some(path),
                _ => None,
            })
        else {
            continue;
        };
        let i = match out.iter().position(|m| &m.path == path) {
            Some(i) => i,
            None => {
                let writable = p.vmas.iter().any(|v| {
                    v.shared
                        && v.prot & libc::PROT_WRITE as u32 != 0
                        && matches!(&v.kind, VmaKind::File { path: q, .. } if q == path)
                });
                out.push(MappedFile {
                    path: path.clone(),
                    oflags: if writable {
                        libc::O_RDWR
                    } else {
                        libc::O_RDONLY
                    },
                    locks: Vec::new(),
                });
                out.len() - 1
            }
        };
        if l.kind == LockKind::Ofd && l.write {
            out[i].oflags = libc::O_RDWR;
        }
        out[i].locks.push(l.clone());
    }
    out
}

/// Takes the locks of `m` on fd `fd` of the task `r` (the fd its areas of
/// the file are about to be mapped through). `scratch` is a page of the
/// task's memory.
pub fn take_in_task(r: &mut Remote, fd: u64, m: &MappedFile, scratch: u64) -> Result<()> {
    for l in &m.locks {
        let what = format!(
            "taking the {} {} lock on {} (bytes {}+{}) held through the mapping at {:#x}",
            if l.write { "write" } else { "read" },
            if l.kind == LockKind::Flock {
                "flock"
            } else {
                "OFD"
            },
            m.path,
            l.start,
            l.len,
            l.area
        );
        if l.kind == LockKind::Flock {
            let op = if l.write {
                libc::LOCK_EX
            } else {
                libc::LOCK_SH
            };
            r.call(
                &what,
                libc::SYS_flock,
                [fd, (op | libc::LOCK_NB) as u64, 0, 0, 0, 0],
            )?;
        } else {
            let f = flock_struct(&LockImage {
                kind: l.kind,
                file: 0,
                pid: 0,
                fd: -1,
                write: l.write,
                start: l.start,
                len: l.len,
            });
            r.write_mem(scratch, &flock_bytes(&f))?;
            r.call(
                &what,
                libc::SYS_fcntl,
                [fd, libc::F_OFD_SETLK as u64, scratch, 0, 0, 0],
            )?;
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

/// The bytes of `f`, to be written into a task.
fn flock_bytes(f: &libc::flock) -> Vec<u8> {
    // SAFETY: viewing a plain C struct (no padding read as anything but
    // bytes) as its bytes, for as long as `f` is borrowed.
    unsafe {
        std::slice::from_raw_parts(
            (f as *const libc::flock).cast::<u8>(),
            std::mem::size_of::<libc::flock>(),
        )
    }
    .to_vec()
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
        r.write_mem(scratch, &flock_bytes(&flock_struct(l)))?;
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

    fn file_area(start: u64, path: &str, ino: u64) -> Vma {
        Vma {
            start,
            end: start + 4096,
            prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
            shared: true,
            growsdown: false,
            advice: Vec::new(),
            guards: Vec::new(),
            label: path.into(),
            kind: VmaKind::File {
                path: path.into(),
                offset: 0,
                dev: libc::makedev(0, 0x2a),
                ino,
                deleted: false,
                memfd: None,
                ghost: None,
            },
            pages: Vec::new(),
            shared_object: None,
        }
    }

    #[test]
    fn locks_found_through_mappings() {
        let tree: HashMap<i32, i32> = [(5000, 2), (5001, 3)].into();
        let mut maps = Mappings::default();
        maps.note(2, &[file_area(0x10000, "/tmp/a", 7)]);
        maps.note(
            3,
            &[
                file_area(0x20000, "/tmp/a", 7),
                file_area(0x30000, "/tmp/b", 8),
            ],
        );
        let none = |_, _, _, _, _| false;
        // A flock goes to its holder's mapping, an OFD lock (no holder) to
        // the first process that maps the file; an OFD lock on a file the
        // tree does not map is another process's.
        let listing = "1: FLOCK  ADVISORY  WRITE 5001 00:2a:7 0 EOF\n\
                       2: OFDLCK ADVISORY  READ  -1 00:2a:8 200 EOF\n\
                       3: OFDLCK ADVISORY  WRITE -1 00:2a:9 0 99\n\
                       4: POSIX  ADVISORY  WRITE 4000 00:2a:9 0 EOF\n";
        let got = check(listing, &tree, none, &maps).unwrap();
        assert_eq!(
            got,
            vec![
                MappedLock {
                    kind: LockKind::Flock,
                    pid: 3,
                    area: 0x20000,
                    write: true,
                    start: 0,
                    len: 0
                },
                MappedLock {
                    kind: LockKind::Ofd,
                    pid: 3,
                    area: 0x30000,
                    write: false,
                    start: 200,
                    len: 0
                },
            ]
        );
        // Seen through an fd: nothing to add.
        let all = |_, _, _, _, _| true;
        assert!(check(listing, &tree, all, &maps).unwrap().is_empty());
        // A POSIX lock of the tree no fd shows, a flock of a file it does
        // not map: refused, naming the process.
        for l in [
            "1: POSIX  ADVISORY  WRITE 5000 00:2a:7 0 EOF",
            "1: FLOCK  ADVISORY  WRITE 5000 00:2a:99 0 EOF",
        ] {
            let e = check(l, &tree, none, &maps).unwrap_err().to_string();
            assert!(
                e.contains("process 2") && e.contains("none of its fds"),
                "{e}"
            );
        }
        let mut m = Mappings::default();
        let mut v = file_area(0x10000, "/memfd:x (deleted)", 7);
        if let VmaKind::File { memfd, .. } = &mut v.kind {
            *memfd = Some(0);
        }
        m.note(2, &[v]);
        let e = check(listing.lines().next().unwrap(), &tree, none, &m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("memfd"), "{e}");
    }
}
