//! Timers and clocks: interval timers (ITIMER_REAL, ITIMER_VIRTUAL,
//! ITIMER_PROF), POSIX timers with their ids, clocks, notification settings
//! and time left, and the time namespace that keeps CLOCK_MONOTONIC and
//! CLOCK_BOOTTIME from jumping backwards.
//!
//! Dump: /proc/PID/timers lists the POSIX timers (id, signal and value,
//! notification and target, clock); getitimer, timer_gettime and
//! timer_getoverrun are injected for the rest. The clocks are read when the
//! tree is stopped, as the workload sees them (stasis's own clock, less its
//! own time namespace offsets, plus the workload's).
//!
//! Restore: the timers are created again with injected syscalls once the
//! process's threads exist (a timer may signal one of them): POSIX timers in
//! id order with prctl(PR_TIMER_CREATE_RESTORE_IDS), which makes
//! timer_create take the id asked for, then armed with the time they had
//! left. Time left is relative: the time the image spent on disk does not
//! count, as for the clocks.
//!
//! Clock policy: the restored sandbox lives in a new time namespace whose
//! offsets make CLOCK_MONOTONIC and CLOCK_BOOTTIME go on from the values they
//! had when the workload was stopped, on this boot or after a reboot. The
//! time between the dump and the restore does not pass for the workload.
//! CLOCK_REALTIME is the host's. The namespace is made by stasis itself
//! (unshare(CLONE_NEWTIME), offsets written to /proc/self/timens_offsets)
//! just before the sandbox's init is forked, so init and the whole tree
//! start in it; stasis then goes back to its own.

use std::fs::File;
use std::os::fd::OwnedFd;

use crate::error::{Error, Result};
use crate::image::{Clocks, Itimer, PosixTimer, TimersImage, Timespec};
use crate::remote::Remote;

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD: i32 = 2;
const SIGEV_THREAD_ID: i32 = 4;
/// Most POSIX timers per process in an image.
const MAX_TIMERS: usize = 1 << 16;

fn perr(pid: i32, reason: impl Into<String>) -> Error {
    Error::Process {
        pid,
        reason: reason.into(),
    }
}

fn read_timespec(b: &[u8]) -> Timespec {
    Timespec {
        sec: i64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
        nsec: i64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
    }
}

fn ts_bytes(t: &Timespec) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&t.sec.to_le_bytes());
    b[8..].copy_from_slice(&t.nsec.to_le_bytes());
    b
}

fn is_zero(t: &Timespec) -> bool {
    t.sec == 0 && t.nsec == 0
}

/// One entry of /proc/PID/timers.
#[derive(Debug, Default, PartialEq, Eq)]
struct ProcTimer {
    id: i32,
    signo: i32,
    value: u64,
    notify: i32,
    target: i32,
    clock: i32,
}

fn parse_proc_timers(text: &str) -> std::result::Result<Vec<ProcTimer>, String> {
    let mut out: Vec<ProcTimer> = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let bad = || format!("unexpected line {line:?}");
        match k {
            "ID" => out.push(ProcTimer {
                id: v.parse().map_err(|_| bad())?,
                ..Default::default()
            }),
            "signal" => {
                let t = out.last_mut().ok_or_else(bad)?;
                let (s, val) = v.split_once('/').ok_or_else(bad)?;
                t.signo = s.parse().map_err(|_| bad())?;
                t.value =
                    u64::from_str_radix(val.trim_start_matches("0x"), 16).map_err(|_| bad())?;
            }
            "notify" => {
                let t = out.last_mut().ok_or_else(bad)?;
                let (how, who) = v.split_once('/').ok_or_else(bad)?;
                let base = match how {
                    "signal" => SIGEV_SIGNAL,
                    "none" => SIGEV_NONE,
                    "thread" => SIGEV_THREAD,
                    _ => return Err(bad()),
                };
                let (kind, n) = who.split_once('.').ok_or_else(bad)?;
                t.target = n.parse().map_err(|_| bad())?;
                t.notify = match kind {
                    "tid" => base | SIGEV_THREAD_ID,
                    "pid" => base,
                    _ => return Err(bad()),
                };
            }
            "ClockID" => {
                out.last_mut().ok_or_else(bad)?.clock = v.parse().map_err(|_| bad())?;
            }
            _ => {}
        }
    }
    Ok(out)
}

const THREAD_CLOCK_REFUSED: &str =
    "the CPU-time clock of the thread that made it, in a process of several threads (which one cannot be read)";

fn clock_supported(clock: i32, threads: usize) -> std::result::Result<(), String> {
    match clock {
        libc::CLOCK_REALTIME
        | libc::CLOCK_MONOTONIC
        | libc::CLOCK_PROCESS_CPUTIME_ID
        | libc::CLOCK_BOOTTIME
        | libc::CLOCK_REALTIME_ALARM
        | libc::CLOCK_BOOTTIME_ALARM
        | libc::CLOCK_TAI => Ok(()),
        libc::CLOCK_THREAD_CPUTIME_ID if threads == 1 => Ok(()),
        libc::CLOCK_THREAD_CPUTIME_ID => Err(THREAD_CLOCK_REFUSED.into()),
        // A CPU-time clock: !pid << 3 | per-thread << 2 | type (0 prof,
        // 1 virt, 2 sched); pid 0 is the task that made the timer. PIDs and
        // TIDs come back the same, so only "the thread that made it" is
        // ambiguous with several threads.
        c if c < 0 => {
            let pid = !(c >> 3);
            let thread = c & 4 != 0;
            if c & 3 == 3 {
                Err(format!("clock id {c}"))
            } else if thread && pid == 0 && threads > 1 {
                Err(THREAD_CLOCK_REFUSED.into())
            } else {
                Ok(())
            }
        }
        c => Err(format!("clock id {c}")),
    }
}

/// Collects the timers of process `pid` (host PID; `ns_pid` in the sandbox,
/// for messages); `r` controls its main thread; `tids` maps host TIDs to
/// TIDs in the sandbox.
pub fn collect(pid: i32, ns_pid: i32, r: &mut Remote, tids: &[(i32, i32)]) -> Result<TimersImage> {
    let scratch = r.scratch(crate::remote::SMALL_SCRATCH)?;
    let mut img = TimersImage::default();
    for (which, slot) in img.itimers.iter_mut().enumerate() {
        r.call(
            &format!("getitimer({which})"),
            libc::SYS_getitimer,
            [which as u64, scratch, 0, 0, 0, 0],
        )?;
        let b = r.read_mem(scratch, 32)?;
        let us = |t: Timespec| Timespec {
            sec: t.sec,
            nsec: t.nsec * 1000,
        };
        *slot = Itimer {
            interval: us(read_timespec(&b[0..16])),
            value: us(read_timespec(&b[16..32])),
        };
    }
    let path = format!("/proc/{pid}/timers");
    let text =
        std::fs::read_to_string(&path).map_err(|e| perr(pid, format!("reading {path}: {e}")))?;
    let listed = parse_proc_timers(&text).map_err(|e| perr(pid, format!("{path}: {e}")))?;
    for t in listed {
        clock_supported(t.clock, tids.len()).map_err(|detail| Error::Unsupported {
            pid: ns_pid,
            what: format!("POSIX timer {}", t.id),
            detail,
        })?;
        let thread = if t.notify & SIGEV_THREAD_ID != 0 {
            tids.iter()
                .find(|(host, _)| *host == t.target)
                .map(|(_, ns)| *ns)
                .ok_or_else(|| Error::Unsupported {
                    pid: ns_pid,
                    what: format!("POSIX timer {}", t.id),
                    detail: format!("it signals thread {}, not one of this process", t.target),
                })?
        } else {
            0
        };
        r.call(
            &format!("timer_gettime({})", t.id),
            libc::SYS_timer_gettime,
            [t.id as u64, scratch, 0, 0, 0, 0],
        )?;
        let b = r.read_mem(scratch, 32)?;
        let spec = Itimer {
            interval: read_timespec(&b[0..16]),
            value: read_timespec(&b[16..32]),
        };
        let overrun = r.call(
            &format!("timer_getoverrun({})", t.id),
            libc::SYS_timer_getoverrun,
            [t.id as u64, 0, 0, 0, 0, 0],
        )? as i32;
        img.posix.push(PosixTimer {
            id: t.id,
            clock: t.clock,
            notify: t.notify,
            signo: t.signo,
            value: t.value,
            thread,
            spec,
            overrun,
        });
    }
    img.posix.sort_by_key(|t| t.id);
    Ok(img)
}

fn valid_spec(t: &Itimer, usec: bool) -> bool {
    let max = if usec { 1_000_000 } else { 1_000_000_000 };
    [t.interval, t.value]
        .iter()
        .all(|x| x.sec >= 0 && (0..max).contains(&x.nsec))
}

/// Checks the timers of a process image.
pub fn validate(pid: i32, t: &TimersImage, tids: &[i32]) -> Result<()> {
    let bad = |what: String| Error::Other(format!("image of process {pid}: {what}"));
    if t.posix.len() > MAX_TIMERS {
        return Err(bad(format!("{} POSIX timers", t.posix.len())));
    }
    for it in &t.itimers {
        // Kept in nanoseconds, whole microseconds.
        if !valid_spec(it, false) || it.interval.nsec % 1000 != 0 || it.value.nsec % 1000 != 0 {
            return Err(bad("bad interval timer".into()));
        }
    }
    let mut last = -1;
    for p in &t.posix {
        let ok = p.id > last
            && valid_spec(&p.spec, false)
            && clock_supported(p.clock, tids.len()).is_ok()
            && matches!(
                p.notify & !SIGEV_THREAD_ID,
                SIGEV_SIGNAL | SIGEV_NONE | SIGEV_THREAD
            )
            && (p.notify & SIGEV_NONE != 0 || (1..=64).contains(&p.signo))
            && (p.notify & SIGEV_THREAD_ID == 0 || tids.contains(&p.thread));
        if !ok {
            return Err(bad(format!("bad POSIX timer {}", p.id)));
        }
        last = p.id;
    }
    Ok(())
}

/// Whether `restore` has anything to do (a POSIX timer or an armed itimer).
pub fn has_any(t: &TimersImage) -> bool {
    !t.posix.is_empty()
        || t.itimers
            .iter()
            .any(|it| !is_zero(&it.value) || !is_zero(&it.interval))
}

/// Recreates the timers in a restored process, from its main thread, once
/// its threads exist. `scratch` is task memory for the arguments.
pub fn restore(r: &mut Remote, t: &TimersImage, scratch: u64) -> Result<()> {
    if !t.posix.is_empty() {
        let on = r.syscall_raw(
            libc::SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0],
        )?;
        // Without it (kernels before 6.15) ids come in creation order: only
        // a gap-free set starting at 0 comes back right, which is checked.
        let with_ids = on == 0;
        for p in &t.posix {
            let mut ev = [0u8; 64];
            ev[0..8].copy_from_slice(&p.value.to_le_bytes());
            ev[8..12].copy_from_slice(&p.signo.to_le_bytes());
            ev[12..16].copy_from_slice(&p.notify.to_le_bytes());
            ev[16..20].copy_from_slice(&p.thread.to_le_bytes());
            r.write_mem(scratch, &ev)?;
            r.write_mem(scratch + 64, &p.id.to_le_bytes())?;
            r.call(
                &format!("timer_create of POSIX timer {} (clock {})", p.id, p.clock),
                libc::SYS_timer_create,
                [p.clock as u64, scratch, scratch + 64, 0, 0, 0],
            )?;
            let got = i32::from_le_bytes(r.read_mem(scratch + 64, 4)?.try_into().expect("4 bytes"));
            if got != p.id {
                return Err(perr(
                    r.tid,
                    format!(
                        "POSIX timer {} came back as timer {got}{}",
                        p.id,
                        if with_ids {
                            ""
                        } else {
                            " (this kernel has no PR_TIMER_CREATE_RESTORE_IDS)"
                        }
                    ),
                ));
            }
            if !is_zero(&p.spec.value) {
                let mut spec = Vec::with_capacity(32);
                spec.extend_from_slice(&ts_bytes(&p.spec.interval));
                spec.extend_from_slice(&ts_bytes(&p.spec.value));
                r.write_mem(scratch, &spec)?;
                r.call(
                    &format!("timer_settime of POSIX timer {}", p.id),
                    libc::SYS_timer_settime,
                    [p.id as u64, 0, scratch, 0, 0, 0],
                )?;
            }
        }
        if with_ids {
            r.call(
                "prctl(PR_TIMER_CREATE_RESTORE_IDS, off)",
                libc::SYS_prctl,
                [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0],
            )?;
        }
    }
    for (which, it) in t.itimers.iter().enumerate() {
        // A periodic ITIMER_REAL that expired while the process was stopped
        // is re-armed only when its SIGALRM is dequeued: until then
        // getitimer shows no time left. The SIGALRM travels with the
        // pending signals; the timer goes on with its next period.
        let value = if is_zero(&it.value) {
            it.interval
        } else {
            it.value
        };
        if is_zero(&value) {
            continue;
        }
        let us = |t: &Timespec| Timespec {
            sec: t.sec,
            nsec: t.nsec / 1000,
        };
        let mut b = Vec::with_capacity(32);
        b.extend_from_slice(&ts_bytes(&us(&it.interval)));
        b.extend_from_slice(&ts_bytes(&us(&value)));
        r.write_mem(scratch, &b)?;
        r.call(
            &format!("setitimer({which})"),
            libc::SYS_setitimer,
            [which as u64, scratch, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

// ---- Clocks and the time namespace ------------------------------------

/// The monotonic and boottime offsets of `who` ("self" or a PID) against the
/// host's clocks; zero where the kernel has no time namespaces.
fn offsets_of(who: &str) -> Result<Clocks> {
    let path = format!("/proc/{who}/timens_offsets");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Clocks::default()),
        Err(e) => return Err(Error::Other(format!("reading {path}: {e}"))),
    };
    let mut c = Clocks::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 3 {
            continue;
        }
        let (Ok(sec), Ok(nsec)) = (f[1].parse::<i64>(), f[2].parse::<i64>()) else {
            return Err(Error::Other(format!("{path}: unexpected line {line:?}")));
        };
        match f[0] {
            "monotonic" | "1" => c.monotonic = Timespec { sec, nsec },
            "boottime" | "7" => c.boottime = Timespec { sec, nsec },
            _ => {}
        }
    }
    Ok(c)
}

fn now(clock: libc::clockid_t) -> Timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Timespec {
        sec: ts.tv_sec,
        nsec: ts.tv_nsec,
    }
}

fn add(a: Timespec, b: Timespec) -> Timespec {
    norm(a.sec + b.sec, a.nsec + b.nsec)
}

fn sub(a: Timespec, b: Timespec) -> Timespec {
    norm(a.sec - b.sec, a.nsec - b.nsec)
}

fn norm(sec: i64, nsec: i64) -> Timespec {
    let total = sec as i128 * 1_000_000_000 + nsec as i128;
    Timespec {
        sec: total.div_euclid(1_000_000_000) as i64,
        nsec: total.rem_euclid(1_000_000_000) as i64,
    }
}

/// The host's clocks (what the kernel counts, before any time namespace).
fn host_now() -> Result<Clocks> {
    let own = offsets_of("self")?;
    Ok(Clocks {
        monotonic: sub(now(libc::CLOCK_MONOTONIC), own.monotonic),
        boottime: sub(now(libc::CLOCK_BOOTTIME), own.boottime),
    })
}

fn ns_link(pid: i32, name: &str) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{name}")).ok()
}

/// The clocks as the stopped tree sees them now. Every process must be in
/// the time namespace of the first (and have it for its children).
pub fn clocks(pids: &[i32]) -> Result<Option<Clocks>> {
    let Some(&first) = pids.first() else {
        return Ok(None);
    };
    let ns = ns_link(first, "time");
    for &pid in pids {
        for name in ["time", "time_for_children"] {
            if ns_link(pid, name) != ns {
                return Err(Error::Unsupported {
                    pid,
                    what: "a time namespace of its own".into(),
                    detail: format!(
                        "/proc/{pid}/ns/{name} is {:?}, the tree's is {ns:?}",
                        ns_link(pid, name)
                    ),
                });
            }
        }
    }
    let theirs = offsets_of(&first.to_string())?;
    let host = host_now()?;
    Ok(Some(Clocks {
        monotonic: add(host.monotonic, theirs.monotonic),
        boottime: add(host.boottime, theirs.boottime),
    }))
}

pub fn validate_clocks(c: &Clocks) -> Result<()> {
    let ok = |t: &Timespec| t.sec >= 0 && t.sec < (1 << 40) && (0..1_000_000_000).contains(&t.nsec);
    if !ok(&c.monotonic) || !ok(&c.boottime) {
        return Err(Error::Other(format!(
            "image: inventory.json: bad clocks {c:?}"
        )));
    }
    Ok(())
}

/// While alive, the processes stasis forks start in a new time namespace
/// whose clocks go on from the recorded ones. Dropping it puts stasis's
/// children back in stasis's own namespace.
pub struct TimeNamespace {
    home: OwnedFd,
}

impl TimeNamespace {
    /// Makes the namespace for `c`. None when the kernel has no time
    /// namespaces (the clocks then are the host's). stasis must be
    /// single-threaded.
    pub fn for_children(c: &Clocks) -> Result<Option<TimeNamespace>> {
        let home = match File::open("/proc/self/ns/time") {
            Ok(f) => OwnedFd::from(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!("no time namespaces: the restored clocks are the host's");
                return Ok(None);
            }
            Err(e) => return Err(Error::Other(format!("opening /proc/self/ns/time: {e}"))),
        };
        nix::sched::unshare(nix::sched::CloneFlags::from_bits_retain(
            libc::CLONE_NEWTIME,
        ))
        .map_err(|e| Error::Other(format!("unshare(CLONE_NEWTIME): {e} (feature: ns-time)")))?;
        let guard = TimeNamespace { home };
        let host = host_now()?;
        let mono = sub(c.monotonic, host.monotonic);
        let boot = sub(c.boottime, host.boottime);
        let text = format!(
            "monotonic {} {}\nboottime {} {}\n",
            mono.sec, mono.nsec, boot.sec, boot.nsec
        );
        std::fs::write("/proc/self/timens_offsets", &text).map_err(|e| {
            Error::Other(format!(
                "writing the time namespace offsets {:?}: {e}",
                text.trim()
            ))
        })?;
        tracing::debug!(offsets = %text.trim(), "time namespace for the restored sandbox");
        Ok(Some(guard))
    }
}

impl Drop for TimeNamespace {
    fn drop(&mut self) {
        // Entering a namespace resets the one for children too.
        if let Err(e) = nix::sched::setns(
            &self.home,
            nix::sched::CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
        ) {
            tracing::warn!("returning to stasis's own time namespace: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_timers() {
        let text = "ID: 3\nsignal: 10/0000000000001234\nnotify: signal/pid.31484\nClockID: 1\n\
                    ID: 7\nsignal: 34/0000000000000000\nnotify: signal/tid.31490\nClockID: 0\n\
                    ID: 8\nsignal: 14/0000000000000000\nnotify: none/pid.31484\nClockID: 7\n";
        let t = parse_proc_timers(text).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[0],
            ProcTimer {
                id: 3,
                signo: 10,
                value: 0x1234,
                notify: SIGEV_SIGNAL,
                target: 31484,
                clock: 1
            }
        );
        assert_eq!(t[1].notify, SIGEV_SIGNAL | SIGEV_THREAD_ID);
        assert_eq!(t[1].target, 31490);
        assert_eq!(t[2].notify, SIGEV_NONE);
        assert_eq!(t[2].clock, 7);
        assert!(parse_proc_timers("ID: x\n").is_err());
    }

    #[test]
    fn timespec_arithmetic() {
        let a = Timespec { sec: 5, nsec: 100 };
        let b = Timespec {
            sec: 10,
            nsec: 200_000_000,
        };
        assert_eq!(
            sub(a, b),
            Timespec {
                sec: -6,
                nsec: 800_000_100
            }
        );
        assert_eq!(add(sub(a, b), b), a);
    }
}
