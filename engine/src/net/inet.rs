//! TCP and UDP sockets: unbound, bound, listening (with their backlog),
//! connected UDP, and established TCP connections (see `tcp_repair`).
//!
//! A listening socket with connections waiting to be accepted is refused:
//! those connections have no socket a program holds, and TCP_REPAIR cannot
//! put a connection back into a listener's queue. Datagrams queued on a UDP
//! socket are not carried (UDP may lose datagrams; the image counts them).

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

/// The raw `struct tcp_info` (the part we read).
pub struct TcpInfo(pub [u8; 104]);

impl TcpInfo {
    pub fn get(fd: RawFd) -> std::io::Result<TcpInfo> {
        let mut b = [0u8; 104];
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
                if info.unacked() > 0 {
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
            TCP_CLOSE => {}
            TCP_ESTABLISHED => {
                let conn = format!("{} -> {}", show(&img.local), show(&img.peer));
                if !opts_.tcp_established {
                    return Err(s.unsupported(
                        format!("established TCP connection {conn} (dump with --tcp-established to take it)"),
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
        img.dropped_datagrams = count_datagrams(fd);
        if img.dropped_datagrams > 0 {
            tracing::warn!(
                "process {} fd {}: {} datagrams queued on UDP socket {} are not carried",
                s.pid,
                s.fd,
                img.dropped_datagrams,
                show(&img.local)
            );
        }
    }
    s.img.inet = Some(img);
    Ok(())
}

/// Datagrams queued on a UDP socket, walked with MSG_PEEK and SO_PEEK_OFF
/// (the offset put back afterwards).
fn count_datagrams(fd: RawFd) -> u64 {
    let old = opts::get_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap_or(-1);
    if opts::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).is_err() {
        return 0;
    }
    let mut n = 0;
    let mut buf = vec![0u8; 1 << 16];
    while n < 1 << 20 {
        // SAFETY: peeking into our buffer (large enough for any UDP datagram).
        let r = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            break;
        }
        n += 1;
    }
    let _ = opts::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old);
    n
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
    // SAFETY: bind with a sockaddr we built.
    if unsafe { libc::bind(fd, (&st as *const libc::sockaddr_storage).cast(), len) } < 0 {
        return Err(sys_err(format!("binding {what} to {a}")));
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
    if let Some(l) = &i.local {
        bind(raw, &parse(l, "local")?, s.family, &what)?;
    }
    if s.sock_type == libc::SOCK_STREAM && s.state == TCP_LISTEN {
        // SAFETY: listen(2) on our socket.
        if unsafe { libc::listen(raw, i.backlog.min(i32::MAX as u32) as i32) } < 0 {
            return Err(sys_err(format!("listen on {what}")));
        }
    } else if s.sock_type == libc::SOCK_DGRAM {
        if let Some(p) = &i.peer {
            connect(raw, &parse(p, "peer")?, s.family, &what)?;
        }
    }
    opts::restore_late(raw, &s.opts, s.sock_type, true).map_err(err)?;
    Ok(fd)
}
