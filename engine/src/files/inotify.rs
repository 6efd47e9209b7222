//! inotify: the watches, one `inotify wd:` line of fdinfo each, with the
//! watched inode's file handle. Dump turns each handle into a path as the
//! sandbox sees it: open_by_handle_at on the sandbox's mount of that file
//! system (through /proc/INIT/root), then the path of the fd we got, checked
//! by stat. Restore adds the watches again in wd order; the kernel hands out
//! wds one after the other, so a gap left by a removed watch is filled by a
//! watch on a scratch memfd, removed afterwards (with its IN_IGNORED event).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use super::{fdinfo_word, last_os_error};
use crate::error::{Error, Result};
use crate::image::{FileKind, InotifyWatch};

/// Most watches restored in one instance (and filler watches for gaps).
const MAX_WATCHES: usize = 1 << 20;
const IN_MASK_ADD: u32 = 0x2000_0000;
const IN_MASK_CREATE: u32 = 0x1000_0000;

struct Raw {
    wd: i32,
    ino: u64,
    sdev: u32,
    mask: u32,
    handle_type: i32,
    handle: Vec<u8>,
}

fn parse(line: &str) -> Option<Raw> {
    let hex = |k: &str| fdinfo_word(line, k).and_then(|v| u64::from_str_radix(v, 16).ok());
    let bytes = hex("fhandle-bytes:")? as usize;
    let h = fdinfo_word(line, "f_handle:")?;
    if h.len() != bytes * 2 {
        return None;
    }
    let handle = (0..bytes)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(Raw {
        wd: hex("wd:")? as i32,
        ino: hex("ino:")?,
        sdev: hex("sdev:")? as u32,
        mask: hex("mask:")? as u32,
        handle_type: hex("fhandle-type:")? as i32,
        handle,
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points (in the sandbox) of the file system `major:minor`, those
/// mounting its root first, the latest mounted first among equals.
fn mounts_of(init: i32, major: u32, minor: u32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{init}/mountinfo")).unwrap_or_default();
    let want = format!("{major}:{minor}");
    let mut v: Vec<(bool, String)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && f[2] == want).then(|| (f[3] != "/", unescape(f[4])))
        })
        .collect();
    v.reverse();
    v.sort_by_key(|(not_root, _)| *not_root);
    v.into_iter().map(|(_, m)| m).collect()
}

/// The path, seen in the sandbox, of the inode a watch names.
fn resolve(init: i32, w: &Raw) -> std::result::Result<String, String> {
    let (major, minor) = (w.sdev >> 20, w.sdev & 0xfffff);
    let dev = libc::makedev(major, minor);
    let root = format!("/proc/{init}/root");
    let mut last = format!("no mount of device {major}:{minor} in the sandbox");
    for m in mounts_of(init, major, minor) {
        let mnt = match std::fs::File::open(format!("{root}{m}")) {
            Ok(f) => f,
            Err(e) => {
                last = format!("opening mount {m}: {e}");
                continue;
            }
        };
        // struct file_handle: u32 handle_bytes, i32 handle_type, bytes.
        let mut fh = Vec::with_capacity(8 + w.handle.len());
        fh.extend_from_slice(&(w.handle.len() as u32).to_ne_bytes());
        fh.extend_from_slice(&w.handle_type.to_ne_bytes());
        fh.extend_from_slice(&w.handle);
        // SAFETY: open_by_handle_at reads the handle from our buffer (its
        // length in the header matches) and returns a new fd or -1.
        let raw = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                mnt.as_raw_fd(),
                fh.as_ptr(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            last = format!(
                "open_by_handle_at on mount {m}: {}",
                std::io::Error::last_os_error()
            );
            continue;
        }
        // SAFETY: `raw` is a new fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        let path = match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(e) => {
                last = format!("path of the watched inode: {e}");
                continue;
            }
        };
        if !path.starts_with('/') || path.ends_with(" (deleted)") {
            last = format!("the watched inode has no path in the sandbox ({path})");
            continue;
        }
        match std::fs::symlink_metadata(format!("{root}{path}")) {
            Ok(md) if md.dev() == dev && md.ino() == w.ino => return Ok(path),
            Ok(_) => last = format!("{path} is another inode in the sandbox"),
            Err(e) => last = format!("{path}: {e}"),
        }
    }
    Err(last)
}

/// Records the watches of the inotify instance at fd `fd` (`dup` is our
/// duplicate of it; `init` the sandbox's init, host PID).
pub fn collect(pid: i32, fd: i32, dup: &OwnedFd, fdinfo: &str, init: i32) -> Result<FileKind> {
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes an int into our variable.
    if unsafe { libc::ioctl(dup.as_raw_fd(), libc::FIONREAD, &mut pending) } != 0 {
        return Err(last_os_error(format!(
            "process {pid}: FIONREAD of inotify fd {fd}"
        )));
    }
    if pending > 0 {
        return Err(Error::Unsupported {
            pid,
            what: format!("fd {fd}: an inotify instance with unread events"),
            detail: format!("{pending} bytes of events queued; they cannot be put back"),
        });
    }
    let mut watches = Vec::new();
    for line in fdinfo.lines().filter(|l| l.starts_with("inotify ")) {
        let raw = parse(line).ok_or_else(|| Error::Process {
            pid,
            reason: format!("fd {fd} (inotify): cannot read the watch {line:?}"),
        })?;
        let path = resolve(init, &raw).map_err(|why| Error::Unsupported {
            pid,
            what: format!(
                "fd {fd}: inotify watch {} whose path cannot be found",
                raw.wd
            ),
            detail: why,
        })?;
        let mut mask = raw.mask;
        let root = format!("/proc/{init}/root{path}");
        if std::fs::symlink_metadata(&root).is_ok_and(|m| m.file_type().is_symlink()) {
            mask |= libc::IN_DONT_FOLLOW;
        }
        watches.push(InotifyWatch {
            wd: raw.wd,
            mask,
            path,
            dev: libc::makedev(raw.sdev >> 20, raw.sdev & 0xfffff),
            ino: raw.ino,
        });
    }
    watches.sort_by_key(|w| w.wd);
    Ok(FileKind::Inotify { watches })
}

pub fn validate(id: u32, watches: &[InotifyWatch]) -> Result<()> {
    let mut last = 0;
    for w in watches {
        if w.wd <= last || w.wd as usize > MAX_WATCHES || w.path.contains('\0') {
            return Err(Error::Other(format!(
                "image: inotify {id}: watch {} out of order or bad",
                w.wd
            )));
        }
        last = w.wd;
    }
    Ok(())
}

fn add_watch(fd: &OwnedFd, path: &str, mask: u32) -> std::io::Result<i32> {
    let c = CString::new(path).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: inotify_add_watch reads our NUL-terminated path.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
    if wd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(wd)
    }
}

/// Creates the instance and adds its watches with their wds.
pub fn open(id: u32, watches: &[InotifyWatch]) -> Result<OwnedFd> {
    // SAFETY: inotify_init1 creates a new fd.
    let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if raw < 0 {
        return Err(last_os_error(format!("creating inotify {id}")));
    }
    // SAFETY: `raw` is a new fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut fillers: Vec<(i32, OwnedFd)> = Vec::new();
    let mut next = 1;
    for w in watches {
        while next < w.wd {
            let name = c"stasis-inotify-gap";
            // SAFETY: memfd_create with a static name creates a new fd.
            let m = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
            if m < 0 {
                return Err(last_os_error("creating a memfd".to_string()));
            }
            // SAFETY: `m` is a new fd owned by nobody else.
            let m = unsafe { OwnedFd::from_raw_fd(m) };
            let got = add_watch(
                &fd,
                &format!("/proc/self/fd/{}", m.as_raw_fd()),
                libc::IN_ATTRIB,
            )
            .map_err(|source| Error::Io {
                what: format!("inotify {id}: filling the gap before watch {}", w.wd),
                cause: source,
            })?;
            if got != next {
                return Err(Error::Other(format!(
                    "inotify {id}: the kernel gave wd {got} where {next} was expected"
                )));
            }
            fillers.push((got, m));
            next += 1;
        }
        let mask = w.mask & !(IN_MASK_ADD | IN_MASK_CREATE);
        let got = add_watch(&fd, &w.path, mask).map_err(|source| Error::Io {
            what: format!("inotify {id}: watching {} (wd {})", w.path, w.wd),
            cause: source,
        })?;
        if got != w.wd {
            return Err(Error::Other(format!(
                "inotify {id}: watching {} gave wd {got}, not {} as at dump",
                w.path, w.wd
            )));
        }
        next = w.wd + 1;
    }
    if !fillers.is_empty() {
        for (wd, _) in &fillers {
            // SAFETY: removing a watch of our own instance.
            if unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), *wd) } != 0 {
                return Err(last_os_error(format!(
                    "inotify {id}: removing gap watch {wd}"
                )));
            }
        }
        drop(fillers);
        drain_ignored(id, &fd)?;
    }
    Ok(fd)
}

/// Reads the IN_IGNORED events of the removed gap watches; any other event
/// (a watched file changed during the restore) would be lost, so it fails.
fn drain_ignored(id: u32, fd: &OwnedFd) -> Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: reading into our buffer from our non-blocking inotify fd.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                return Ok(());
            }
            return Err(Error::Io {
                what: format!("inotify {id}: reading gap events"),
                cause: e,
            });
        }
        let mut at = 0usize;
        while at + 16 <= n as usize {
            let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().expect("4 bytes"));
            let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().expect("4 bytes"));
            if mask != libc::IN_IGNORED {
                return Err(Error::Other(format!(
                    "inotify {id}: a watched file changed during the restore (event {mask:#x})"
                )));
            }
            at += 16 + len as usize;
        }
    }
}
