//! Open files: every fd of every process, pointing at open file descriptions
//! that are recorded once however many fds and processes share them (kcmp
//! tells which fds share one). `regular` handles files reopened by path,
//! `ghost` files deleted while open or mapped, `pipe` pipes and FIFOs with
//! their unread data, `memfd` memfds (also when mapped), `eventfd`,
//! `timerfd`, `signalfd`, `epoll`, `inotify` and `pidfd` the anonymous
//! kinds, `locks` flock, POSIX and OFD locks (also held through mappings),
//! `tty` the ptys of the sandbox's devpts (and the refusal of other
//! terminals).
//!
//! Restore opens every description once, in the sandbox's init before the
//! tree is forked, moves them to fd numbers no process of the tree uses
//! (`FdPlan`), and each restored process then puts its fds in place with
//! dup3.

pub mod epoll;
pub mod eventfd;
pub mod ghost;
pub mod inotify;
pub mod locks;
pub mod memfd;
pub mod pidfd;
pub mod pipe;
pub mod regular;
pub mod signalfd;
pub mod timerfd;
pub mod tty;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::error::{Error, Result};
use crate::image::{
    FdEntry, FileDesc, FileKind, FilesImage, LockKind, PageSink, ProcessImage, Vma, VmaKind,
};
use crate::remote::Remote;

/// Builds `files.json` while the tree is dumped.
pub struct FileTable {
    pub image: FilesImage,
    /// Our duplicate of one fd per description, with its (dev, ino), for kcmp.
    reps: Vec<(u64, u64, OwnedFd)>,
    /// Descriptions by (dev, ino, eventfd id + 1 or 0), each list in kcmp
    /// order (the eventfd id tells apart the eventfds, which share an inode).
    by_inode: HashMap<(u64, u64, u64), Vec<usize>>,
    pipes: HashMap<u64, u32>,
    log_id: (u64, u64),
    /// memfd objects by (dev, ino).
    memfds: HashMap<(u64, u64), u32>,
    /// Files deleted while open or mapped.
    ghosts: ghost::GhostTable,
    /// Host PID of every process of the tree -> its PID in the sandbox.
    tree: HashMap<i32, i32>,
    /// Host PID of the sandbox's init (its view of paths and mounts).
    init: i32,
    /// Sockets (see `crate::net`).
    pub net: crate::net::SocketTable,
    /// The tree's file mappings, by inode (see `locks::check`).
    mappings: locks::Mappings,
}

/// fdinfo fields.
pub struct FdInfo {
    pub pos: u64,
    pub flags: u32,
    /// The whole of fdinfo, for the fields of each kind.
    pub text: String,
}

/// The value of a `key:` line of fdinfo, trimmed.
pub fn fdinfo_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

/// The value of a `key:value` word of one fdinfo line.
pub fn fdinfo_word<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

/// An error from errno, naming what was being done.
pub(crate) fn last_os_error(what: String) -> Error {
    Error::Io {
        what,
        cause: std::io::Error::last_os_error(),
    }
}

/// The fdinfo of fd `fd`, read through `dir`, the process's /proc/PID/fdinfo
/// opened once (no lookup of the process for every fd).
fn read_fdinfo(dir: &OwnedFd, pid: i32, fd: i32) -> Result<FdInfo> {
    use std::io::Read;
    let mut text = String::new();
    nix::fcntl::openat(
        dir,
        fd.to_string().as_str(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map(std::fs::File::from)
    .map_err(std::io::Error::from)
    .and_then(|mut f| f.read_to_string(&mut text))
    .map_err(|e| Error::Process {
        pid,
        reason: format!("reading fdinfo of fd {fd}: {e}"),
    })?;
    Ok(FdInfo {
        pos: fdinfo_field(&text, "pos:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        flags: fdinfo_field(&text, "flags:")
            .and_then(|v| u32::from_str_radix(v, 8).ok())
            .unwrap_or(0),
        text,
    })
}

/// How open file description `a` compares with `b` (both fds of ours) in
/// kcmp's order. kcmp orders descriptions by their kernel pointers, obfuscated
/// with keys fixed at boot, so the order is total and stable while both stay
/// open: descriptions of one inode can be kept sorted by it and searched in
/// log n calls. An error counts as "different" (no sharing is found then).
/// `me` is our PID.
fn kcmp_order(me: i32, a: RawFd, b: RawFd) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match sys::kcmp::kcmp(me, me, sys::kcmp::KcmpType::File, a as u64, b as u64) {
        Ok(sys::kcmp::Kcmp::Equal) => Ordering::Equal,
        Ok(sys::kcmp::Kcmp::Greater) => Ordering::Greater,
        _ => Ordering::Less,
    }
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
            memfds: HashMap::new(),
            ghosts: ghost::GhostTable::default(),
            tree: HashMap::new(),
            init: 0,
            net: Default::default(),
            mappings: Default::default(),
        }
    }

    /// The sandbox's init (host PID) and the processes of the tree (host
    /// PID -> PID in the sandbox), for pidfds and inotify paths.
    pub fn set_tree(&mut self, init: i32, tree: HashMap<i32, i32>) {
        self.init = init;
        self.tree = tree;
    }

    /// The id of the memfd object (dev, ino), saved on first sight through
    /// `path` (a /proc link that opens it).
    fn memfd_object(
        &mut self,
        pid: i32,
        what: &str,
        key: (u64, u64),
        path: &str,
        link: &str,
        blobs: &mut PageSink,
    ) -> Result<u32> {
        if let Some(&id) = self.memfds.get(&key) {
            return Ok(id);
        }
        let id = self.image.memfds.len() as u32;
        let img = memfd::collect(pid, what, path, link, id, blobs)?;
        self.image.memfds.push(img);
        self.memfds.insert(key, id);
        Ok(id)
    }

    /// Gives every mapping of a deleted file of process `pid` (host PID
    /// `host_pid`) its saved object: a memfd or a ghost, saved through
    /// /proc/PID/map_files when no fd showed it.
    pub fn attach_deleted(
        &mut self,
        host_pid: i32,
        pid: i32,
        vmas: &mut [Vma],
        blobs: &mut PageSink,
    ) -> Result<()> {
        for v in vmas.iter_mut() {
            let (start, end) = (v.start, v.end);
            let shared_writable = v.shared && v.prot & libc::PROT_WRITE as u32 != 0;
            if let VmaKind::File {
                path,
                dev,
                ino,
                deleted: true,
                memfd,
                ghost,
                ..
            } = &mut v.kind
            {
                let open = format!("/proc/{host_pid}/map_files/{start:x}-{end:x}");
                let what = format!("mapping {start:#x}-{end:#x}");
                if memfd.is_none() && path.starts_with("/memfd:") {
                    let id = self.memfd_object(pid, &what, (*dev, *ino), &open, path, blobs)?;
                    *memfd = Some(id);
                } else if memfd.is_none() && ghost.is_none() {
                    let seen = ghost::Seen {
                        pid,
                        what: &what,
                        key: (*dev, *ino),
                        open: &open,
                        link: path,
                        tmpfile: false,
                        root: &format!("/proc/{host_pid}/root"),
                    };
                    *ghost = Some(self.ghosts.save(&mut self.image.ghosts, seen, blobs)?);
                }
                // The seals are put back before the memory: a writable shared
                // mapping made before F_SEAL_FUTURE_WRITE could not be.
                let seals = memfd.map_or(0, |m| self.image.memfds[m as usize].seals);
                if shared_writable
                    && seals & (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) as u32 != 0
                {
                    return Err(Error::Unsupported {
                        pid,
                        what: format!(
                            "writable shared mapping {start:#x}-{end:#x} of a write-sealed memfd"
                        ),
                        detail: path.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// A deleted working directory of process `pid` (host PID `host_pid`)
    /// becomes a ghost directory, entered again at restore through its fd.
    pub fn attach_cwd(
        &mut self,
        host_pid: i32,
        pid: i32,
        core: &mut crate::image::Core,
        blobs: &mut PageSink,
    ) -> Result<()> {
        if !core.cwd.ends_with(" (deleted)") {
            return Ok(());
        }
        let open = format!("/proc/{host_pid}/cwd");
        let st = nix::sys::stat::stat(open.as_str()).map_err(|e| Error::Process {
            pid,
            reason: format!("stat of its deleted cwd {}: {e}", core.cwd),
        })?;
        let seen = ghost::Seen {
            pid,
            what: "its working directory",
            key: (st.st_dev, st.st_ino),
            open: &open,
            link: &core.cwd,
            tmpfile: false,
            root: &format!("/proc/{host_pid}/root"),
        };
        core.cwd_ghost = Some(self.ghosts.save(&mut self.image.ghosts, seen, blobs)?);
        core.cwd = ghost::path_of(&core.cwd).to_string();
        Ok(())
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
        let open_dir = |what: &str| {
            nix::fcntl::open(
                format!("/proc/{host_pid}/{what}").as_str(),
                nix::fcntl::OFlag::O_RDONLY
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| Error::Process {
                pid,
                reason: format!("opening /proc/{host_pid}/{what}: {e}"),
            })
        };
        let (fd_dir, fdinfo_dir) = (open_dir("fd")?, open_dir("fdinfo")?);
        let me = std::process::id() as i32;
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
        // Epolls first seen here: their watches name fds of this process.
        let mut epolls: Vec<(i32, usize)> = Vec::new();
        for fd in fds {
            let link = nix::fcntl::readlinkat(&fd_dir, fd.to_string().as_str())
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
            let info = read_fdinfo(&fdinfo_dir, host_pid, fd)?;
            let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
            let key = (st.st_dev, st.st_ino);
            let eventfd_id = fdinfo_field(&info.text, "eventfd-id:")
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |id| id + 1);
            let bucket = (key.0, key.1, eventfd_id);
            // Already seen through another fd? The descriptions of one inode
            // (all eventfds share one, say) are kept in kcmp order: a binary
            // search, not a comparison with each of them.
            let ids = self.by_inode.get(&bucket).map(Vec::as_slice).unwrap_or(&[]);
            let place = ids
                .binary_search_by(|&i| kcmp_order(me, self.reps[i].2.as_raw_fd(), dup.as_raw_fd()));
            if let Ok(at) = place {
                {
                    let i = ids[at];
                    locks::collect(pid, fd, i as u32, false, &info.text, &mut self.image.locks)?;
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
            } else if memfd::is_memfd(&link, &st) {
                let open = format!("/proc/{host_pid}/fd/{fd}");
                let what = format!("fd {fd}");
                let memfd = self.memfd_object(pid, &what, key, &open, &link, blobs)?;
                FileKind::Memfd {
                    memfd,
                    pos: info.pos,
                }
            } else if fmt == libc::S_IFSOCK {
                self.net.collect(host_pid, pid, fd, &dup, st.st_ino)?
            } else if fmt == libc::S_IFREG || fmt == libc::S_IFDIR || fmt == libc::S_IFCHR {
                if let Some(end) =
                    tty::check_dump((pid, host_pid), fd, &link, &dup, &st, self.init)?
                {
                    if end.dev_tty {
                        FileKind::DevTty { pty: end.index }
                    } else {
                        FileKind::Pty {
                            pty: end.index,
                            master: end.master,
                        }
                    }
                } else {
                    let deleted = st.st_nlink == 0;
                    let ghost = if deleted {
                        let (open, what) =
                            (format!("/proc/{host_pid}/fd/{fd}"), format!("fd {fd}"));
                        let seen = ghost::Seen {
                            pid,
                            what: &what,
                            key,
                            open: &open,
                            link: &link,
                            tmpfile: info.flags & ghost::O_TMPFILE_BIT != 0,
                            root: &format!("/proc/{host_pid}/root"),
                        };
                        Some(self.ghosts.save(&mut self.image.ghosts, seen, blobs)?)
                    } else {
                        None
                    };
                    regular::collect(pid, fd, &link, &st, info.pos, ghost)?
                }
            } else if let Some(kind) = self.collect_anon(pid, fd, &link, &dup, &info.text)? {
                if matches!(kind, FileKind::Epoll { .. }) {
                    epolls.push((fd, self.image.files.len()));
                }
                kind
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
            locks::collect(pid, fd, id, true, &info.text, &mut self.image.locks)?;
            self.image.files.push(FileDesc { id, flags, kind });
            self.reps.push((key.0, key.1, dup));
            let at = place.unwrap_err();
            self.by_inode
                .entry(bucket)
                .or_default()
                .insert(at, id as usize);
            out.push(FdEntry {
                fd,
                cloexec,
                file: id,
            });
        }
        for (efd, i) in epolls {
            if let FileKind::Epoll { watches, .. } = &mut self.image.files[i].kind {
                epoll::resolve(host_pid, pid, efd, watches, &out)?;
            }
        }
        Ok(out)
    }

    /// Cross-checks /proc/locks once every process is collected (see
    /// `locks::check`): a lock no fd shows is recorded as held through a
    /// mapping of the tree, or refused.
    pub fn check_locks(&mut self, reader: &mut LocksReader) -> Result<()> {
        let text = reader.listing().map_err(|e| Error::Io {
            what: "reading /proc/locks".into(),
            cause: e,
        })?;
        let (image, reps) = (&self.image, &self.reps);
        // A description holds each of its flock and OFD locks once: a
        // record accounts for one line (two descriptions can hold the same
        // shared lock, one of them through a mapping only).
        let mut used = vec![false; image.locks.len()];
        let seen = |kind, inode, start, len, pid| {
            let found = image.locks.iter().enumerate().position(|(i, l)| {
                let (dev, ino) = (reps[l.file as usize].0, reps[l.file as usize].1);
                l.kind == kind
                    && (libc::major(dev), libc::minor(dev), ino) == inode
                    && (l.start, l.len) == (start, len)
                    && (kind != LockKind::Posix || l.pid == pid)
                    && (kind == LockKind::Posix || !used[i])
            });
            if let Some(i) = found {
                used[i] = true;
            }
            found.is_some()
        };
        let mapped = locks::check(&text, &self.tree, seen, &self.mappings)?;
        self.image.mapped_locks = mapped;
        Ok(())
    }

    /// Notes the file mappings of process `pid` (PID in the sandbox), where
    /// a lock no fd shows may be held (`check_locks`).
    pub fn note_mappings(&mut self, pid: i32, vmas: &[Vma]) {
        self.mappings.note(pid, vmas);
    }

    /// The kinds behind anon_inode links (and pidfds). None: not supported.
    fn collect_anon(
        &self,
        pid: i32,
        fd: i32,
        link: &str,
        dup: &OwnedFd,
        fdinfo: &str,
    ) -> Result<Option<FileKind>> {
        Ok(Some(match link {
            "anon_inode:[eventfd]" => eventfd::collect(pid, fd, fdinfo)?,
            "anon_inode:[timerfd]" => timerfd::collect(pid, fd, dup)?,
            "anon_inode:[signalfd]" => signalfd::collect(pid, fd, fdinfo)?,
            "anon_inode:[eventpoll]" => epoll::collect(pid, fd, fdinfo)?,
            "anon_inode:inotify" => inotify::collect(pid, fd, dup, fdinfo, self.init)?,
            "anon_inode:[pidfd]" => pidfd::collect(pid, fd, fdinfo, &self.tree)?,
            _ => return Ok(None),
        }))
    }
    /// Saves every pty the tree's fds showed, in index order, and points
    /// their descriptions at the records (`FileKind::Pty`'s `pty` holds the
    /// index until then). A slave whose master the tree does not hold is
    /// refused.
    pub fn finish_ptys(&mut self) -> Result<()> {
        // Index -> (its master description, whether a slave is held).
        let mut found: std::collections::BTreeMap<u32, (Option<usize>, bool)> = Default::default();
        for f in &self.image.files {
            let end = match f.kind {
                FileKind::Pty { pty, master } => Some((pty, master)),
                FileKind::DevTty { pty } => Some((pty, false)),
                _ => None,
            };
            if let Some((pty, master)) = end {
                let e = found.entry(pty).or_default();
                if master {
                    e.0 = Some(f.id as usize);
                } else {
                    e.1 = true;
                }
            }
        }
        let mut pos = HashMap::new();
        for (index, (master, slave_held)) in found {
            let Some(m) = master else {
                return Err(Error::Other(format!(
                    "pty {index} of the sandbox's devpts: the tree holds a slave but not its \
                     master (a hung-up terminal is not checkpointed)"
                )));
            };
            pos.insert(index, self.image.ptys.len() as u32);
            let img = tty::collect_pty(index, &self.reps[m].2, &self.tree, slave_held)?;
            self.image.ptys.push(img);
        }
        for f in &mut self.image.files {
            if let FileKind::Pty { pty, .. } | FileKind::DevTty { pty } = &mut f.kind {
                *pty = pos[pty];
            }
        }
        Ok(())
    }

    /// Completes the socket records once every process was collected.
    pub fn finish_sockets(&mut self, blobs: &mut PageSink) -> Result<()> {
        let (sockets, unix_files) = self.net.finish(blobs)?;
        self.image.sockets = sockets;
        self.image.unix_files = unix_files;
        Ok(())
    }
}

/// /proc/locks read by a thread of its own while the dump goes on, so that
/// the grace period each read may wait for is not on the dump's path.
///
/// Every read of /proc/locks takes the kernel's file-lock rwsem for writing
/// (`percpu_down_write`), and the first writer after a quiet spell waits for
/// an RCU grace period (6 to 13 ms on a 2-CPU guest, more under load) before
/// the rwsem's readers are switched to their slow path; writers that come
/// while the switch is in place, or up to about a grace period after the last
/// writer left, do not wait again. The thread reads once as the dump starts
/// (contents thrown away: that read only starts the grace period), then, once
/// every thread of the tree is stopped ([`LocksReader::tree_stopped`]),
/// reads the listing the dump checks. Locks of stopped processes cannot
/// change, so that listing is as good as one read after the collection.
///
/// The thread lives only until [`LocksReader::listing`] or drop joins it, so
/// stasis is single-threaded again before anything forks, calls clone3 or
/// enters a namespace that requires it.
pub struct LocksReader {
    go: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<String>>>,
}

impl LocksReader {
    /// Starts the thread. When no thread can be started, [`listing`] reads
    /// /proc/locks itself.
    ///
    /// [`listing`]: LocksReader::listing
    pub fn start() -> LocksReader {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("stasis-locks".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                use std::io::Read;
                if let Ok(mut f) = std::fs::File::open("/proc/locks") {
                    // One byte is enough: the read takes the rwsem all the same.
                    let _ = f.read(&mut [0u8; 1]);
                }
                rx.recv()
                    .map_err(|_| std::io::Error::other("the dump ended before its tree stopped"))?;
                read_proc_locks()
            })
            .ok();
        LocksReader {
            go: Some(tx),
            thread,
        }
    }

    /// Every thread of the tree is stopped: the listing may be read now.
    pub fn tree_stopped(&mut self) {
        if let Some(tx) = self.go.take() {
            let _ = tx.send(());
        }
    }

    /// The listing read after the tree stopped.
    pub fn listing(&mut self) -> std::io::Result<String> {
        self.tree_stopped();
        match self.thread.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the /proc/locks reader panicked"))),
            None => read_proc_locks(),
        }
    }
}

impl Drop for LocksReader {
    fn drop(&mut self) {
        // Without the go, the thread ends after its first read.
        self.go = None;
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

/// /proc/locks, read in as few calls as possible: every read(2) of it takes the
/// kernel's file-lock rwsem for writing, which waits for an RCU grace period
/// (milliseconds here) unless another read came shortly before (see
/// [`LocksReader`]). One large read returns everything when the output is
/// shorter than the buffer: a short read of a seq_file means its end.
fn read_proc_locks() -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open("/proc/locks")?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The open descriptions of a restore, held by init until the tree is forked.
pub struct OpenFiles {
    /// fd in this process of each description, by id.
    pub fds: Vec<OwnedFd>,
    /// Pipe ends kept open only to fill the pipes (closed after the fork).
    pub holders: Vec<OwnedFd>,
    /// A slave description of every pty that is a session's controlling
    /// terminal, by position in `FilesImage::ptys` (see `tty::PtySet`).
    pub ctty: Vec<Option<OwnedFd>>,
}

/// Opens every description of the image (run in the sandbox's mount
/// namespace, before the tree is forked). `log_fd` is the new sandbox's log.
pub fn open_all(
    files: &FilesImage,
    blobs: Option<&std::fs::File>,
    log_fd: RawFd,
) -> Result<OpenFiles> {
    let mut pipes = pipe::PipeSet::create(&files.pipes, blobs)?;
    let memfds = files
        .memfds
        .iter()
        .map(|m| memfd::create(m, blobs))
        .collect::<Result<Vec<_>>>()?;
    let ghosts = files
        .ghosts
        .iter()
        .map(|g| ghost::create(g, blobs))
        .collect::<Result<Vec<_>>>()?;
    let mut ptys = tty::PtySet::create(files)?;
    let mut fds = Vec::with_capacity(files.files.len() + memfds.len() + ghosts.len());
    // Whether memfd_create's own description of each memfd is taken.
    let mut created_used = vec![false; memfds.len()];
    let mut sockets = if files.sockets.is_empty() {
        None
    } else {
        Some(crate::net::SocketSet::create(
            &files.sockets,
            &files.unix_files,
            blobs,
        )?)
    };
    for (i, f) in files.files.iter().enumerate() {
        if f.id as usize != i {
            return Err(Error::Other(format!(
                "image: file id {} out of order",
                f.id
            )));
        }
        let fd = (|| -> Result<OwnedFd> {
            Ok(match &f.kind {
                FileKind::SandboxLog => regular::dup_log(log_fd)?,
                FileKind::Path { .. } => regular::open(f, blobs, &ghosts, &files.ghosts)?,
                FileKind::Pipe { pipe, fifo } => pipes.open_end(*pipe, fifo.as_deref(), f.flags)?,
                FileKind::Memfd { memfd, pos } => {
                    let m = *memfd as usize;
                    let (img, anchor) = (&files.memfds[m], &memfds[m]);
                    if f.flags as i32 & libc::O_ACCMODE == libc::O_RDWR && !created_used[m] {
                        created_used[m] = true;
                        memfd::created_desc(img, anchor, f.flags, *pos)?
                    } else {
                        memfd::open_desc(img, anchor, f.flags, *pos)?
                    }
                }
                FileKind::Eventfd { count, semaphore } => {
                    set_status_flags(f, eventfd::open(f.id, *count, *semaphore)?)?
                }
                FileKind::Timerfd { .. } => set_status_flags(f, timerfd::open(f.id, &f.kind)?)?,
                FileKind::Signalfd { sigmask } => {
                    set_status_flags(f, signalfd::open(f.id, *sigmask)?)?
                }
                FileKind::Epoll { .. } => set_status_flags(f, epoll::open(f.id)?)?,
                FileKind::Inotify { watches } => {
                    set_status_flags(f, inotify::open(f.id, watches)?)?
                }
                // The process opens the pidfd itself once the tree exists
                // (`restore_in_task`); until then its fds hold /dev/null.
                FileKind::Pidfd { pid: pidfd::DEAD } => pidfd::open_dead(f.flags)?,
                FileKind::Pidfd { .. } => pidfd::open_placeholder()?,
                FileKind::Socket { socket } => sockets
                    .as_mut()
                    .ok_or_else(|| Error::Other(format!("image: file {i} is a socket of none")))?
                    .open(*socket, f.flags)?,
                FileKind::Pty { pty, master } => ptys.open(f, *pty, *master)?,
                FileKind::DevTty { pty } => ptys.open_dev_tty(f, *pty)?,
            })
        })()
        .map_err(|cause| Error::File {
            id: f.id,
            cause: Box::new(cause),
        })?;
        fds.push(fd);
    }
    tty::PtySet::lock(files, &fds)?;
    locks::restore_desc(files, &fds)?;
    // The memfds and deleted files themselves, after the descriptions:
    // passed to the processes that map them (`slots`).
    fds.extend(memfds);
    fds.extend(ghosts);
    Ok(OpenFiles {
        fds,
        holders: pipes.into_holders(),
        ctty: ptys.ctty,
    })
}

/// Sets the status flags of a new description as recorded (O_NONBLOCK, ...).
fn set_status_flags(f: &FileDesc, fd: OwnedFd) -> Result<OwnedFd> {
    let fl = f.flags as i32 & (libc::O_NONBLOCK | libc::O_APPEND | libc::O_NOATIME);
    // SAFETY: F_SETFL on an fd we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl) } < 0 {
        return Err(last_os_error(format!("setting the flags of file {}", f.id)));
    }
    Ok(fd)
}

/// An object a restored process maps through an fd passed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Memfd(u32),
    Ghost(u32),
}

/// The fds a restored process needs only while it is rebuilt: the memfds
/// and deleted files it maps and its deleted working directory, as (object, index of the fd in
/// `OpenFiles::fds`), to be put at fd numbers above all of the tree's, in
/// this order.
pub fn slots(p: &ProcessImage, files: &FilesImage) -> Vec<(Slot, u32)> {
    let memfds = files.files.len() as u32;
    let ghosts = memfds + files.memfds.len() as u32;
    let mut mapped: Vec<u32> = p
        .vmas
        .iter()
        .filter_map(|v| match &v.kind {
            VmaKind::File {
                ghost: Some(g),
                memfd: None,
                ..
            } => Some(*g),
            _ => None,
        })
        .chain(p.core.cwd_ghost)
        .collect();
    mapped.sort_unstable();
    mapped.dedup();
    memfd::mapped(p)
        .into_iter()
        .map(|id| (Slot::Memfd(id), memfds + id))
        .chain(mapped.into_iter().map(|g| (Slot::Ghost(g), ghosts + g)))
        .collect()
}

/// What a restored process does from inside, once all its fds are in place
/// and nothing will close an fd in it any more: opens its pidfds, adds the
/// watches of the epolls it owns, takes its POSIX locks.
pub fn restore_in_task(
    r: &mut Remote,
    p: &ProcessImage,
    files: &FilesImage,
    scratch: u64,
) -> Result<()> {
    pidfd::restore(r, p, files)?;
    epoll::restore_watches(r, p, files, scratch)?;
    locks::restore_posix(r, p, files, scratch)
}

/// Checks what links processes and descriptions: epoll owners and targets,
/// pidfd targets, memfds, locks. `procs` are the live processes, `pids`
/// every process of the image (zombies too).
pub fn validate_links(
    files: &FilesImage,
    procs: &[&ProcessImage],
    pids: &std::collections::HashSet<i32>,
) -> Result<()> {
    for (i, m) in files.memfds.iter().enumerate() {
        memfd::validate(m, i)?;
    }
    for (i, g) in files.ghosts.iter().enumerate() {
        ghost::validate(g, i)?;
    }
    for f in &files.files {
        match &f.kind {
            FileKind::Path {
                ghost: Some(g),
                mode,
                ..
            } if files
                .ghosts
                .get(*g as usize)
                .is_none_or(|x| x.kind != *mode) =>
            {
                return Err(Error::Other(format!(
                    "image: file {} is deleted file {g}, which does not exist",
                    f.id
                )))
            }
            FileKind::Memfd { memfd, .. } if *memfd as usize >= files.memfds.len() => {
                return Err(Error::Other(format!(
                    "image: file {} is memfd {memfd}, which does not exist",
                    f.id
                )))
            }
            FileKind::Inotify { watches } => inotify::validate(f.id, watches)?,
            _ => {}
        }
    }
    for p in procs {
        if let Some(g) = p.core.cwd_ghost {
            if files
                .ghosts
                .get(g as usize)
                .is_none_or(|x| x.kind != libc::S_IFDIR)
            {
                return Err(Error::Other(format!(
                    "image of process {}: its cwd is deleted directory {g}, which does not exist",
                    p.pid
                )));
            }
        }
        for v in &p.vmas {
            if let VmaKind::File {
                deleted,
                memfd,
                ghost,
                path,
                ..
            } = &v.kind
            {
                let saved = match (memfd, ghost) {
                    (Some(m), _) => (*m as usize) < files.memfds.len(),
                    (None, Some(g)) => (*g as usize) < files.ghosts.len(),
                    (None, None) => !deleted,
                };
                if !saved {
                    return Err(Error::Other(format!(
                        "image of process {}: area {:#x}-{:#x} maps deleted file {path}, which is not saved in the image",
                        p.pid, v.start, v.end
                    )));
                }
            }
        }
    }
    tty::validate(files, pids)?;
    pidfd::validate(files, pids)?;
    epoll::validate(files, procs)?;
    locks::validate(files, procs)
}

/// A short description of a kind handled here, for `stasis inspect`.
pub fn describe(files: &FilesImage, kind: &FileKind) -> String {
    match kind {
        FileKind::Eventfd { count, semaphore } => format!(
            "eventfd (count {count}{})",
            if *semaphore { ", semaphore" } else { "" }
        ),
        FileKind::Timerfd {
            clockid,
            value_ns,
            interval_ns,
            ..
        } => format!("timerfd (clock {clockid}, {value_ns} ns left, interval {interval_ns} ns)"),
        FileKind::Signalfd { sigmask } => format!("signalfd (mask {sigmask:#x})"),
        FileKind::Epoll { watches, .. } => format!("epoll ({} watches)", watches.len()),
        FileKind::Inotify { watches } => format!("inotify ({} watches)", watches.len()),
        FileKind::Memfd { memfd, pos } => match files.memfds.get(*memfd as usize) {
            Some(m) => format!("memfd {} ({} bytes) at {pos}", m.name, m.size),
            None => format!("memfd {memfd}"),
        },
        FileKind::Pidfd { pid } => format!("pidfd of process {pid}"),
        FileKind::Pty { pty, master } => {
            let n = files.ptys.get(*pty as usize).map_or(*pty, |p| p.index);
            if *master {
                format!("pty {n} master (/dev/ptmx)")
            } else {
                format!("pty {n} slave (/dev/pts/{n})")
            }
        }
        FileKind::DevTty { pty } => {
            let n = files.ptys.get(*pty as usize).map_or(*pty, |p| p.index);
            format!("/dev/tty (pty {n})")
        }
        other => format!("{other:?}"),
    }
}

/// Where the restore keeps what the tree inherits (every description, the
/// image's files, the ready pipe) while init forks it: at fd numbers that no
/// process of the tree uses (`reserved`: every fd number of every process,
/// and the slots for the objects passed for the rebuild), so that each
/// process's dup3s onto its own numbers never overwrite a source. Holes in
/// the fd tables are used first: a tree whose fds go up to near the
/// open-file limit still fits.
pub struct FdPlan {
    reserved: Vec<i32>,
    /// Every number below is reserved or was taken when last looked at.
    next: std::cell::Cell<i32>,
}

impl FdPlan {
    pub fn new(targets: impl Iterator<Item = i32>, slots: std::ops::Range<i32>) -> Self {
        let mut reserved: Vec<i32> = targets.chain(slots).collect();
        reserved.sort_unstable();
        reserved.dedup();
        FdPlan {
            reserved,
            next: std::cell::Cell::new(3),
        }
    }

    /// Checks before anything is made that this process may hold the
    /// image's `held` descriptions beside the reserved numbers.
    pub fn check_room(&self, files: &FilesImage) -> Result<()> {
        let held =
            files.files.len() + files.memfds.len() + files.ghosts.len() + 2 * files.pipes.len();
        let top = self.reserved.last().copied().unwrap_or(2) as u64 + 1;
        // The image's own files, the ready pipe and init's own fds come on top.
        let need = top.max(self.reserved.len() as u64 + held as u64 + 64);
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit into a local struct.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } == 0 && need > l.rlim_cur {
            return Err(Error::Other(format!(
                "the image's fds go up to fd {}; with its {held} open descriptions beside \
                 them the restore needs {need} fds, more than the open-file limit ({})",
                top - 1,
                l.rlim_cur
            )));
        }
        Ok(())
    }

    /// Moves `fd` to the lowest number that is free here and reserved for
    /// no process (close-on-exec), closing the original.
    pub fn place(&self, fd: OwnedFd) -> Result<OwnedFd> {
        let mut n = self.next.get();
        loop {
            let free = self.reserved.binary_search(&n).is_err()
                // SAFETY: F_GETFD only asks whether fd number n is open.
                && unsafe { libc::fcntl(n, libc::F_GETFD) } < 0;
            if free {
                break;
            }
            n = n
                .checked_add(1)
                .ok_or_else(|| Error::Other("no free fd number".into()))?;
        }
        // SAFETY: F_DUPFD_CLOEXEC on an fd we own: n is free, so it is n.
        let got = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, n) };
        if got != n {
            return Err(last_os_error(format!("moving an fd to fd {n}")));
        }
        self.next.set(n + 1);
        // SAFETY: `got` is a new fd we own.
        Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(got) })
    }
}

/// Highest fd number an image may hold, plus one: the kernel's default
/// `fs.nr_open`, above which no process can have an fd unless the host was
/// tuned for it. The restore's fd planning adds to the numbers it reads, so
/// they are bounded before anything is computed from them.
pub const FD_LIMIT: i32 = 1 << 20;

/// Checks every fd entry: its number in range and used once, and the
/// description it points at exists.
pub fn validate(pid: i32, fds: &[FdEntry], files: &FilesImage) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(fds.len());
    for f in fds {
        let bad = |reason: String| Error::BadImage {
            path: format!("proc-{pid}.json").into(),
            reason: format!("process {pid}: {reason}"),
        };
        if !(0..FD_LIMIT).contains(&f.fd) {
            return Err(bad(format!(
                "fd {} is out of range (0 to {})",
                f.fd,
                FD_LIMIT - 1
            )));
        }
        if !seen.insert(f.fd) {
            return Err(bad(format!("fd {} appears twice in its fd table", f.fd)));
        }
        if f.file as usize >= files.files.len() {
            return Err(bad(format!(
                "fd {} refers to file description {} of {}",
                f.fd,
                f.file,
                files.files.len()
            )));
        }
    }
    Ok(())
}
