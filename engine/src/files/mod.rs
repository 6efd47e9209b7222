//! Open files: every fd of every process, pointing at open file descriptions
//! that are recorded once however many fds and processes share them (kcmp
//! tells which fds share one). `regular` handles files reopened by path,
//! `pipe` pipes and FIFOs with their unread data.
//!
//! Restore opens every description once, in the sandbox's init before the
//! tree is forked, moves them above every fd number the tree uses, and each
//! restored process then puts its fds in place with dup3.

pub mod pipe;
pub mod regular;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::error::{Error, Result};
use crate::image::{FdEntry, FileDesc, FileKind, FilesImage, PageSink};

/// Builds `files.json` while the tree is dumped.
pub struct FileTable {
    pub image: FilesImage,
    /// Our duplicate of one fd per description, with its (dev, ino), for kcmp.
    reps: Vec<(u64, u64, OwnedFd)>,
    by_inode: HashMap<(u64, u64), Vec<usize>>,
    pipes: HashMap<u64, u32>,
    log_id: (u64, u64),
    /// Sockets (see `crate::net`).
    pub net: crate::net::SocketTable,
}

/// fdinfo fields.
pub struct FdInfo {
    pub pos: u64,
    pub flags: u32,
}

pub fn read_fdinfo(pid: i32, fd: i32) -> Result<FdInfo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).map_err(|e| {
        Error::Process {
            pid,
            reason: format!("reading fdinfo of fd {fd}: {e}"),
        }
    })?;
    let mut info = FdInfo { pos: 0, flags: 0 };
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("pos:") {
            info.pos = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("flags:") {
            info.flags = u32::from_str_radix(v.trim(), 8).unwrap_or(0);
        }
    }
    Ok(info)
}

fn kcmp_same(a: RawFd, b: RawFd) -> bool {
    // SAFETY: kcmp only compares kernel objects of our own process.
    let me = unsafe { libc::getpid() };
    sys::kcmp::kcmp(me, me, sys::kcmp::KcmpType::File, a as u64, b as u64)
        .map(|r| r.is_equal())
        .unwrap_or(false)
}

impl FileTable {
    /// `log` is the sandbox's log file: fds on it are reopened on the new log.
    pub fn new(log: &std::path::Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        let log_id = std::fs::metadata(log)
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or((u64::MAX, u64::MAX));
        FileTable {
            image: FilesImage::default(),
            reps: Vec::new(),
            by_inode: HashMap::new(),
            pipes: HashMap::new(),
            log_id,
            net: Default::default(),
        }
    }

    /// Records every fd of `pid`. Unsupported kinds stop the dump with an
    /// error naming the process, the fd and its kind.
    /// `host_pid` is the process seen from here, `pid` its PID in the sandbox
    /// (the one errors name).
    pub fn collect(
        &mut self,
        host_pid: i32,
        pid: i32,
        pidfd: &OwnedFd,
        blobs: &mut PageSink,
    ) -> Result<Vec<FdEntry>> {
        let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{host_pid}/fd"))
            .map_err(|e| Error::Process {
                pid,
                reason: format!("listing fds: {e}"),
            })?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();
        let mut out = Vec::with_capacity(fds.len());
        for fd in fds {
            let link = std::fs::read_link(format!("/proc/{host_pid}/fd/{fd}"))
                .map_err(|e| Error::Process {
                    pid,
                    reason: format!("reading fd {fd}: {e}"),
                })?
                .to_string_lossy()
                .to_string();
            let dup = sys::pidfd::pidfd_getfd(std::os::fd::AsFd::as_fd(pidfd), fd)?;
            let st = nix::sys::stat::fstat(&dup).map_err(|e| Error::Process {
                pid,
                reason: format!("fstat of fd {fd} ({link}): {e}"),
            })?;
            let info = read_fdinfo(host_pid, fd)?;
            let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
            let key = (st.st_dev, st.st_ino);
            // Already seen through another fd?
            if let Some(ids) = self.by_inode.get(&key) {
                if let Some(&i) = ids
                    .iter()
                    .find(|&&i| kcmp_same(self.reps[i].2.as_raw_fd(), dup.as_raw_fd()))
                {
                    out.push(FdEntry {
                        fd,
                        cloexec,
                        file: i as u32,
                    });
                    continue;
                }
            }
            let flags = info.flags & !(libc::O_CLOEXEC as u32);
            let fmt = st.st_mode & libc::S_IFMT;
            let kind = if key == self.log_id {
                FileKind::SandboxLog
            } else if fmt == libc::S_IFIFO {
                let next = self.image.pipes.len() as u32;
                let id = *self.pipes.entry(st.st_ino).or_insert(next);
                if id == next {
                    let img = pipe::collect(host_pid, fd, &dup, st.st_ino, id, blobs)?;
                    self.image.pipes.push(img);
                }
                let fifo = (!link.starts_with("pipe:")).then(|| link.clone());
                FileKind::Pipe { pipe: id, fifo }
            } else if fmt == libc::S_IFSOCK {
                self.net.collect(host_pid, pid, fd, &dup, st.st_ino)?
            } else if fmt == libc::S_IFREG || fmt == libc::S_IFDIR || fmt == libc::S_IFCHR {
                regular::collect(pid, fd, &link, &dup, &st, info.pos, blobs)?
            } else {
                let what = if link.starts_with("anon_inode:") {
                    link.as_str()
                } else {
                    "file of this type"
                };
                return Err(Error::Unsupported {
                    pid,
                    what: format!("fd {fd}: {what}"),
                    detail: link,
                });
            };
            let id = self.image.files.len() as u32;
            self.image.files.push(FileDesc { id, flags, kind });
            self.reps.push((key.0, key.1, dup));
            self.by_inode.entry(key).or_default().push(id as usize);
            out.push(FdEntry {
                fd,
                cloexec,
                file: id,
            });
        }
        Ok(out)
    }

    /// Completes the socket records once every process was collected.
    pub fn finish_sockets(&mut self, blobs: &mut PageSink) -> Result<()> {
        let (sockets, unix_files) = self.net.finish(blobs)?;
        self.image.sockets = sockets;
        self.image.unix_files = unix_files;
        Ok(())
    }
}

/// The open descriptions of a restore, held by init until the tree is forked.
pub struct OpenFiles {
    /// fd in this process of each description, by id.
    pub fds: Vec<OwnedFd>,
    /// Pipe ends kept open only to fill the pipes (closed after the fork).
    pub holders: Vec<OwnedFd>,
}

/// Opens every description of the image (run in the sandbox's mount
/// namespace, before the tree is forked). `log_fd` is the new sandbox's log.
pub fn open_all(
    files: &FilesImage,
    blobs: Option<&std::fs::File>,
    log_fd: RawFd,
) -> Result<OpenFiles> {
    let mut pipes = pipe::PipeSet::create(&files.pipes, blobs)?;
    let mut sockets = if files.sockets.is_empty() {
        None
    } else {
        Some(crate::net::SocketSet::create(
            &files.sockets,
            &files.unix_files,
            blobs,
        )?)
    };
    let mut fds = Vec::with_capacity(files.files.len());
    for (i, f) in files.files.iter().enumerate() {
        if f.id as usize != i {
            return Err(Error::Other(format!(
                "image: file id {} out of order",
                f.id
            )));
        }
        let fd = match &f.kind {
            FileKind::SandboxLog => regular::dup_log(log_fd)?,
            FileKind::Path { .. } => regular::open(f, blobs)?,
            FileKind::Pipe { pipe, fifo } => pipes.open_end(*pipe, fifo.as_deref(), f.flags)?,
            FileKind::Socket { socket } => sockets
                .as_mut()
                .ok_or_else(|| Error::Other(format!("image: file {i} is a socket of none")))?
                .open(*socket, f.flags)?,
        };
        fds.push(fd);
    }
    Ok(OpenFiles {
        fds,
        holders: pipes.into_holders(),
    })
}

/// Checks every fd entry points at a description that exists.
pub fn validate(pid: i32, fds: &[FdEntry], files: &FilesImage) -> Result<()> {
    for f in fds {
        if f.fd < 0 || f.file as usize >= files.files.len() {
            return Err(Error::Other(format!(
                "image of process {pid}: fd {} refers to file {} of {}",
                f.fd,
                f.file,
                files.files.len()
            )));
        }
    }
    Ok(())
}
