//! Creating each kind of namespace, in a unit process that is thrown away.

use std::io::Write;

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};

use super::STEP;
use crate::feature::Feature::{self, *};
use crate::report::Outcome;
use crate::runner::Unit;
use crate::util::{self, expect_exit_zero, fork_fn, ns_link, outcome, Call, Fail, PResult, Shared};

pub(crate) static PID_UNIT: Unit = Unit {
    name: "ns-pid",
    features: &[NsPid],
    run: || vec![(NsPid, outcome(pid_ns()))],
    cleanup: None,
};

pub(crate) static MNT_UNIT: Unit = Unit {
    name: "ns-mnt",
    features: &[NsMnt],
    run: || vec![(NsMnt, outcome(mnt_ns()))],
    cleanup: None,
};

pub(crate) static NET_UNIT: Unit = Unit {
    name: "ns-net",
    features: &[NsNet],
    run: || vec![(NsNet, outcome(net_ns()))],
    cleanup: None,
};

pub(crate) static SIMPLE_UNIT: Unit = Unit {
    name: "ns-uts-ipc-cgroup",
    features: &[NsUts, NsIpc, NsCgroup],
    run: || {
        vec![
            (NsUts, outcome(uts_ns())),
            (NsIpc, outcome(ipc_ns())),
            (NsCgroup, outcome(cgroup_ns())),
        ]
    },
    cleanup: None,
};

pub(crate) static TIME_UNIT: Unit = Unit {
    name: "ns-time",
    features: &[NsTime, NsTimeOffsets],
    run: time_ns,
    cleanup: None,
};

pub(crate) static USER_UNIT: Unit = Unit {
    name: "ns-user",
    features: &[NsUser, NsUserUnprivileged],
    run: || {
        // The unprivileged attempt runs first, in a child: afterwards this
        // process itself moves into a user namespace.
        let unpriv = outcome(user_ns_unprivileged());
        vec![(NsUserUnprivileged, unpriv), (NsUser, outcome(user_ns()))]
    },
    cleanup: None,
};

/// Unshares `flags` and checks that the namespace link changed.
fn enter(flags: CloneFlags, call: &str, ns: &str) -> PResult<(String, String)> {
    let before = ns_link("self", ns)?;
    unshare(flags).call(call)?;
    let after = ns_link("self", ns)?;
    if before == after {
        return Err(Fail::error(
            call,
            format!("still in {before} after unshare"),
        ));
    }
    Ok((before, after))
}

fn pid_ns() -> PResult<Outcome> {
    unshare(CloneFlags::CLONE_NEWPID).call("unshare(CLONE_NEWPID)")?;
    let child = fork_fn(|| {
        if nix::unistd::getpid().as_raw() == 1 {
            0
        } else {
            1
        }
    })?;
    expect_exit_zero(child, STEP, "fork", |_| {
        Fail::error(
            "getpid",
            "the first process of the new PID namespace is not PID 1",
        )
    })?;
    let ns = ns_link("self", "pid_for_children")?;
    Ok(Outcome::ok(format!(
        "the first process of a new PID namespace ({ns}) is PID 1"
    )))
}

fn mnt_ns() -> PResult<Outcome> {
    use nix::mount::{mount, MsFlags};
    let (_, ns) = enter(CloneFlags::CLONE_NEWNS, "unshare(CLONE_NEWNS)", "mnt")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .call("mount(/, MS_REC|MS_PRIVATE)")?;
    let target = ["/tmp", "/run", "/mnt"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_dir())
        .ok_or_else(|| Fail::error("stat", "no /tmp, /run or /mnt to mount on"))?;
    mount(
        Some("stasis-probe"),
        target,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=64k"),
    )
    .call(&format!("mount(tmpfs, {target})"))?;
    let info = util::read_trim("/proc/self/mountinfo")?;
    let seen = info
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target) && l.contains(" - tmpfs stasis-probe"));
    if !seen {
        return Err(Fail::error(
            "read /proc/self/mountinfo",
            "the new tmpfs is not listed",
        ));
    }
    Ok(Outcome::ok(format!(
        "private tmpfs mounted on {target} in {ns}"
    )))
}

fn net_ns() -> PResult<Outcome> {
    let (_, ns) = enter(CloneFlags::CLONE_NEWNET, "unshare(CLONE_NEWNET)", "net")?;
    let dev = util::read_trim("/proc/self/net/dev")?;
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    if ifaces != ["lo"] {
        return Err(Fail::error(
            "read /proc/self/net/dev",
            format!("expected only lo in a new network namespace, found {ifaces:?}"),
        ));
    }
    lo_up()?;
    // Loopback really works: a UDP datagram to ourselves.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").call("bind(127.0.0.1)")?;
    let addr = sock.local_addr().call("getsockname")?;
    sock.set_read_timeout(Some(STEP))
        .call("setsockopt(SO_RCVTIMEO)")?;
    sock.send_to(b"stasis", addr).call("sendto(127.0.0.1)")?;
    let mut buf = [0u8; 16];
    let (n, _) = sock.recv_from(&mut buf).call("recvfrom(127.0.0.1)")?;
    if &buf[..n] != b"stasis" {
        return Err(Fail::error(
            "recvfrom",
            "loopback datagram came back altered",
        ));
    }
    Ok(Outcome::ok(format!(
        "{ns} with only lo; lo up and carrying traffic"
    )))
}

/// Sets IFF_UP on lo (SIOCGIFFLAGS/SIOCSIFFLAGS).
pub(crate) fn lo_up() -> PResult<()> {
    // SAFETY: socket with integer arguments; the fd is owned below.
    let fd = util::cvt("socket(AF_INET)", unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    } as libc::c_long)? as i32;
    // SAFETY: fd was just returned by socket().
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    use std::os::fd::AsRawFd;
    // SAFETY: ifreq is plain data; zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `ifr`.
    util::cvt("ioctl(SIOCGIFFLAGS, lo)", unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr)
    } as libc::c_long)?;
    // SAFETY: the flags member of the union was just written by the kernel.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `ifr`.
    util::cvt("ioctl(SIOCSIFFLAGS, lo)", unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr)
    } as libc::c_long)?;
    Ok(())
}

fn uts_ns() -> PResult<Outcome> {
    let (_, ns) = enter(CloneFlags::CLONE_NEWUTS, "unshare(CLONE_NEWUTS)", "uts")?;
    nix::unistd::sethostname("stasis-probe").call("sethostname")?;
    let name = nix::sys::utsname::uname().call("uname")?;
    if name.nodename() != "stasis-probe" {
        return Err(Fail::error("uname", "the new hostname is not visible"));
    }
    Ok(Outcome::ok(format!("hostname set in {ns} only")))
}

fn ipc_ns() -> PResult<Outcome> {
    let (_, ns) = enter(CloneFlags::CLONE_NEWIPC, "unshare(CLONE_NEWIPC)", "ipc")?;
    let before = util::read_trim("/proc/sysvipc/msg")?.lines().count();
    // SAFETY: msgget/msgctl with integer arguments and a null buffer for IPC_RMID.
    let id = util::cvt("msgget(IPC_PRIVATE)", unsafe {
        libc::msgget(libc::IPC_PRIVATE, libc::IPC_CREAT | 0o600)
    } as libc::c_long)?;
    let after = util::read_trim("/proc/sysvipc/msg")?.lines().count();
    // SAFETY: removing the queue we created.
    unsafe { libc::msgctl(id as i32, libc::IPC_RMID, std::ptr::null_mut()) };
    if before != 1 || after != 2 {
        return Err(Fail::error(
            "read /proc/sysvipc/msg",
            "the new IPC namespace does not start empty or hide the queue",
        ));
    }
    Ok(Outcome::ok(format!("{ns} starts without System V objects")))
}

fn cgroup_ns() -> PResult<Outcome> {
    let (_, ns) = enter(
        CloneFlags::CLONE_NEWCGROUP,
        "unshare(CLONE_NEWCGROUP)",
        "cgroup",
    )?;
    let cg = util::read_trim("/proc/self/cgroup")?;
    if let Some(l) = cg.lines().find(|l| !l.ends_with(":/")) {
        return Err(Fail::error(
            "read /proc/self/cgroup",
            format!("cgroup path not rooted in the new namespace: {l}"),
        ));
    }
    Ok(Outcome::ok(format!("{ns} rooted at the current cgroup")))
}

const MONO_OFFSET_S: i64 = 86_400;

#[derive(Clone, Copy, Default)]
struct TimeResult {
    entered: bool,
    offset_ns: i64,
}

fn time_ns() -> Vec<(Feature, Outcome)> {
    let step = || -> PResult<(Outcome, Outcome)> {
        let parent_ns = ns_link("self", "time")?;
        unshare(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME))
            .call("unshare(CLONE_NEWTIME)")?;
        let offsets = std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/self/timens_offsets")
            .and_then(|mut f| f.write_all(format!("monotonic {MONO_OFFSET_S} 0\n").as_bytes()))
            .call("write /proc/self/timens_offsets");
        let res: Shared<TimeResult> = Shared::new()?;
        let before = mono_ns();
        let child = fork_fn(|| {
            let entered = ns_link("self", "time").is_ok_and(|l| l != parent_ns);
            res.set(TimeResult {
                entered,
                offset_ns: mono_ns() - before,
            });
            0
        })?;
        expect_exit_zero(child, STEP, "fork", |c| {
            Fail::error("fork", format!("child exited {c}"))
        })?;
        let r = res.get();
        if !r.entered {
            return Err(Fail::error(
                "fork",
                "the child did not enter the new time namespace",
            ));
        }
        let ns = ns_link("self", "time_for_children")?;
        let ns_ok = Outcome::ok(format!("children enter {ns}"));
        let off = match offsets {
            Err(f) => f.into_outcome(),
            Ok(()) => {
                let want = MONO_OFFSET_S * 1_000_000_000;
                let delta = r.offset_ns - want;
                if (0..5_000_000_000).contains(&delta) {
                    Outcome::ok(format!(
                        "CLOCK_MONOTONIC shifted by {MONO_OFFSET_S} s in the child"
                    ))
                    .with("offset_s", MONO_OFFSET_S)
                } else {
                    Outcome::error(format!(
                        "CLOCK_MONOTONIC moved by {} ms, expected {} s",
                        r.offset_ns / 1_000_000,
                        MONO_OFFSET_S
                    ))
                    .with_call("clock_gettime(CLOCK_MONOTONIC)", None)
                }
            }
        };
        Ok((ns_ok, off))
    };
    match step() {
        Ok((a, b)) => vec![(NsTime, a), (NsTimeOffsets, b)],
        Err(f) => {
            let o = f.into_outcome();
            vec![(NsTime, o.clone()), (NsTimeOffsets, o)]
        }
    }
}

fn mono_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Maps uid/gid 0 in the current (new) user namespace to `uid`/`gid` outside.
/// On failure: the file that refused the write and the errno.
fn write_maps(uid: u32, gid: u32) -> Result<(), (&'static str, Errno)> {
    let files = [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("0 {uid} 1")),
        ("/proc/self/gid_map", format!("0 {gid} 1")),
    ];
    for (path, text) in files {
        std::fs::write(path, text)
            .map_err(|e| (path, Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    }
    Ok(())
}

fn user_ns() -> PResult<Outcome> {
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let (_, ns) = enter(CloneFlags::CLONE_NEWUSER, "unshare(CLONE_NEWUSER)", "user")?;
    write_maps(uid, gid).map_err(|(path, e)| Fail::call(format!("write {path}"), e))?;
    if nix::unistd::geteuid().as_raw() != 0 {
        return Err(Fail::error(
            "geteuid",
            "uid 0 is not mapped in the new user namespace",
        ));
    }
    Ok(Outcome::ok(format!("{ns} with uid {uid} mapped to 0")))
}

#[derive(Clone, Copy, Default)]
struct StepErr {
    step: u8,
    errno: i32,
}

const MAP_FILES: [&str; 3] = [
    "/proc/self/setgroups",
    "/proc/self/uid_map",
    "/proc/self/gid_map",
];

fn user_ns_unprivileged() -> PResult<Outcome> {
    const NOBODY: u32 = 65534;
    let res: Shared<StepErr> = Shared::new()?;
    let child = fork_fn(|| {
        let fail = |step: u8, errno: i32| {
            res.set(StepErr { step, errno });
            1
        };
        if nix::unistd::geteuid().is_root() {
            // SAFETY: setgroups/setresgid/setresuid/prctl with valid arguments.
            // Dropping to nobody clears "dumpable", which would leave
            // /proc/self owned by root: set it again.
            unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(NOBODY, NOBODY, NOBODY) != 0
                    || libc::setresuid(NOBODY, NOBODY, NOBODY) != 0
                    || libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) != 0
                {
                    return fail(1, util::last_errno());
                }
            }
        }
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        if unshare(CloneFlags::CLONE_NEWUSER).is_err() {
            return fail(2, util::last_errno());
        }
        match write_maps(uid, gid) {
            Ok(()) if nix::unistd::geteuid().as_raw() == 0 => 0,
            Ok(()) => fail(6, 0),
            Err((path, e)) => {
                let step = 3 + MAP_FILES.iter().position(|p| *p == path).unwrap_or(0) as u8;
                fail(step, e as i32)
            }
        }
    })?;
    match util::wait_exit(child, STEP)? {
        util::Exit::Code(0) => Ok(Outcome::ok(
            "uid 65534 created a user namespace and became root in it",
        )),
        util::Exit::Code(_) => {
            let r = res.get();
            let errno = Errno::from_raw(r.errno);
            match r.step {
                1 => Err(Fail::call("setresuid(65534)", errno)),
                2 => Err(Fail::missing_call(
                    "unshare(CLONE_NEWUSER) as uid 65534",
                    errno,
                    "unprivileged users cannot create user namespaces here",
                )),
                3..=5 => Err(Fail::missing_call(
                    format!("write {} as uid 65534", MAP_FILES[(r.step - 3) as usize]),
                    errno,
                    "unprivileged users cannot map their uid in a user namespace here",
                )),
                _ => Err(Fail::error(
                    "geteuid",
                    "uid 0 is not mapped in the new user namespace",
                )),
            }
        }
        util::Exit::Signal(s) => Err(Fail::error("fork", format!("child killed by signal {s}"))),
    }
}
