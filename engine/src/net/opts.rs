//! Socket options: read from a duplicate of the workload's socket at dump,
//! set on the new socket at restore.

use std::os::fd::RawFd;

use crate::image::SockOpts;

const SO_BUF_LOCK: i32 = 72;
/// Bits of SO_BUF_LOCK.
pub const SNDBUF_LOCK: i32 = 1;
pub const RCVBUF_LOCK: i32 = 2;

/// getsockopt of an int.
pub fn get_int(fd: RawFd, level: i32, opt: i32) -> std::io::Result<i32> {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut i32).cast(), &mut len) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

/// setsockopt of an int.
pub fn set_int(fd: RawFd, level: i32, opt: i32, v: i32) -> std::io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<i32>()` bytes from `v`.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// getsockopt into a byte buffer; returns the length the kernel wrote.
pub fn get_bytes(fd: RawFd, level: i32, opt: i32, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `buf`.
    let r = unsafe { libc::getsockopt(fd, level, opt, buf.as_mut_ptr().cast(), &mut len) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(len as usize)
}

/// setsockopt from a byte buffer.
pub fn set_bytes(fd: RawFd, level: i32, opt: i32, buf: &[u8]) -> std::io::Result<()> {
    // SAFETY: setsockopt reads `buf.len()` bytes from `buf`.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            buf.as_ptr().cast(),
            buf.len() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn get_timeval_us(fd: RawFd, opt: i32) -> std::io::Result<u64> {
    let mut b = [0u8; 16];
    get_bytes(fd, libc::SOL_SOCKET, opt, &mut b)?;
    let s = i64::from_ne_bytes(b[..8].try_into().expect("8"));
    let us = i64::from_ne_bytes(b[8..].try_into().expect("8"));
    Ok((s.max(0) as u64) * 1_000_000 + us.max(0) as u64)
}

fn set_timeval_us(fd: RawFd, opt: i32, v: u64) -> std::io::Result<()> {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&((v / 1_000_000) as i64).to_ne_bytes());
    b[8..].copy_from_slice(&((v % 1_000_000) as i64).to_ne_bytes());
    set_bytes(fd, libc::SOL_SOCKET, opt, &b)
}

/// Reads the options of a socket of `family`/`sock_type`.
pub fn collect(fd: RawFd, family: i32, sock_type: i32) -> std::io::Result<SockOpts> {
    let sol = libc::SOL_SOCKET;
    let flag = |opt| get_int(fd, sol, opt).map(|v| v != 0);
    let mut o = SockOpts {
        reuseaddr: flag(libc::SO_REUSEADDR)?,
        reuseport: flag(libc::SO_REUSEPORT)?,
        keepalive: flag(libc::SO_KEEPALIVE)?,
        broadcast: flag(libc::SO_BROADCAST)?,
        oobinline: flag(libc::SO_OOBINLINE)?,
        passcred: family == libc::AF_UNIX && flag(libc::SO_PASSCRED)?,
        priority: get_int(fd, sol, libc::SO_PRIORITY)?,
        rcvlowat: get_int(fd, sol, libc::SO_RCVLOWAT)?,
        mark: get_int(fd, sol, libc::SO_MARK)? as u32,
        sndbuf: get_int(fd, sol, libc::SO_SNDBUF)?,
        rcvbuf: get_int(fd, sol, libc::SO_RCVBUF)?,
        buf_lock: get_int(fd, sol, SO_BUF_LOCK).unwrap_or(0),
        linger: None,
        rcvtimeo_us: get_timeval_us(fd, libc::SO_RCVTIMEO)?,
        sndtimeo_us: get_timeval_us(fd, libc::SO_SNDTIMEO)?,
        peek_off: get_int(fd, sol, libc::SO_PEEK_OFF).unwrap_or(-1),
        ..Default::default()
    };
    let mut l = [0u8; 8];
    get_bytes(fd, sol, libc::SO_LINGER, &mut l)?;
    if i32::from_ne_bytes(l[..4].try_into().expect("4")) != 0 {
        o.linger = Some(i32::from_ne_bytes(l[4..].try_into().expect("4")));
    }
    if family == libc::AF_INET || family == libc::AF_INET6 {
        if family == libc::AF_INET6 {
            o.v6only = get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)? != 0;
            o.tos = get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_TCLASS)?;
        } else {
            o.tos = get_int(fd, libc::IPPROTO_IP, libc::IP_TOS)?;
        }
        o.freebind = get_int(fd, libc::IPPROTO_IP, libc::IP_FREEBIND)? != 0;
        if sock_type == libc::SOCK_STREAM {
            let tcp = libc::IPPROTO_TCP;
            o.tcp_nodelay = get_int(fd, tcp, libc::TCP_NODELAY)? != 0;
            o.tcp_cork = get_int(fd, tcp, libc::TCP_CORK)? != 0;
            o.tcp_keepidle = get_int(fd, tcp, libc::TCP_KEEPIDLE)?;
            o.tcp_keepintvl = get_int(fd, tcp, libc::TCP_KEEPINTVL)?;
            o.tcp_keepcnt = get_int(fd, tcp, libc::TCP_KEEPCNT)?;
            o.tcp_user_timeout = get_int(fd, tcp, libc::TCP_USER_TIMEOUT)? as u32;
            o.tcp_defer_accept = get_int(fd, tcp, libc::TCP_DEFER_ACCEPT)?;
            let mut name = [0u8; 16];
            let n = get_bytes(fd, tcp, libc::TCP_CONGESTION, &mut name)?;
            let name = &name[..n];
            let name = name.split(|&c| c == 0).next().unwrap_or(&[]);
            o.tcp_congestion = Some(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(o)
}

fn ctx(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Sets the options that do not depend on the socket's connection state.
/// Buffer sizes are set only when the program had set them (SO_BUF_LOCK);
/// `restore_buffers` does that after the queues are refilled.
pub fn restore(fd: RawFd, o: &SockOpts, family: i32, sock_type: i32) -> Result<(), String> {
    let sol = libc::SOL_SOCKET;
    let b = |v: bool| v as i32;
    set_int(fd, sol, libc::SO_REUSEADDR, b(o.reuseaddr)).map_err(ctx("SO_REUSEADDR"))?;
    set_int(fd, sol, libc::SO_REUSEPORT, b(o.reuseport)).map_err(ctx("SO_REUSEPORT"))?;
    if o.keepalive {
        set_int(fd, sol, libc::SO_KEEPALIVE, 1).map_err(ctx("SO_KEEPALIVE"))?;
    }
    if o.broadcast {
        set_int(fd, sol, libc::SO_BROADCAST, 1).map_err(ctx("SO_BROADCAST"))?;
    }
    if o.oobinline {
        set_int(fd, sol, libc::SO_OOBINLINE, 1).map_err(ctx("SO_OOBINLINE"))?;
    }
    if o.passcred && family == libc::AF_UNIX {
        set_int(fd, sol, libc::SO_PASSCRED, 1).map_err(ctx("SO_PASSCRED"))?;
    }
    if o.priority != 0 {
        set_int(fd, sol, libc::SO_PRIORITY, o.priority).map_err(ctx("SO_PRIORITY"))?;
    }
    if o.rcvlowat > 1 {
        set_int(fd, sol, libc::SO_RCVLOWAT, o.rcvlowat).map_err(ctx("SO_RCVLOWAT"))?;
    }
    if o.mark != 0 {
        set_int(fd, sol, libc::SO_MARK, o.mark as i32).map_err(ctx("SO_MARK"))?;
    }
    if let Some(secs) = o.linger {
        let mut l = [0u8; 8];
        l[..4].copy_from_slice(&1i32.to_ne_bytes());
        l[4..].copy_from_slice(&secs.to_ne_bytes());
        set_bytes(fd, sol, libc::SO_LINGER, &l).map_err(ctx("SO_LINGER"))?;
    }
    if o.rcvtimeo_us != 0 {
        set_timeval_us(fd, libc::SO_RCVTIMEO, o.rcvtimeo_us).map_err(ctx("SO_RCVTIMEO"))?;
    }
    if o.sndtimeo_us != 0 {
        set_timeval_us(fd, libc::SO_SNDTIMEO, o.sndtimeo_us).map_err(ctx("SO_SNDTIMEO"))?;
    }
    if family == libc::AF_INET || family == libc::AF_INET6 {
        if family == libc::AF_INET6 {
            // Only settable before bind, and binding to a specific IPv6
            // address sets it: a bound socket keeps what it has.
            let cur = get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).unwrap_or(0) != 0;
            if cur != o.v6only {
                if let Err(e) = set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, b(o.v6only)) {
                    if e.raw_os_error() != Some(libc::EINVAL) {
                        return Err(format!("IPV6_V6ONLY: {e}"));
                    }
                }
            }
            if o.tos != 0 {
                set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_TCLASS, o.tos)
                    .map_err(ctx("IPV6_TCLASS"))?;
            }
        } else if o.tos != 0 {
            set_int(fd, libc::IPPROTO_IP, libc::IP_TOS, o.tos).map_err(ctx("IP_TOS"))?;
        }
        if o.freebind {
            set_int(fd, libc::IPPROTO_IP, libc::IP_FREEBIND, 1).map_err(ctx("IP_FREEBIND"))?;
        }
        if sock_type == libc::SOCK_STREAM {
            let tcp = libc::IPPROTO_TCP;
            set_int(fd, tcp, libc::TCP_NODELAY, b(o.tcp_nodelay)).map_err(ctx("TCP_NODELAY"))?;
            if o.tcp_keepidle > 0 {
                set_int(fd, tcp, libc::TCP_KEEPIDLE, o.tcp_keepidle)
                    .map_err(ctx("TCP_KEEPIDLE"))?;
            }
            if o.tcp_keepintvl > 0 {
                set_int(fd, tcp, libc::TCP_KEEPINTVL, o.tcp_keepintvl)
                    .map_err(ctx("TCP_KEEPINTVL"))?;
            }
            if o.tcp_keepcnt > 0 {
                set_int(fd, tcp, libc::TCP_KEEPCNT, o.tcp_keepcnt).map_err(ctx("TCP_KEEPCNT"))?;
            }
            if o.tcp_user_timeout != 0 {
                set_int(fd, tcp, libc::TCP_USER_TIMEOUT, o.tcp_user_timeout as i32)
                    .map_err(ctx("TCP_USER_TIMEOUT"))?;
            }
            if o.tcp_defer_accept != 0 {
                set_int(fd, tcp, libc::TCP_DEFER_ACCEPT, o.tcp_defer_accept)
                    .map_err(ctx("TCP_DEFER_ACCEPT"))?;
            }
            if let Some(cc) = &o.tcp_congestion {
                if !cc.is_empty() {
                    // A congestion control the kernel no longer offers is not fatal.
                    if let Err(e) = set_bytes(fd, tcp, libc::TCP_CONGESTION, cc.as_bytes()) {
                        tracing::warn!("TCP_CONGESTION {cc}: {e}");
                    }
                }
            }
        }
    }
    Ok(())
}

/// Options set last: TCP_CORK (after the queues), SO_PEEK_OFF, and the
/// buffer sizes a program chose, with their locks as they were.
pub fn restore_late(fd: RawFd, o: &SockOpts, sock_type: i32, inet: bool) -> Result<(), String> {
    let sol = libc::SOL_SOCKET;
    if o.sndbuf > 0 {
        set_int(fd, sol, libc::SO_SNDBUFFORCE, o.sndbuf / 2).map_err(ctx("SO_SNDBUFFORCE"))?;
    }
    if o.rcvbuf > 0 {
        set_int(fd, sol, libc::SO_RCVBUFFORCE, o.rcvbuf / 2).map_err(ctx("SO_RCVBUFFORCE"))?;
    }
    // The locks exactly as they were (refilling may have set the send lock).
    let _ = set_int(fd, sol, SO_BUF_LOCK, o.buf_lock);
    if o.peek_off >= 0 {
        set_int(fd, sol, libc::SO_PEEK_OFF, o.peek_off).map_err(ctx("SO_PEEK_OFF"))?;
    }
    if inet && sock_type == libc::SOCK_STREAM && o.tcp_cork {
        set_int(fd, libc::IPPROTO_TCP, libc::TCP_CORK, 1).map_err(ctx("TCP_CORK"))?;
    }
    Ok(())
}
