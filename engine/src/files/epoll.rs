//! epoll: the watched set, one `tfd:` line of fdinfo per watch (target fd
//! number, events, data). A watch is keyed by its target's description and
//! the fd number it was added through, so restore adds every watch again from
//! inside the process that owns the epoll, by that same fd number, once all
//! descriptions exist and the process's fds are in place. A watch whose fd
//! number no longer names its target in the owning process cannot be added
//! that way and is refused at dump.

use std::collections::HashSet;
use std::os::fd::{FromRawFd, OwnedFd};

use super::last_os_error;
use crate::error::{Error, Result};
use crate::image::{EpollWatch, FdEntry, FileKind, FilesImage, ProcessImage};
use crate::remote::Remote;

/// Parses the `tfd:` lines. Target descriptions (`file`) are found later by
/// `resolve`, once every fd of the process is known.
pub fn collect(pid: i32, fd: i32, fdinfo: &str) -> Result<FileKind> {
    let mut watches = Vec::new();
    for line in fdinfo.lines() {
        let Some(rest) = line.strip_prefix("tfd:") else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let tfd = it.next().and_then(|v| v.parse::<i32>().ok());
        let (mut events, mut data) = (None, None);
        while let Some(w) = it.next() {
            match w {
                "events:" => events = it.next().and_then(|v| u32::from_str_radix(v, 16).ok()),
                "data:" => data = it.next().and_then(|v| u64::from_str_radix(v, 16).ok()),
                _ => {}
            }
        }
        match (tfd, events, data) {
            (Some(tfd), Some(events), Some(data)) => watches.push(EpollWatch {
                tfd,
                file: u32::MAX,
                events,
                data,
            }),
            _ => {
                return Err(Error::Process {
                    pid,
                    reason: format!("fd {fd} (epoll): cannot read the watch {line:?}"),
                })
            }
        }
    }
    watches.sort_by_key(|w| w.tfd);
    Ok(FileKind::Epoll {
        owner: pid,
        watches,
    })
}

/// Finds the description of every watch of the epoll at `efd` among the fds
/// of its process: the watch's fd number must still name the very target
/// (kcmp KCMP_EPOLL_TFD), else the watch could not be added back.
pub fn resolve(
    host_pid: i32,
    pid: i32,
    efd: i32,
    watches: &mut [EpollWatch],
    fds: &[FdEntry],
) -> Result<()> {
    let mut seen: HashSet<i32> = HashSet::new();
    for w in watches.iter_mut() {
        let refuse = |why: String| Error::Unsupported {
            pid,
            what: format!("fd {efd}: an epoll watch of fd {}", w.tfd),
            detail: why,
        };
        if !seen.insert(w.tfd) {
            return Err(refuse(
                "two watched descriptions were added through the same fd number".into(),
            ));
        }
        let Some(entry) = fds.iter().find(|f| f.fd == w.tfd) else {
            return Err(refuse(format!(
                "fd {} was closed after it was added, the watch lives on through another fd",
                w.tfd
            )));
        };
        let slot = sys::kcmp::KcmpEpollSlot {
            efd: efd as u32,
            tfd: w.tfd as u32,
            toff: 0,
        };
        let same = sys::kcmp::kcmp(
            host_pid,
            host_pid,
            sys::kcmp::KcmpType::EpollTfd,
            w.tfd as u64,
            &slot as *const _ as u64,
        )
        .map(|k| k.is_equal())
        .unwrap_or(false);
        if !same {
            return Err(refuse(format!(
                "fd {} now names another file than the one watched",
                w.tfd
            )));
        }
        w.file = entry.file;
    }
    Ok(())
}

pub fn open(id: u32) -> Result<OwnedFd> {
    // SAFETY: epoll_create1 creates a new fd.
    let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if raw < 0 {
        return Err(last_os_error(format!("creating epoll {id}")));
    }
    // SAFETY: `raw` is a new fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Checks that every watch names its target by an fd its owner has.
pub fn validate(files: &FilesImage, procs: &[&ProcessImage]) -> Result<()> {
    for f in &files.files {
        let FileKind::Epoll { owner, watches } = &f.kind else {
            continue;
        };
        let Some(p) = procs.iter().find(|p| p.pid == *owner) else {
            return Err(Error::Other(format!(
                "image: epoll {} belongs to process {owner}, which is not in the image",
                f.id
            )));
        };
        if !p.fds.iter().any(|e| e.file == f.id) {
            return Err(Error::Other(format!(
                "image: epoll {} is not open in its process {owner}",
                f.id
            )));
        }
        for w in watches {
            if !p.fds.iter().any(|e| e.fd == w.tfd && e.file == w.file) {
                return Err(Error::Other(format!(
                    "image: epoll {} of process {owner} watches fd {}, which is not file {} there",
                    f.id, w.tfd, w.file
                )));
            }
        }
    }
    Ok(())
}

/// Adds the watches of every epoll process `p` owns, from inside it.
/// `scratch` is a page of the task's memory.
pub fn restore_watches(
    r: &mut Remote,
    p: &ProcessImage,
    files: &FilesImage,
    scratch: u64,
) -> Result<()> {
    let mut done = HashSet::new();
    for e in &p.fds {
        let Some(FileKind::Epoll { owner, watches }) =
            files.files.get(e.file as usize).map(|f| &f.kind)
        else {
            continue;
        };
        if *owner != p.pid || !done.insert(e.file) {
            continue;
        }
        for w in watches {
            let mut ev = [0u8; 12];
            ev[..4].copy_from_slice(&w.events.to_ne_bytes());
            ev[4..].copy_from_slice(&w.data.to_ne_bytes());
            r.write_mem(scratch, &ev)?;
            r.call(
                &format!("epoll_ctl(fd {}, EPOLL_CTL_ADD, fd {})", e.fd, w.tfd),
                libc::SYS_epoll_ctl,
                [
                    e.fd as u64,
                    libc::EPOLL_CTL_ADD as u64,
                    w.tfd as u64,
                    scratch,
                    0,
                    0,
                ],
            )?;
        }
    }
    Ok(())
}
