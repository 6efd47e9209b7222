//! Established TCP connections, through TCP_REPAIR (opt-in with
//! `stasis dump --tcp-established`).
//!
//! Dump: our duplicate of the socket is put in repair mode (the connection
//! then neither sends nor answers on its own behalf when closed: no FIN, no
//! RST); we read the sequence numbers of both queues, their contents
//! (MSG_PEEK on the chosen queue), the negotiated options (MSS, window
//! scales, SACK, timestamps), the timestamp clock and the window. While any
//! connection is in repair mode the host end of the sandbox's veth is down,
//! so that nothing arrives after the queues were read. A dump that kills the
//! tree closes the sockets still in repair mode, after the sandbox's veth is
//! gone; a dump that fails, or one with --leave-running, takes them out of
//! repair mode and sets the veth up again.
//!
//! Restore, in the sandbox's init: a new socket in repair mode takes the
//! sequence numbers, binds (repair mode may reuse a port a listener holds)
//! and "connects" without a handshake, gets the options, the queues (the
//! part of the send queue that had not been sent is sent normally after
//! repair mode), the timestamp clock and the window, and leaves repair mode.
//!
//! Half-closed and closing connections (FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT,
//! LAST_ACK, CLOSING): a FIN takes one sequence number but no byte of the
//! queues. Dump records the queues without it; restore makes the connection
//! ESTABLISHED and then reproduces each FIN: ours by shutdown(SHUT_WR)
//! (in repair mode, marked as sent, when it had been acknowledged or when
//! the peer's FIN came after it; after repair mode, behind the unsent data,
//! otherwise), the peer's by a FIN segment from the peer's address sent to
//! the socket through a raw socket, and the peer's acknowledgement of our
//! FIN (FIN_WAIT2) by an ACK segment the same way.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::{diag, inet, opts, Seen};
use crate::error::{Error, Result};
use crate::image::{Blob, InetSocketImage, PageSink, SocketImage, TcpConnImage};

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_REPAIR_ON: i32 = 1;
const TCP_REPAIR_OFF: i32 = 0;
const TCP_REPAIR_OFF_NO_WP: i32 = -1;
const TCP_NO_QUEUE: i32 = 0;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;

const SYN_SENT: u8 = 2;
const FIN_WAIT1: u8 = 4;
const FIN_WAIT2: u8 = 5;
const CLOSE_WAIT: u8 = 8;
const LAST_ACK: u8 = 9;
const CLOSING: u8 = 11;

/// States a connection is dumped in with TCP_REPAIR.
pub fn repairable(state: u8) -> bool {
    matches!(
        state,
        inet::TCP_ESTABLISHED | SYN_SENT | FIN_WAIT1 | FIN_WAIT2 | CLOSE_WAIT | LAST_ACK | CLOSING
    )
}

/// We sent a FIN (it takes the sequence number after the send queue).
fn fin_sent(state: u8) -> bool {
    matches!(state, FIN_WAIT1 | FIN_WAIT2 | LAST_ACK | CLOSING)
}

/// The peer acknowledged our FIN.
fn fin_acked(state: u8) -> bool {
    state == FIN_WAIT2
}

/// The peer's FIN arrived (it takes the sequence number after the receive
/// queue).
fn fin_received(state: u8) -> bool {
    matches!(state, CLOSE_WAIT | LAST_ACK | CLOSING)
}

/// Our FIN is restored in repair mode, marked as sent: everything before it
/// is then restored as sent too.
fn fin_in_repair(state: u8) -> bool {
    matches!(state, FIN_WAIT2 | CLOSING)
}

/// Sockets in repair mode and the network lock, undone on drop unless the
/// dump kills the tree (`close_in_repair`).
#[derive(Default)]
pub struct RepairGuard {
    socks: Vec<OwnedFd>,
    /// Host interface set down, by name.
    locked: Option<String>,
}

impl RepairGuard {
    /// Sets the host end of the veth down (once).
    pub fn lock_network(&mut self, host_if: &str) -> Result<()> {
        if self.locked.is_some() {
            return Ok(());
        }
        let index = diag::if_index(host_if).ok_or_else(|| {
            Error::Other(format!("the sandbox's host interface {host_if} is missing"))
        })?;
        let mut nl = diag::Netlink::route()?;
        diag::set_link_up(&mut nl, index, false)?;
        self.locked = Some(host_if.to_string());
        Ok(())
    }

    /// Puts the socket of `s` in repair mode.
    pub(crate) fn enter(&mut self, s: &Seen) -> Result<()> {
        let dup = s
            .dup
            .as_ref()
            .expect("a socket seen through an fd")
            .try_clone()
            .map_err(|e| Error::Io {
                what: "duplicating a TCP socket".into(),
                cause: e,
            })?;
        opts::set_int(
            dup.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_REPAIR,
            TCP_REPAIR_ON,
        )
        .map_err(|e| Error::Process {
            pid: s.pid,
            reason: format!("fd {}: TCP_REPAIR: {e}", s.fd),
        })?;
        self.socks.push(dup);
        Ok(())
    }

    /// The dump killed the tree and removed its network: close the sockets
    /// still in repair mode (no FIN, no RST).
    pub fn close_in_repair(mut self) {
        self.socks.clear();
        self.locked = None;
    }

    pub fn is_empty(&self) -> bool {
        self.socks.is_empty() && self.locked.is_none()
    }
}

impl Drop for RepairGuard {
    fn drop(&mut self) {
        for s in self.socks.drain(..) {
            let _ = opts::set_int(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                TCP_REPAIR,
                TCP_REPAIR_OFF_NO_WP,
            );
        }
        if let Some(h) = self.locked.take() {
            if let (Some(index), Ok(mut nl)) = (diag::if_index(&h), diag::Netlink::route()) {
                if let Err(e) = diag::set_link_up(&mut nl, index, true) {
                    tracing::warn!("setting {h} up again: {e}");
                }
            }
        }
    }
}

fn ioctl_int(fd: RawFd, req: libc::c_ulong) -> std::io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the ioctl writes one int into `v`.
    if unsafe { libc::ioctl(fd, req, &mut v) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v as u32)
}

fn peek(fd: RawFd, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    if len > 0 {
        // SAFETY: peeking into our buffer.
        let n = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr().cast(),
                len,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        got = n as usize;
    }
    buf.truncate(got);
    Ok(buf)
}

/// Reads the repair state of every established connection (already in
/// repair mode: every one of them before any is read).
pub(crate) fn finish(seen: &mut [Seen], blobs: &mut PageSink) -> Result<()> {
    for s in seen.iter_mut() {
        let established = s.img.sock_type == libc::SOCK_STREAM
            && s.img.family != libc::AF_UNIX
            && repairable(s.img.state);
        if !established {
            continue;
        }
        let t = collect(s, blobs)?;
        s.img.inet.as_mut().expect("inet").tcp = Some(t);
    }
    Ok(())
}

fn collect(s: &Seen, blobs: &mut PageSink) -> Result<TcpConnImage> {
    let fd = s.raw();
    let err = |what: &str, e: std::io::Error| Error::Process {
        pid: s.pid,
        reason: format!("fd {}: TCP connection: {what}: {e}", s.fd),
    };
    let tcp = libc::IPPROTO_TCP;
    let info = inet::TcpInfo::get(fd).map_err(|e| err("TCP_INFO", e))?;
    let state = s.img.state;
    if info.state() != state {
        return Err(s.unsupported(
            format!(
                "TCP connection that left {} for {} while being dumped",
                inet::state_name(state),
                inet::state_name(info.state())
            ),
            format!("socket:[{}]", s.img.ino),
        ));
    }
    if state == SYN_SENT {
        // A connect in progress: only its initial sequence number (the SYN
        // takes it; nothing is queued, nothing was negotiated yet).
        opts::set_int(fd, tcp, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
            .map_err(|e| err("TCP_REPAIR_QUEUE", e))?;
        let write_seq =
            opts::get_int(fd, tcp, TCP_QUEUE_SEQ).map_err(|e| err("TCP_QUEUE_SEQ", e))? as u32;
        opts::set_int(fd, tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
            .map_err(|e| err("TCP_REPAIR_QUEUE", e))?;
        return Ok(TcpConnImage {
            snd_seq: write_seq.wrapping_sub(1),
            ..Default::default()
        });
    }
    let mss = opts::get_int(fd, tcp, libc::TCP_MAXSEG).map_err(|e| err("TCP_MAXSEG", e))?;
    let timestamp = opts::get_int(fd, tcp, TCP_TIMESTAMP).map_err(|e| err("TCP_TIMESTAMP", e))?;
    let mut win = [0u8; 20];
    opts::get_bytes(fd, tcp, TCP_REPAIR_WINDOW, &mut win)
        .map_err(|e| err("TCP_REPAIR_WINDOW", e))?;
    let w = |i: usize| u32::from_ne_bytes(win[i * 4..i * 4 + 4].try_into().expect("4"));

    opts::set_int(fd, tcp, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        .map_err(|e| err("TCP_REPAIR_QUEUE", e))?;
    let rcv_nxt =
        opts::get_int(fd, tcp, TCP_QUEUE_SEQ).map_err(|e| err("TCP_QUEUE_SEQ", e))? as u32;
    let inq = ioctl_int(fd, libc::FIONREAD).map_err(|e| err("SIOCINQ", e))?;
    let recv = peek(fd, inq as usize).map_err(|e| err("reading the receive queue", e))?;

    opts::set_int(fd, tcp, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        .map_err(|e| err("TCP_REPAIR_QUEUE", e))?;
    let write_seq =
        opts::get_int(fd, tcp, TCP_QUEUE_SEQ).map_err(|e| err("TCP_QUEUE_SEQ", e))? as u32;
    let outq = ioctl_int(fd, libc::TIOCOUTQ).map_err(|e| err("SIOCOUTQ", e))?;
    let unsent = ioctl_int(fd, SIOCOUTQNSD).map_err(|e| err("SIOCOUTQNSD", e))?;
    // A FIN sent and not acknowledged is counted in the send queue, and
    // also in its unsent part when it has not been sent; the receive queue
    // counts no FIN (SIOCINQ leaves it out).
    let fin_queued = u32::from(fin_sent(state) && !fin_acked(state));
    let data_outq = outq.saturating_sub(fin_queued);
    let unsent = if unsent > 0 {
        unsent.saturating_sub(fin_queued)
    } else {
        0
    };
    let send = peek(fd, data_outq as usize).map_err(|e| err("reading the send queue", e))?;
    opts::set_int(fd, tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
        .map_err(|e| err("TCP_REPAIR_QUEUE", e))?;

    if recv.len() != inq as usize || send.len() != data_outq as usize {
        return Err(s.unsupported(
            format!(
                "TCP connection whose queues could not be read whole (receive {} of {inq}, send {} of {outq} bytes)",
                recv.len(),
                send.len()
            ),
            format!("socket:[{}]", s.img.ino),
        ));
    }
    let rq = Blob {
        offset: blobs.position(),
        len: recv.len() as u64,
    };
    blobs.write_all(&recv)?;
    let sq = Blob {
        offset: blobs.position(),
        len: send.len() as u64,
    };
    blobs.write_all(&send)?;
    let o = info.options();
    Ok(TcpConnImage {
        // The first byte of each queue: an acknowledged FIN is behind the
        // send queue, a received one behind the receive queue.
        snd_seq: write_seq
            .wrapping_sub(outq)
            .wrapping_sub(u32::from(fin_acked(state))),
        rcv_seq: rcv_nxt
            .wrapping_sub(inq)
            .wrapping_sub(u32::from(fin_received(state))),
        send_queue: sq,
        unsent: unsent.min(data_outq) as u64,
        recv_queue: rq,
        mss: mss as u32,
        snd_wscale: info.snd_wscale(),
        rcv_wscale: info.rcv_wscale(),
        wscale_ok: o & TCPI_OPT_WSCALE != 0,
        sack_ok: o & TCPI_OPT_SACK != 0,
        timestamps_ok: o & TCPI_OPT_TIMESTAMPS != 0,
        timestamp: timestamp as u32,
        snd_wl1: w(0),
        snd_wnd: w(1),
        max_window: w(2),
        rcv_wnd: w(3),
        rcv_wup: w(4),
    })
}

/// Recreates an established connection, left in repair mode: every
/// connection of the image is made before any leaves repair mode (`go_live`),
/// so that the window probe one end sends on leaving it finds the other end
/// (a connection inside the sandbox) instead of drawing a reset.
pub(crate) fn restore(
    s: &SocketImage,
    i: &InetSocketImage,
    t: &TcpConnImage,
    blobs: Option<&std::fs::File>,
) -> Result<OwnedFd> {
    let local = inet::parse(i.local.as_deref().unwrap_or(""), "local")?;
    let peer = inet::parse(i.peer.as_deref().unwrap_or(""), "peer")?;
    let what = format!("TCP connection {local} -> {peer}");
    let ctx = |step: &str, e: std::io::Error| Error::Io {
        what: format!("{what}: {step}"),
        cause: e,
    };
    let fd = inet::new_socket(s.family, libc::SOCK_STREAM)?;
    let raw = fd.as_raw_fd();
    let tcp = libc::IPPROTO_TCP;
    if i.reconnect {
        // Waiting in a listener's accept queue: a real handshake with the
        // restored listener (made before any connection) queues it again.
        opts::restore(raw, &s.opts, s.family, s.sock_type)
            .map_err(|e| Error::Other(format!("{what}: {e}")))?;
        inet::bind(raw, &local, s.family, &what)?;
        inet::connect(raw, &peer, s.family, &what)?;
        return Ok(fd);
    }
    opts::set_int(raw, tcp, TCP_REPAIR, TCP_REPAIR_ON).map_err(|e| ctx("TCP_REPAIR", e))?;
    for (q, seq) in [(TCP_RECV_QUEUE, t.rcv_seq), (TCP_SEND_QUEUE, t.snd_seq)] {
        opts::set_int(raw, tcp, TCP_REPAIR_QUEUE, q).map_err(|e| ctx("TCP_REPAIR_QUEUE", e))?;
        opts::set_int(raw, tcp, TCP_QUEUE_SEQ, seq as i32).map_err(|e| ctx("TCP_QUEUE_SEQ", e))?;
    }
    if s.family == libc::AF_INET6 {
        opts::set_int(
            raw,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            s.opts.v6only as i32,
        )
        .map_err(|e| ctx("IPV6_V6ONLY", e))?;
    }
    inet::bind(raw, &local, s.family, &what)?;
    if s.state == SYN_SENT {
        return connect_again(fd, &peer, s.family, &what);
    }
    inet::connect(raw, &peer, s.family, &what)?;
    let mut ropts: Vec<(u32, u32)> = vec![(TCPOPT_MSS, t.mss)];
    if t.wscale_ok {
        ropts.push((
            TCPOPT_WINDOW,
            t.snd_wscale as u32 | (t.rcv_wscale as u32) << 16,
        ));
    }
    if t.sack_ok {
        ropts.push((TCPOPT_SACK_PERM, 0));
    }
    if t.timestamps_ok {
        ropts.push((TCPOPT_TIMESTAMP, 0));
    }
    let bytes: Vec<u8> = ropts
        .iter()
        .flat_map(|(c, v)| c.to_ne_bytes().into_iter().chain(v.to_ne_bytes()))
        .collect();
    opts::set_bytes(raw, tcp, TCP_REPAIR_OPTIONS, &bytes)
        .map_err(|e| ctx("TCP_REPAIR_OPTIONS", e))?;
    opts::set_int(raw, tcp, TCP_TIMESTAMP, t.timestamp as i32)
        .map_err(|e| ctx("TCP_TIMESTAMP", e))?;
    let send = super::read_blob(blobs, t.send_queue, &format!("the send queue of {what}"))?;
    let recv = super::read_blob(blobs, t.recv_queue, &format!("the receive queue of {what}"))?;
    // Room for the queues whatever the buffer sizes were.
    let room = |n: usize| ((n * 2 + (1 << 20)).min(i32::MAX as usize / 2)) as i32;
    opts::set_int(
        raw,
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        room(send.len()),
    )
    .map_err(|e| ctx("SO_SNDBUFFORCE", e))?;
    opts::set_int(
        raw,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        room(recv.len()),
    )
    .map_err(|e| ctx("SO_RCVBUFFORCE", e))?;
    let unsent = if fin_in_repair(s.state) {
        0
    } else {
        (t.unsent as usize).min(send.len())
    };
    let sent = send.len() - unsent;
    opts::set_int(raw, tcp, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        .map_err(|e| ctx("TCP_REPAIR_QUEUE", e))?;
    super::send_all(
        raw,
        &send[..sent],
        libc::MSG_DONTWAIT,
        &format!("the send queue of {what}"),
    )?;
    opts::set_int(raw, tcp, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        .map_err(|e| ctx("TCP_REPAIR_QUEUE", e))?;
    super::send_all(
        raw,
        &recv,
        libc::MSG_DONTWAIT,
        &format!("the receive queue of {what}"),
    )?;
    opts::set_int(raw, tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
        .map_err(|e| ctx("TCP_REPAIR_QUEUE", e))?;
    let mut win = Vec::with_capacity(20);
    // Room in the window for the peer's FIN, made again below.
    let (rcv_wnd, rcv_wup) = if fin_received(s.state) {
        (t.rcv_wnd.wrapping_add(1), t.rcv_wup.wrapping_sub(1))
    } else {
        (t.rcv_wnd, t.rcv_wup)
    };
    for v in [t.snd_wl1, t.snd_wnd, t.max_window, rcv_wnd, rcv_wup] {
        win.extend_from_slice(&v.to_ne_bytes());
    }
    opts::set_bytes(raw, tcp, TCP_REPAIR_WINDOW, &win).map_err(|e| ctx("TCP_REPAIR_WINDOW", e))?;
    Ok(fd)
}

/// Takes a connection made by `restore` out of repair mode: it is live.
pub(crate) fn go_live(
    s: &SocketImage,
    i: &InetSocketImage,
    t: &TcpConnImage,
    fd: &OwnedFd,
    blobs: Option<&std::fs::File>,
) -> Result<()> {
    let what = format!(
        "TCP connection {} -> {}",
        i.local.as_deref().unwrap_or("?"),
        i.peer.as_deref().unwrap_or("?")
    );
    let raw = fd.as_raw_fd();
    if s.state == SYN_SENT || i.reconnect {
        // Out of repair mode since its connect.
        opts::restore(raw, &s.opts, s.family, s.sock_type)
            .map_err(|e| Error::Other(format!("{what}: {e}")))?;
        opts::restore_late(raw, &s.opts, s.sock_type, true)
            .map_err(|e| Error::Other(format!("{what}: {e}")))?;
        return Ok(());
    }
    opts::set_int(raw, libc::IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF).map_err(|e| Error::Io {
        what: format!("{what}: leaving TCP_REPAIR"),
        cause: e,
    })?;
    // What had not been sent yet goes out as new data.
    if !fin_in_repair(s.state) {
        let send = super::read_blob(blobs, t.send_queue, &format!("the send queue of {what}"))?;
        let sent = send.len() - (t.unsent as usize).min(send.len());
        super::send_all(
            raw,
            &send[sent..],
            libc::MSG_DONTWAIT,
            &format!("the unsent data of {what}"),
        )?;
    }
    // Our FIN not yet acknowledged goes behind it (sent again if the peer
    // had it already: it acknowledges it again).
    if fin_sent(s.state) && !fin_in_repair(s.state) {
        // SAFETY: shutdown(2) on our socket.
        if unsafe { libc::shutdown(raw, libc::SHUT_WR) } < 0 {
            return Err(Error::Io {
                what: format!("{what}: shutting down for writing"),
                cause: std::io::Error::last_os_error(),
            });
        }
    }
    opts::restore(raw, &s.opts, s.family, s.sock_type)
        .map_err(|e| Error::Other(format!("{what}: {e}")))?;
    opts::restore_late(raw, &s.opts, s.sock_type, true)
        .map_err(|e| Error::Other(format!("{what}: {e}")))?;
    Ok(())
}

/// Reproduces, still in repair mode, the FINs of a half-closed or closing
/// connection made by `restore` (once every connection of the image exists,
/// so that what a socket answers finds its peer): ours when it was
/// acknowledged or followed by the peer's (restored as sent), the peer's,
/// and the peer's acknowledgement of ours. `go_live` sends our FIN in the
/// other states.
pub(crate) fn restore_fins(
    s: &SocketImage,
    i: &InetSocketImage,
    t: &TcpConnImage,
    fd: &OwnedFd,
) -> Result<()> {
    let state = s.state;
    if !fin_sent(state) && !fin_received(state) {
        return Ok(());
    }
    let local = inet::parse(i.local.as_deref().unwrap_or(""), "local")?;
    let peer = inet::parse(i.peer.as_deref().unwrap_or(""), "peer")?;
    let what = format!("TCP connection {local} -> {peer}");
    let raw = fd.as_raw_fd();
    let tcp = libc::IPPROTO_TCP;
    let ctx = |step: &str, e: std::io::Error| Error::Io {
        what: format!("{what}: {step}"),
        cause: e,
    };
    let snd_end = t.snd_seq.wrapping_add(t.send_queue.len as u32);
    let rcv_end = t.rcv_seq.wrapping_add(t.recv_queue.len as u32);
    // The peer's window as its segments announce it.
    let window = if t.wscale_ok {
        t.snd_wnd >> t.snd_wscale.min(14)
    } else {
        t.snd_wnd
    }
    .min(0xffff) as u16;
    let seg = Segment {
        from: peer,
        to: local,
        window,
        tsecr: t.timestamps_ok.then_some(t.timestamp),
    };
    if fin_in_repair(state) {
        opts::set_int(raw, tcp, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
            .map_err(|e| ctx("TCP_REPAIR_QUEUE", e))?;
        // SAFETY: shutdown(2) on our socket.
        let r = unsafe { libc::shutdown(raw, libc::SHUT_WR) };
        let e = std::io::Error::last_os_error();
        opts::set_int(raw, tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
            .map_err(|e| ctx("TCP_REPAIR_QUEUE", e))?;
        if r < 0 {
            return Err(ctx("restoring our FIN (shutdown)", e));
        }
    }
    let (want, flags, seq, ack) = match state {
        FIN_WAIT2 => (FIN_WAIT2, TH_ACK, rcv_end, snd_end.wrapping_add(1)),
        CLOSING => (CLOSING, TH_ACK | TH_FIN, rcv_end, t.snd_seq),
        // LAST_ACK is CLOSE_WAIT until go_live shuts it down.
        CLOSE_WAIT | LAST_ACK => (CLOSE_WAIT, TH_ACK | TH_FIN, rcv_end, t.snd_seq),
        _ => return Ok(()),
    };
    seg.send(flags, seq, ack)
        .map_err(|e| ctx("sending the peer's FIN or ACK to the socket", e))?;
    // The segment goes through the loopback: wait until the socket took it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let now = inet::TcpInfo::get(raw)
            .map_err(|e| ctx("TCP_INFO", e))?
            .state();
        if now == want {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::Other(format!(
                "{what}: restoring state {}: the socket is in state {} after the peer's segment",
                inet::state_name(state),
                inet::state_name(now)
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

const TH_FIN: u8 = 0x01;
const TH_ACK: u8 = 0x10;

/// A TCP segment as the peer would send it, written whole (IP header
/// included) on a raw socket of the sandbox's network namespace.
struct Segment {
    from: std::net::SocketAddr,
    to: std::net::SocketAddr,
    window: u16,
    /// Timestamp echo when the connection uses timestamps (the segment's own
    /// timestamp is 0: a restored connection has seen none, so PAWS takes
    /// any later one of the peer).
    tsecr: Option<u32>,
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        acc += w as u32;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

impl Segment {
    fn send(&self, flags: u8, seq: u32, ack: u32) -> std::io::Result<()> {
        use std::net::IpAddr;
        let v4 = |a: IpAddr| match a {
            IpAddr::V4(v) => Some(v),
            IpAddr::V6(v) => v.to_ipv4_mapped(),
        };
        let mut tcph = Vec::with_capacity(32);
        tcph.extend_from_slice(&self.from.port().to_be_bytes());
        tcph.extend_from_slice(&self.to.port().to_be_bytes());
        tcph.extend_from_slice(&seq.to_be_bytes());
        tcph.extend_from_slice(&ack.to_be_bytes());
        let doff: u8 = if self.tsecr.is_some() { 8 } else { 5 };
        tcph.push(doff << 4);
        tcph.push(flags);
        tcph.extend_from_slice(&self.window.to_be_bytes());
        tcph.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        if let Some(ecr) = self.tsecr {
            tcph.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 0]);
            tcph.extend_from_slice(&ecr.to_be_bytes());
        }
        let len = tcph.len() as u16;
        let (family, packet, dst) = match (v4(self.from.ip()), v4(self.to.ip())) {
            (Some(src), Some(dst)) => {
                let mut pseudo = Vec::with_capacity(12);
                pseudo.extend_from_slice(&src.octets());
                pseudo.extend_from_slice(&dst.octets());
                pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8]);
                pseudo.extend_from_slice(&len.to_be_bytes());
                let c = fold(sum16(&tcph, sum16(&pseudo, 0)));
                tcph[16..18].copy_from_slice(&c.to_be_bytes());
                let mut ip = vec![0x45, 0];
                ip.extend_from_slice(&(20 + len).to_be_bytes());
                ip.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_TCP as u8, 0, 0]);
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                let c = fold(sum16(&ip, 0));
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                ip.extend_from_slice(&tcph);
                let to = std::net::SocketAddr::from((dst, 0));
                (libc::AF_INET, ip, to)
            }
            _ => {
                let ip6 = |a: IpAddr| match a {
                    IpAddr::V6(v) => v,
                    IpAddr::V4(v) => v.to_ipv6_mapped(),
                };
                let (src, dst) = (ip6(self.from.ip()), ip6(self.to.ip()));
                let mut pseudo = Vec::with_capacity(40);
                pseudo.extend_from_slice(&src.octets());
                pseudo.extend_from_slice(&dst.octets());
                pseudo.extend_from_slice(&(len as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, libc::IPPROTO_TCP as u8]);
                let c = fold(sum16(&tcph, sum16(&pseudo, 0)));
                tcph[16..18].copy_from_slice(&c.to_be_bytes());
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&len.to_be_bytes());
                ip.extend_from_slice(&[libc::IPPROTO_TCP as u8, 64]);
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                ip.extend_from_slice(&tcph);
                let scope = match self.to {
                    std::net::SocketAddr::V6(a) => a.scope_id(),
                    _ => 0,
                };
                let to = std::net::SocketAddr::V6(std::net::SocketAddrV6::new(dst, 0, 0, scope));
                (libc::AF_INET6, ip, to)
            }
        };
        // SAFETY: socket(2); the result is checked and owned below.
        let fd = unsafe {
            libc::socket(
                family,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is new and ours.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let (st, slen) = inet::to_raw(&dst, family);
        // SAFETY: sendto from our buffer with a sockaddr we built.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&st as *const libc::sockaddr_storage).cast(),
                slen,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A connect in progress (SYN_SENT), bound and given its initial sequence
/// number in repair mode: out of repair mode, a non-blocking connect sends
/// the SYN again with the same sequence number, and the kernel goes on
/// retransmitting it until the peer answers.
fn connect_again(
    fd: OwnedFd,
    peer: &std::net::SocketAddr,
    family: i32,
    what: &str,
) -> Result<OwnedFd> {
    let raw = fd.as_raw_fd();
    opts::set_int(raw, libc::IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP).map_err(|e| {
        Error::Io {
            what: format!("{what}: leaving TCP_REPAIR"),
            cause: e,
        }
    })?;
    // SAFETY: F_SETFL on our socket (its flags are set as recorded when it
    // is handed out).
    if unsafe { libc::fcntl(raw, libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
        return Err(Error::Io {
            what: format!("{what}: O_NONBLOCK"),
            cause: std::io::Error::last_os_error(),
        });
    }
    let (st, len) = inet::to_raw(peer, family);
    // SAFETY: connect with a sockaddr we built.
    let r = unsafe { libc::connect(raw, (&st as *const libc::sockaddr_storage).cast(), len) };
    let e = std::io::Error::last_os_error();
    if r < 0 && e.raw_os_error() != Some(libc::EINPROGRESS) {
        return Err(Error::Io {
            what: format!("{what}: connecting to {peer} again"),
            cause: e,
        });
    }
    Ok(fd)
}
