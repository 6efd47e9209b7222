//! Files and sockets: memfd, sock_diag for unix/inet/packet/netlink sockets,
//! TCP_REPAIR, SO_PEEK_OFF.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;

use crate::feature::Feature::*;
use crate::report::Outcome;
use crate::runner::Unit;
use crate::util::{self, cvt, Call, Fail, PResult};

pub(crate) static UNIT: Unit = Unit {
    name: "files-sockets",
    features: &[
        Memfd,
        SoPeekOff,
        SockDiagUnix,
        SockDiagInet,
        SockDiagPacket,
        SockDiagNetlink,
        TcpRepair,
    ],
    run: || {
        vec![
            (Memfd, util::outcome(memfd())),
            (SoPeekOff, util::outcome(peek_off())),
            (SockDiagUnix, util::outcome(diag_unix())),
            (SockDiagInet, util::outcome(diag_inet())),
            (SockDiagPacket, util::outcome(diag_packet())),
            (SockDiagNetlink, util::outcome(diag_netlink())),
            (TcpRepair, util::outcome(tcp_repair())),
        ]
    },
    cleanup: None,
};

// Constants the libc crate does not export for every target
// (include/uapi/linux/*.h, include/uapi/asm-generic/socket.h).
const SO_PEEK_OFF: i32 = 42;
const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const MFD_CLOEXEC: u32 = 1;
const MFD_ALLOW_SEALING: u32 = 2;
const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_PEER: u32 = 4;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;
const TCP_LISTEN: u32 = 10;

fn ino(fd: BorrowedFd) -> PResult<u32> {
    Ok(nix::sys::stat::fstat(fd).call("fstat")?.st_ino as u32)
}

fn memfd() -> PResult<Outcome> {
    let name = c"stasis-probe";
    // SAFETY: memfd_create with a valid C string; the fd is owned below.
    let fd = cvt("memfd_create", unsafe {
        libc::memfd_create(name.as_ptr(), MFD_CLOEXEC | MFD_ALLOW_SEALING)
    } as libc::c_long)
    .map_err(|f| {
        if f.errno == Some(Errno::ENOSYS) {
            f.into_missing()
        } else {
            f
        }
    })?;
    // SAFETY: fd was just returned by memfd_create.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    file.write_all(b"stasis").call("write(memfd)")?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    // SAFETY: fcntl with integer arguments on our fd.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    cvt("fcntl(F_ADD_SEALS)", r as libc::c_long)?;
    // SAFETY: as above.
    let got = cvt(
        "fcntl(F_GET_SEALS)",
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) } as libc::c_long,
    )? as i32;
    if got & seals != seals {
        return Err(Fail::error("fcntl(F_GET_SEALS)", "seals not recorded"));
    }
    if file.write_all(b"x").is_ok() {
        return Err(Fail::error(
            "write(memfd)",
            "a write-sealed memfd accepted a write",
        ));
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .call("readlink /proc/self/fd")?;
    if !link.to_string_lossy().starts_with("/memfd:stasis-probe") {
        return Err(Fail::error(
            "readlink /proc/self/fd",
            format!("unexpected link {}", link.display()),
        ));
    }
    Ok(Outcome::ok(format!(
        "created, sealed against writes, seen as {}",
        link.display()
    )))
}

fn peek_off() -> PResult<Outcome> {
    let (a, b) = std::os::unix::net::UnixStream::pair().call("socketpair(AF_UNIX)")?;
    let set = |v: i32| {
        // SAFETY: setsockopt with a valid int option value.
        cvt("setsockopt(SO_PEEK_OFF)", unsafe {
            libc::setsockopt(
                b.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEEK_OFF,
                (&v as *const i32).cast(),
                4,
            )
        } as libc::c_long)
    };
    set(0).map_err(|f| {
        if f.errno == Some(Errno::ENOPROTOOPT) || f.errno == Some(Errno::EOPNOTSUPP) {
            f.into_missing()
        } else {
            f
        }
    })?;
    (&a).write_all(b"abcdef").call("write")?;
    let peek = |what: &str| -> PResult<Vec<u8>> {
        let mut buf = [0u8; 3];
        // SAFETY: recv into our 3-byte buffer.
        let n = cvt(what, unsafe {
            libc::recv(b.as_raw_fd(), buf.as_mut_ptr().cast(), 3, libc::MSG_PEEK)
        } as libc::c_long)?;
        Ok(buf[..n as usize].to_vec())
    };
    let first = peek("recv(MSG_PEEK)")?;
    let second = peek("recv(MSG_PEEK)")?;
    if first != b"abc" || second != b"def" {
        return Err(Fail::error(
            "recv(MSG_PEEK)",
            "peeks did not advance the offset",
        ));
    }
    let mut rest = [0u8; 6];
    (&b).read_exact(&mut rest).call("read")?;
    if &rest != b"abcdef" {
        return Err(Fail::error("read", "peeking consumed data"));
    }
    Ok(Outcome::ok(
        "successive peeks advance an offset; the data stays queued",
    ))
}

/// One sock_diag request; returns the payloads of the replies `pick` accepts.
fn diag(req: &[u8], dump: bool, pick: impl Fn(&[u8]) -> bool) -> PResult<Vec<Vec<u8>>> {
    // SAFETY: socket with integer arguments; the fd is owned below.
    let fd = cvt("socket(AF_NETLINK, NETLINK_SOCK_DIAG)", unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    }
        as libc::c_long)?;
    // SAFETY: fd was just returned by socket().
    let sock = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    diag_on(sock.as_fd(), req, dump, pick)
}

fn diag_on(
    sock: BorrowedFd,
    req: &[u8],
    dump: bool,
    pick: impl Fn(&[u8]) -> bool,
) -> PResult<Vec<Vec<u8>>> {
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid timeval.
    cvt("setsockopt(SO_RCVTIMEO)", unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    } as libc::c_long)?;
    let flags = libc::NLM_F_REQUEST as u16 | if dump { libc::NLM_F_DUMP as u16 } else { 0 };
    let mut msg = Vec::with_capacity(16 + req.len());
    msg.extend_from_slice(&((16 + req.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(req);
    // SAFETY: sending our buffer.
    cvt("send(sock_diag)", unsafe {
        libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0)
    } as libc::c_long)?;
    let mut found = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into our buffer.
        let n = cvt("recv(sock_diag)", unsafe {
            libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
        } as libc::c_long)? as usize;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            if len < 16 || off + len > n {
                return Err(Fail::error("recv(sock_diag)", "malformed netlink message"));
            }
            let payload = &buf[off + 16..off + len];
            match ty {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(payload[..4].try_into().unwrap());
                    if code != 0 {
                        let e = Errno::from_raw(-code);
                        let f = Fail::call("sock_diag request", e);
                        return Err(if e == Errno::ENOENT {
                            f.into_missing()
                                .because("no sock_diag handler for this family")
                        } else {
                            f
                        });
                    }
                    return Ok(found);
                }
                SOCK_DIAG_BY_FAMILY => {
                    if pick(payload) {
                        found.push(payload.to_vec());
                    }
                    if !dump {
                        return Ok(found);
                    }
                }
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map(|s| u32::from_ne_bytes(s.try_into().unwrap()))
        .unwrap_or(0)
}

/// Netlink attributes (rtattr) from `off` on: (type, payload).
fn attrs(b: &[u8], mut off: usize) -> Vec<(u16, &[u8])> {
    let mut v = Vec::new();
    while off + 4 <= b.len() {
        let len = u16::from_ne_bytes([b[off], b[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([b[off + 2], b[off + 3]]);
        if len < 4 || off + len > b.len() {
            break;
        }
        v.push((ty, &b[off + 4..off + len]));
        off += (len + 3) & !3;
    }
    v
}

fn diag_unix() -> PResult<Outcome> {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("stasis-probe-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .call("abstract address")?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).call("bind(AF_UNIX)")?;
    let client = std::os::unix::net::UnixStream::connect_addr(&addr).call("connect(AF_UNIX)")?;
    let (server, _) = listener.accept().call("accept(AF_UNIX)")?;
    let (l_ino, c_ino, s_ino) = (
        ino(listener.as_fd())?,
        ino(client.as_fd())?,
        ino(server.as_fd())?,
    );
    let q = |ino: u32| {
        let mut req = vec![libc::AF_UNIX as u8, 0, 0, 0];
        req.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
        req.extend_from_slice(&ino.to_ne_bytes());
        req.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER).to_ne_bytes());
        req.extend_from_slice(&[0xff; 8]); // no cookie
        diag(&req, false, |p| u32_at(p, 4) == ino)
    };
    let named = q(l_ino)?;
    let has_name = named.first().is_some_and(|m| {
        attrs(m, 16).iter().any(|(t, v)| {
            *t == UNIX_DIAG_NAME && v.len() > name.len() && &v[1..1 + name.len()] == name.as_bytes()
        })
    });
    let conn = q(c_ino)?;
    let peer = conn.first().and_then(|m| {
        attrs(m, 16)
            .iter()
            .find(|(t, _)| *t == UNIX_DIAG_PEER)
            .map(|(_, v)| u32_at(v, 0))
    });
    if !has_name || peer != Some(s_ino) {
        return Err(Fail::error(
            "sock_diag(AF_UNIX)",
            "name or peer of our own sockets not reported",
        ));
    }
    Ok(Outcome::ok(
        "reported our listener's name and a connection's peer",
    ))
}

fn diag_inet() -> PResult<Outcome> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").call("bind(127.0.0.1)")?;
    let port = listener.local_addr().call("getsockname")?.port();
    let l_ino = ino(listener.as_fd())?;
    let mut req = vec![libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0];
    req.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]);
    let found = diag(&req, true, |p| u32_at(p, 68) == l_ino)?;
    let ok = found
        .first()
        .is_some_and(|m| u16::from_be_bytes([m[4], m[5]]) == port && m[1] as u32 == TCP_LISTEN);
    if !ok {
        return Err(Fail::error(
            "sock_diag(AF_INET, TCP)",
            "our listening socket was not reported",
        ));
    }
    Ok(Outcome::ok(format!(
        "reported our TCP listener on 127.0.0.1:{port}"
    )))
}

fn diag_packet() -> PResult<Outcome> {
    // SAFETY: socket with integer arguments; the fd is owned below.
    let fd = cvt("socket(AF_PACKET)", unsafe {
        libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0)
    } as libc::c_long)?;
    // SAFETY: fd was just returned by socket().
    let sock = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let p_ino = ino(sock.as_fd())?;
    let mut req = vec![libc::AF_PACKET as u8, 0, 0, 0];
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // PACKET_SHOW_INFO
    req.extend_from_slice(&[0u8; 8]);
    let found = diag(&req, true, |p| u32_at(p, 4) == p_ino)?;
    if found.is_empty() {
        return Err(Fail::error(
            "sock_diag(AF_PACKET)",
            "our packet socket was not reported",
        ));
    }
    Ok(Outcome::ok("reported our packet socket"))
}

fn diag_netlink() -> PResult<Outcome> {
    // SAFETY: socket with integer arguments; the fd is owned below.
    let fd = cvt("socket(AF_NETLINK)", unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    } as libc::c_long)?;
    // SAFETY: fd was just returned by socket().
    let sock = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let n_ino = ino(sock.as_fd())?;
    let mut req = vec![libc::AF_NETLINK as u8, 255, 0, 0]; // NDIAG_PROTO_ALL
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[0u8; 8]);
    let found = diag_on(sock.as_fd(), &req, true, |p| u32_at(p, 16) == n_ino)?;
    if found.first().map(|m| m[2] as i32) != Some(NETLINK_SOCK_DIAG) {
        return Err(Fail::error(
            "sock_diag(AF_NETLINK)",
            "the asking netlink socket was not reported",
        ));
    }
    Ok(Outcome::ok("reported the asking netlink socket itself"))
}

fn sockopt_i32(fd: BorrowedFd, level: i32, opt: i32, v: i32, name: &str) -> PResult<()> {
    // SAFETY: setsockopt with a valid int.
    let r = unsafe { libc::setsockopt(fd.as_raw_fd(), level, opt, (&v as *const i32).cast(), 4) };
    cvt(name, r as libc::c_long)?;
    Ok(())
}

/// In repair mode: (send queue seq, receive queue seq) and the window.
fn repair_seqs(fd: BorrowedFd) -> PResult<(u32, u32)> {
    let get_seq = |queue: i32| -> PResult<u32> {
        sockopt_i32(
            fd,
            libc::IPPROTO_TCP,
            TCP_REPAIR_QUEUE,
            queue,
            "setsockopt(TCP_REPAIR_QUEUE)",
        )?;
        let mut v: u32 = 0;
        let mut len = 4u32;
        // SAFETY: getsockopt into a u32.
        cvt("getsockopt(TCP_QUEUE_SEQ)", unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUEUE_SEQ,
                (&mut v as *mut u32).cast(),
                &mut len,
            )
        } as libc::c_long)?;
        Ok(v)
    };
    let snd = get_seq(TCP_SEND_QUEUE)?;
    let rcv = get_seq(TCP_RECV_QUEUE)?;
    let mut win = [0u32; 5];
    let mut len = 20u32;
    // SAFETY: getsockopt into a 20-byte struct tcp_repair_window.
    cvt("getsockopt(TCP_REPAIR_WINDOW)", unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR_WINDOW,
            win.as_mut_ptr().cast(),
            &mut len,
        )
    } as libc::c_long)?;
    Ok((snd, rcv))
}

fn tcp_repair() -> PResult<Outcome> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").call("bind(127.0.0.1)")?;
    let addr = listener.local_addr().call("getsockname")?;
    let mut client = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .call("connect(127.0.0.1)")?;
    let (mut server, _) = listener.accept().call("accept")?;
    client.write_all(b"hello").call("write")?;
    server
        .set_read_timeout(Some(Duration::from_secs(1)))
        .call("setsockopt(SO_RCVTIMEO)")?;
    let mut b = [0u8; 5];
    server.read_exact(&mut b).call("read")?;
    sockopt_i32(
        client.as_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR,
        1,
        "setsockopt(TCP_REPAIR)",
    )?;
    sockopt_i32(
        server.as_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR,
        1,
        "setsockopt(TCP_REPAIR)",
    )?;
    let (c_snd, c_rcv) = repair_seqs(client.as_fd())?;
    let (s_snd, s_rcv) = repair_seqs(server.as_fd())?;
    sockopt_i32(
        client.as_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR,
        0,
        "setsockopt(TCP_REPAIR, 0)",
    )?;
    sockopt_i32(
        server.as_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR,
        0,
        "setsockopt(TCP_REPAIR, 0)",
    )?;
    if c_snd != s_rcv || s_snd != c_rcv {
        return Err(Fail::error(
            "getsockopt(TCP_QUEUE_SEQ)",
            "the two ends' sequence numbers do not match",
        ));
    }
    Ok(Outcome::ok(
        "read both ends' sequence numbers and windows of a live connection in repair mode",
    ))
}
