//! Unix sockets: stream, datagram and seqpacket.
//!
//! Dump: sock_diag gives each socket's name, peer (by inode), the clients
//! waiting in a listener's queue, queue lengths and shutdown state. Queued
//! data is read without being consumed: MSG_PEEK walking the queue with
//! SO_PEEK_OFF on our duplicate of the socket (the offset is put back
//! afterwards). Empty datagrams and seqpacket records are records like any
//! other; an empty answer of a seqpacket socket that can no longer receive is
//! its end of file, told apart by the credentials SO_PASSCRED makes the
//! kernel attach to records (`peek_queue`). The kernel marks an empty record
//! as peeked, so a program that later peeks at its queue with SO_PEEK_OFF
//! itself steps over empty records the dump peeked at (a --leave-running
//! dump only). File descriptors in flight (SCM_RIGHTS) are refused.
//!
//! Restore, in the sandbox's init, so that every name, peer and queue comes
//! back as it was:
//! 1. stale socket files at the recorded path names are removed;
//! 2. connected pairs: a socketpair when neither end has a name; otherwise
//!    one end connects to a temporary listener bound to the other end's name
//!    and the other end is accepted from it (so getsockname/getpeername give
//!    the names they gave); an end whose peer had closed gets a helper peer
//!    that is closed at step 7;
//! 3. every other socket is bound to its name, listeners listen;
//! 4. queued data is written by the peer (or by a socket bound to the
//!    datagram's sender name);
//! 5. clients waiting to be accepted connect to their listener, in queue
//!    order; datagram sockets connect to their peer;
//! 6. shutdown states; 7. helper peers closed;
//! 8. the socket files are left as they were: present with their modes and
//!    owners, or absent.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::{opts, read_blob, Seen};
use crate::error::{Error, Result};
use crate::image::{Blob, PageSink, SocketImage, UnixFile, UnixPacket, UnixSocketImage};

/// Largest queue (of one socket) carried in an image.
pub const MAX_QUEUE_BYTES: u64 = 64 << 20;

const TCP_ESTABLISHED: u8 = 1;
const TCP_LISTEN: u8 = 10;

/// A path name (not abstract, not empty) as a string without its NUL.
fn path_of(name: &[u8]) -> Option<String> {
    if name.is_empty() || name[0] == 0 {
        return None;
    }
    let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// The absolute path of a path name bound relative to `dir`.
fn absolute(name: &str, dir: Option<&str>) -> String {
    if name.starts_with('/') {
        name.to_string()
    } else {
        format!("{}/{name}", dir.unwrap_or("").trim_end_matches('/'))
    }
}

/// A printable form of a unix name.
pub fn show_name(name: &[u8]) -> String {
    if name.is_empty() {
        "(unnamed)".into()
    } else if name[0] == 0 {
        format!("@{}", String::from_utf8_lossy(&name[1..]))
    } else {
        path_of(name).unwrap_or_default()
    }
}

pub(crate) fn collect(s: &mut Seen, d: &super::diag::UnixDiag) -> Result<()> {
    s.img.state = d.state;
    s.img.shutdown = d.shutdown;
    s.unix_vfs = d.vfs.map(|v| v.0);
    let mut u = UnixSocketImage {
        name: d.name.clone(),
        ..Default::default()
    };
    if let Some(p) = path_of(&d.name) {
        if !p.starts_with('/') {
            let cwd = std::fs::read_link(format!("/proc/{}/cwd", s.host_pid)).map_err(|e| {
                Error::Process {
                    pid: s.pid,
                    reason: format!("reading cwd: {e}"),
                }
            })?;
            u.bind_dir = Some(cwd.to_string_lossy().into_owned());
        }
    }
    s.img.unix = Some(u);
    Ok(())
}

/// Resolves peers and listen queues, records the socket files and reads
/// every queue.
pub(crate) fn finish(
    seen: &mut [Seen],
    by_ino: &HashMap<u64, u32>,
    diag: &HashMap<u64, super::diag::UnixDiag>,
    blobs: &mut PageSink,
) -> Result<Vec<UnixFile>> {
    let unix_ids: Vec<usize> = (0..seen.len())
        .filter(|&i| seen[i].img.family == libc::AF_UNIX)
        .collect();
    let d_of = |s: &Seen| diag.get(&s.img.ino).cloned().unwrap_or_default();
    // Listeners and the clients waiting in their queues.
    let mut connecting: HashMap<u32, u32> = HashMap::new();
    for &i in &unix_ids {
        let d = d_of(&seen[i]);
        if seen[i].img.state != TCP_LISTEN {
            continue;
        }
        let mut waiting = Vec::new();
        for &c in &d.icons {
            let name = show_name(&d.name);
            let Some(&cid) = by_ino.get(&c).filter(|_| c != 0) else {
                return Err(seen[i].unsupported(
                    format!("unix socket listening at {name} has a connection waiting to be accepted from a socket outside the sandbox's tree, or from one already closed"),
                    format!("socket:[{c}]"),
                ));
            };
            let cd = d_of(&seen[cid as usize]);
            if cd.rqlen.1 > 0 {
                return Err(seen[cid as usize].unsupported(
                    format!("unix socket waiting to be accepted by the listener at {name} has sent {} bytes that the listener has not accepted yet", cd.rqlen.1),
                    format!("socket:[{c}]"),
                ));
            }
            waiting.push(cid);
            connecting.insert(cid, i as u32);
        }
        let u = seen[i].img.unix.as_mut().expect("unix");
        u.backlog = d.rqlen.1;
        u.waiting = waiting;
    }
    // Peers.
    for &i in &unix_ids {
        let d = d_of(&seen[i]);
        if d.state == TCP_LISTEN {
            continue;
        }
        let stream = d.sock_type as i32 != libc::SOCK_DGRAM;
        let mut peer = None;
        let mut gone = false;
        let mut to = None;
        if d.peer != 0 {
            match by_ino.get(&d.peer) {
                Some(&p) => peer = Some(p),
                None => {
                    return Err(seen[i].unsupported(
                        "unix socket connected to a socket outside the sandbox's tree",
                        format!("socket:[{}] peer socket:[{}]", d.ino, d.peer),
                    ))
                }
            }
        } else if stream && d.state == TCP_ESTABLISHED {
            if let Some(&l) = connecting.get(&(i as u32)) {
                to = Some(l);
            } else if d.shutdown == 3 {
                gone = true;
            } else {
                return Err(seen[i].unsupported(
                    "unix socket connected to a socket outside the sandbox's tree",
                    format!("socket:[{}]", d.ino),
                ));
            }
        }
        let u = seen[i].img.unix.as_mut().expect("unix");
        u.peer = peer;
        u.peer_gone = gone;
        u.connecting_to = to;
    }
    // A datagram socket connected to an unnamed socket that is not its pair
    // cannot be connected again.
    for &i in &unix_ids {
        let u = seen[i].img.unix.as_ref().expect("unix");
        if seen[i].img.sock_type != libc::SOCK_DGRAM {
            continue;
        }
        if let Some(p) = u.peer {
            let pu = seen[p as usize].img.unix.as_ref().expect("unix");
            if pu.name.is_empty() && pu.peer != Some(i as u32) {
                // Connected by name once; the name is gone.
                return Err(seen[i].unsupported(
                    "unix datagram socket connected to an unnamed socket that is not its pair",
                    format!("socket:[{}]", seen[i].img.ino),
                ));
            }
        }
    }
    let files = socket_files(seen, &unix_ids)?;
    // Queued data.
    for &i in &unix_ids {
        let d = d_of(&seen[i]);
        if d.state == TCP_LISTEN {
            continue;
        }
        let stream = seen[i].img.sock_type == libc::SOCK_STREAM;
        if stream && d.rqlen.0 == 0 {
            continue;
        }
        let packets = peek_queue(&seen[i], stream, d.shutdown)?;
        let u_total: u64 = packets.iter().map(|p| p.1.len() as u64).sum();
        if stream && u_total != d.rqlen.0 as u64 {
            return Err(seen[i].unsupported(
                format!(
                    "unix stream socket whose queue could not be read whole ({u_total} of {} bytes; out-of-band data?)",
                    d.rqlen.0
                ),
                format!("socket:[{}]", d.ino),
            ));
        }
        if u_total > MAX_QUEUE_BYTES {
            return Err(seen[i].unsupported(
                format!("unix socket with {u_total} bytes queued"),
                format!("socket:[{}]", d.ino),
            ));
        }
        let u = seen[i].img.unix.as_mut().expect("unix");
        if stream {
            let offset = blobs.position();
            for (_, data) in &packets {
                blobs.write_all(data)?;
            }
            u.stream_queue = Blob {
                offset,
                len: u_total,
            };
        } else {
            for (sender, data) in packets {
                let offset = blobs.position();
                blobs.write_all(&data)?;
                u.packets.push(UnixPacket {
                    sender,
                    data: Blob {
                        offset,
                        len: data.len() as u64,
                    },
                });
            }
        }
    }
    Ok(files)
}

/// The files at every path name: present or not, whose they are.
fn socket_files(seen: &[Seen], unix_ids: &[usize]) -> Result<Vec<UnixFile>> {
    let mut out: Vec<UnixFile> = Vec::new();
    for &i in unix_ids {
        let u = seen[i].img.unix.as_ref().expect("unix");
        let Some(p) = path_of(&u.name) else { continue };
        let abs = absolute(&p, u.bind_dir.as_deref());
        if out.iter().any(|f| f.path == abs) {
            continue;
        }
        let host = format!("/proc/{}/root{abs}", seen[i].host_pid);
        let mut f = UnixFile {
            path: abs.clone(),
            ..Default::default()
        };
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_socket() => {
                f.present = true;
                f.mode = m.mode() & 0o7777;
                f.uid = m.uid();
                f.gid = m.gid();
                // The file's owner is the tree socket bound to it (same inode).
                f.owner = unix_ids
                    .iter()
                    .find(|&&j| {
                        let uj = seen[j].img.unix.as_ref().expect("unix");
                        seen[j].unix_vfs == Some(m.ino())
                            && path_of(&uj.name)
                                .map(|q| absolute(&q, uj.bind_dir.as_deref()) == abs)
                                .unwrap_or(false)
                    })
                    .map(|&j| j as u32);
            }
            Ok(_) => {
                return Err(seen[i].unsupported(
                    format!("unix socket bound to {abs}, where another kind of file is now"),
                    abs,
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Io {
                    what: format!("stat of unix socket file {abs}"),
                    cause: e,
                })
            }
        }
        // A relative name is bound again in the process's working
        // directory: refuse when its file is not there (the process changed
        // directory since, or removed the file).
        if !p.starts_with('/') && f.owner.is_none() {
            return Err(seen[i].unsupported(
                format!("unix socket bound to the relative name {p}, whose file is not in the process's working directory"),
                p,
            ));
        }
        out.push(f);
    }
    Ok(out)
}

/// Most records (datagrams, seqpacket records) read from one socket's queue.
pub const MAX_QUEUE_RECORDS: usize = 1 << 20;

/// Reads the queue of a socket without consuming it: (sender name, data)
/// per datagram or record; for a stream, chunks in order.
///
/// A datagram or seqpacket record may be empty, and a seqpacket socket whose
/// peer shut down or closed answers an empty queue with 0 (end of file)
/// rather than EAGAIN: the two are told apart by the credentials the kernel
/// attaches to every record it hands out while SO_PASSCRED is set on the
/// socket (an end of file carries none). SO_PASSCRED and the peek offset are
/// put back as the program had them. The kernel marks an empty record once
/// peeked at, so the next peek at the same offset moves past it. The walk is
/// bounded in records and bytes: a queue beyond either is refused.
fn peek_queue(s: &Seen, stream: bool, shutdown: u8) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let fd = s.raw();
    let io = |what: &str| {
        let e = std::io::Error::last_os_error();
        Error::Process {
            pid: s.pid,
            reason: format!("fd {}: {what}: {e}", s.fd),
        }
    };
    let too_long = |what: String| s.unsupported(what, format!("socket:[{}]", s.img.ino));
    let old = opts::get_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap_or(-1);
    opts::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).map_err(|e| Error::Process {
        pid: s.pid,
        reason: format!("fd {}: SO_PEEK_OFF: {e} (feature: so-peek-off)", s.fd),
    })?;
    // Records carry credentials while SO_PASSCRED is set; without it (not
    // settable), an empty answer of a socket that can no longer receive is
    // taken for the end of the queue.
    let old_passcred = opts::get_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED).ok();
    let creds = !stream
        && old_passcred.is_some()
        && opts::set_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1).is_ok();
    let rcv_shut = shutdown & 1 != 0;
    let res = (|| -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut offset: usize = 0;
        let mut total: u64 = 0;
        // Peeks that found the same record again (a larger buffer): at most
        // one per record.
        let mut again = false;
        loop {
            // SAFETY: zeroed sockaddr_un and msghdr are valid; we fill the pointers below.
            let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            let mut control = [0u64; 512];
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: as above.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as u32;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control);
            let flags =
                libc::MSG_PEEK | libc::MSG_DONTWAIT | if stream { 0 } else { libc::MSG_TRUNC };
            // SAFETY: recvmsg writes into the buffers described by `msg`, all ours.
            let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EAGAIN) {
                    break;
                }
                return Err(io("peeking at the queued data"));
            }
            let (passed, has_creds) = control_messages(&msg);
            if passed > 0 {
                return Err(s.unsupported(
                    format!(
                        "unix socket with {passed} file descriptor{} in flight (SCM_RIGHTS)",
                        if passed == 1 { "" } else { "s" }
                    ),
                    format!("socket:[{}]", s.img.ino),
                ));
            }
            let n = n as usize;
            if n == 0 {
                // A stream's end; a seqpacket socket's end of file; or an
                // empty record (a datagram socket never answers 0 otherwise).
                let eof = if stream {
                    true
                } else if creds {
                    !has_creds
                } else {
                    s.img.sock_type == libc::SOCK_SEQPACKET && rcv_shut
                };
                if eof {
                    break;
                }
            }
            if !stream && n > buf.len() {
                if again || n as u64 > MAX_QUEUE_BYTES {
                    return Err(too_long(format!(
                        "unix socket with a record of {n} bytes queued"
                    )));
                }
                // A datagram larger than the buffer: peek it again whole.
                again = true;
                buf.resize(n, 0);
                opts::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, offset as i32)
                    .map_err(|_| io("SO_PEEK_OFF"))?;
                continue;
            }
            again = false;
            let namelen = (msg.msg_namelen as usize).saturating_sub(2).min(108);
            let sender = if stream || namelen == 0 {
                Vec::new()
            } else {
                // SAFETY: sun_path is a plain array of c_char of 108 bytes.
                let p: &[u8] =
                    unsafe { std::slice::from_raw_parts(addr.sun_path.as_ptr().cast(), namelen) };
                p.to_vec()
            };
            out.push((sender, buf[..n].to_vec()));
            offset += n;
            total += n as u64;
            if total > MAX_QUEUE_BYTES {
                return Err(too_long(format!(
                    "unix socket with more than {MAX_QUEUE_BYTES} bytes queued"
                )));
            }
            if out.len() > MAX_QUEUE_RECORDS {
                return Err(too_long(format!(
                    "unix socket with more than {MAX_QUEUE_RECORDS} records queued"
                )));
            }
        }
        Ok(out)
    })();
    // Put the peek offset and SO_PASSCRED back as the program had them.
    let _ = opts::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old);
    if creds {
        if let Some(v) = old_passcred {
            let _ = opts::set_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, v);
        }
    }
    res
}

/// Counts (and closes) the fds an SCM_RIGHTS message put in our table, and
/// says whether the message carried credentials (SCM_CREDENTIALS).
fn control_messages(msg: &libc::msghdr) -> (usize, bool) {
    let mut count = 0;
    let mut creds = false;
    // SAFETY: walking the control buffer the kernel filled, with the libc
    // CMSG macros bounded by msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const i32;
                let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for k in 0..n {
                    libc::close(std::ptr::read_unaligned(data.add(k)));
                }
                count += n;
            }
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                creds = true;
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    (count, creds)
}

// ---- restore --------------------------------------------------------------

fn sys_err(what: String) -> Error {
    Error::Io {
        what,
        cause: std::io::Error::last_os_error(),
    }
}

fn new_socket(ty: i32) -> Result<OwnedFd> {
    // SAFETY: socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(sys_err("creating a unix socket".into()));
    }
    // SAFETY: `fd` is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(name: &[u8]) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as u16;
    let n = name.len().min(a.sun_path.len());
    for (d, s) in a.sun_path.iter_mut().zip(&name[..n]) {
        *d = *s as libc::c_char;
    }
    (a, (2 + n) as libc::socklen_t)
}

/// Runs `f` with the working directory at `dir` (relative names), then back.
fn in_dir<T>(dir: Option<&str>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let Some(dir) = dir else { return f() };
    let here = std::fs::File::open(".").map_err(|e| Error::Io {
        what: "opening the working directory".into(),
        cause: e,
    })?;
    std::env::set_current_dir(dir).map_err(|e| Error::Io {
        what: format!("entering {dir} to bind a relative unix name"),
        cause: e,
    })?;
    let r = f();
    // SAFETY: fchdir to a directory fd we hold.
    unsafe { libc::fchdir(here.as_raw_fd()) };
    r
}

fn bind_name(fd: RawFd, u: &UnixSocketImage) -> Result<()> {
    in_dir(u.bind_dir.as_deref(), || {
        let (a, len) = sockaddr(&u.name);
        // SAFETY: binding with a sockaddr_un we built.
        if unsafe { libc::bind(fd, (&a as *const libc::sockaddr_un).cast(), len) } < 0 {
            return Err(sys_err(format!(
                "binding a unix socket to {}",
                show_name(&u.name)
            )));
        }
        Ok(())
    })
}

fn connect_name(fd: RawFd, name: &[u8], dir: Option<&str>) -> Result<()> {
    in_dir(dir, || {
        let (a, len) = sockaddr(name);
        // SAFETY: connecting with a sockaddr_un we built.
        if unsafe { libc::connect(fd, (&a as *const libc::sockaddr_un).cast(), len) } < 0 {
            return Err(sys_err(format!(
                "connecting a unix socket to {}",
                show_name(name)
            )));
        }
        Ok(())
    })
}

fn listen(fd: RawFd, backlog: u32, what: &str) -> Result<()> {
    // SAFETY: listen(2) on our socket.
    if unsafe { libc::listen(fd, backlog.min(i32::MAX as u32) as i32) } < 0 {
        return Err(sys_err(format!("listen on {what}")));
    }
    Ok(())
}

fn accept(fd: RawFd, what: &str) -> Result<OwnedFd> {
    // SAFETY: accept4 on our listening socket; no address wanted.
    let n = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if n < 0 {
        return Err(sys_err(format!("accepting on {what}")));
    }
    // SAFETY: `n` is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

fn unlink_socket_file(path: &str) {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Whether a live socket is bound to the socket file at `path` (a connect
/// is answered): such a file belongs to a running program, for instance the
/// workload a `--leave-running` dump left running, and is not taken over.
fn socket_file_in_use(path: &str) -> bool {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !m.file_type().is_socket() {
        return false;
    }
    let mut name = path.as_bytes().to_vec();
    name.push(0);
    // A datagram socket probes without touching the target: a stale file
    // refuses (ECONNREFUSED); a live stream or seqpacket socket says
    // EPROTOTYPE; a live datagram socket accepts (connecting a datagram
    // socket only sets our own peer).
    let Ok(fd) = new_socket(libc::SOCK_DGRAM) else {
        return false;
    };
    let (a, len) = sockaddr(&name);
    // SAFETY: connecting our socket with a sockaddr_un we built.
    let r = unsafe { libc::connect(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPROTOTYPE)
}

fn file_path(u: &UnixSocketImage) -> Option<String> {
    path_of(&u.name).map(|p| absolute(&p, u.bind_dir.as_deref()))
}

/// A connected pair (x, y) where x gets its name from a temporary listener
/// bound to it and y binds its own name (if any) and connects.
fn pair_via_listener(
    ty: i32,
    x: &UnixSocketImage,
    y: Option<&UnixSocketImage>,
) -> Result<(OwnedFd, OwnedFd)> {
    let t = new_socket(ty)?;
    bind_name(t.as_raw_fd(), x)?;
    let what = show_name(&x.name);
    listen(t.as_raw_fd(), 1, &format!("a temporary listener at {what}"))?;
    let ys = new_socket(ty)?;
    if let Some(y) = y.filter(|y| !y.name.is_empty()) {
        bind_name(ys.as_raw_fd(), y)?;
    }
    connect_name(ys.as_raw_fd(), &x.name, x.bind_dir.as_deref())?;
    let xs = accept(t.as_raw_fd(), &what)?;
    drop(t);
    if let Some(p) = file_path(x) {
        unlink_socket_file(&p);
    }
    Ok((xs, ys))
}

fn socketpair(ty: i32) -> Result<(OwnedFd, OwnedFd)> {
    let mut sv = [0i32; 2];
    // SAFETY: socketpair writes two fds into `sv`.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) } < 0 {
        return Err(sys_err("socketpair".into()));
    }
    // SAFETY: both fds are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) })
}

fn send_packet(
    fd: RawFd,
    data: &[u8],
    to: Option<(&[u8], Option<&str>)>,
    what: &str,
) -> Result<()> {
    let r = match to {
        None => {
            // SAFETY: sending from our buffer on our socket.
            unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) }
        }
        Some((name, dir)) => {
            return in_dir(dir, || {
                let (a, len) = sockaddr(name);
                // SAFETY: sendto with our buffer and a sockaddr_un we built.
                let r = unsafe {
                    libc::sendto(
                        fd,
                        data.as_ptr().cast(),
                        data.len(),
                        libc::MSG_NOSIGNAL,
                        (&a as *const libc::sockaddr_un).cast(),
                        len,
                    )
                };
                if r < 0 {
                    return Err(sys_err(format!("refilling {what}")));
                }
                Ok(())
            });
        }
    };
    if r < 0 {
        return Err(sys_err(format!("refilling {what}")));
    }
    Ok(())
}

/// Makes room in a sender's buffer for `bytes` more.
fn grow_sndbuf(fd: RawFd, bytes: usize) {
    let want = (bytes.saturating_mul(2) + (1 << 20)).min(i32::MAX as usize / 2) as i32;
    let cur = opts::get_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(0);
    if cur < want {
        let _ = opts::set_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want);
    }
}

/// Creates every unix socket of the image into `fds` (by id).
pub(crate) fn restore_all(
    sockets: &[SocketImage],
    files: &[UnixFile],
    blobs: Option<&std::fs::File>,
    fds: &mut [Option<OwnedFd>],
) -> Result<()> {
    let unix: Vec<(usize, &SocketImage, &UnixSocketImage)> = sockets
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.unix.as_ref().map(|u| (i, s, u)))
        .collect();
    if unix.is_empty() {
        return Ok(());
    }
    let sock_err = |s: &SocketImage, e: Error| {
        Error::Other(format!(
            "unix socket {} ({}): {e}",
            s.id,
            show_name(&s.unix.as_ref().map(|u| u.name.clone()).unwrap_or_default())
        ))
    };
    let owner_of = |id: usize| files.iter().any(|f| f.owner == Some(id as u32));
    // Indexes are checked by `validate`; a wrong one is an error here too,
    // never a panic in the sandbox's init.
    let unix_at = |k: usize| -> Result<&UnixSocketImage> {
        sockets
            .get(k)
            .and_then(|q| q.unix.as_ref())
            .ok_or_else(|| Error::BadImage {
                path: "files.json".into(),
                reason: format!("socket {k} is not a unix socket"),
            })
    };
    let made = |fds: &[Option<OwnedFd>], k: usize| -> Result<RawFd> {
        fds.get(k)
            .and_then(|f| f.as_ref())
            .map(|f| f.as_raw_fd())
            .ok_or_else(|| Error::BadImage {
                path: "files.json".into(),
                reason: format!("socket {k} was not made (a reference to it is wrong)"),
            })
    };
    // 1. Stale socket files; a file a live socket holds is not taken over.
    for f in files {
        if socket_file_in_use(&f.path) {
            return Err(Error::Other(format!(
                "unix socket file {} belongs to a running socket (is the dumped workload still running?)",
                f.path
            )));
        }
        unlink_socket_file(&f.path);
    }
    // 2. Connected pairs and ends whose peer closed.
    let mut helpers: Vec<OwnedFd> = Vec::new();
    let mut helper_of: HashMap<usize, usize> = HashMap::new();
    for &(i, s, u) in &unix {
        if fds[i].is_some() {
            continue;
        }
        let stream = s.sock_type != libc::SOCK_DGRAM;
        if u.peer_gone {
            let (me, helper) = if u.name.is_empty() {
                socketpair(s.sock_type)?
            } else {
                pair_via_listener(s.sock_type, u, None).map_err(|e| sock_err(s, e))?
            };
            fds[i] = Some(me);
            helper_of.insert(i, helpers.len());
            helpers.push(helper);
            continue;
        }
        let Some(p) = u.peer.map(|p| p as usize) else {
            continue;
        };
        let pu = unix_at(p)?;
        if pu.peer != Some(i as u32) || p == i {
            continue; // a datagram socket connected one way: step 4
        }
        if !stream {
            // A datagram pair: a socketpair, then the names its ends had.
            let (a, b) = socketpair(s.sock_type)?;
            for (fd, uu, ss) in [(&a, u, s), (&b, pu, &sockets[p])] {
                if !uu.name.is_empty() {
                    bind_name(fd.as_raw_fd(), uu).map_err(|e| sock_err(ss, e))?;
                }
            }
            fds[i] = Some(a);
            fds[p] = Some(b);
        } else if u.name.is_empty() && pu.name.is_empty() {
            let (a, b) = socketpair(s.sock_type)?;
            fds[i] = Some(a);
            fds[p] = Some(b);
        } else {
            // The accepted end is the one whose name another socket shares
            // (its listener); else the end that owns its socket file binds
            // it itself and the other is accepted.
            let shared = |k: usize, name: &[u8]| {
                !name.is_empty() && unix.iter().any(|&(j, _, uj)| j != k && uj.name == name)
            };
            let x_is_i = if shared(i, &u.name) {
                true
            } else if shared(p, &pu.name) || owner_of(i) {
                false
            } else if owner_of(p) {
                true
            } else {
                !u.name.is_empty()
            };
            let (x, y) = if x_is_i { (i, p) } else { (p, i) };
            let xu = unix_at(x)?;
            let yu = unix_at(y)?;
            let (xs, ys) =
                pair_via_listener(s.sock_type, xu, Some(yu)).map_err(|e| sock_err(s, e))?;
            fds[x] = Some(xs);
            fds[y] = Some(ys);
        }
    }
    // 3. Everything else: bound, listening.
    for &(i, s, u) in &unix {
        if fds[i].is_some() {
            continue;
        }
        let fd = new_socket(s.sock_type)?;
        if !u.name.is_empty() {
            bind_name(fd.as_raw_fd(), u).map_err(|e| sock_err(s, e))?;
        }
        if s.state == TCP_LISTEN {
            listen(fd.as_raw_fd(), u.backlog, &show_name(&u.name))?;
        }
        fds[i] = Some(fd);
    }
    // 4. Queued data, written by the peer (before datagram sockets connect:
    //    a connected one takes datagrams from its peer only).
    let by_name: HashMap<&[u8], usize> = unix
        .iter()
        .filter(|(_, _, u)| !u.name.is_empty())
        .map(|&(i, _, u)| (u.name.as_slice(), i))
        .collect();
    for &(i, s, u) in &unix {
        let what = format!("the queue of unix socket {} ({})", s.id, show_name(&u.name));
        let writer = || -> Result<RawFd> {
            if let Some(&h) = helper_of.get(&i) {
                return Ok(helpers[h].as_raw_fd());
            }
            u.peer
                .and_then(|p| fds.get(p as usize).and_then(|f| f.as_ref()))
                .map(|f| f.as_raw_fd())
                .ok_or_else(|| Error::Other(format!("{what}: no peer to write it")))
        };
        if s.sock_type == libc::SOCK_STREAM && u.stream_queue.len > 0 {
            let data = read_blob(blobs, u.stream_queue, &what)?;
            let w = writer()?;
            grow_sndbuf(w, data.len());
            super::send_all(w, &data, 0, &what)?;
        }
        if s.sock_type == libc::SOCK_SEQPACKET && !u.packets.is_empty() {
            let w = writer()?;
            let total: u64 = u.packets.iter().map(|p| p.data.len).sum();
            grow_sndbuf(w, total as usize);
            for p in &u.packets {
                send_packet(w, &read_blob(blobs, p.data, &what)?, None, &what)?;
            }
        }
        if s.sock_type == libc::SOCK_DGRAM {
            for p in &u.packets {
                let data = read_blob(blobs, p.data, &what)?;
                let peer_pair = u.peer.filter(|&q| {
                    unix_at(q as usize)
                        .is_ok_and(|qu| qu.peer == Some(i as u32) && qu.name == p.sender)
                });
                let to = (!u.name.is_empty()).then_some((u.name.as_slice(), u.bind_dir.as_deref()));
                if let Some(q) = peer_pair {
                    let w = made(fds, q as usize)?;
                    grow_sndbuf(w, data.len());
                    send_packet(w, &data, None, &what)?;
                } else if let (Some(&q), Some(to)) = (by_name.get(p.sender.as_slice()), to) {
                    let w = made(fds, q)?;
                    grow_sndbuf(w, data.len());
                    send_packet(w, &data, Some(to), &what)?;
                } else if let Some(to) = to {
                    // From a socket that is gone: a throwaway sender with its name.
                    let t = new_socket(libc::SOCK_DGRAM)?;
                    if !p.sender.is_empty() {
                        let tu = UnixSocketImage {
                            name: p.sender.clone(),
                            ..Default::default()
                        };
                        bind_name(t.as_raw_fd(), &tu)?;
                    }
                    grow_sndbuf(t.as_raw_fd(), data.len());
                    send_packet(t.as_raw_fd(), &data, Some(to), &what)?;
                    if let Some(path) = path_of(&p.sender).filter(|q| q.starts_with('/')) {
                        unlink_socket_file(&path);
                    }
                } else {
                    return Err(Error::Other(format!(
                        "{what}: a datagram from {} cannot be sent again to an unnamed socket",
                        show_name(&p.sender)
                    )));
                }
            }
        }
    }
    // 5. Waiting clients, in queue order; datagram sockets connected one way.
    for &(i, s, u) in &unix {
        if s.state == TCP_LISTEN {
            for &c in &u.waiting {
                let fd = made(fds, c as usize)?;
                connect_name(fd, &u.name, u.bind_dir.as_deref()).map_err(|e| sock_err(s, e))?;
            }
        }
        if s.sock_type == libc::SOCK_DGRAM {
            if let Some(p) = u.peer.map(|p| p as usize) {
                let pu = unix_at(p)?;
                if pu.peer != Some(i as u32) {
                    let fd = made(fds, i)?;
                    connect_name(fd, &pu.name, pu.bind_dir.as_deref())
                        .map_err(|e| sock_err(s, e))?;
                }
            }
        }
    }
    // 6. Shutdown states (for a pair, each end's also sets the other's).
    for &(i, s, u) in &unix {
        if u.peer_gone || s.shutdown == 0 || s.state == TCP_LISTEN {
            continue;
        }
        let how = match s.shutdown & 3 {
            1 => libc::SHUT_RD,
            2 => libc::SHUT_WR,
            _ => libc::SHUT_RDWR,
        };
        let fd = made(fds, i)?;
        // SAFETY: shutdown(2) on our socket.
        if unsafe { libc::shutdown(fd, how) } < 0 {
            return Err(sys_err(format!("shutdown of unix socket {}", s.id)));
        }
    }
    // 7. Peers that had closed.
    drop(helpers);
    // 8. Socket files as they were.
    for f in files {
        let now = std::fs::symlink_metadata(&f.path).ok();
        if !f.present {
            unlink_socket_file(&f.path);
            continue;
        }
        let owned = f.owner.is_some_and(|o| {
            unix_at(o as usize)
                .is_ok_and(|ou| now.is_some() && file_path(ou).as_deref() == Some(f.path.as_str()))
        });
        if !owned {
            // The file of a socket that no longer exists: a stale socket file.
            unlink_socket_file(&f.path);
            let t = new_socket(libc::SOCK_STREAM)?;
            let mut name = f.path.as_bytes().to_vec();
            name.push(0);
            let tu = UnixSocketImage {
                name,
                ..Default::default()
            };
            bind_name(t.as_raw_fd(), &tu)?;
        }
        let c = CString::new(std::path::Path::new(&f.path).as_os_str().as_bytes())
            .map_err(|_| Error::Other(format!("image: path {:?}", f.path)))?;
        // SAFETY: chmod/lchown of a path we just made or checked.
        unsafe {
            if libc::chmod(c.as_ptr(), f.mode) < 0 || libc::lchown(c.as_ptr(), f.uid, f.gid) < 0 {
                return Err(sys_err(format!("setting mode and owner of {}", f.path)));
            }
        }
    }
    // Options last: buffer sizes may have been raised for the refill.
    for &(i, s, _) in &unix {
        let fd = made(fds, i)?;
        opts::restore(fd, &s.opts, s.family, s.sock_type)
            .map_err(|e| Error::Other(format!("unix socket {}: {e}", s.id)))?;
        opts::restore_late(fd, &s.opts, s.sock_type, false)
            .map_err(|e| Error::Other(format!("unix socket {}: {e}", s.id)))?;
    }
    Ok(())
}
