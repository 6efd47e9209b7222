//! memfd: the object (name, size, permission bits, seals, data) once per
//! inode, however many descriptions and mappings share it; each description
//! with its flags and offset. Restore creates each memfd once, fills it, seals
//! it, and opens every description anew through /proc/self/fd. Mappings of a
//! memfd ("/memfd:NAME (deleted)") are restored as mappings of the restored
//! object: its fd is passed to the processes that map it.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use nix::sys::stat::FileStat;

use super::last_os_error;
use crate::error::{Error, Result};
use crate::image::{MemfdImage, PageSink, ProcessImage, VmaKind};

/// Largest memfd whose data is saved.
pub const MAX_MEMFD_BYTES: u64 = 16 << 30;
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
const PREFIX: &str = "/memfd:";
const DELETED: &str = " (deleted)";

/// Whether an fd (by its /proc link and fstat) is a memfd.
pub fn is_memfd(link: &str, st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink == 0 && link.starts_with(PREFIX)
}

/// The memfd_create name in a link such as "/memfd:NAME (deleted)".
pub fn name_of(link: &str) -> String {
    let s = link.strip_prefix(PREFIX).unwrap_or(link);
    s.strip_suffix(DELETED).unwrap_or(s).to_string()
}

pub(super) fn open_ro(path: &str) -> std::io::Result<File> {
    File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOATIME)
        .open(path)
        .or_else(|_| File::open(path))
}

use std::os::unix::fs::OpenOptionsExt;

/// Saves one memfd object. `path` opens a description of it of our own (a
/// /proc/PID/fd or /proc/PID/map_files link), so that looking for its holes
/// does not move the workload's offset; `what` names it in errors.
pub fn collect(
    pid: i32,
    what: &str,
    path: &str,
    link: &str,
    id: u32,
    blobs: &mut PageSink,
) -> Result<MemfdImage> {
    let perr = |e: std::io::Error| Error::Process {
        pid,
        reason: format!("{what} ({link}): {e}"),
    };
    let f = open_ro(path).map_err(perr)?;
    let st = nix::sys::stat::fstat(&f).map_err(|e| perr(e.into()))?;
    // SAFETY: an all-zero statfs is a valid value for fstatfs to overwrite.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs of our own fd into our struct.
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut fs) } != 0 {
        return Err(perr(std::io::Error::last_os_error()));
    }
    if fs.f_type as i64 == HUGETLBFS_MAGIC {
        return Err(Error::Unsupported {
            pid,
            what: format!("{what}: a memfd on huge pages (MFD_HUGETLB)"),
            detail: link.to_string(),
        });
    }
    let size = st.st_size as u64;
    if size > MAX_MEMFD_BYTES {
        return Err(Error::Unsupported {
            pid,
            what: format!("{what}: a memfd of {size} bytes"),
            detail: link.to_string(),
        });
    }
    // SAFETY: F_GET_SEALS on our own fd.
    let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(perr(std::io::Error::last_os_error()));
    }
    let extents = super::ghost::save_data(&f, size, blobs).map_err(|e| match e {
        Error::Io { cause, .. } => perr(cause),
        e => e,
    })?;
    Ok(MemfdImage {
        id,
        name: name_of(link),
        size,
        mode: st.st_mode & 0o7777,
        seals: seals as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        extents,
    })
}

/// The memfds whose mappings process `p` has, in order: their fds are passed
/// to it at `slot_base + index` for the rebuild of its memory.
pub fn mapped(p: &ProcessImage) -> Vec<u32> {
    let mut v: Vec<u32> = p
        .vmas
        .iter()
        .filter_map(|v| match &v.kind {
            VmaKind::File { memfd, .. } => *memfd,
            _ => None,
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

pub fn validate(m: &MemfdImage, index: usize) -> Result<()> {
    let bad = |why: String| Error::Other(format!("image: memfd {index} ({}): {why}", m.name));
    if m.id as usize != index {
        return Err(bad(format!("id {} out of order", m.id)));
    }
    if m.size > MAX_MEMFD_BYTES {
        return Err(bad(format!("{} bytes", m.size)));
    }
    if m.name.len() > 249 || m.name.contains('\0') {
        return Err(bad("bad name".into()));
    }
    let mut end = 0;
    for e in &m.extents {
        match e.offset.checked_add(e.data.len) {
            Some(s)
                if e.offset >= end
                    && s <= m.size
                    && e.data.offset.checked_add(e.data.len).is_some() =>
            {
                end = s
            }
            _ => return Err(bad(format!("extent at {} out of bounds", e.offset))),
        }
    }
    Ok(())
}

/// Creates a memfd with its data, permission bits and seals; returns an
/// O_RDWR fd of it (close-on-exec).
pub fn create(m: &MemfdImage, blobs: Option<&File>) -> Result<OwnedFd> {
    let what = |s: &str| format!("{s} memfd {} ({})", m.id, m.name);
    let name = CString::new(m.name.as_str()).map_err(|_| Error::Other(what("bad name of")))?;
    // SAFETY: memfd_create with a valid NUL-terminated name creates a new fd.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(last_os_error(what("creating")));
    }
    // SAFETY: `raw` is a new fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    fill(
        &fd,
        m.size,
        &m.extents,
        (m.uid, m.gid, m.mode),
        blobs,
        &what,
    )?;
    if m.seals != 0 {
        // SAFETY: F_ADD_SEALS on our memfd.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, m.seals as i32) } != 0 {
            return Err(last_os_error(what("sealing")));
        }
    }
    Ok(fd)
}

/// The description memfd_create made (`anchor`'s own), for the image's
/// first read-write description of memfd `m`, with its status `flags` and
/// `pos`. A description opened anew for writing counts as a writer of the
/// file, and the kernel refuses to execute a file with writers (ETXTBSY):
/// memfd_create's does not count, so a program that executes its memfd
/// (execveat with AT_EMPTY_PATH) can still do so after restore.
pub fn created_desc(m: &MemfdImage, anchor: &OwnedFd, flags: u32, pos: u64) -> Result<OwnedFd> {
    let what = |s: &str| format!("{s} memfd {} ({})", m.id, m.name);
    // SAFETY: F_DUPFD_CLOEXEC of our fd; a new fd or -1.
    let raw = unsafe { libc::fcntl(anchor.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if raw < 0 {
        return Err(last_os_error(what("duplicating")));
    }
    // SAFETY: `raw` is a new fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let fl = flags as i32 & (libc::O_NONBLOCK | libc::O_APPEND | libc::O_NOATIME);
    // SAFETY: F_SETFL on our fd.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl) } < 0 {
        return Err(last_os_error(what("setting the flags of")));
    }
    // SAFETY: lseek on our fd.
    if unsafe { libc::lseek(fd.as_raw_fd(), pos as i64, libc::SEEK_SET) } < 0 {
        return Err(last_os_error(what("seeking")));
    }
    Ok(fd)
}

/// A new description of memfd `m` (open through `anchor`) with `flags` at `pos`.
pub fn open_desc(m: &MemfdImage, anchor: &OwnedFd, flags: u32, pos: u64) -> Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", anchor.as_raw_fd());
    let c = CString::new(path).expect("no NUL in a /proc path");
    let flags = (flags as i32)
        & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOCTTY);
    // SAFETY: opening a NUL-terminated path; a new fd or -1.
    let raw = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(last_os_error(format!(
            "opening a description of memfd {} ({})",
            m.id, m.name
        )));
    }
    // SAFETY: `raw` is a new fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if pos > 0 {
        // SAFETY: lseek on our fd.
        if unsafe { libc::lseek(fd.as_raw_fd(), pos as i64, libc::SEEK_SET) } < 0 {
            return Err(last_os_error(format!(
                "seeking memfd {} ({}) to {pos}",
                m.id, m.name
            )));
        }
    }
    Ok(fd)
}

/// Sizes the new file `fd` (a memfd or a recreated deleted file), writes its
/// saved extents back from `blobs`, then gives it its owner and mode.
pub(super) fn fill(
    fd: &OwnedFd,
    size: u64,
    extents: &[crate::image::MemfdExtent],
    (uid, gid, mode): (u32, u32, u32),
    blobs: Option<&File>,
    what: &dyn Fn(&str) -> String,
) -> Result<()> {
    // SAFETY: ftruncate of a file we just made.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size as i64) } != 0 {
        return Err(last_os_error(what("sizing")));
    }
    if !extents.is_empty() {
        let blobs = blobs.ok_or_else(|| Error::Other("image: blobs.img missing".into()))?;
        // SAFETY: borrowing our fd as a File without taking ownership.
        let w = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd.as_raw_fd()) });
        let mut buf = vec![0u8; 1 << 20];
        for e in extents {
            let mut done = 0;
            while done < e.data.len {
                let k = ((e.data.len - done) as usize).min(buf.len());
                blobs
                    .read_exact_at(&mut buf[..k], e.data.offset + done)
                    .and_then(|_| w.write_all_at(&buf[..k], e.offset + done))
                    .map_err(|cause| Error::Io {
                        what: what("filling"),
                        cause,
                    })?;
                done += k as u64;
            }
        }
    }
    // SAFETY: fchown of a file we just made.
    if unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) } != 0 {
        return Err(last_os_error(what("setting the owner of")));
    }
    // SAFETY: fchmod of a file we just made.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode & 0o7777) } != 0 {
        return Err(last_os_error(what("setting the mode of")));
    }
    Ok(())
}
