//! Runs probe units. A unit covers one or more features and runs in a
//! process of its own, forked from the (single-threaded) caller: it can
//! unshare namespaces, change its own mm, unmap its vDSO or crash without
//! touching the caller. Units run in parallel; each has a deadline after which
//! its whole process group is killed and its features reported as errors.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::feature::Feature;
use crate::report::Outcome;
use crate::util::{self, Fail};

/// A group of features probed together in one process.
pub(crate) struct Unit {
    pub name: &'static str,
    pub features: &'static [Feature],
    /// Runs in the unit process; returns an outcome per feature.
    pub run: fn() -> Vec<(Feature, Outcome)>,
    /// Runs in the caller after the unit process is gone (e.g. removes a
    /// cgroup named after the unit's PID); gets that PID.
    pub cleanup: Option<fn(i32)>,
}

/// The result pipe of the unit running in this process (-1 outside units);
/// closed in every process a unit forks.
static RESULT_FD: AtomicI32 = AtomicI32::new(-1);

pub(crate) fn close_result_fd() {
    let fd = RESULT_FD.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: the fd is the inherited copy of the result pipe, owned by
        // nobody else in this (forked) process.
        unsafe { libc::close(fd) };
    }
}

/// True when the calling process has exactly one thread, so that fork()
/// without exec is sound.
pub(crate) fn single_threaded() -> bool {
    match std::fs::read_dir("/proc/self/task") {
        Ok(d) => d.count() == 1,
        Err(_) => false,
    }
}

struct Running<'a> {
    unit: &'a Unit,
    pid: i32,
    started: Instant,
    finished: Option<Instant>,
    fd: OwnedFd,
    buf: Vec<u8>,
    done: bool,
}

/// Runs `units` in parallel child processes and collects their outcomes.
/// The caller must be single-threaded.
pub(crate) fn run_units(units: &[&Unit], timeout: Duration) -> Vec<(Feature, Outcome)> {
    let mut out = Vec::new();
    let mut running = Vec::new();
    let parent = std::process::id() as i32;
    for unit in units {
        match spawn(unit, parent) {
            Ok(r) => running.push(r),
            Err(f) => {
                let o = f.into_outcome();
                out.extend(unit.features.iter().map(|&feat| (feat, o.clone())));
            }
        }
    }
    let deadline = Instant::now() + timeout;
    while running.iter().any(|r| !r.done) {
        let mut pfds: Vec<libc::pollfd> = running
            .iter()
            .filter(|r| !r.done)
            .map(|r| libc::pollfd {
                fd: r.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `pfds` is a valid array of pollfds of the given length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if n < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            break;
        }
        for p in pfds.iter().filter(|p| p.revents != 0) {
            let r = running
                .iter_mut()
                .find(|r| r.fd.as_raw_fd() == p.fd)
                .expect("polled fd belongs to a running unit");
            let mut chunk = [0u8; 16384];
            match nix::unistd::read(&r.fd, &mut chunk) {
                Ok(0) => r.done = true,
                Ok(n) => {
                    r.buf.extend_from_slice(&chunk[..n]);
                    if complete(&r.buf) {
                        r.done = true;
                        r.finished = Some(Instant::now());
                    }
                }
                Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
                Err(_) => r.done = true,
            }
        }
    }
    for r in running {
        out.extend(finish(r, timeout));
    }
    out
}

fn spawn<'a>(unit: &'a Unit, parent: i32) -> Result<Running<'a>, Fail> {
    let (rd, wr) = util::pipe()?;
    // SAFETY: the caller is single-threaded (checked by the public entry
    // points), so the child may run arbitrary code before _exit.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(Fail::call(
            format!("fork (probe unit {})", unit.name),
            Errno::last(),
        ));
    }
    if pid == 0 {
        drop(rd);
        unit_main(unit, wr, parent);
    }
    drop(wr);
    // SAFETY: setpgid with integers; done on both sides of the fork so the
    // group exists before either side relies on it.
    unsafe { libc::setpgid(pid, pid) };
    Ok(Running {
        unit,
        pid,
        started: Instant::now(),
        finished: None,
        fd: rd,
        buf: Vec::new(),
        done: false,
    })
}

/// The unit process: runs the probes, sends a length-prefixed JSON answer.
fn unit_main(unit: &Unit, wr: OwnedFd, parent: i32) -> ! {
    // SAFETY: plain syscalls with integer arguments: own process group (so the
    // caller can kill everything the unit forks), die with the caller.
    unsafe {
        libc::setpgid(0, 0);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
    // Probes wait for their own children and rely on default signal
    // handling: undo what the caller may have set (SIGCHLD ignored, signals
    // blocked), which fork would otherwise pass on.
    // SAFETY: resetting SIGCHLD to its default and unblocking all signals
    // in this new single-threaded process.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    inject_fault(unit);
    let raw: RawFd = std::os::fd::IntoRawFd::into_raw_fd(wr);
    RESULT_FD.store(raw, Ordering::SeqCst);
    let results = std::panic::catch_unwind(unit.run).unwrap_or_else(|_| {
        let o = Outcome::error("the probe panicked")
            .with_call(format!("probe unit {}", unit.name), None);
        unit.features.iter().map(|&f| (f, o.clone())).collect()
    });
    let body = serde_json::to_vec(&results).unwrap_or_default();
    let mut msg = (body.len() as u64).to_le_bytes().to_vec();
    msg.extend_from_slice(&body);
    // SAFETY: `raw` is our result pipe's write end, still open in this process
    // (only forked children close their copies).
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let _ = util::write_all(&fd, &msg);
    // SAFETY: _exit never returns and runs no destructors.
    unsafe { libc::_exit(0) }
}

/// `STASIS_CHECK_FAULT=FEATURE:hang|crash[,...]` makes the unit probing
/// FEATURE hang or crash, to test that `stasis check` survives both.
fn inject_fault(unit: &Unit) {
    let Ok(spec) = std::env::var("STASIS_CHECK_FAULT") else {
        return;
    };
    for item in spec.split(',') {
        let Some((name, mode)) = item.split_once(':') else {
            continue;
        };
        if !unit.features.iter().any(|f| f.name() == name) {
            continue;
        }
        match mode {
            "hang" => loop {
                // SAFETY: pause has no arguments.
                unsafe { libc::pause() };
            },
            // SAFETY: a default SIGSEGV in our own (throwaway) process; the
            // Rust runtime's handler is removed first so the signal kills.
            "crash" => unsafe {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::raise(libc::SIGSEGV);
            },
            _ => {}
        }
    }
}

fn complete(buf: &[u8]) -> bool {
    buf.len() >= 8 && {
        let len = u64::from_le_bytes(buf[..8].try_into().unwrap()) as usize;
        buf.len() >= 8 + len
    }
}

fn finish(r: Running<'_>, timeout: Duration) -> Vec<(Feature, Outcome)> {
    let timed_out = !r.done;
    if let Some(t) = r.finished {
        tracing::debug!(
            unit = r.unit.name,
            ms = (t - r.started).as_secs_f64() * 1000.0,
            "probe unit answered"
        );
    }
    // Kill everything the unit left behind (tracees, victims), then reap the
    // unit. Its PID, and so its process group, cannot be reused before that.
    // SAFETY: kill with integer arguments, on a process group we created.
    unsafe { libc::kill(-r.pid, libc::SIGKILL) };
    let exit = util::wait_exit(r.pid, Duration::from_secs(5));
    if let Some(cleanup) = r.unit.cleanup {
        cleanup(r.pid);
    }
    let call = format!("probe unit {}", r.unit.name);
    let fail = |detail: String| -> Vec<(Feature, Outcome)> {
        let o = Outcome::error(detail).with_call(call.clone(), None);
        r.unit.features.iter().map(|&f| (f, o.clone())).collect()
    };
    if timed_out && !complete(&r.buf) {
        return fail(format!(
            "the probe did not finish within {} ms",
            timeout.as_millis()
        ));
    }
    if !complete(&r.buf) {
        return fail(match exit {
            Ok(util::Exit::Signal(s)) => format!("the probe process died of signal {s}"),
            Ok(util::Exit::Code(c)) => {
                format!("the probe process exited with {c} without an answer")
            }
            Err(f) => f.detail,
        });
    }
    let len = u64::from_le_bytes(r.buf[..8].try_into().unwrap()) as usize;
    match serde_json::from_slice::<Vec<(Feature, Outcome)>>(&r.buf[8..8 + len]) {
        Ok(mut results) => {
            for &f in r.unit.features {
                if !results.iter().any(|(g, _)| *g == f) {
                    results.push((
                        f,
                        Outcome::error("the probe gave no answer").with_call(call.clone(), None),
                    ));
                }
            }
            results.retain(|(g, _)| r.unit.features.contains(g));
            results
        }
        Err(e) => fail(format!("unreadable probe answer: {e}")),
    }
}
