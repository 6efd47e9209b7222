//! Netlink sockets (route, audit, generic, uevent, ...): a program keeps one
//! open to hear of link and address changes or to talk to a kernel
//! subsystem. Saved: the protocol, the port id it is bound to, the multicast
//! groups it joined, the peer it is connected to, and the options it set;
//! restored by binding the same port id (free in the sandbox's fresh network
//! namespace) and joining the same groups. Messages queued for it are
//! answers or notifications of the kernel that cannot be made again: a
//! socket with some is refused, naming it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use serde::{Deserialize, Serialize};

use super::Seen;
use crate::error::{Error, Result};
use crate::image::SocketImage;

/// Multicast groups a socket may have joined, at most (bounded on load).
pub const MAX_GROUPS: u32 = 1 << 16;

/// The netlink part of a socket's image.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetlinkImage {
    /// The port id it is bound to (0: never bound).
    pub portid: u32,
    /// Every multicast group it is a member of.
    #[serde(default)]
    pub groups: Vec<u32>,
    /// The peer it is connected to: (port id, groups mask).
    #[serde(default)]
    pub peer: Option<(u32, u32)>,
    /// Boolean NETLINK_* options set to 1 (PKTINFO, NO_ENOBUFS,
    /// BROADCAST_ERROR, CAP_ACK, EXT_ACK, GET_STRICT_CHK, LISTEN_ALL_NSID).
    #[serde(default)]
    pub flags: Vec<i32>,
}

const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_PKTINFO: i32 = 3;
const NETLINK_BROADCAST_ERROR: i32 = 4;
const NETLINK_NO_ENOBUFS: i32 = 5;
const NETLINK_LISTEN_ALL_NSID: i32 = 8;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;
const NETLINK_GET_STRICT_CHK: i32 = 12;
const FLAG_OPTS: &[i32] = &[
    NETLINK_PKTINFO,
    NETLINK_BROADCAST_ERROR,
    NETLINK_NO_ENOBUFS,
    NETLINK_LISTEN_ALL_NSID,
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_GET_STRICT_CHK,
];

fn nl_addr(fd: RawFd, peer: bool) -> std::io::Result<libc::sockaddr_nl> {
    // SAFETY: a zeroed sockaddr_nl is a valid value.
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    let p = &mut a as *mut libc::sockaddr_nl as *mut libc::sockaddr;
    // SAFETY: the kernel writes at most `len` bytes into `a`.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(a)
}

fn memberships(fd: RawFd) -> std::io::Result<Vec<u32>> {
    let mut words = vec![0u32; 8];
    loop {
        let mut len = (words.len() * 4) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `words` and
        // reports the length it needs.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                SOL_NETLINK,
                NETLINK_LIST_MEMBERSHIPS,
                words.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let need = (len as usize).div_ceil(4);
        if need <= words.len() {
            words.truncate(need);
            break;
        }
        if need > (MAX_GROUPS / 32) as usize {
            return Err(std::io::Error::other(format!(
                "{} multicast groups",
                need * 32
            )));
        }
        words = vec![0u32; need];
    }
    let mut groups = Vec::new();
    for (w, bits) in words.iter().enumerate() {
        for b in 0..32 {
            if bits & (1 << b) != 0 {
                groups.push(w as u32 * 32 + b + 1);
            }
        }
    }
    Ok(groups)
}

/// Bytes of the first message queued (0: none), peeked without taking it.
fn queued(fd: RawFd) -> std::io::Result<i32> {
    let mut b = [0u8; 1];
    // SAFETY: recv writes at most 1 byte into `b`; MSG_PEEK leaves the
    // message queued, MSG_TRUNC makes it report the message's length.
    let n = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(0),
            _ => Err(e),
        };
    }
    Ok(n as i32)
}

/// Reads the netlink state of `s`.
pub(crate) fn collect(s: &mut Seen) -> Result<()> {
    let fd = s.raw();
    let what = |e: std::io::Error, step: &str| Error::Process {
        pid: s.pid,
        reason: format!("fd {}: netlink socket: {step}: {e}", s.fd),
    };
    let n = queued(fd).map_err(|e| what(e, "reading its queue length"))?;
    if n > 0 {
        return Err(s.unsupported(
            format!("a netlink socket (protocol {}) with messages not read yet (the first of {n} bytes)", s.img.protocol),
            format!("socket:[{}]", s.img.ino),
        ));
    }
    let me = nl_addr(fd, false).map_err(|e| what(e, "getsockname"))?;
    let peer = match nl_addr(fd, true) {
        Ok(p) if p.nl_pid != 0 || p.nl_groups != 0 => Some((p.nl_pid, p.nl_groups)),
        _ => None,
    };
    let groups = memberships(fd).map_err(|e| what(e, "listing its groups"))?;
    let mut flags = Vec::new();
    for &o in FLAG_OPTS {
        if super::opts::get_int(fd, SOL_NETLINK, o).unwrap_or(0) != 0 {
            flags.push(o);
        }
    }
    s.img.netlink = Some(NetlinkImage {
        portid: me.nl_pid,
        groups,
        peer,
        flags,
    });
    Ok(())
}

/// Checks a netlink record before anything is made.
pub fn validate(i: usize, n: &NetlinkImage) -> std::result::Result<(), String> {
    if n.groups.len() > MAX_GROUPS as usize || n.groups.iter().any(|&g| g == 0 || g > MAX_GROUPS) {
        return Err(format!("socket {i}: {} netlink groups", n.groups.len()));
    }
    if n.flags.iter().any(|f| !FLAG_OPTS.contains(f)) {
        return Err(format!("socket {i}: netlink options {:?}", n.flags));
    }
    Ok(())
}

fn check(rc: libc::c_int, s: &SocketImage, step: String) -> Result<()> {
    if rc != 0 {
        return Err(Error::Io {
            what: format!("netlink socket {} (protocol {}): {step}", s.id, s.protocol),
            cause: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Makes netlink socket `s` again (in the sandbox's network namespace).
pub fn restore(s: &SocketImage, n: &NetlinkImage) -> Result<OwnedFd> {
    // SAFETY: socket() takes plain integers.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            s.sock_type | libc::SOCK_CLOEXEC,
            s.protocol,
        )
    };
    if raw < 0 {
        return Err(Error::Io {
            what: format!("creating netlink socket {} (protocol {})", s.id, s.protocol),
            cause: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `raw` is a new fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    for &o in &n.flags {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one int.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                SOL_NETLINK,
                o,
                (&one as *const libc::c_int).cast(),
                4,
            )
        };
        check(rc, s, format!("setting option {o}"))?;
    }
    if n.portid != 0 {
        // SAFETY: a zeroed sockaddr_nl is valid.
        let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        a.nl_family = libc::AF_NETLINK as u16;
        a.nl_pid = n.portid;
        // SAFETY: bind reads a sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&a as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        check(rc, s, format!("binding port id {}", n.portid))?;
    }
    for &g in &n.groups {
        let g = g as libc::c_int;
        // SAFETY: setsockopt reads one int.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                (&g as *const libc::c_int).cast(),
                4,
            )
        };
        check(rc, s, format!("joining group {g}"))?;
    }
    if let Some((pid, groups)) = n.peer {
        // SAFETY: a zeroed sockaddr_nl is valid.
        let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        a.nl_family = libc::AF_NETLINK as u16;
        a.nl_pid = pid;
        a.nl_groups = groups;
        // SAFETY: connect reads a sockaddr_nl of the size given.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&a as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        check(rc, s, format!("connecting to port id {pid}"))?;
    }
    Ok(fd)
}
