//! Files reopened by path: regular files (offset, flags, O_APPEND),
//! directories, character devices such as /dev/null, and descriptions of
//! files deleted while open (`ghost`: the file is saved once and recreated,
//! each description reopened from it).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use nix::sys::stat::FileStat;

use super::ghost;
use crate::error::{Error, Result};
use crate::image::{Blob, FileDesc, FileKind, GhostImage};

const DELETED: &str = " (deleted)";
/// Largest deleted file whose contents are saved (images before ghosts).
const MAX_DELETED_BYTES: u64 = 1 << 30;

/// Records a description reopened by path; `ghost` is the deleted file it
/// is open on (already saved), if any.
pub fn collect(
    pid: i32,
    fd: i32,
    link: &str,
    st: &FileStat,
    pos: u64,
    ghost: Option<u32>,
) -> Result<FileKind> {
    let fmt = st.st_mode & libc::S_IFMT;
    let mut path = link.to_string();
    if !path.starts_with('/') {
        return Err(Error::Unsupported {
            pid,
            what: format!("fd {fd}"),
            detail: link.to_string(),
        });
    }
    if ghost.is_some() {
        path = ghost::path_of(&path).to_string();
    } else if fmt == libc::S_IFREG && path.ends_with(DELETED) {
        // The name is gone but the file has other links: not reachable by this path.
        return Err(Error::Unsupported {
            pid,
            what: format!("fd {fd}: a file whose name was removed but that has other links"),
            detail: link.to_string(),
        });
    }
    Ok(FileKind::Path {
        path,
        pos,
        mode: fmt,
        size: st.st_size as u64,
        deleted: None,
        ghost,
    })
}

fn cpath(p: &str) -> Result<CString> {
    CString::new(p).map_err(|_| Error::Other(format!("image: path with NUL byte: {p:?}")))
}

fn open_raw(path: &str, flags: i32, mode: u32) -> std::io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated path; open returns a new fd or -1.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reopens a file description: same path, flags and offset. `ghosts` are
/// the recreated deleted files (fds of ours) and their records.
pub fn open(
    f: &FileDesc,
    blobs: Option<&File>,
    ghosts: &[OwnedFd],
    images: &[GhostImage],
) -> Result<OwnedFd> {
    let FileKind::Path {
        path,
        pos,
        mode,
        deleted,
        ghost,
        ..
    } = &f.kind
    else {
        return Err(Error::Other(format!(
            "file {} is not reopened by path",
            f.id
        )));
    };
    let mut flags =
        (f.flags as i32) & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_CLOEXEC);
    if *mode == libc::S_IFCHR {
        super::tty::check_restore_path(f.id, path)?;
        // Never a controlling terminal of the init that opens it.
        flags |= libc::O_NOCTTY;
    }
    if *mode == libc::S_IFREG {
        // A file made with O_TMPFILE (and linked since) keeps O_TMPFILE in
        // its flags, O_DIRECTORY included: neither may reopen it.
        flags &= !(libc::O_DIRECTORY | ghost::O_TMPFILE_BIT as i32);
    }
    let fd = if let Some(g) = ghost {
        let g = *g as usize;
        match (ghosts.get(g), images.get(g)) {
            (Some(anchor), Some(img)) => ghost::open_desc(img, anchor, f.flags)?,
            _ => {
                return Err(Error::Other(format!(
                    "image: file {} is deleted file {g}, which does not exist",
                    f.id
                )))
            }
        }
    } else if let Some(blob) = deleted {
        recreate_deleted(path, *blob, flags, blobs)?
    } else {
        open_raw(path, flags, 0).map_err(|e| Error::Io {
            what: format!("reopening {path}"),
            cause: e,
        })?
    };
    let st = nix::sys::stat::fstat(&fd).map_err(|e| Error::Other(format!("fstat {path}: {e}")))?;
    if st.st_mode & libc::S_IFMT == libc::S_IFCHR {
        super::tty::check_restore_fd(f.id, path, &fd)?;
    }
    if st.st_mode & libc::S_IFMT != *mode {
        return Err(Error::Other(format!(
            "{path} is not the same kind of file as at dump (mode {:o}, was {:o})",
            st.st_mode & libc::S_IFMT,
            mode
        )));
    }
    if *mode == libc::S_IFREG && *pos > 0 {
        // SAFETY: lseek on an fd we own.
        let r = unsafe { libc::lseek(fd.as_raw_fd(), *pos as i64, libc::SEEK_SET) };
        if r < 0 {
            return Err(Error::Io {
                what: format!("seeking {path} to {pos}"),
                cause: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(fd)
}

/// A deleted file comes back as a file with its contents, opened and then
/// unlinked again: at its old name when that is free, else beside it.
fn recreate_deleted(path: &str, blob: Blob, flags: i32, blobs: Option<&File>) -> Result<OwnedFd> {
    let blobs = blobs.ok_or_else(|| Error::Other("image: blobs.img missing".into()))?;
    if blob.len > MAX_DELETED_BYTES {
        return Err(Error::Other(format!(
            "image: deleted file {path} of {} bytes",
            blob.len
        )));
    }
    let mut name = path.to_string();
    let mut n = 0;
    let writer = loop {
        match open_raw(&name, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o600) {
            Ok(fd) => break fd,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && n < 100 => {
                n += 1;
                name = format!("{path}.stasis-deleted-{n}");
            }
            Err(e) => {
                return Err(Error::Io {
                    what: format!("recreating deleted file {path}"),
                    cause: e,
                })
            }
        }
    };
    let res = (|| -> Result<OwnedFd> {
        // SAFETY: borrowing our own fd as a File without taking ownership.
        let w = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(writer.as_raw_fd()) });
        let mut buf = vec![0u8; (blob.len as usize).min(1 << 20)];
        let mut done = 0;
        while done < blob.len {
            let k = ((blob.len - done) as usize).min(buf.len());
            blobs
                .read_exact_at(&mut buf[..k], blob.offset + done)
                .and_then(|_| w.write_all_at(&buf[..k], done))
                .map_err(|e| Error::Io {
                    what: format!("recreating deleted file {path}"),
                    cause: e,
                })?;
            done += k as u64;
        }
        open_raw(&name, flags, 0).map_err(|e| Error::Io {
            what: format!("reopening recreated file {name}"),
            cause: e,
        })
    })();
    let c = cpath(&name)?;
    // SAFETY: unlink of a path we created.
    unsafe { libc::unlink(c.as_ptr()) };
    res
}

/// The new sandbox's log (opened O_APPEND by the sandbox), for fds that
/// pointed at the old one: one description, shared as the old one was.
pub fn dup_log(log_fd: std::os::fd::RawFd) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC of an fd the sandbox's init holds open.
    let fd = unsafe { libc::fcntl(log_fd, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(Error::Io {
            what: "duplicating the sandbox log".into(),
            cause: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` is new and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
