//! timerfd: clock, expirations not read yet, time left and interval, from
//! fdinfo (`clockid:`, `ticks:`, `settime flags:`, `it_value:`,
//! `it_interval:`). Restore arms the timer with the time that was left (a
//! TFD_TIMER_ABSTIME timer of a real-time clock with its absolute expiry) and
//! puts the unread expirations back with TFD_IOC_SET_TICKS.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{fdinfo_field, last_os_error};
use crate::error::{Error, Result};
use crate::image::FileKind;

const TFD_TIMER_ABSTIME: u32 = 1;
const TFD_TIMER_CANCEL_ON_SET: u32 = 2;
/// _IOW('T', 0, __u64)
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;
const NSEC: u64 = 1_000_000_000;

fn parse_pair(v: &str) -> Option<u64> {
    let v = v.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (s, ns) = v.split_once(',')?;
    let s: u64 = s.trim().parse().ok()?;
    let ns: u64 = ns.trim().parse().ok()?;
    s.checked_mul(NSEC)?.checked_add(ns)
}

fn is_realtime(clockid: i32) -> bool {
    clockid == libc::CLOCK_REALTIME || clockid == libc::CLOCK_REALTIME_ALARM
}

fn now_ns(clockid: i32) -> Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into our timespec.
    if unsafe { libc::clock_gettime(clockid, &mut ts) } != 0 {
        return Err(last_os_error(format!("reading clock {clockid}")));
    }
    Ok(ts.tv_sec as u64 * NSEC + ts.tv_nsec as u64)
}

/// `dup` is our duplicate of the workload's fd `fd`. An expired periodic
/// timer is moved on to its next period first, as the kernel does whenever
/// the timer is read or asked for its time (the expirations missed meanwhile
/// are added to its ticks); its fdinfo is read after that.
pub fn collect(pid: i32, fd: i32, dup: &OwnedFd) -> Result<FileKind> {
    // SAFETY: an all-zero itimerspec is a valid value to overwrite.
    let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: timerfd_gettime writes into our struct.
    if unsafe { libc::timerfd_gettime(dup.as_raw_fd(), &mut cur) } != 0 {
        return Err(last_os_error(format!(
            "process {pid}: timerfd_gettime of fd {fd}"
        )));
    }
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", dup.as_raw_fd()))
        .map_err(|e| Error::Process {
            pid,
            reason: format!("fd {fd} (timerfd): reading fdinfo: {e}"),
        })?;
    let fdinfo = fdinfo.as_str();
    let bad = |what: &str| Error::Process {
        pid,
        reason: format!("fd {fd} (timerfd): fdinfo has no {what}"),
    };
    let clockid: i32 = fdinfo_field(fdinfo, "clockid:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("clockid"))?;
    let ticks: u64 = fdinfo_field(fdinfo, "ticks:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("ticks"))?;
    let settime_flags = fdinfo_field(fdinfo, "settime flags:")
        .and_then(|v| u32::from_str_radix(v, 8).ok())
        .ok_or_else(|| bad("settime flags"))?;
    let value_ns = fdinfo_field(fdinfo, "it_value:")
        .and_then(parse_pair)
        .ok_or_else(|| bad("it_value"))?;
    let interval_ns = fdinfo_field(fdinfo, "it_interval:")
        .and_then(parse_pair)
        .ok_or_else(|| bad("it_interval"))?;
    let deadline_ns =
        if settime_flags & TFD_TIMER_ABSTIME != 0 && value_ns > 0 && is_realtime(clockid) {
            Some(now_ns(libc::CLOCK_REALTIME)? + value_ns)
        } else {
            None
        };
    Ok(FileKind::Timerfd {
        clockid,
        ticks,
        settime_flags,
        value_ns,
        interval_ns,
        deadline_ns,
    })
}

fn ts(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / NSEC) as libc::time_t,
        tv_nsec: (ns % NSEC) as libc::c_long,
    }
}

pub fn open(id: u32, kind: &FileKind) -> Result<OwnedFd> {
    let FileKind::Timerfd {
        clockid,
        ticks,
        settime_flags,
        value_ns,
        interval_ns,
        deadline_ns,
    } = *kind
    else {
        unreachable!("timerfd::open takes timerfd descriptions");
    };
    // SAFETY: timerfd_create creates a new fd.
    let raw = unsafe { libc::timerfd_create(clockid, libc::TFD_CLOEXEC) };
    if raw < 0 {
        return Err(last_os_error(format!(
            "creating timerfd {id} on clock {clockid}"
        )));
    }
    // SAFETY: `raw` is a new fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let abs = settime_flags & TFD_TIMER_ABSTIME != 0;
    let (flags, value) = match deadline_ns {
        Some(d) if abs && is_realtime(clockid) => (
            settime_flags & (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET),
            d,
        ),
        // A periodic timer that expired between its timerfd_gettime and its
        // fdinfo at dump time shows no time left (the kernel moves it on to
        // its next period only when it is read): that expiration is in
        // `ticks`, the next one is a period later. Left unarmed, it would
        // never fire again.
        _ if value_ns == 0 && interval_ns > 0 => (0, interval_ns),
        // Absolute on a clock that counts from boot: the same time left,
        // against this clock as it reads now.
        _ if abs && value_ns > 0 => (TFD_TIMER_ABSTIME, now_ns(clockid)? + value_ns),
        _ => (0, value_ns),
    };
    if value > 0 {
        let spec = libc::itimerspec {
            it_interval: ts(interval_ns),
            it_value: ts(value),
        };
        // SAFETY: timerfd_settime reads our itimerspec; no old value is asked for.
        let r = unsafe {
            libc::timerfd_settime(fd.as_raw_fd(), flags as i32, &spec, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(last_os_error(format!("arming timerfd {id}")));
        }
    }
    if ticks > 0 {
        // SAFETY: TFD_IOC_SET_TICKS reads one u64 from our variable.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks) };
        if r != 0 {
            return Err(last_os_error(format!(
                "putting back {ticks} expirations of timerfd {id}"
            )));
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs() {
        assert_eq!(parse_pair("(29, 999974662)"), Some(29_999_974_662));
        assert_eq!(parse_pair("(0, 0)"), Some(0));
        assert_eq!(parse_pair("29, 5"), None);
    }
}
