//! Files deleted while open or mapped ("ghosts"): an unlinked inode that
//! fds, mappings or a working directory still hold (regular files and
//! directories). Each is saved once per inode, however many
//! descriptions and mappings share it: its data hole by hole (SEEK_DATA and
//! SEEK_HOLE, so a sparse file keeps its holes and only its data is in the
//! image, streamed through a bounded buffer), size, owner and mode, and
//! whether it was made with O_TMPFILE.
//!
//! Restore recreates it once in its old directory. A file made with
//! O_TMPFILE comes back the same way, never named (`O_TMPFILE` without
//! `O_EXCL`: a program may still give it a name with linkat through
//! /proc/self/fd, as databases do). A file that was deleted is created under
//! its old name (beside it when the name is taken again) and unlinked at
//! once, so that /proc shows its old name, as CRIU does too; the kernel then
//! refuses to link it again, as before. Where the filesystem has no
//! O_TMPFILE, an O_TMPFILE file is made that way too. Every description is then opened anew
//! through /proc/self/fd with its flags and offset, and mappings map the
//! recreated file. A deleted directory (always empty: rmdir takes only empty
//! ones, and nothing can be created in it afterwards) is made anew under its
//! old name, opened and removed again; a deleted device node is made anew
//! with mknod (never opened at dump) and held by an O_PATH fd.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use super::last_os_error;
use crate::error::{Error, Result};
use crate::image::{Blob, GhostImage, MemfdExtent, PageSink};

/// Largest size (holes included) of a deleted file that is saved.
pub const MAX_GHOST_BYTES: u64 = 1 << 40;
/// O_TMPFILE without O_DIRECTORY (the bit fdinfo shows for such a file).
pub const O_TMPFILE_BIT: u32 = 0o20000000;
const DELETED: &str = " (deleted)";
/// Longest path accepted from an image.
const MAX_PATH: usize = 4095;

/// The ghosts of a dump, by inode.
#[derive(Default)]
pub struct GhostTable {
    by_inode: HashMap<(u64, u64), u32>,
}

/// What `GhostTable::save` is told about a deleted file.
pub struct Seen<'a> {
    pub pid: i32,
    /// What holds it ("fd 5", "mapping 0x7f...-0x7f..."), for errors.
    pub what: &'a str,
    /// Its (dev, ino).
    pub key: (u64, u64),
    /// A path that opens it (a /proc/PID/fd or /proc/PID/map_files link).
    pub open: &'a str,
    /// Its /proc link text ("/dir/name (deleted)").
    pub link: &'a str,
    /// The description's flags showed O_TMPFILE.
    pub tmpfile: bool,
    /// The holder's root directory seen from here (/proc/PID/root).
    pub root: &'a str,
}

impl GhostTable {
    /// The ghost of the deleted file `s`, saved on first sight.
    pub fn save(
        &mut self,
        ghosts: &mut Vec<GhostImage>,
        s: Seen<'_>,
        blobs: &mut PageSink,
    ) -> Result<u32> {
        if let Some(&id) = self.by_inode.get(&s.key) {
            if s.tmpfile {
                ghosts[id as usize].tmpfile = true;
            }
            return Ok(id);
        }
        let id = ghosts.len() as u32;
        ghosts.push(collect(&s, id, blobs)?);
        self.by_inode.insert(s.key, id);
        Ok(id)
    }
}

/// The path of a deleted file as its /proc link shows it, without " (deleted)".
pub fn path_of(link: &str) -> &str {
    link.strip_suffix(DELETED).unwrap_or(link)
}

fn collect(s: &Seen<'_>, id: u32, blobs: &mut PageSink) -> Result<GhostImage> {
    let perr = |e: std::io::Error| Error::Process {
        pid: s.pid,
        reason: format!("{}: deleted file {}: {e}", s.what, s.link),
    };
    let path = path_of(s.link).to_string();
    if !path.starts_with('/') || path.len() > MAX_PATH {
        return Err(Error::Unsupported {
            pid: s.pid,
            what: format!("{}: a deleted file without a path", s.what),
            detail: s.link.to_string(),
        });
    }
    // A device node is never opened here (opening one may do something).
    let st = nix::sys::stat::stat(s.open).map_err(|e| perr(e.into()))?;
    // It is recreated in its directory: that must be where it lived. An
    // inode of a kernel-internal filesystem (an aio ring, MAP_HUGETLB memory,
    // a DRM buffer) shows a path that is no directory of its filesystem.
    let dir = match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    };
    let refuse = |why: &str| Error::Unsupported {
        pid: s.pid,
        what: format!("{}: a deleted file {why}", s.what),
        detail: s.link.to_string(),
    };
    match nix::sys::stat::stat(format!("{}{dir}", s.root).as_str()) {
        Ok(d) if d.st_dev == st.st_dev && d.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
        Ok(_) => return Err(refuse("of a kernel-internal or other filesystem")),
        Err(_) => return Err(refuse(&format!("whose directory {dir} is gone too"))),
    }
    let kind = st.st_mode & libc::S_IFMT;
    let size = if kind == libc::S_IFREG {
        st.st_size as u64
    } else {
        0
    };
    if size > MAX_GHOST_BYTES {
        return Err(Error::Unsupported {
            pid: s.pid,
            what: format!("{}: a deleted file of {size} bytes", s.what),
            detail: s.link.to_string(),
        });
    }
    let name = path.rsplit('/').next().unwrap_or("");
    let tmpfile = kind == libc::S_IFREG && (s.tmpfile || name == format!("#{}", st.st_ino));
    let extents = if kind == libc::S_IFREG {
        // A description of our own: looking for holes does not move the
        // workload's offset.
        let f = super::memfd::open_ro(s.open).map_err(perr)?;
        save_data(&f, size, blobs).map_err(|e| match e {
            Error::Io { cause, .. } => perr(cause),
            e => e,
        })?
    } else {
        Vec::new()
    };
    let rdev = if matches!(kind, libc::S_IFCHR | libc::S_IFBLK) {
        st.st_rdev
    } else {
        0
    };
    Ok(GhostImage {
        id,
        path,
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size,
        tmpfile,
        rdev,
        extents,
    })
}

/// Writes the data of `f` (its first `size` bytes, holes skipped) to
/// `blobs`, 1 MiB at a time (deleted files and memfds).
pub(super) fn save_data(f: &File, size: u64, blobs: &mut PageSink) -> Result<Vec<MemfdExtent>> {
    let io = |cause: std::io::Error| Error::Io {
        what: "reading a deleted file or memfd".into(),
        cause,
    };
    let mut extents = Vec::new();
    let mut buf = vec![0u8; (size as usize).min(1 << 20)];
    let mut at = 0u64;
    while at < size {
        // SAFETY: lseek on our own description.
        let data = unsafe { libc::lseek(f.as_raw_fd(), at as i64, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(io(e));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        let (start, end) = (data as u64, (hole as u64).min(size));
        if start >= end {
            break;
        }
        let offset = blobs.position();
        let mut done = start;
        while done < end {
            let n = ((end - done) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], done).map_err(io)?;
            blobs.write_all(&buf[..n])?;
            done += n as u64;
        }
        extents.push(MemfdExtent {
            offset: start,
            data: Blob {
                offset,
                len: end - start,
            },
        });
        at = end;
    }
    Ok(extents)
}

/// Checks one ghost of an image before anything is made.
pub fn validate(g: &GhostImage, index: usize) -> Result<()> {
    let bad =
        |why: String| Error::Other(format!("image: deleted file {index} ({}): {why}", g.path));
    if g.id as usize != index {
        return Err(bad(format!("id {} out of order", g.id)));
    }
    if !g.path.starts_with('/') || g.path.len() > MAX_PATH || g.path.contains('\0') {
        return Err(bad("bad path".into()));
    }
    let node = matches!(g.kind, libc::S_IFDIR | libc::S_IFCHR | libc::S_IFBLK);
    if g.kind != libc::S_IFREG && (!node || !g.extents.is_empty()) {
        return Err(bad(format!("file type {:o}", g.kind)));
    }
    if g.size > MAX_GHOST_BYTES {
        return Err(bad(format!("{} bytes", g.size)));
    }
    let mut end = 0;
    for e in &g.extents {
        match e.offset.checked_add(e.data.len) {
            Some(s)
                if e.offset >= end
                    && s <= g.size
                    && e.data.offset.checked_add(e.data.len).is_some() =>
            {
                end = s
            }
            _ => return Err(bad(format!("extent at {} out of bounds", e.offset))),
        }
    }
    Ok(())
}

fn open_c(path: &str, flags: i32, mode: u32) -> std::io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated path; open returns a new fd or -1.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A nameless, linkable file in `dir` (O_TMPFILE), or None where the
/// filesystem has no O_TMPFILE.
fn nameless(g: &GhostImage, dir: &str) -> Result<Option<OwnedFd>> {
    match open_c(dir, libc::O_TMPFILE | libc::O_RDWR, 0o600) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => Ok(None),
        Err(e) => Err(Error::Io {
            what: format!("recreating deleted file {} in {dir}", g.path),
            cause: e,
        }),
    }
}

/// A file created under the ghost's old name (or beside it when the name is
/// taken) and unlinked at once.
fn named_then_unlinked(g: &GhostImage) -> Result<OwnedFd> {
    let mut name = g.path.clone();
    for n in 1..=100 {
        match open_c(&name, libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o600) {
            Ok(fd) => {
                let c = CString::new(name.as_str()).map_err(|_| {
                    Error::Other(format!("image: path with NUL byte: {:?}", g.path))
                })?;
                // SAFETY: unlink of the path we just created.
                if unsafe { libc::unlink(c.as_ptr()) } != 0 {
                    return Err(last_os_error(format!(
                        "unlinking recreated deleted file {name}"
                    )));
                }
                return Ok(fd);
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                name = format!("{}.stasis-deleted-{n}", g.path);
            }
            Err(e) => {
                return Err(Error::Io {
                    what: format!("recreating deleted file {}", g.path),
                    cause: e,
                })
            }
        }
    }
    Err(Error::Other(format!(
        "recreating deleted file {}: every name beside it is taken",
        g.path
    )))
}

/// A directory made under the ghost's old name (or beside it), opened and
/// removed again.
fn removed_directory(g: &GhostImage) -> Result<OwnedFd> {
    let mut name = g.path.clone();
    for n in 1..=100 {
        let c = CString::new(name.as_str())
            .map_err(|_| Error::Other(format!("image: path with NUL byte: {:?}", g.path)))?;
        // SAFETY: mkdir of a NUL-terminated path.
        if unsafe { libc::mkdir(c.as_ptr(), 0o700) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                name = format!("{}.stasis-deleted-{n}", g.path);
                continue;
            }
            return Err(Error::Io {
                what: format!("recreating deleted directory {}", g.path),
                cause: e,
            });
        }
        let fd = open_c(&name, libc::O_RDONLY | libc::O_DIRECTORY, 0);
        // SAFETY: rmdir of the directory we just made (still empty).
        let gone = unsafe { libc::rmdir(c.as_ptr()) } == 0;
        let fd = fd.map_err(|cause| Error::Io {
            what: format!("opening recreated deleted directory {name}"),
            cause,
        })?;
        if !gone {
            return Err(last_os_error(format!(
                "removing recreated deleted directory {name}"
            )));
        }
        return Ok(fd);
    }
    Err(Error::Other(format!(
        "recreating deleted directory {}: every name beside it is taken",
        g.path
    )))
}

/// A device node made under the ghost's old name (or beside it), held by an
/// O_PATH fd (its descriptions are opened through it) and unlinked again.
fn removed_node(g: &GhostImage) -> Result<OwnedFd> {
    let mut name = g.path.clone();
    for n in 1..=100 {
        let c = CString::new(name.as_str())
            .map_err(|_| Error::Other(format!("image: path with NUL byte: {:?}", g.path)))?;
        // SAFETY: mknod of a NUL-terminated path.
        if unsafe { libc::mknod(c.as_ptr(), g.kind | 0o600, g.rdev as libc::dev_t) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                name = format!("{}.stasis-deleted-{n}", g.path);
                continue;
            }
            return Err(Error::Io {
                what: format!(
                    "recreating deleted device node {} ({}:{})",
                    g.path,
                    libc::major(g.rdev as libc::dev_t),
                    libc::minor(g.rdev as libc::dev_t)
                ),
                cause: e,
            });
        }
        let fd = open_c(&name, libc::O_PATH, 0);
        // SAFETY: unlink of the node we just made.
        unsafe { libc::unlink(c.as_ptr()) };
        return fd.map_err(|cause| Error::Io {
            what: format!("opening recreated deleted device node {name}"),
            cause,
        });
    }
    Err(Error::Other(format!(
        "recreating deleted device node {}: every name beside it is taken",
        g.path
    )))
}

/// Recreates a ghost, unlinked, with its data, owner and mode; returns an
/// fd of it (close-on-exec): O_RDWR for a file, O_RDONLY for a directory,
/// O_PATH for a device node.
pub fn create(g: &GhostImage, blobs: Option<&File>) -> Result<OwnedFd> {
    let dir = match g.path.rfind('/') {
        Some(0) => "/",
        Some(i) => &g.path[..i],
        None => return Err(Error::Other(format!("image: deleted file {}", g.path))),
    };
    let fd = if g.kind == libc::S_IFDIR {
        removed_directory(g)?
    } else if g.kind != libc::S_IFREG {
        removed_node(g)?
    } else if g.tmpfile {
        match nameless(g, dir)? {
            Some(fd) => fd,
            None => named_then_unlinked(g)?,
        }
    } else {
        named_then_unlinked(g)?
    };
    let what = |s: &str| format!("{s} deleted file {}", g.path);
    if g.kind != libc::S_IFREG {
        if g.kind != libc::S_IFDIR {
            // An O_PATH fd takes neither fchown nor fchmod: through /proc.
            let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
            let c = CString::new(p).map_err(|_| Error::Other("a /proc path".into()))?;
            // SAFETY: chown and chmod of the NUL-terminated /proc link of our node.
            let ok = unsafe { libc::chown(c.as_ptr(), g.uid, g.gid) } == 0
                // SAFETY: as above.
                && unsafe { libc::chmod(c.as_ptr(), g.mode & 0o7777) } == 0;
            if !ok {
                return Err(last_os_error(what("setting the owner and mode of")));
            }
            return Ok(fd);
        }
        // SAFETY: fchown of our directory.
        let owned = unsafe { libc::fchown(fd.as_raw_fd(), g.uid, g.gid) } == 0;
        // SAFETY: fchmod of our directory.
        if !owned || unsafe { libc::fchmod(fd.as_raw_fd(), g.mode & 0o7777) } != 0 {
            return Err(last_os_error(what("setting the owner and mode of")));
        }
        return Ok(fd);
    }
    super::memfd::fill(
        &fd,
        g.size,
        &g.extents,
        (g.uid, g.gid, g.mode),
        blobs,
        &what,
    )?;
    Ok(fd)
}

/// A new description of ghost `g` (open through `anchor`) with `flags`.
pub fn open_desc(g: &GhostImage, anchor: &OwnedFd, flags: u32) -> Result<OwnedFd> {
    let mut flags = (flags as i32)
        & !(libc::O_CREAT
            | libc::O_EXCL
            | libc::O_TRUNC
            | libc::O_CLOEXEC
            | libc::O_NOCTTY
            | libc::O_DIRECTORY
            | O_TMPFILE_BIT as i32);
    if g.kind == libc::S_IFDIR {
        flags |= libc::O_DIRECTORY;
    }
    open_c(&format!("/proc/self/fd/{}", anchor.as_raw_fd()), flags, 0).map_err(|cause| Error::Io {
        what: format!("opening a description of deleted file {}", g.path),
        cause,
    })
}
