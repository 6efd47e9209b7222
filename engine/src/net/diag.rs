//! Netlink, by hand: sock_diag for unix sockets (names, peers, listen
//! queues, queue lengths, shutdown state) and rtnetlink for the addresses,
//! links and routes of a network namespace. The structs are small and stable
//! kernel ABI, written out here (linux/unix_diag.h, linux/rtnetlink.h).
//!
//! A netlink socket belongs to the network namespace it was created in: the
//! dumper enters the sandbox's namespace (setns), creates its sockets there
//! and returns to its own namespace at once.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{Error, Result};

const NETLINK_ROUTE: i32 = 0;
const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_GETADDR: u16 = 22;
const RTM_GETROUTE: u16 = 26;

const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_VFS: u32 = 0x2;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UDIAG_SHOW_ICONS: u32 = 0x8;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

fn os_err(what: &str) -> Error {
    Error::Io {
        what: what.to_string(),
        cause: std::io::Error::last_os_error(),
    }
}

/// A netlink socket of one protocol.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// A netlink socket in this process's current network namespace.
    pub fn open(protocol: i32) -> Result<Netlink> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(os_err("netlink socket"));
        }
        // SAFETY: `fd` is new and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Netlink { fd, seq: 0 })
    }

    pub fn sock_diag() -> Result<Netlink> {
        Self::open(NETLINK_SOCK_DIAG)
    }

    pub fn route() -> Result<Netlink> {
        Self::open(NETLINK_ROUTE)
    }

    /// Sends one request; returns the payloads of the replies (without their
    /// netlink headers) until DONE, or until the ACK for a non-dump request.
    fn request(&mut self, what: &str, ty: u16, flags: u16, body: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.seq += 1;
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: sending our buffer on our socket (to the kernel, address 0).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(os_err(what));
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: receiving into our buffer.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(os_err(what));
            }
            let data = &buf[..n as usize];
            let mut off = 0;
            while off + 16 <= data.len() {
                let mlen = u32::from_ne_bytes(data[off..off + 4].try_into().expect("4")) as usize;
                let mty = u16::from_ne_bytes(data[off + 4..off + 6].try_into().expect("2"));
                let mseq = u32::from_ne_bytes(data[off + 8..off + 12].try_into().expect("4"));
                if mlen < 16 || off + mlen > data.len() {
                    return Err(Error::Other(format!("{what}: malformed netlink reply")));
                }
                let payload = &data[off + 16..off + mlen];
                off += (mlen + 3) & !3;
                if mseq != self.seq {
                    continue;
                }
                match mty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(
                            payload
                                .get(..4)
                                .and_then(|b| b.try_into().ok())
                                .unwrap_or([0; 4]),
                        );
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(Error::Io {
                            what: what.to_string(),
                            cause: std::io::Error::from_raw_os_error(-code),
                        });
                    }
                    _ => out.push(payload.to_vec()),
                }
            }
        }
    }
}

/// Runs `f` inside the network namespace of process `pid`, then returns to
/// our own. The caller must be single-threaded (setns changes the thread).
pub fn in_netns<T>(pid: i32, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let ours = File::open("/proc/thread-self/ns/net").map_err(|e| Error::Io {
        what: "opening our network namespace".into(),
        cause: e,
    })?;
    let theirs = File::open(format!("/proc/{pid}/ns/net")).map_err(|e| Error::Io {
        what: format!("opening the network namespace of process {pid}"),
        cause: e,
    })?;
    // SAFETY: setns with an fd of a network namespace we just opened.
    if unsafe { libc::setns(theirs.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(os_err(&format!(
            "entering the network namespace of process {pid}"
        )));
    }
    let r = f();
    // SAFETY: as above, back into our own namespace.
    if unsafe { libc::setns(ours.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(os_err("returning to our network namespace"));
    }
    r
}

fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        let next = (len + 3) & !3;
        if next >= b.len() {
            break;
        }
        b = &b[next..];
    }
    out
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map(|x| u32::from_ne_bytes(x.try_into().expect("4")))
        .unwrap_or(0)
}

/// What sock_diag tells about one unix socket.
#[derive(Debug, Clone, Default)]
pub struct UnixDiag {
    pub ino: u64,
    pub sock_type: u8,
    pub state: u8,
    pub name: Vec<u8>,
    /// Inode and device of the socket file (path names only).
    pub vfs: Option<(u64, u32)>,
    pub peer: u64,
    /// Listening: the clients waiting to be accepted (their inodes), in order.
    pub icons: Vec<u64>,
    /// Listening: (queued connections, backlog); otherwise (bytes queued to
    /// read, bytes sent and not yet read by the peer).
    pub rqlen: (u32, u32),
    pub shutdown: u8,
}

/// Every unix socket of the namespace `nl` was created in.
pub fn unix_sockets(nl: &mut Netlink) -> Result<HashMap<u64, UnixDiag>> {
    let show =
        UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
    // struct unix_diag_req: family, protocol, pad, states, ino, show, cookie[2].
    let mut req = Vec::with_capacity(24);
    req.push(libc::AF_UNIX as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    let replies = nl.request(
        "sock_diag of unix sockets (feature: sock-diag-unix)",
        SOCK_DIAG_BY_FAMILY,
        NLM_F_DUMP,
        &req,
    )?;
    let mut out = HashMap::new();
    for r in replies {
        // struct unix_diag_msg: family, type, state, pad, ino, cookie[2].
        if r.len() < 16 {
            continue;
        }
        let mut d = UnixDiag {
            sock_type: r[1],
            state: r[2],
            ino: u32_at(&r, 4) as u64,
            ..Default::default()
        };
        for (ty, v) in attrs(&r[16..]) {
            match ty {
                UNIX_DIAG_NAME => d.name = v.to_vec(),
                UNIX_DIAG_VFS => d.vfs = Some((u32_at(v, 0) as u64, u32_at(v, 4))),
                UNIX_DIAG_PEER => d.peer = u32_at(v, 0) as u64,
                UNIX_DIAG_ICONS => {
                    d.icons = v.chunks_exact(4).map(|c| u32_at(c, 0) as u64).collect()
                }
                UNIX_DIAG_RQLEN => d.rqlen = (u32_at(v, 0), u32_at(v, 4)),
                UNIX_DIAG_SHUTDOWN => d.shutdown = v.first().copied().unwrap_or(0),
                _ => {}
            }
        }
        out.insert(d.ino, d);
    }
    Ok(out)
}

/// One interface of a namespace, with its addresses ("ADDR/PREFIX").
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub addresses: Vec<String>,
}

/// The links and addresses of the namespace `nl` was created in.
pub fn links(nl: &mut Netlink) -> Result<Vec<Link>> {
    // struct ifinfomsg: family, pad, type, index, flags, change.
    let ifi = [0u8; 16];
    let mut links = Vec::new();
    for r in nl.request("listing interfaces", RTM_GETLINK, NLM_F_DUMP, &ifi)? {
        if r.len() < 16 {
            continue;
        }
        let index = u32_at(&r, 4);
        let flags = u32_at(&r, 8);
        let mut name = String::new();
        for (ty, v) in attrs(&r[16..]) {
            if ty == libc::IFLA_IFNAME {
                name = String::from_utf8_lossy(v.split(|&c| c == 0).next().unwrap_or(&[]))
                    .into_owned();
            }
        }
        links.push(Link {
            index,
            name,
            up: flags & libc::IFF_UP as u32 != 0,
            addresses: Vec::new(),
        });
    }
    // struct ifaddrmsg: family, prefixlen, flags, scope, index.
    let ifa = [0u8; 8];
    for r in nl.request("listing addresses", RTM_GETADDR, NLM_F_DUMP, &ifa)? {
        if r.len() < 8 {
            continue;
        }
        let family = r[0] as i32;
        let prefix = r[1];
        let index = u32_at(&r, 4);
        let mut local = None;
        let mut address = None;
        for (ty, v) in attrs(&r[8..]) {
            let a = ip_from(family, v);
            if ty == libc::IFA_LOCAL {
                local = a;
            } else if ty == libc::IFA_ADDRESS {
                address = a;
            }
        }
        if let (Some(a), Some(l)) = (
            local.or(address),
            links.iter_mut().find(|l| l.index == index),
        ) {
            l.addresses.push(format!("{a}/{prefix}"));
        }
    }
    Ok(links)
}

/// The main table's routes, as text ("DEST/LEN via GW dev NAME").
pub fn routes(nl: &mut Netlink, links: &[Link]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut rtm = [0u8; 12];
        rtm[0] = family as u8;
        for r in nl.request("listing routes", RTM_GETROUTE, NLM_F_DUMP, &rtm)? {
            if r.len() < 12 || r[4] != libc::RT_TABLE_MAIN {
                continue;
            }
            let dst_len = r[1];
            let mut dst = None;
            let mut gw = None;
            let mut dev = None;
            for (ty, v) in attrs(&r[12..]) {
                match ty {
                    libc::RTA_DST => dst = ip_from(family, v),
                    libc::RTA_GATEWAY => gw = ip_from(family, v),
                    libc::RTA_OIF => dev = Some(u32_at(v, 0)),
                    _ => {}
                }
            }
            let dst = match dst {
                Some(d) => format!("{d}/{dst_len}"),
                None => "default".to_string(),
            };
            let mut s = dst;
            if let Some(g) = gw {
                s.push_str(&format!(" via {g}"));
            }
            if let Some(l) = dev.and_then(|i| links.iter().find(|l| l.index == i)) {
                s.push_str(&format!(" dev {}", l.name));
            }
            out.push(s);
        }
    }
    Ok(out)
}

fn ip_from(family: i32, v: &[u8]) -> Option<std::net::IpAddr> {
    match (family, v.len()) {
        (libc::AF_INET, 4) => Some(std::net::Ipv4Addr::new(v[0], v[1], v[2], v[3]).into()),
        (libc::AF_INET6, 16) => {
            let b: [u8; 16] = v.try_into().ok()?;
            Some(std::net::Ipv6Addr::from(b).into())
        }
        _ => None,
    }
}

/// Sets interface `index` up or down.
pub fn set_link_up(nl: &mut Netlink, index: u32, up: bool) -> Result<()> {
    let mut ifi = Vec::with_capacity(16);
    ifi.push(libc::AF_UNSPEC as u8);
    ifi.push(0);
    ifi.extend_from_slice(&0u16.to_ne_bytes());
    ifi.extend_from_slice(&(index as i32).to_ne_bytes());
    let flags = if up { libc::IFF_UP as u32 } else { 0 };
    ifi.extend_from_slice(&flags.to_ne_bytes());
    ifi.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
    nl.request(
        &format!(
            "setting interface {index} {}",
            if up { "up" } else { "down" }
        ),
        RTM_NEWLINK,
        NLM_F_ACK,
        &ifi,
    )?;
    Ok(())
}

/// The index of interface `name` in our namespace.
pub fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}
