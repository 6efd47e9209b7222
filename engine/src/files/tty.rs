//! Terminals. Every sandbox has a devpts instance of its own (see
//! `sandbox::mounts`), so a terminal a workload holds is one of its
//! sandbox's ptys, its controlling terminal through /dev/tty, or a terminal
//! of the host handed to it from outside (a `stasis exec` run from a
//! terminal).
//!
//! The sandbox's ptys are checkpointed: each pair by its index, with the
//! slave's termios, window size, lock, packet and exclusive modes, the
//! session whose controlling terminal it is with its foreground group, and
//! the bytes queued in each direction. A pty's queues cannot be read without
//! consuming them, so the dump reads them and writes them back at once,
//! while the tree is stopped, with the line in raw mode for the moment
//! (no echo, no output processing), then puts the termios back. Restore
//! opens /dev/ptmx of the fresh devpts in index order (fillers for the
//! gaps, closed afterwards), opens the slaves through TIOCGPTPEER, sets the
//! line's state, refills the queues the same way, and the session leader
//! takes the slave as its controlling terminal right after its setsid().
//!
//! /dev/tty fds are refused (not yet), and a host terminal is refused for
//! good: a restore refuses an image that names a terminal by path before
//! opening anything of it, so a host terminal never enters a restored
//! sandbox (its path would name whatever terminal has that number now).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::stat::FileStat;

use super::last_os_error;
use crate::error::{Error, Result};
use crate::image::{FileDesc, FileKind, FilesImage, PtyImage};

/// Whether character device `rdev` is a terminal by its major number:
/// BSD ptys (2, 3), virtual consoles and serial ports (4), /dev/tty,
/// /dev/console and /dev/ptmx (5), Unix98 pty slaves (136 to 143), and
/// the usual serial drivers (166 ttyACM, 188 ttyUSB, 204 low-density).
pub fn is_terminal_device(rdev: u64) -> bool {
    matches!(libc::major(rdev), 2..=5 | 136..=143 | 166 | 188 | 204)
}

/// One end of a pty of the sandbox's devpts, as found by [`check_dump`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtyEnd {
    pub index: u32,
    pub master: bool,
    /// Opened through /dev/tty (a description of the slave).
    pub dev_tty: bool,
}

/// Checks fd `fd` of process `pid` (`dup` is our copy, `st` its fstat,
/// `link` its path) when it is a terminal: a pty of the sandbox's own
/// devpts is returned, anything else refused. `init` is the host PID of the
/// sandbox's init, whose /dev/pts is the sandbox's own devpts.
pub fn check_dump(
    (pid, pid_host): (i32, i32),
    fd: i32,
    link: &str,
    dup: &OwnedFd,
    st: &FileStat,
    init: i32,
) -> Result<Option<PtyEnd>> {
    // SAFETY: isatty on an fd we own.
    let tty = unsafe { libc::isatty(dup.as_raw_fd()) } == 1;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || !(tty || is_terminal_device(st.st_rdev)) {
        return Ok(None);
    }
    let own = nix::sys::stat::stat(format!("/proc/{init}/root/dev/pts").as_str())
        .ok()
        .map(|s| s.st_dev);
    if own == Some(st.st_dev) {
        if st.st_rdev == libc::makedev(5, 2) {
            let mut n: libc::c_int = 0;
            // SAFETY: TIOCGPTN writes an int into `n`.
            if unsafe { libc::ioctl(dup.as_raw_fd(), TIOCGPTN, &mut n) } < 0 || n < 0 {
                return Err(last_os_error(format!(
                    "process {pid}: TIOCGPTN on fd {fd} ({link})"
                )));
            }
            return Ok(Some(PtyEnd {
                index: n as u32,
                master: true,
                dev_tty: false,
            }));
        }
        let major = libc::major(st.st_rdev);
        if (136..=143).contains(&major) {
            return Ok(Some(PtyEnd {
                index: (major - 136) * 256 + libc::minor(st.st_rdev),
                master: false,
                dev_tty: false,
            }));
        }
        return Err(Error::Unsupported {
            pid,
            what: format!("fd {fd}: terminal {link} of the sandbox's own devpts"),
            detail: "not a pty master or slave".into(),
        });
    }
    let own_tty = nix::sys::stat::stat(format!("/proc/{init}/root/dev/tty").as_str())
        .ok()
        .map(|s| s.st_dev);
    if st.st_rdev == libc::makedev(5, 0) && own_tty == Some(st.st_dev) {
        // /dev/tty of the sandbox: the terminal it was opened on, which
        // must be the process's controlling terminal and a pty (a master of
        // the tree's, checked once every process is collected).
        let mut dev: libc::c_uint = 0;
        // SAFETY: TIOCGDEV writes an unsigned int into `dev`.
        let rc = unsafe { libc::ioctl(dup.as_raw_fd(), TIOCGDEV, &mut dev) };
        let (major, minor) = ((dev >> 8) & 0xfff, (dev & 0xff) | ((dev >> 12) & 0xfff00));
        if rc == 0 && (136..=143).contains(&major) && ctty_nr(pid_host, dev) {
            return Ok(Some(PtyEnd {
                index: (major - 136) * 256 + minor,
                master: false,
                dev_tty: true,
            }));
        }
    }
    if st.st_rdev == libc::makedev(5, 0) {
        return Err(Error::Unsupported {
            pid,
            what: format!("fd {fd}: {link}, the process's controlling terminal"),
            detail: "/dev/tty fds are not checkpointed (the ptys themselves are)".into(),
        });
    }
    Err(Error::Process {
        pid,
        reason: format!(
            "fd {fd} is a terminal of the host ({link}), outside the sandbox's own devpts: \
             an image never holds a host terminal (run the workload without a terminal, \
             or with one of its sandbox's ptys)"
        ),
    })
}

/// Refuses to reopen `path` for description `id` at restore when it is a
/// terminal (checked on the path before it is opened, and on the opened fd).
pub fn check_restore_path(id: u32, path: &str) -> Result<()> {
    if let Ok(st) = nix::sys::stat::stat(path) {
        if st.st_mode & libc::S_IFMT == libc::S_IFCHR && is_terminal_device(st.st_rdev) {
            return Err(refusal(id, path));
        }
    }
    Ok(())
}

/// The same check on the opened fd (a terminal of another driver).
pub fn check_restore_fd(id: u32, path: &str, fd: &OwnedFd) -> Result<()> {
    // SAFETY: isatty on an fd we own.
    if unsafe { libc::isatty(fd.as_raw_fd()) } == 1 {
        return Err(refusal(id, path));
    }
    Ok(())
}

fn refusal(id: u32, path: &str) -> Error {
    Error::Other(format!(
        "image: file {id} is the terminal {path}: terminals are not restored (a path would \
         name whatever terminal has that number now, in the sandbox or on the host)"
    ))
}

const TIOCGPTN: libc::c_ulong = 0x8004_5430;
const TIOCSPTLCK: libc::c_ulong = 0x4004_5431;
const TIOCGPKT: libc::c_ulong = 0x8004_5438;
const TIOCGPTLCK: libc::c_ulong = 0x8004_5439;
const TIOCGEXCL: libc::c_ulong = 0x8004_5440;
const TIOCGPTPEER: libc::c_ulong = 0x5441;
const TIOCGDEV: libc::c_ulong = 0x8004_5432;

/// Whether the controlling terminal of host process `pid` (the tty_nr
/// field of /proc/PID/stat, the device encoded as the kernel encodes it)
/// is `dev`.
fn ctty_nr(pid: i32, dev: libc::c_uint) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            rest.split_whitespace().nth(4)?.parse::<i64>().ok()
        })
        .is_some_and(|nr| nr == dev as i64)
}

/// Control characters in a termios2.
const NCC: usize = 19;

/// Highest pty index an image may name, plus one (devpts's default `max`
/// is 4096 per instance too): restore opens a filler for every gap below.
pub const PTY_INDEX_LIMIT: u32 = 4096;
/// Most bytes queued in one direction of a pty (n_tty's 4 KiB buffer plus
/// what the flip buffers hold is far less).
pub const PTY_QUEUE_LIMIT: usize = 1 << 20;

fn ioctl_int(fd: RawFd, req: libc::c_ulong, what: &str) -> Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    // SAFETY: an ioctl that writes one int into `v`.
    if unsafe { libc::ioctl(fd, req, &mut v) } < 0 {
        return Err(last_os_error(what.to_string()));
    }
    Ok(v)
}

fn ioctl_set(fd: RawFd, req: libc::c_ulong, v: libc::c_int, what: &str) -> Result<()> {
    // SAFETY: an ioctl that reads one int from `v`.
    if unsafe { libc::ioctl(fd, req, &v) } < 0 {
        return Err(last_os_error(what.to_string()));
    }
    Ok(())
}

fn get_termios(fd: RawFd, what: &str) -> Result<libc::termios2> {
    // SAFETY: termios2 is plain data; all zeroes is a valid value.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    // SAFETY: TCGETS2 fills `t`.
    if unsafe { libc::ioctl(fd, libc::TCGETS2 as _, &mut t) } < 0 {
        return Err(last_os_error(format!("TCGETS2 on {what}")));
    }
    Ok(t)
}

fn set_termios(fd: RawFd, t: &libc::termios2, what: &str) -> Result<()> {
    // SAFETY: TCSETS2 reads `t`.
    if unsafe { libc::ioctl(fd, libc::TCSETS2 as _, t) } < 0 {
        return Err(last_os_error(format!("TCSETS2 on {what}")));
    }
    Ok(())
}

/// The line with no input or output processing, no echo and reads that
/// return what is there: queued bytes pass through unchanged.
fn raw(t: &libc::termios2) -> libc::termios2 {
    let mut r = *t;
    r.c_iflag = 0;
    r.c_oflag = 0;
    r.c_lflag = 0;
    r.c_cc[libc::VMIN] = 0;
    r.c_cc[libc::VTIME] = 0;
    r
}

/// The line while queued bytes are written back: nothing processed or
/// echoed; a canonical line stays canonical, so the bytes are cut into lines
/// again as they were (a partial line stays partial).
fn refill_mode(t: &libc::termios2) -> libc::termios2 {
    let mut r = raw(t);
    if t.c_lflag & libc::ICANON != 0 {
        r.c_lflag = libc::ICANON;
    }
    r
}

/// A new description of the slave of master `master` (TIOCGPTPEER; a locked
/// pty is unlocked for the moment).
fn open_peer(master: RawFd, flags: i32, what: &str) -> Result<OwnedFd> {
    let flags = flags | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER returns a new fd or -1.
    let mut fd = unsafe { libc::ioctl(master, TIOCGPTPEER as _, flags) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EIO) {
        let locked = ioctl_int(master, TIOCGPTLCK, "TIOCGPTLCK")?;
        if locked != 0 {
            ioctl_set(master, TIOCSPTLCK, 0, "TIOCSPTLCK")?;
            // SAFETY: as above.
            fd = unsafe { libc::ioctl(master, TIOCGPTPEER as _, flags) };
            let e = std::io::Error::last_os_error();
            ioctl_set(master, TIOCSPTLCK, 1, "TIOCSPTLCK")?;
            if fd < 0 {
                return Err(Error::Io {
                    what: format!("opening the slave of {what}"),
                    cause: e,
                });
            }
        }
    }
    if fd < 0 {
        return Err(last_os_error(format!("opening the slave of {what}")));
    }
    // SAFETY: `fd` is a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn inq(fd: RawFd, what: &str) -> Result<usize> {
    Ok(ioctl_int(fd, libc::FIONREAD, &format!("FIONREAD on {what}"))?.max(0) as usize)
}

/// Reads what `fd` holds now (`n` bytes).
fn read_queue(fd: RawFd, n: usize, what: &str) -> Result<Vec<u8>> {
    if n > PTY_QUEUE_LIMIT {
        return Err(Error::Other(format!("{what}: {n} bytes queued")));
    }
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        // SAFETY: reading into the rest of our buffer.
        let r = unsafe { libc::read(fd, out[got..].as_mut_ptr().cast(), n - got) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if r <= 0 {
            break;
        }
        got += r as usize;
    }
    out.truncate(got);
    Ok(out)
}

fn write_all(fd: RawFd, data: &[u8], what: &str) -> Result<()> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: writing from our buffer.
        let r = unsafe { libc::write(fd, data[done..].as_ptr().cast(), data.len() - done) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if r <= 0 {
            return Err(last_os_error(format!("writing the queued bytes of {what}")));
        }
        done += r as usize;
    }
    Ok(())
}

/// Puts `to_slave` and `to_master` into the queues of the pair (`master`,
/// `slave`, the line in `refill_mode`) and waits until the line discipline
/// holds them. A canonical line counts only its complete lines as readable:
/// then the bytes up to the last line end are waited for.
fn refill(
    master: RawFd,
    slave: RawFd,
    to_slave: &[u8],
    to_master: &[u8],
    what: &str,
) -> Result<()> {
    let t = get_termios(slave, what)?;
    let eof = t.c_cc[libc::VEOF];
    let canonical = t.c_lflag & libc::ICANON != 0;
    // A canonical queue holds an end-of-file as a 0 byte that ends a line
    // and is not counted as readable: it is written back as the VEOF
    // character, which makes it again.
    let bytes: Vec<u8> = if canonical && eof != 0 {
        to_slave
            .iter()
            .map(|&b| if b == 0 { eof } else { b })
            .collect()
    } else {
        to_slave.to_vec()
    };
    let slave_counts = if canonical {
        let ends = [b'\n', t.c_cc[libc::VEOL], t.c_cc[libc::VEOL2]];
        let upto = to_slave
            .iter()
            .rposition(|b| (*b == 0 && eof != 0) || (*b != 0 && ends.contains(b)))
            .map_or(0, |i| i + 1);
        let markers = if eof != 0 {
            to_slave[..upto].iter().filter(|b| **b == 0).count()
        } else {
            0
        };
        upto - markers
    } else {
        to_slave.len()
    };
    let (base_s, base_m) = (inq(slave, what)?, inq(master, what)?);
    write_all(master, &bytes, what)?;
    write_all(slave, to_master, what)?;
    // The bytes reach the reader's buffer through the tty layer's work
    // queue: wait for them before the termios changes how they are read.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (s, m) = (inq(slave, what)?, inq(master, what)?);
        if s >= base_s + slave_counts && m >= base_m + to_master.len() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::Other(format!(
                "{what}: queued bytes not delivered ({s} of {} to the slave, {m} of {} to the master)",
                slave_counts,
                to_master.len()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Saves pty `index` through `master`, our copy of its master description.
/// `tree` maps host PIDs to PIDs in the sandbox; `slave_held`: the tree
/// holds a slave description. The queued bytes are read and written back
/// before this returns (see the module's comment).
pub fn collect_pty(
    index: u32,
    master: &OwnedFd,
    tree: &HashMap<i32, i32>,
    slave_held: bool,
) -> Result<PtyImage> {
    let m = master.as_raw_fd();
    let what = format!("pty {index}");
    let mut pfd = libc::pollfd {
        fd: m,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd of ours, no wait.
    let hangup = unsafe { libc::poll(&mut pfd, 1, 0) } >= 0 && pfd.revents & libc::POLLHUP != 0;
    let orig = get_termios(m, &what)?;
    let mut ws: libc::winsize = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills `ws`.
    if unsafe { libc::ioctl(m, libc::TIOCGWINSZ, &mut ws) } < 0 {
        return Err(last_os_error(format!("TIOCGWINSZ on {what}")));
    }
    let locked = ioctl_int(m, TIOCGPTLCK, &format!("TIOCGPTLCK on {what}"))? != 0;
    let packet = ioctl_int(m, TIOCGPKT, &format!("TIOCGPKT on {what}"))? != 0;
    // A slave never opened stays so: closing a slave description of ours
    // would leave the master hung up. Nothing can be queued towards the
    // master then, and no slave can have been made exclusive.
    let slave = if slave_held || hangup {
        Some(open_peer(m, libc::O_RDWR | libc::O_NONBLOCK, &what)?)
    } else {
        if inq(m, &what)? != 0 {
            return Err(Error::Other(format!(
                "{what}: bytes queued to the master of a slave never opened"
            )));
        }
        None
    };
    let exclusive = match &slave {
        Some(s) => ioctl_int(s.as_raw_fd(), TIOCGEXCL, &format!("TIOCGEXCL on {what}"))? != 0,
        None => false,
    };
    // The session and the foreground group: asked through the master, in
    // our PID namespace (ENOTTY: no session has it).
    let session = {
        let mut v: libc::pid_t = 0;
        // SAFETY: TIOCGSID writes a pid_t into `v`.
        (unsafe { libc::ioctl(m, libc::TIOCGSID, &mut v) } == 0).then_some(v)
    };
    let (session, fg_pgrp) = match session {
        None => (None, None),
        Some(host_sid) => {
            let sid = *tree.get(&host_sid).ok_or_else(|| {
                Error::Other(format!(
                    "{what} is the controlling terminal of session {host_sid} (host PID), \
                     which is not the tree's"
                ))
            })?;
            let mut pg: libc::pid_t = 0;
            // SAFETY: as above.
            let fg = if unsafe { libc::ioctl(m, libc::TIOCGPGRP, &mut pg) } == 0 && pg > 0 {
                Some(*tree.get(&pg).ok_or_else(|| Error::Unsupported {
                    pid: sid,
                    what: format!("the foreground process group of its terminal {what}"),
                    detail: "a group whose leader has exited".into(),
                })?)
            } else {
                None
            };
            (Some(sid), fg)
        }
    };
    let (to_slave, to_master) = match &slave {
        Some(s) => take_queues(m, s.as_raw_fd(), &orig, packet, &what)?,
        None => (Vec::new(), Vec::new()),
    };
    Ok(PtyImage {
        index,
        iflag: orig.c_iflag,
        oflag: orig.c_oflag,
        cflag: orig.c_cflag,
        lflag: orig.c_lflag,
        line: orig.c_line,
        cc: orig.c_cc.to_vec(),
        ispeed: orig.c_ispeed,
        ospeed: orig.c_ospeed,
        winsize: [ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel],
        locked,
        packet,
        exclusive,
        to_slave,
        to_master,
        hangup,
        session,
        fg_pgrp,
    })
}

/// Reads the bytes queued each way through master `m` and slave `s`, and
/// writes them back (see the module's comment). `orig` is the line's termios.
fn take_queues(
    m: RawFd,
    s: RawFd,
    orig: &libc::termios2,
    packet: bool,
    what: &str,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let what = what.to_string();
    // Queued bytes: read with the line raw (and the master out of packet
    // mode, whose reads start with a status byte), written back at once.
    set_termios(s, &raw(orig), &what)?;
    if packet {
        ioctl_set(m, libc::TIOCPKT, 0, &what)?;
    }
    let queues = (|| -> Result<(Vec<u8>, Vec<u8>)> {
        let to_slave = read_queue(s, inq(s, &what)?, &what)?;
        let to_master = read_queue(m, inq(m, &what)?, &what)?;
        if !to_slave.is_empty() || !to_master.is_empty() {
            set_termios(s, &refill_mode(orig), &what)?;
            refill(m, s, &to_slave, &to_master, &what)?;
        }
        Ok((to_slave, to_master))
    })();
    if packet {
        ioctl_set(m, libc::TIOCPKT, 1, &what)?;
    }
    set_termios(s, orig, &what)?;
    queues
}

/// Checks the ptys of an image: indexes bounded and unique, in order, every
/// queue and termios bounded, each pty's descriptions naming it (one master
/// each), sessions and groups among `pids`.
pub fn validate(files: &FilesImage, pids: &std::collections::HashSet<i32>) -> Result<()> {
    let bad = |r: String| Error::BadImage {
        path: "files.json".into(),
        reason: r,
    };
    let mut last = None;
    for (i, p) in files.ptys.iter().enumerate() {
        if p.index >= PTY_INDEX_LIMIT || last.is_some_and(|l| p.index <= l) {
            return Err(bad(format!(
                "pty {i}: index {} out of order or beyond {PTY_INDEX_LIMIT}",
                p.index
            )));
        }
        last = Some(p.index);
        if p.cc.len() != NCC {
            return Err(bad(format!(
                "pty {}: {} control characters",
                p.index,
                p.cc.len()
            )));
        }
        if p.to_slave.len() > PTY_QUEUE_LIMIT || p.to_master.len() > PTY_QUEUE_LIMIT {
            return Err(bad(format!("pty {}: queue too long", p.index)));
        }
        for q in [p.session, p.fg_pgrp].into_iter().flatten() {
            if !pids.contains(&q) {
                return Err(bad(format!(
                    "pty {}: session or group {q} is no process of the image",
                    p.index
                )));
            }
        }
        if p.fg_pgrp.is_some() && p.session.is_none() {
            return Err(bad(format!(
                "pty {}: a foreground group without a session",
                p.index
            )));
        }
    }
    let mut masters = vec![0u32; files.ptys.len()];
    for f in &files.files {
        let end = match f.kind {
            FileKind::Pty { pty, master } => Some((pty, master)),
            FileKind::DevTty { pty } => Some((pty, false)),
            _ => None,
        };
        if let Some((pty, master)) = end {
            let n = masters
                .get_mut(pty as usize)
                .ok_or_else(|| bad(format!("file {} is pty {pty}, which does not exist", f.id)))?;
            if master {
                *n += 1;
            }
        }
    }
    if let Some(i) = masters.iter().position(|&n| n != 1) {
        return Err(bad(format!(
            "pty {} has {} master descriptions (one expected)",
            files.ptys[i].index, masters[i]
        )));
    }
    Ok(())
}

/// Checks that each controlling terminal's session is led by a live process
/// of the image, and its foreground group by a live process of that session
/// (they set the terminal up at restore), one terminal per session.
pub fn validate_sessions(files: &FilesImage, procs: &[crate::image::ProcessEntry]) -> Result<()> {
    let live = |pid: i32| procs.iter().find(|e| e.pid == pid && e.zombie.is_none());
    let mut seen = std::collections::HashSet::new();
    for p in &files.ptys {
        let Some(sid) = p.session else { continue };
        if live(sid).is_none_or(|e| e.sid != sid) || !seen.insert(sid) {
            return Err(Error::Other(format!(
                "pty {}: the controlling terminal of session {sid}, which no live process of \
                 the image leads (or which has another terminal)",
                p.index
            )));
        }
        if let Some(g) = p.fg_pgrp {
            if live(g).is_none_or(|e| e.pgid != g || e.sid != sid) {
                return Err(Error::Other(format!(
                    "pty {}: foreground group {g} is not led by a live process of session {sid}",
                    p.index
                )));
            }
        }
    }
    Ok(())
}

/// The ptys of a restore, made in the sandbox's fresh devpts.
pub struct PtySet {
    /// The master of each pty of the image, by position in `FilesImage::ptys`.
    masters: Vec<Option<OwnedFd>>,
    /// A slave description of each pty that is a session's controlling
    /// terminal: the session leader takes it with TIOCSCTTY, the
    /// foreground group's leader sets itself with TIOCSPGRP on it.
    pub ctty: Vec<Option<OwnedFd>>,
}

impl PtySet {
    /// Opens /dev/ptmx in index order (fillers for the gaps, closed before
    /// this returns) and checks each pair's index.
    pub fn create(files: &FilesImage) -> Result<PtySet> {
        let mut masters = Vec::with_capacity(files.ptys.len());
        let mut fillers = Vec::new();
        let own = nix::sys::stat::stat("/dev/pts/ptmx")
            .map_err(|e| Error::Other(format!("the sandbox has no devpts of its own: {e}")))?
            .st_dev;
        for p in &files.ptys {
            loop {
                let fd = nix::fcntl::open(
                    "/dev/pts/ptmx",
                    nix::fcntl::OFlag::O_RDWR
                        | nix::fcntl::OFlag::O_NOCTTY
                        | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
                .map_err(|e| {
                    Error::Other(format!("opening /dev/pts/ptmx for pty {}: {e}", p.index))
                })?;
                let st = nix::sys::stat::fstat(&fd)
                    .map_err(|e| Error::Other(format!("fstat of a new pty: {e}")))?;
                if st.st_dev != own {
                    return Err(Error::Other(
                        "/dev/pts/ptmx is not the sandbox's devpts".into(),
                    ));
                }
                let n = ioctl_int(fd.as_raw_fd(), TIOCGPTN, "TIOCGPTN")? as u32;
                if n == p.index {
                    masters.push(Some(fd));
                    break;
                }
                if n > p.index {
                    return Err(Error::Other(format!(
                        "pty {} cannot be made: the sandbox's devpts gave {n}",
                        p.index
                    )));
                }
                fillers.push(fd);
            }
        }
        drop(fillers);
        let mut set = PtySet {
            masters,
            ctty: Vec::new(),
        };
        for (i, p) in files.ptys.iter().enumerate() {
            let m = set.master_fd(i)?;
            let what = format!("pty {}", p.index);
            // Unlocked while the descriptions are opened (`lock` sets the
            // recorded state last).
            ioctl_set(m, TIOCSPTLCK, 0, &format!("TIOCSPTLCK on {what}"))?;
            // A slave of our own only when one is needed: closing it leaves
            // the master hung up, as it was when `hangup` says so.
            let data = !p.to_slave.is_empty() || !p.to_master.is_empty();
            let slave = if p.hangup || data || p.exclusive || p.session.is_some() {
                Some(open_peer(m, libc::O_RDWR | libc::O_NONBLOCK, &what)?)
            } else {
                None
            };
            // termios2 ioctls on the master act on the slave's.
            let s = slave.as_ref().map_or(m, |s| s.as_raw_fd());
            let mut t = get_termios(s, &what)?;
            t.c_iflag = p.iflag;
            t.c_oflag = p.oflag;
            t.c_cflag = p.cflag;
            t.c_lflag = p.lflag;
            t.c_line = p.line;
            t.c_cc.copy_from_slice(&p.cc);
            t.c_ispeed = p.ispeed;
            t.c_ospeed = p.ospeed;
            if data {
                set_termios(s, &refill_mode(&t), &what)?;
                refill(m, s, &p.to_slave, &p.to_master, &what)?;
            }
            set_termios(s, &t, &what)?;
            let ws = libc::winsize {
                ws_row: p.winsize[0],
                ws_col: p.winsize[1],
                ws_xpixel: p.winsize[2],
                ws_ypixel: p.winsize[3],
            };
            // SAFETY: TIOCSWINSZ reads `ws`.
            if unsafe { libc::ioctl(m, libc::TIOCSWINSZ, &ws) } < 0 {
                return Err(last_os_error(format!("TIOCSWINSZ on {what}")));
            }
            ioctl_set(
                m,
                libc::TIOCPKT,
                p.packet as i32,
                &format!("TIOCPKT on {what}"),
            )?;
            if p.exclusive {
                // SAFETY: TIOCEXCL takes no argument.
                if unsafe { libc::ioctl(s, libc::TIOCEXCL) } < 0 {
                    return Err(last_os_error(format!("TIOCEXCL on {what}")));
                }
            }
            set.ctty.push(slave.filter(|_| p.session.is_some()));
        }
        Ok(set)
    }

    fn master_fd(&self, i: usize) -> Result<RawFd> {
        self.masters
            .get(i)
            .and_then(|m| m.as_ref())
            .map(|m| m.as_raw_fd())
            .ok_or_else(|| Error::Other(format!("pty {i} has no master")))
    }

    /// The description `f` (a pty end): the master itself (once), or a new
    /// slave description.
    pub fn open(&mut self, f: &FileDesc, pty: u32, master: bool) -> Result<OwnedFd> {
        let fl = f.flags as i32 & (libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND);
        if master {
            // A copy of the same description: slaves opened later need it.
            let m = self
                .masters
                .get(pty as usize)
                .and_then(Option::as_ref)
                .ok_or_else(|| Error::Other(format!("pty {pty}: no master")))?
                .try_clone()
                .map_err(|e| Error::Io {
                    what: format!("duplicating the master of pty {pty}"),
                    cause: e,
                })?;
            // SAFETY: F_SETFL on an fd we own.
            if unsafe { libc::fcntl(m.as_raw_fd(), libc::F_SETFL, fl) } < 0 {
                return Err(last_os_error(format!("setting the flags of file {}", f.id)));
            }
            return Ok(m);
        }
        open_peer(self.master_fd(pty as usize)?, fl, &format!("pty {pty}"))
    }

    /// A description of /dev/tty on pty `pty`: init takes the slave as its
    /// controlling terminal for the moment, opens /dev/tty, and lets it go
    /// again (TIOCNOTTY), taking the SIGHUP and SIGCONT that sends to its
    /// own group; the session leader takes the terminal later.
    pub fn open_dev_tty(&mut self, f: &FileDesc, pty: u32) -> Result<OwnedFd> {
        let what = format!("/dev/tty of pty {pty}");
        let slave = open_peer(self.master_fd(pty as usize)?, libc::O_RDWR, &what)?;
        take_ctty(slave.as_raw_fd()).map_err(|e| Error::Io {
            what: format!("TIOCSCTTY for {what}"),
            cause: std::io::Error::from_raw_os_error(e),
        })?;
        let fl = f.flags as i32 & (libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND);
        let opened = nix::fcntl::open(
            "/dev/tty",
            nix::fcntl::OFlag::from_bits_retain(fl | libc::O_NOCTTY | libc::O_CLOEXEC),
            nix::sys::stat::Mode::empty(),
        );
        // SAFETY: TIOCNOTTY takes no argument; then sigtimedwait with a
        // zero timeout on signal sets of ours takes the signals it sent.
        unsafe {
            let rc = libc::ioctl(slave.as_raw_fd(), libc::TIOCNOTTY);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGHUP);
            libc::sigaddset(&mut set, libc::SIGCONT);
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            while libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) > 0 {}
            if rc < 0 {
                return Err(last_os_error(format!("TIOCNOTTY after opening {what}")));
            }
        }
        opened.map_err(|e| Error::Other(format!("opening {what}: {e}")))
    }

    /// Locks or unlocks each pty as recorded (a new pty starts locked),
    /// once every slave description is open.
    pub fn lock(files: &FilesImage, fds: &[OwnedFd]) -> Result<()> {
        for f in &files.files {
            if let FileKind::Pty { pty, master: true } = f.kind {
                let p = &files.ptys[pty as usize];
                ioctl_set(
                    fds[f.id as usize].as_raw_fd(),
                    TIOCSPTLCK,
                    p.locked as i32,
                    &format!("TIOCSPTLCK on pty {}", p.index),
                )?;
            }
        }
        Ok(())
    }
}

/// Run by a restored session leader right after its setsid(): takes the
/// slave description `fd` as its controlling terminal. Returns an errno.
pub fn take_ctty(fd: RawFd) -> std::result::Result<(), i32> {
    // SAFETY: TIOCSCTTY on an inherited fd, argument 0 (no stealing).
    if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(())
}

/// Run by the leader of a terminal's foreground group once it made its
/// group: makes it the foreground group. Returns an errno.
pub fn set_foreground(fd: RawFd) -> std::result::Result<(), i32> {
    // SAFETY: getpgrp has no arguments.
    let pg = unsafe { libc::getpgrp() };
    // SAFETY: TIOCSPGRP reads a pid_t of ours.
    if unsafe { libc::ioctl(fd, libc::TIOCSPGRP, &pg) } < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_majors() {
        assert!(is_terminal_device(libc::makedev(136, 3)));
        assert!(is_terminal_device(libc::makedev(5, 2)));
        assert!(is_terminal_device(libc::makedev(4, 64)));
        assert!(!is_terminal_device(libc::makedev(1, 3)));
        assert!(!is_terminal_device(libc::makedev(10, 257)));
    }
}
