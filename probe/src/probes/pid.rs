//! Choosing PIDs: clone3 with set_tid (flat and nested), ns_last_pid, pid_max.

use nix::errno::Errno;

use super::STEP;
use crate::feature::Feature::{self, *};
use crate::report::Outcome;
use crate::runner::Unit;
use crate::util::{self, expect_exit_zero, read_trim, Fail, Shared};

pub(crate) static UNIT: Unit = Unit {
    name: "pids",
    features: &[Clone3SetTid, Clone3SetTidNested, NsLastPid, PidMax],
    run,
    cleanup: None,
};

const CHOSEN: i32 = 4242;
const NESTED_OUTER: i32 = 77;
const LAST_PID: i32 = 299;

/// What the helper processes saw, written into shared memory.
#[derive(Clone, Copy, Default)]
struct Seen {
    /// clone3(set_tid = [CHOSEN]) in the fresh namespace: returned PID, or -errno.
    chosen: i32,
    /// The grandchild's own getpid() (CHOSEN, or -1 if it saw another PID).
    chosen_self: i32,
    /// clone3(set_tid = [1]) while 1 is taken: errno (0 if it succeeded).
    taken_errno: i32,
    /// pid_max as read inside the fresh namespace (0 if unreadable).
    pid_max_ns: i32,
    /// clone3(set_tid = [pid_max - 1]): returned PID or -errno.
    at_max_minus_1: i32,
    /// clone3(set_tid = [pid_max]): errno (0 if it succeeded).
    at_max_errno: i32,
    /// ns_last_pid: errno of the write (0 = ok), and the PID fork gave next.
    last_pid_errno: i32,
    last_pid_next: i32,
    /// Nested: returned outer PID or -errno, and the grandchild's getpid().
    nested: i32,
    nested_self: i32,
}

/// clone3 + run `f` in the child; returns the child's PID.
fn clone3_fn(flags: u64, set_tid: &[i32], f: impl FnOnce() -> i32) -> Result<i32, Errno> {
    // SAFETY: probe units are single-threaded processes; the child runs `f`
    // and leaves through _exit.
    match unsafe { sys::clone3::clone3(flags, libc::SIGCHLD as u64, set_tid) } {
        Ok(0) => {
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
            crate::runner::close_result_fd();
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(120);
            // SAFETY: _exit never returns.
            unsafe { libc::_exit(code) }
        }
        Ok(pid) => Ok(pid),
        Err(e) => Err(e.errno),
    }
}

/// Waits for a child and returns its exit code (-1 if it did not exit normally).
fn reap(pid: i32) -> i32 {
    match util::wait_exit(pid, STEP) {
        Ok(util::Exit::Code(c)) => c,
        _ => -1,
    }
}

fn in_fresh_namespace(seen: &Shared<Seen>) -> i32 {
    let mut s = seen.get();
    // A chosen PID that is not the next free one.
    // Exit codes are 8 bits: the grandchild answers 0 when it sees CHOSEN.
    match clone3_fn(0, &[CHOSEN], || {
        i32::from(nix::unistd::getpid().as_raw() != CHOSEN)
    }) {
        Ok(pid) => {
            s.chosen = pid;
            s.chosen_self = if reap(pid) == 0 { CHOSEN } else { -1 };
        }
        Err(e) => s.chosen = -(e as i32),
    }
    // A PID that is taken (our own).
    s.taken_errno = match clone3_fn(0, &[1], || 0) {
        Ok(pid) => {
            reap(pid);
            0
        }
        Err(e) => e as i32,
    };
    // pid_max of this namespace: pid_max - 1 is the largest PID.
    s.pid_max_ns = read_trim("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if s.pid_max_ns > 1 {
        s.at_max_minus_1 = match clone3_fn(0, &[s.pid_max_ns - 1], || 0) {
            Ok(pid) => {
                reap(pid);
                pid
            }
            Err(e) => -(e as i32),
        };
        s.at_max_errno = match clone3_fn(0, &[s.pid_max_ns], || 0) {
            Ok(pid) => {
                reap(pid);
                0
            }
            Err(e) => e as i32,
        };
    }
    // ns_last_pid steers the next fork.
    match std::fs::write("/proc/sys/kernel/ns_last_pid", LAST_PID.to_string()) {
        Ok(()) => match util::fork_fn(|| 0) {
            Ok(pid) => {
                s.last_pid_next = pid;
                reap(pid);
            }
            Err(f) => s.last_pid_errno = f.errno.map(|e| e as i32).unwrap_or(Errno::EIO as i32),
        },
        Err(e) => s.last_pid_errno = e.raw_os_error().unwrap_or(Errno::EIO as i32),
    }
    seen.set(s);
    0
}

fn nested(seen: &Shared<Seen>) -> i32 {
    let mut s = seen.get();
    match clone3_fn(libc::CLONE_NEWPID as u64, &[1, NESTED_OUTER], || {
        nix::unistd::getpid().as_raw()
    }) {
        Ok(pid) => {
            s.nested = pid;
            s.nested_self = reap(pid);
        }
        Err(e) => s.nested = -(e as i32),
    }
    seen.set(s);
    0
}

fn run() -> Vec<(Feature, Outcome)> {
    let seen = match Shared::<Seen>::new() {
        Ok(s) => s,
        Err(f) => {
            let o = f.into_outcome();
            return UNIT.features.iter().map(|&f| (f, o.clone())).collect();
        }
    };
    let host_pid_max = read_trim("/proc/sys/kernel/pid_max");
    let fresh = clone3_fn(libc::CLONE_NEWPID as u64, &[1], || {
        in_fresh_namespace(&seen)
    });
    let fresh = match fresh {
        Ok(pid) => expect_exit_zero(pid, STEP * 2, "clone3", |c| {
            Fail::error("clone3", format!("helper exited {c}"))
        }),
        Err(e) => Err(Fail::call("clone3(CLONE_NEWPID, set_tid={1})", e)),
    };
    let s = seen.get();
    let mut out = Vec::new();

    out.push((
        Clone3SetTid,
        util::outcome(fresh.clone().and_then(|()| {
            if s.chosen < 0 {
                return Err(Fail::call(
                    format!("clone3(set_tid={{{CHOSEN}}})"),
                    Errno::from_raw(-s.chosen),
                ));
            }
            if s.chosen != CHOSEN || s.chosen_self != CHOSEN {
                return Err(Fail::error(
                    format!("clone3(set_tid={{{CHOSEN}}})"),
                    format!("got PID {} (the child saw {})", s.chosen, s.chosen_self),
                ));
            }
            if s.taken_errno != Errno::EEXIST as i32 {
                return Err(Fail::error(
                    "clone3(set_tid={1})",
                    format!("a taken PID gave errno {} instead of EEXIST", s.taken_errno),
                ));
            }
            Ok(Outcome::ok(format!(
                "PID {CHOSEN} chosen in a fresh PID namespace; a taken PID gives EEXIST"
            )))
        })),
    ));

    let nested_res = clone3_fn(libc::CLONE_NEWPID as u64, &[1], || nested(&seen))
        .map_err(|e| Fail::call("clone3(CLONE_NEWPID)", e))
        .and_then(|pid| {
            expect_exit_zero(pid, STEP, "clone3", |c| {
                Fail::error("clone3", format!("helper exited {c}"))
            })
        });
    let s = seen.get();
    out.push((
        Clone3SetTidNested,
        util::outcome(nested_res.and_then(|()| {
            let call = format!("clone3(CLONE_NEWPID, set_tid={{1, {NESTED_OUTER}}})");
            if s.nested < 0 {
                return Err(Fail::call(call, Errno::from_raw(-s.nested)));
            }
            if s.nested != NESTED_OUTER || s.nested_self != 1 {
                return Err(Fail::error(
                    call,
                    format!("got PID {} outside and {} inside", s.nested, s.nested_self),
                ));
            }
            Ok(Outcome::ok(format!(
                "PID 1 in a second-level namespace and {NESTED_OUTER} in the first, in one call"
            )))
        })),
    ));

    out.push((
        NsLastPid,
        util::outcome(fresh.clone().and_then(|()| {
            if s.last_pid_errno != 0 {
                let e = Errno::from_raw(s.last_pid_errno);
                let f = Fail::call("write /proc/sys/kernel/ns_last_pid", e);
                return Err(if e == Errno::ENOENT {
                    f.into_missing()
                } else {
                    f
                });
            }
            if s.last_pid_next != LAST_PID + 1 {
                return Err(Fail::error(
                    "fork",
                    format!(
                        "after ns_last_pid={LAST_PID} fork gave PID {}",
                        s.last_pid_next
                    ),
                ));
            }
            Ok(Outcome::ok(format!(
                "ns_last_pid={LAST_PID} made the next fork PID {}",
                LAST_PID + 1
            )))
        })),
    ));

    out.push((
        PidMax,
        util::outcome(fresh.and_then(|()| {
            let host: i64 = host_pid_max?
                .parse()
                .map_err(|_| Fail::error("read /proc/sys/kernel/pid_max", "not a number"))?;
            let ns = i64::from(s.pid_max_ns);
            if s.at_max_minus_1 != s.pid_max_ns - 1 {
                return Err(Fail::error(
                    format!("clone3(set_tid={{{}}})", ns - 1),
                    format!("the largest PID was refused ({})", s.at_max_minus_1),
                ));
            }
            if s.at_max_errno != Errno::EINVAL as i32 {
                return Err(Fail::error(
                    format!("clone3(set_tid={{{ns}}})"),
                    format!(
                        "a PID at pid_max gave errno {} instead of EINVAL",
                        s.at_max_errno
                    ),
                ));
            }
            Ok(Outcome::ok(format!(
            "pid_max {host} on the host, {ns} in a fresh PID namespace: PIDs up to {} restorable",
            ns - 1
        ))
            .with("host", host)
            .with("fresh_namespace", ns))
        })),
    ));
    out
}
