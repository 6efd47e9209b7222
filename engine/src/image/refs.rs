//! Cross-references between the records of an image, checked before
//! anything is created: every index or id one record uses to name another
//! (a process's PID and thread ids, an fd's description, a description's
//! pipe or socket) names one that exists, of the right kind, once where it
//! must be unique. The checks of the records a resource module owns (socket
//! peers, epoll targets, locks, shared memory, page runs) live with it; this
//! holds the ones between the image's files.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use super::{limits, FileKind, FilesImage, Inventory, ProcessImage};
use crate::error::{Error, Result};

fn bad(file: impl Into<PathBuf>, what: String) -> Error {
    Error::BadImage {
        path: file.into(),
        reason: what,
    }
}

/// Checks the references between `inventory.json`, `files.json` and the
/// `proc-<pid>.json` files (`procs`, by the PID the inventory gives them).
pub fn check(
    inventory: &Inventory,
    files: &FilesImage,
    procs: &BTreeMap<i32, ProcessImage>,
) -> Result<()> {
    let mut pids = HashSet::new();
    for e in &inventory.processes {
        if !pids.insert(e.pid) {
            return Err(bad(
                "inventory.json",
                format!("process {} is listed twice", e.pid),
            ));
        }
    }
    // Every thread id once in the whole tree, none another process's PID.
    let mut tids: HashMap<i32, i32> = HashMap::new();
    for (&pid, p) in procs {
        let file = format!("proc-{pid}.json");
        if p.pid != pid {
            return Err(bad(file, format!("holds process {}", p.pid)));
        }
        for t in &p.threads {
            if let Some(other) = tids.insert(t.tid, pid) {
                return Err(bad(
                    file,
                    format!("thread {} is also a thread of process {other}", t.tid),
                ));
            }
            if t.tid != pid && pids.contains(&t.tid) {
                return Err(bad(
                    file,
                    format!("thread {} has the PID of another process", t.tid),
                ));
            }
        }
        for v in &p.vmas {
            if let super::VmaKind::File {
                memfd: Some(m),
                path,
                ..
            } = &v.kind
            {
                if *m as usize >= files.memfds.len() {
                    return Err(bad(
                        file,
                        format!(
                            "area {:#x}-{:#x} maps {path} as memfd {m}, of {} in files.json",
                            v.start,
                            v.end,
                            files.memfds.len()
                        ),
                    ));
                }
            }
        }
        let mut numbers = HashSet::new();
        for f in &p.fds {
            if !(0..limits::MAX_FD_NUMBER).contains(&f.fd) {
                return Err(bad(file, format!("fd {} is out of range", f.fd)));
            }
            if !numbers.insert(f.fd) {
                return Err(bad(file, format!("fd {} appears twice", f.fd)));
            }
            if f.file as usize >= files.files.len() {
                return Err(bad(
                    file,
                    format!(
                        "fd {} refers to file description {} of {}",
                        f.fd,
                        f.file,
                        files.files.len()
                    ),
                ));
            }
        }
    }
    for (i, p) in files.pipes.iter().enumerate() {
        if p.id as usize != i {
            return Err(bad(
                "files.json",
                format!("pipe id {} out of order (at {i})", p.id),
            ));
        }
    }
    let mut socket_used: Vec<Option<u32>> = vec![None; files.sockets.len()];
    for (i, f) in files.files.iter().enumerate() {
        if f.id as usize != i {
            return Err(bad(
                "files.json",
                format!("file description id {} out of order (at {i})", f.id),
            ));
        }
        match &f.kind {
            FileKind::Pipe { pipe, .. } if *pipe as usize >= files.pipes.len() => {
                return Err(bad(
                    "files.json",
                    format!(
                        "file description {i} is pipe {pipe} of {}",
                        files.pipes.len()
                    ),
                ))
            }
            FileKind::Socket { socket } => {
                let Some(used) = socket_used.get_mut(*socket as usize) else {
                    return Err(bad(
                        "files.json",
                        format!(
                            "file description {i} is socket {socket} of {}",
                            files.sockets.len()
                        ),
                    ));
                };
                if let Some(other) = used.replace(i as u32) {
                    return Err(bad(
                        "files.json",
                        format!("socket {socket} is file description {other} and {i}"),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}
