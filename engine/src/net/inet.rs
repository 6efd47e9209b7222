//! TCP and UDP sockets: unbound, bound, listening (with their backlog),
//! connected UDP, and established TCP connections (see `tcp_repair`).
//!
//! A listening socket's waiting connections have no socket a program holds,
//! and TCP_REPAIR cannot put a connection back into a listener's queue:
//! one whose client is a quiet TCP socket of the tree is restored by
//! connecting that client again (`finish_waiting`); others are refused. Datagrams queued on a UDP
//! socket are carried when a socket of the tree sent them (it sends them
//! again at restore, before UDP sockets connect); others are not (UDP may
//! lose datagrams; the image counts them).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{opts, tcp_repair, NetOptions, Seen};
use crate::error::{Error, Result};
use crate::image::{InetSocketImage, SocketImage};

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;

pub fn state_name(s: u8) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "unknown",
    }
}

fn to_std(a: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match a.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let s: &libc::sockaddr_in = unsafe { &*(a as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
                u16::from_be(s.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let s: &libc::sockaddr_in6 = unsafe { &*(a as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(s.sin6_addr.s6_addr),
                u16::from_be(s.sin6_port),
                s.sin6_flowinfo,
                s.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A socket address in the form the kernel takes, for `family`.
pub fn to_raw(a: &SocketAddr, family: i32) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let a = match (a, family) {
        // An IPv4 address on an IPv6 socket: v4-mapped.
        (SocketAddr::V4(v4), libc::AF_INET6) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        _ => *a,
    };
    match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let s: &mut libc::sockaddr_in =
                unsafe { &mut *(&mut st as *mut _ as *mut libc::sockaddr_in) };
            s.sin_family = libc::AF_INET as u16;
            s.sin_port = v4.port().to_be();
            s.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            (st, std::mem::size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let s: &mut libc::sockaddr_in6 =
                unsafe { &mut *(&mut st as *mut _ as *mut libc::sockaddr_in6) };
            s.sin6_family = libc::AF_INET6 as u16;
            s.sin6_port = v6.port().to_be();
            s.sin6_addr.s6_addr = v6.ip().octets();
            s.sin6_flowinfo = v6.flowinfo();
            s.sin6_scope_id = v6.scope_id();
            (st, std::mem::size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

fn name(fd: RawFd, peer: bool) -> Option<SocketAddr> {
    // SAFETY: an all-zero sockaddr_storage is valid; the kernel fills at most `len` bytes.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut st as *mut libc::sockaddr_storage).cast();
    // SAFETY: getsockname/getpeername write into our storage.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if r < 0 {
        return None;
    }
    to_std(&st)
}

/// The raw `struct tcp_info` (the part we read, up to `tcpi_segs_in`).
pub struct TcpInfo(pub [u8; 144]);

impl TcpInfo {
    pub fn get(fd: RawFd) -> std::io::Result<TcpInfo> {
        let mut b = [0u8; 144];
        opts::get_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut b)?;
        Ok(TcpInfo(b))
    }
    pub fn state(&self) -> u8 {
        self.0[0]
    }
    pub fn options(&self) -> u8 {
        self.0[5]
    }
    pub fn snd_wscale(&self) -> u8 {
        self.0[6] & 0xf
    }
    pub fn rcv_wscale(&self) -> u8 {
        self.0[6] >> 4
    }
    fn u32_at(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4"))
    }
    /// Listening: connections waiting to be accepted.
    pub fn unacked(&self) -> u32 {
        self.u32_at(24)
    }
    /// Listening: the backlog.
    pub fn sacked(&self) -> u32 {
        self.u32_at(28)
    }
    /// Segments received: none on a socket that never had a connection.
    pub fn segs_in(&self) -> u32 {
        self.u32_at(140)
    }
}

fn show(a: &Option<String>) -> String {
    a.clone().unwrap_or_else(|| "(unbound)".into())
}

pub(crate) fn collect(
    s: &mut Seen,
    opts_: &NetOptions,
    repair: &mut tcp_repair::RepairGuard,
) -> Result<()> {
    let fd = s.raw();
    let local = name(fd, false).filter(|a| a.port() != 0 || !a.ip().is_unspecified());
    let peer = name(fd, true);
    let mut img = InetSocketImage {
        local: local.map(|a| a.to_string()),
        peer: peer.map(|a| a.to_string()),
        ..Default::default()
    };
    let tcp = s.img.sock_type == libc::SOCK_STREAM;
    if tcp {
        let info = TcpInfo::get(fd).map_err(|e| Error::Process {
            pid: s.pid,
            reason: format!("fd {}: TCP_INFO: {e}", s.fd),
        })?;
        s.img.state = info.state();
        match info.state() {
            TCP_LISTEN => {
                img.backlog = info.sacked();
                if info.unacked() > 0 && opts_.tcp_established {
                    s.tcp_waiting = proc_waiting(s.host_pid, s.img.family, local);
                }
                if info.unacked() > 0 && s.tcp_waiting.len() != info.unacked() as usize {
                    return Err(s.unsupported(
                        format!(
                            "TCP socket listening on {} has {} connections waiting to be accepted",
                            show(&img.local),
                            info.unacked()
                        ),
                        format!("socket:[{}]", s.img.ino),
                    ));
                }
            }
            TCP_CLOSE => {
                // A connection that has ended while its fd stays open (a
                // server between its shutdown and its close). Its address
                // is the connection's: the port it shares with a listener
                // is no binding a restored socket could take (bind would
                // find the port in use), so it comes back unbound.
                img.ended = info.segs_in() > 0;
            }
            st if tcp_repair::repairable(st) => {
                let conn = format!("{} -> {}", show(&img.local), show(&img.peer));
                if !opts_.tcp_established {
                    let what = if st == TCP_ESTABLISHED {
                        format!("established TCP connection {conn}")
                    } else {
                        format!("TCP connection {conn} in state {}", state_name(st))
                    };
                    return Err(s.unsupported(
                        format!("{what} (dump with --tcp-established to take it)"),
                        format!("socket:[{}]", s.img.ino),
                    ));
                }
                if img.peer.is_none() {
                    // A connect in progress has no peer getpeername shows.
                    img.peer =
                        proc_peer(s.host_pid, s.img.ino, s.img.family).map(|a| a.to_string());
                }
                if img.peer.is_none() {
                    return Err(s.unsupported(
                        format!(
                            "TCP connection from {} whose peer address was not found",
                            show(&img.local)
                        ),
                        format!("socket:[{}]", s.img.ino),
                    ));
                }
                if let Some(h) = &opts_.veth_host {
                    repair.lock_network(h)?;
                }
                repair.enter(s)?;
                s.img.inet = Some(img);
                return Ok(());
            }
            st => {
                return Err(s.unsupported(
                    format!(
                        "TCP socket {} -> {} in state {}",
                        show(&img.local),
                        show(&img.peer),
                        state_name(st)
                    ),
                    format!("socket:[{}]", s.img.ino),
                ));
            }
        }
    } else {
        s.img.state = if peer.is_some() {
            TCP_ESTABLISHED
        } else {
            TCP_CLOSE
        };
        s.udp_queue = peek_datagrams(fd).map_err(|e| Error::Process {
            pid: s.pid,
            reason: format!("fd {}: reading the queued datagrams: {e}", s.fd),
        })?;
    }
    s.img.inet = Some(img);
    Ok(())
}

/// A connection waiting in a listener's accept queue: its addresses (as
/// the listener's end sees them) and the bytes its client sent.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub received: u64,
}

/// An address with a v4-mapped IPv6 address as IPv4, for comparing.
fn plain(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        a => a,
    }
}

/// Parses an address of /proc/net/tcp(6): each 32-bit word printed as a
/// number in the host's byte order, then the port.
fn proc_addr(field: &str) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..addr.len()).step_by(8) {
        let w = u32::from_str_radix(addr.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&w.to_ne_bytes());
    }
    let ip: std::net::IpAddr = match bytes.len() {
        4 => Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).into(),
        16 => Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).into(),
        _ => return None,
    };
    Some(plain(SocketAddr::new(ip, port)))
}

/// The connections waiting in the accept queue of the listener bound to
/// `local`: established sockets on its port that no file holds (inode 0).
fn proc_waiting(host_pid: i32, family: i32, local: Option<SocketAddr>) -> Vec<Waiting> {
    let Some(local) = local.map(plain) else {
        return Vec::new();
    };
    let file = if family == libc::AF_INET6 {
        "tcp6"
    } else {
        "tcp"
    };
    let Ok(text) = std::fs::read_to_string(format!("/proc/{host_pid}/net/{file}")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for l in text.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 10 || f[9] != "0" || f[3] != "01" {
            continue;
        }
        let (Some(me), Some(remote)) = (proc_addr(f[1]), proc_addr(f[2])) else {
            continue;
        };
        let rx = f[4]
            .split_once(':')
            .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok())
            .unwrap_or(u64::MAX);
        let ours =
            me.port() == local.port() && (local.ip().is_unspecified() || me.ip() == local.ip());
        if ours {
            out.push(Waiting {
                local: me,
                remote,
                received: rx,
            });
        }
    }
    out
}

/// Resolves the connections waiting in the listeners' accept queues: each
/// must come from a TCP socket of the tree and hold nothing it sent (the
/// listener's end can be read only once accepted, which would change the
/// program's state); its client is then restored by connecting again.
pub(crate) fn finish_waiting(seen: &mut [Seen]) -> Result<()> {
    for li in 0..seen.len() {
        let waiting = std::mem::take(&mut seen[li].tcp_waiting);
        for w in &waiting {
            let client = seen.iter().position(|c| {
                let i = c.img.inet.as_ref();
                let addr = |a: Option<&String>| a.and_then(|a| a.parse().ok()).map(plain);
                c.img.sock_type == libc::SOCK_STREAM
                    && addr(i.and_then(|i| i.local.as_ref())) == Some(w.remote)
                    && addr(i.and_then(|i| i.peer.as_ref())) == Some(w.local)
            });
            let l = &seen[li];
            let listener = show(&l.img.inet.as_ref().and_then(|i| i.local.clone()));
            let why = match client.map(|c| &seen[c]) {
                None => Some("its client is outside the sandbox's tree".to_string()),
                Some(_) if w.received > 0 => {
                    Some(format!("it holds {} bytes its client sent", w.received))
                }
                Some(c) => {
                    let t = c.img.inet.as_ref().and_then(|i| i.tcp.as_ref());
                    let quiet = c.img.state == TCP_ESTABLISHED
                        && t.is_some_and(|t| t.send_queue.len == 0 && t.recv_queue.len == 0);
                    (!quiet).then(|| "its client has data queued or has shut down".to_string())
                }
            };
            if let Some(why) = why {
                return Err(l.unsupported(
                    format!(
                        "TCP socket listening on {listener} has a connection from {} waiting to be accepted: {why} (it could be read only by accepting it)",
                        w.remote
                    ),
                    format!("socket:[{}]", l.img.ino),
                ));
            }
            if let Some(i) = client.and_then(|c| seen[c].img.inet.as_mut()) {
                i.reconnect = true;
            }
        }
    }
    Ok(())
}

/// The remote address of TCP socket `ino` as /proc/PID/net/tcp(6) of a
/// process of its namespace lists it.
fn proc_peer(host_pid: i32, ino: u64, family: i32) -> Option<SocketAddr> {
    let file = if family == libc::AF_INET6 {
        "tcp6"
    } else {
        "tcp"
    };
    let text = std::fs::read_to_string(format!("/proc/{host_pid}/net/{file}")).ok()?;
    let ino = ino.to_string();
    let line = text
        .lines()
        .skip(1)
        .find(|l| l.split_whitespace().nth(9) == Some(ino.as_str()))?;
    proc_addr(line.split_whitespace().nth(2)?)
}

/// The datagrams queued on a UDP socket with their sources, walked with
/// MSG_PEEK and SO_PEEK_OFF (the offset put back afterwards).
fn peek_datagrams(fd: RawFd) -> std::io::Result<Vec<(SocketAddr, Vec<u8>)>> {
    let old = opts::get_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap_or(-1);
    opts::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let res = loop {
        // SAFETY: an all-zero sockaddr_storage and msghdr are valid; the
        // pointers below are to our own buffers.
        let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // SAFETY: recvmsg fills the buffers `msg` points at.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                break Ok(());
            }
            break Err(e);
        }
        total += n as u64;
        if total > super::unix::MAX_QUEUE_BYTES || out.len() >= 1 << 16 {
            break Ok(());
        }
        if let Some(a) = to_std(&from) {
            out.push((a, buf[..n as usize].to_vec()));
        }
    };
    let _ = opts::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old);
    res.map(|_| out)
}

fn same_socket_addr(local: &SocketAddr, from: &SocketAddr) -> bool {
    let norm = |a: &SocketAddr| match a.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(a.ip()),
        ip => ip,
    };
    local.port() == from.port() && (local.ip().is_unspecified() || norm(local) == norm(from))
}

/// Keeps the queued datagrams whose sender is a UDP socket of the tree
/// (writing them to the blobs), counts the others.
pub(crate) fn finish_udp(seen: &mut [Seen], blobs: &mut crate::image::PageSink) -> Result<()> {
    let senders: Vec<(u32, SocketAddr)> = seen
        .iter()
        .filter(|s| s.img.sock_type == libc::SOCK_DGRAM && s.img.family != libc::AF_UNIX)
        .filter_map(|s| {
            let l = s.img.inet.as_ref()?.local.as_ref()?.parse().ok()?;
            Some((s.img.id, l))
        })
        .collect();
    for s in seen.iter_mut() {
        let queue = std::mem::take(&mut s.udp_queue);
        if queue.is_empty() {
            continue;
        }
        let (pid, fd) = (s.pid, s.fd);
        let img = s.img.inet.as_mut().expect("inet");
        for (from, data) in queue {
            match senders.iter().find(|(_, l)| same_socket_addr(l, &from)) {
                Some(&(sender, _)) => {
                    let offset = blobs.position();
                    blobs.write_all(&data)?;
                    img.datagrams.push(crate::image::UdpDatagram {
                        sender,
                        from: from.to_string(),
                        data: crate::image::Blob {
                            offset,
                            len: data.len() as u64,
                        },
                    });
                }
                None => img.dropped_datagrams += 1,
            }
        }
        if img.dropped_datagrams > 0 {
            tracing::warn!(
                "process {pid} fd {fd}: {} datagrams queued on UDP socket {} came from outside the tree and are not carried",
                img.dropped_datagrams,
                show(&img.local)
            );
        }
    }
    Ok(())
}

/// Sends every carried datagram again from its sender, in order.
pub(crate) fn refill_udp(
    sockets: &[SocketImage],
    fds: &[Option<OwnedFd>],
    blobs: Option<&std::fs::File>,
) -> Result<()> {
    for s in sockets {
        let Some(i) = s.inet.as_ref().filter(|i| !i.datagrams.is_empty()) else {
            continue;
        };
        let what = format!("the queue of UDP socket {}", s.id);
        let local = parse(i.local.as_deref().unwrap_or(""), "local")?;
        // A wildcard receiver gets them through the loopback address.
        let to = match local {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::from((Ipv4Addr::LOCALHOST, a.port()))
            }
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from((Ipv6Addr::LOCALHOST, a.port()))
            }
            a => a,
        };
        let rfd = fds
            .get(s.id as usize)
            .and_then(|f| f.as_ref())
            .ok_or_else(|| Error::Other(format!("{what}: socket {} missing", s.id)))?
            .as_raw_fd();
        let total: u64 = i.datagrams.iter().map(|d| d.data.len * 2 + 1024).sum();
        let room = (total + (1 << 20)).min(i32::MAX as u64 / 2) as i32;
        let _ = opts::set_int(rfd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, room);
        for d in &i.datagrams {
            let sender = sockets
                .get(d.sender as usize)
                .ok_or_else(|| Error::Other(format!("{what}: sender {} missing", d.sender)))?;
            let sfd = fds
                .get(d.sender as usize)
                .and_then(|f| f.as_ref())
                .ok_or_else(|| Error::Other(format!("{what}: sender {} missing", d.sender)))?
                .as_raw_fd();
            let data = super::read_blob(blobs, d.data, &what)?;
            let (st, len) = to_raw(&to, sender.family);
            // SAFETY: sendto from our buffer with a sockaddr we built.
            let n = unsafe {
                libc::sendto(
                    sfd,
                    data.as_ptr().cast(),
                    data.len(),
                    0,
                    (&st as *const libc::sockaddr_storage).cast(),
                    len,
                )
            };
            if n < 0 {
                return Err(sys_err(format!("refilling {what} (from {})", d.from)));
            }
        }
        // The receive buffer as it was.
        opts::restore_late(rfd, &s.opts, s.sock_type, true)
            .map_err(|e| Error::Other(format!("{what}: {e}")))?;
    }
    Ok(())
}

/// Connects the UDP sockets that were connected.
pub(crate) fn connect_udp(sockets: &[SocketImage], fds: &[Option<OwnedFd>]) -> Result<()> {
    for s in sockets {
        if s.family == libc::AF_UNIX || s.sock_type != libc::SOCK_DGRAM {
            continue;
        }
        if let Some(p) = s.inet.as_ref().and_then(|i| i.peer.as_ref()) {
            let fd = fds
                .get(s.id as usize)
                .and_then(|f| f.as_ref())
                .ok_or_else(|| Error::Other(format!("UDP socket {} missing", s.id)))?
                .as_raw_fd();
            connect(
                fd,
                &parse(p, "peer")?,
                s.family,
                &format!("UDP socket {}", s.id),
            )?;
        }
    }
    Ok(())
}

fn sys_err(what: String) -> Error {
    Error::Io {
        what,
        cause: std::io::Error::last_os_error(),
    }
}

pub fn new_socket(family: i32, ty: i32) -> Result<OwnedFd> {
    // SAFETY: socket(2); the result is checked.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(sys_err(format!("creating a socket of family {family}")));
    }
    // SAFETY: `fd` is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn parse(a: &str, what: &str) -> Result<SocketAddr> {
    a.parse()
        .map_err(|_| Error::Other(format!("image: {what} address {a:?}")))
}

pub fn bind(fd: RawFd, a: &SocketAddr, family: i32, what: &str) -> Result<()> {
    let (st, len) = to_raw(a, family);
    // An IPv6 address the sandbox has just added may still be tentative
    // (duplicate address detection): bind it anyway (the restored namespace
    // was checked to have it), then leave IP_FREEBIND as it was.
    let tentative_ok = matches!(a, SocketAddr::V6(v6) if !v6.ip().is_loopback() && !v6.ip().is_unspecified())
        && opts::get_int(fd, libc::IPPROTO_IP, libc::IP_FREEBIND).unwrap_or(1) == 0;
    if tentative_ok {
        let _ = opts::set_int(fd, libc::IPPROTO_IP, libc::IP_FREEBIND, 1);
    }
    // SAFETY: bind with a sockaddr we built.
    let r = unsafe { libc::bind(fd, (&st as *const libc::sockaddr_storage).cast(), len) };
    let err = std::io::Error::last_os_error();
    if tentative_ok {
        let _ = opts::set_int(fd, libc::IPPROTO_IP, libc::IP_FREEBIND, 0);
    }
    if r < 0 {
        return Err(Error::Io {
            what: format!("binding {what} to {a}"),
            cause: err,
        });
    }
    Ok(())
}

pub fn connect(fd: RawFd, a: &SocketAddr, family: i32, what: &str) -> Result<()> {
    let (st, len) = to_raw(a, family);
    // SAFETY: connect with a sockaddr we built.
    if unsafe { libc::connect(fd, (&st as *const libc::sockaddr_storage).cast(), len) } < 0 {
        return Err(sys_err(format!("connecting {what} to {a}")));
    }
    Ok(())
}

/// Creates one TCP or UDP socket as it was.
pub fn restore(s: &SocketImage, blobs: Option<&std::fs::File>) -> Result<OwnedFd> {
    let i = s
        .inet
        .as_ref()
        .ok_or_else(|| Error::Other(format!("image: socket {} has no address record", s.id)))?;
    let what = format!(
        "{} socket {}",
        if s.sock_type == libc::SOCK_STREAM {
            "TCP"
        } else {
            "UDP"
        },
        s.id
    );
    let err = |e: String| Error::Other(format!("{what}: {e}"));
    if let Some(t) = &i.tcp {
        return tcp_repair::restore(s, i, t, blobs);
    }
    let fd = new_socket(s.family, s.sock_type)?;
    let raw = fd.as_raw_fd();
    opts::restore(raw, &s.opts, s.family, s.sock_type).map_err(err)?;
    if let Some(l) = i.local.as_ref().filter(|_| !i.ended) {
        bind(raw, &parse(l, "local")?, s.family, &what)?;
    }
    if s.sock_type == libc::SOCK_STREAM && s.state == TCP_LISTEN {
        // SAFETY: listen(2) on our socket.
        if unsafe { libc::listen(raw, i.backlog.min(i32::MAX as u32) as i32) } < 0 {
            return Err(sys_err(format!("listen on {what}")));
        }
    }
    opts::restore_late(raw, &s.opts, s.sock_type, true).map_err(err)?;
    Ok(fd)
}
