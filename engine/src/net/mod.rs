//! Sockets and the sandbox's network namespace.
//!
//! - `unix`: unix sockets (stream, datagram, seqpacket): names, peers,
//!   listening sockets with their waiting connections, queued data, shutdown;
//! - `inet`: TCP and UDP sockets (bound, listening, connected UDP, closed);
//! - `tcp_repair`: established TCP connections through TCP_REPAIR;
//! - `opts`: the socket options programs set;
//! - `netns`: the namespace's links, addresses and routes;
//! - `diag`: netlink by hand (sock_diag, rtnetlink).
//!
//! Dump: `SocketTable::collect` records each socket reached through an fd
//! (called by `files`), `SocketTable::finish` resolves what needs the whole
//! tree (peers, listen queues, queued data). Restore: `SocketSet::create`
//! makes every socket in the sandbox's init (inside its network and mount
//! namespaces) before the tree is forked; `files::open_all` hands the
//! descriptions out.

pub mod diag;
pub mod inet;
pub mod netlink;
pub mod netns;
pub mod opts;
pub mod tcp_repair;
pub mod unix;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::error::{Error, Result};
use crate::image::{FileKind, PageSink, SocketImage, UnixFile};

/// Dump options that concern sockets.
#[derive(Debug, Clone, Default)]
pub struct NetOptions {
    /// Dump established TCP connections (TCP_REPAIR) instead of refusing them.
    pub tcp_established: bool,
    /// Host end of the sandbox's veth: set down while established
    /// connections are dumped, so that nothing arrives after their queues
    /// were read.
    pub veth_host: Option<String>,
}

/// A socket seen through an fd at dump.
pub(crate) struct Seen {
    pub img: SocketImage,
    /// Our duplicate of the socket.
    pub dup: Option<OwnedFd>,
    /// Sandbox PID and fd that reached it first (for messages).
    pub pid: i32,
    pub fd: i32,
    /// Host PID of that process (for /proc paths).
    pub host_pid: i32,
    /// Unix: inode of the socket file it was bound to (sock_diag VFS).
    pub unix_vfs: Option<u64>,
    /// UDP: the queued datagrams (source, data), resolved by `finish`.
    pub udp_queue: Vec<(std::net::SocketAddr, Vec<u8>)>,
    /// TCP listener: the connections waiting in its accept queue.
    pub tcp_waiting: Vec<inet::Waiting>,
}

impl Seen {
    pub fn unsupported(&self, what: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Unsupported {
            pid: self.pid,
            what: format!("fd {}: {}", self.fd, what.into()),
            detail: detail.into(),
        }
    }

    pub fn raw(&self) -> RawFd {
        self.dup.as_ref().map(|d| d.as_raw_fd()).unwrap_or(-1)
    }
}

/// Builds the socket part of `files.json` while the tree is dumped.
#[derive(Default)]
pub struct SocketTable {
    pub opts: NetOptions,
    netns: Option<u64>,
    diag: Option<diag::Netlink>,
    unix_diag: Option<HashMap<u64, diag::UnixDiag>>,
    pub(crate) seen: Vec<Seen>,
    by_ino: HashMap<u64, u32>,
    /// TCP sockets in repair mode: taken out of it unless the dump goes on
    /// to kill the tree.
    pub(crate) repair: tcp_repair::RepairGuard,
}

fn netns_ino(host_pid: i32) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{host_pid}/ns/net"))
        .map(|m| m.ino())
        .map_err(|e| Error::Io {
            what: format!("network namespace of process {host_pid}"),
            cause: e,
        })
}

impl SocketTable {
    pub fn new(opts: NetOptions) -> Self {
        SocketTable {
            opts,
            ..Default::default()
        }
    }

    /// Every unix socket of the sandbox's namespace, as sock_diag reports
    /// them (read once: the tree is stopped).
    pub(crate) fn unix_diag(&mut self, host_pid: i32) -> Result<&HashMap<u64, diag::UnixDiag>> {
        if self.diag.is_none() {
            self.diag = Some(diag::in_netns(host_pid, diag::Netlink::sock_diag)?);
        }
        if self.unix_diag.is_none() {
            let nl = self.diag.as_mut().expect("opened above");
            self.unix_diag = Some(diag::unix_sockets(nl)?);
        }
        Ok(self.unix_diag.as_ref().expect("read above"))
    }

    /// Records the socket at fd `fd` of process `pid` (host PID `host_pid`);
    /// `dup` is our duplicate of it.
    pub fn collect(
        &mut self,
        host_pid: i32,
        pid: i32,
        fd: i32,
        dup: &OwnedFd,
        ino: u64,
    ) -> Result<FileKind> {
        let ns = netns_ino(host_pid)?;
        match self.netns {
            None => self.netns = Some(ns),
            Some(n) if n != ns => {
                return Err(Error::Unsupported {
                    pid,
                    what: format!(
                        "fd {fd}: a socket of a process in a network namespace of its own"
                    ),
                    detail: format!("socket:[{ino}]"),
                })
            }
            Some(_) => {}
        }
        if let Some(&id) = self.by_ino.get(&ino) {
            return Ok(FileKind::Socket { socket: id });
        }
        let raw = dup.as_raw_fd();
        let int = |opt| opts::get_int(raw, libc::SOL_SOCKET, opt);
        let (family, sock_type, protocol) = match (
            int(libc::SO_DOMAIN),
            int(libc::SO_TYPE),
            int(libc::SO_PROTOCOL),
        ) {
            (Ok(f), Ok(t), Ok(p)) => (f, t, p),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return Err(Error::Process {
                    pid,
                    reason: format!("fd {fd}: reading the socket's domain and type: {e}"),
                })
            }
        };
        let id = self.seen.len() as u32;
        let dup = dup.try_clone().map_err(|e| Error::Io {
            what: format!("process {pid}: duplicating socket fd {fd}"),
            cause: e,
        })?;
        let mut s = Seen {
            img: SocketImage {
                id,
                ino,
                family,
                sock_type,
                protocol,
                state: 0,
                shutdown: 0,
                opts: Default::default(),
                unix: None,
                inet: None,
                netlink: None,
            },
            dup: Some(dup),
            pid,
            fd,
            host_pid,
            unix_vfs: None,
            udp_queue: Vec::new(),
            tcp_waiting: Vec::new(),
        };
        let kind_name = match (family, sock_type) {
            (libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET) => None,
            (libc::AF_INET | libc::AF_INET6, libc::SOCK_STREAM)
                if protocol == libc::IPPROTO_TCP =>
            {
                None
            }
            (libc::AF_INET | libc::AF_INET6, libc::SOCK_DGRAM) if protocol == libc::IPPROTO_UDP => {
                None
            }
            (libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_DGRAM) => None,
            (libc::AF_PACKET, _) => Some("a packet socket".to_string()),
            (libc::AF_INET | libc::AF_INET6, libc::SOCK_RAW) => Some("a raw IP socket".to_string()),
            _ => Some(format!(
                "a socket of family {family}, type {sock_type}, protocol {protocol}"
            )),
        };
        if let Some(k) = kind_name {
            return Err(s.unsupported(k, format!("socket:[{ino}]")));
        }
        s.img.opts = opts::collect(raw, family, sock_type).map_err(|e| Error::Process {
            pid,
            reason: format!("fd {fd}: reading socket options: {e}"),
        })?;
        if family == libc::AF_NETLINK {
            netlink::collect(&mut s)?;
        } else if family == libc::AF_UNIX {
            let d = self
                .unix_diag(host_pid)?
                .get(&ino)
                .cloned()
                .ok_or_else(|| {
                    s.unsupported(
                        "a unix socket sock_diag does not report",
                        format!("socket:[{ino}]"),
                    )
                })?;
            unix::collect(&mut s, &d)?;
        } else {
            inet::collect(&mut s, &self.opts, &mut self.repair)?;
        }
        self.by_ino.insert(ino, id);
        self.seen.push(s);
        Ok(FileKind::Socket { socket: id })
    }

    /// Resolves what needs every socket of the tree and reads the queues.
    pub fn finish(&mut self, blobs: &mut PageSink) -> Result<(Vec<SocketImage>, Vec<UnixFile>)> {
        let files = if self.seen.iter().any(|s| s.img.family == libc::AF_UNIX) {
            let host_pid = self
                .seen
                .iter()
                .find(|s| s.img.family == libc::AF_UNIX)
                .map(|s| s.host_pid)
                .expect("a unix socket");
            let d = self.unix_diag(host_pid)?.clone();
            unix::finish(&mut self.seen, &self.by_ino, &d, blobs)?
        } else {
            Vec::new()
        };
        tcp_repair::finish(&mut self.seen, blobs)?;
        inet::finish_waiting(&mut self.seen)?;
        inet::finish_udp(&mut self.seen, blobs)?;
        Ok((self.seen.iter().map(|s| s.img.clone()).collect(), files))
    }

    /// Hands over the TCP sockets held in repair mode (see `RepairGuard`).
    pub fn take_repair(&mut self) -> tcp_repair::RepairGuard {
        std::mem::take(&mut self.repair)
    }
}

/// Restore: the sockets of an image, made in the sandbox's init.
pub struct SocketSet {
    fds: Vec<Option<OwnedFd>>,
}

impl SocketSet {
    /// Creates every socket of `sockets` (run inside the sandbox's network
    /// and mount namespaces, before the tree is forked).
    pub fn create(
        sockets: &[SocketImage],
        unix_files: &[UnixFile],
        blobs: Option<&std::fs::File>,
    ) -> Result<SocketSet> {
        validate(sockets, unix_files)?;
        let mut fds: Vec<Option<OwnedFd>> = sockets.iter().map(|_| None).collect();
        unix::restore_all(sockets, unix_files, blobs, &mut fds)?;
        // Listeners before connections: a connection binds its port in
        // repair mode, which may share it with anything; a listener may not.
        let established = |s: &SocketImage| s.inet.as_ref().is_some_and(|i| i.tcp.is_some());
        for s in sockets {
            if let (Some(n), Some(slot)) = (&s.netlink, fds.get_mut(s.id as usize)) {
                let fd = netlink::restore(s, n)?;
                opts::restore(fd.as_raw_fd(), &s.opts, s.family, s.sock_type)
                    .map_err(|e| Error::Other(format!("netlink socket {}: {e}", s.id)))?;
                *slot = Some(fd);
            }
        }
        for pass in [false, true] {
            for s in sockets {
                let inet = s.family == libc::AF_INET || s.family == libc::AF_INET6;
                if inet && established(s) == pass {
                    if let Some(slot) = fds.get_mut(s.id as usize) {
                        *slot = Some(inet::restore(s, blobs)?);
                    }
                }
            }
        }
        // UDP queues, then UDP peers (a connected socket takes datagrams
        // from its peer only).
        inet::refill_udp(sockets, &fds, blobs)?;
        inet::connect_udp(sockets, &fds)?;
        // The FINs of half-closed and closing connections, once all exist.
        for s in sockets {
            if let (Some(i), Some(Some(fd))) = (&s.inet, fds.get(s.id as usize)) {
                if let Some(t) = &i.tcp {
                    tcp_repair::restore_fins(s, i, t, fd)?;
                }
            }
        }
        // Established connections leave repair mode once all exist.
        for s in sockets {
            if let (Some(i), Some(Some(fd))) = (&s.inet, fds.get(s.id as usize)) {
                if let Some(t) = &i.tcp {
                    tcp_repair::go_live(s, i, t, fd, blobs)?;
                }
            }
        }
        Ok(SocketSet { fds })
    }

    /// The description of socket `id`, with status flags `flags`.
    pub fn open(&mut self, id: u32, flags: u32) -> Result<OwnedFd> {
        let fd = self
            .fds
            .get_mut(id as usize)
            .and_then(|f| f.take())
            .ok_or_else(|| Error::Other(format!("image: socket {id} is missing or used twice")))?;
        let fl = flags as i32 & (libc::O_NONBLOCK | libc::O_ASYNC);
        // SAFETY: F_SETFL on an fd we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl) } < 0 {
            return Err(Error::Io {
                what: format!("setting the flags of socket {id}"),
                cause: std::io::Error::last_os_error(),
            });
        }
        Ok(fd)
    }
}

/// One line about a socket, for `stasis inspect`.
pub fn describe(s: Option<&SocketImage>) -> String {
    let Some(s) = s else { return "socket ?".into() };
    let ty = match s.sock_type {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "?",
    };
    if let Some(u) = &s.unix {
        let mut d = format!("unix {ty} socket {}", unix::show_name(&u.name));
        if s.state == inet::TCP_LISTEN {
            d.push_str(&format!(", listening ({} waiting)", u.waiting.len()));
        }
        if let Some(p) = u.peer {
            d.push_str(&format!(", peer socket {p}"));
        }
        let queued = u.stream_queue.len + u.packets.iter().map(|p| p.data.len).sum::<u64>();
        if queued > 0 {
            d.push_str(&format!(", {queued} bytes queued"));
        }
        return d;
    }
    let i = s.inet.clone().unwrap_or_default();
    let proto = if s.sock_type == libc::SOCK_STREAM {
        "TCP"
    } else {
        "UDP"
    };
    let mut d = format!(
        "{proto} socket {}",
        i.local.as_deref().unwrap_or("(unbound)")
    );
    if let Some(p) = &i.peer {
        d.push_str(&format!(" -> {p}"));
    }
    if s.state == inet::TCP_LISTEN && s.sock_type == libc::SOCK_STREAM {
        d.push_str(&format!(", listening (backlog {})", i.backlog));
    }
    if let Some(t) = &i.tcp {
        let state = match s.state {
            inet::TCP_ESTABLISHED => "established".to_string(),
            st => inet::state_name(st).to_string(),
        };
        d.push_str(&format!(
            ", {state} ({} bytes to send, {} to read)",
            t.send_queue.len, t.recv_queue.len
        ));
    }
    d
}

/// Bounds and cross-references of the socket records (files.json): every
/// index one socket uses to name another (peer, listener, waiting client,
/// datagram sender, socket file owner) names a socket of the kind restore
/// makes of it, checked before anything is created.
pub fn validate(sockets: &[SocketImage], unix_files: &[UnixFile]) -> Result<()> {
    let n = sockets.len() as u32;
    let bad = |why: String| {
        Err(Error::BadImage {
            path: "files.json".into(),
            reason: why,
        })
    };
    let unix_of = |r: u32| sockets.get(r as usize).and_then(|q| q.unix.as_ref());
    let mut waits_at: Vec<Option<usize>> = vec![None; sockets.len()];
    for (i, s) in sockets.iter().enumerate() {
        if s.id as usize != i {
            return bad(format!("socket id {} out of order (at {i})", s.id));
        }
        let ty_ok = matches!(
            s.sock_type,
            libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET
        ) || (s.family == libc::AF_NETLINK && s.sock_type == libc::SOCK_RAW);
        let kind_ok = match s.family {
            libc::AF_UNIX => s.unix.is_some() && s.inet.is_none() && s.netlink.is_none(),
            libc::AF_INET | libc::AF_INET6 => {
                s.inet.is_some()
                    && s.unix.is_none()
                    && s.netlink.is_none()
                    && s.sock_type != libc::SOCK_SEQPACKET
            }
            libc::AF_NETLINK => {
                s.netlink.is_some()
                    && s.unix.is_none()
                    && s.inet.is_none()
                    && matches!(s.sock_type, libc::SOCK_RAW | libc::SOCK_DGRAM)
            }
            _ => false,
        };
        if let Some(n) = &s.netlink {
            if let Err(e) = netlink::validate(i, n) {
                return bad(e);
            }
        }
        if !ty_ok || !kind_ok {
            return bad(format!(
                "socket {i}: family {} type {} with {} record",
                s.family,
                s.sock_type,
                match (&s.unix, &s.inet) {
                    (Some(_), None) => "a unix",
                    (None, Some(_)) => "an inet",
                    (None, None) => "no",
                    (Some(_), Some(_)) => "both a unix and an inet",
                }
            ));
        }
        if let Some(u) = &s.unix {
            let stream = s.sock_type != libc::SOCK_DGRAM;
            let listening = s.state == inet::TCP_LISTEN;
            // Every socket index it holds names a unix socket of its type.
            let refs = u
                .peer
                .iter()
                .map(|&r| ("peer", r))
                .chain(u.connecting_to.iter().map(|&r| ("listener", r)))
                .chain(u.waiting.iter().map(|&r| ("waiting client", r)));
            for (what, r) in refs {
                match sockets.get(r as usize) {
                    None => return bad(format!("socket {i}: {what} socket {r} of {n}")),
                    Some(q) if q.unix.is_none() || q.sock_type != s.sock_type => {
                        return bad(format!(
                            "socket {i}: {what} socket {r} is not a unix socket of its type"
                        ))
                    }
                    _ => {}
                }
            }
            if let Some(p) = u.peer {
                let pu = unix_of(p).map(|q| q.peer);
                if listening || u.peer_gone {
                    return bad(format!(
                        "socket {i}: a peer (socket {p}) on a listening socket or one whose peer closed"
                    ));
                }
                // Stream and seqpacket peers are pairs.
                if stream && (p as usize == i || pu != Some(Some(i as u32))) {
                    return bad(format!(
                        "socket {i}: peer socket {p} is not connected to it"
                    ));
                }
            }
            if let Some(l) = u.connecting_to {
                let lq = &sockets[l as usize];
                if !stream || lq.state != inet::TCP_LISTEN || u.peer.is_some() {
                    return bad(format!(
                        "socket {i}: waits to be accepted by socket {l}, which is not a listener"
                    ));
                }
            }
            if !u.waiting.is_empty() && !listening {
                return bad(format!(
                    "socket {i}: clients waiting on a socket that does not listen"
                ));
            }
            for &c in &u.waiting {
                let cu = unix_of(c).cloned().unwrap_or_default();
                let c_ok = c as usize != i
                    && waits_at[c as usize].replace(i).is_none()
                    && cu.connecting_to == Some(i as u32)
                    && cu.peer.is_none()
                    && sockets[c as usize].state != inet::TCP_LISTEN;
                if !c_ok {
                    return bad(format!(
                        "socket {i}: waiting client socket {c} is not a client connecting to it (or waits twice)"
                    ));
                }
            }
            if u.name.len() > 108 {
                return bad(format!("socket {i}: unix name of {} bytes", u.name.len()));
            }
            if u.bind_dir.as_ref().is_some_and(|d| !d.starts_with('/')) {
                return bad(format!("socket {i}: relative bind directory"));
            }
            if u.packets.len() > unix::MAX_QUEUE_RECORDS {
                return bad(format!("socket {i}: {} packets", u.packets.len()));
            }
            if u.packets.iter().any(|p| p.sender.len() > 108) {
                return bad(format!("socket {i}: a sender name longer than 108 bytes"));
            }
        }
        let big = |len: u64| len > unix::MAX_QUEUE_BYTES;
        if let Some(u) = &s.unix {
            let total = u
                .packets
                .iter()
                .fold(u.stream_queue.len, |t, p| t.saturating_add(p.data.len));
            if big(u.stream_queue.len) || big(total) {
                return bad(format!("socket {i}: queue larger than the limit"));
            }
        }
        if let Some(i) = &s.inet {
            for a in i.local.iter().chain(i.peer.iter()) {
                if a.parse::<std::net::SocketAddr>().is_err() {
                    return bad(format!("socket {}: address {a:?}", s.id));
                }
            }
            for d in &i.datagrams {
                let ok = sockets
                    .get(d.sender as usize)
                    .is_some_and(|q| q.inet.is_some() && q.sock_type == libc::SOCK_DGRAM);
                if !ok || d.data.len > unix::MAX_QUEUE_BYTES {
                    return bad(format!(
                        "socket {}: a datagram from socket {}, which is not a UDP socket",
                        s.id, d.sender
                    ));
                }
            }
            let empty =
                |t: &crate::image::TcpConnImage| t.send_queue.len == 0 && t.recv_queue.len == 0;
            if i.reconnect
                && !(s.state == inet::TCP_ESTABLISHED && i.tcp.as_ref().is_some_and(empty))
            {
                return bad(format!(
                    "socket {}: connecting again a socket that is not an established connection with empty queues",
                    s.id
                ));
            }
            if i.tcp.is_some() && !tcp_repair::repairable(s.state) {
                return bad(format!(
                    "socket {}: a TCP connection in state {}",
                    s.id,
                    inet::state_name(s.state)
                ));
            }
            if i.tcp.is_some() && (i.local.is_none() || i.peer.is_none()) {
                return bad(format!(
                    "socket {}: a TCP connection without addresses",
                    s.id
                ));
            }
        }
        if let Some(t) = s.inet.as_ref().and_then(|i| i.tcp.as_ref()) {
            if big(t.send_queue.len) || big(t.recv_queue.len) {
                return bad(format!("socket {i}: TCP queue larger than the limit"));
            }
        }
    }
    // A client that says it waits on a listener is in that listener's queue.
    for (i, s) in sockets.iter().enumerate() {
        if let Some(l) = s.unix.as_ref().and_then(|u| u.connecting_to) {
            if waits_at[i] != Some(l as usize) {
                return bad(format!(
                    "socket {i}: connecting to socket {l}, whose queue does not hold it"
                ));
            }
        }
    }
    for f in unix_files {
        if !f.path.starts_with('/') || f.path.len() > 4096 {
            return bad(format!(
                "unix socket file {:?}: not an absolute path",
                f.path
            ));
        }
        if let Some(o) = f.owner {
            if unix_of(o).is_none() {
                return bad(format!(
                    "unix socket file {}: owner socket {o} is not a unix socket",
                    f.path
                ));
            }
        }
    }
    Ok(())
}

/// Reads `len` bytes at `blob` of blobs.img.
pub(crate) fn read_blob(
    blobs: Option<&std::fs::File>,
    blob: crate::image::Blob,
    what: &str,
) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    if blob.len == 0 {
        return Ok(Vec::new());
    }
    if blob.len > unix::MAX_QUEUE_BYTES {
        return Err(Error::Other(format!("image: {what} of {} bytes", blob.len)));
    }
    let f = blobs.ok_or_else(|| Error::Other("image: blobs.img missing".into()))?;
    let mut buf = vec![0u8; blob.len as usize];
    f.read_exact_at(&mut buf, blob.offset)
        .map_err(|e| Error::Io {
            what: format!("reading {what}"),
            cause: e,
        })?;
    Ok(buf)
}

/// Sends all of `data` on our socket `fd` (`MSG_NOSIGNAL` added to `flags`),
/// as restore refills a queue; `what` names the queue in the error.
pub(crate) fn send_all(fd: RawFd, data: &[u8], flags: i32, what: &str) -> Result<()> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: sending from our buffer on our socket.
        let n = unsafe {
            libc::send(
                fd,
                data[done..].as_ptr().cast(),
                data.len() - done,
                flags | libc::MSG_NOSIGNAL,
            )
        };
        if n <= 0 {
            return Err(Error::Io {
                what: format!("refilling {what}"),
                cause: std::io::Error::last_os_error(),
            });
        }
        done += n as usize;
    }
    Ok(())
}
