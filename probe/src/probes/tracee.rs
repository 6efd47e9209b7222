//! A helper process to probe from outside: forked from the unit, it runs a
//! setup step, reports it through a pipe, then blocks in read(2) until the
//! probe releases it, and finally checks its own state and exits.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::STEP;
use crate::util::{self, fork_fn, read_exact_timeout, write_all, Fail, PResult};

/// Exit codes of the helper.
pub(crate) const EXIT_SETUP_FAILED: i32 = 90;
pub(crate) const EXIT_READ_EINTR: i32 = 91;
pub(crate) const EXIT_READ_EOF: i32 = 92;
pub(crate) const EXIT_READ_ERROR: i32 = 93;

pub(crate) struct Tracee {
    pub pid: i32,
    go: Option<OwnedFd>,
    reaped: bool,
}

impl Tracee {
    /// Forks the helper. `setup` runs first in the child and returns 0 or an
    /// errno; `verify` runs after release and returns the exit code.
    pub fn spawn(setup: impl FnOnce() -> i32, verify: impl FnOnce() -> i32) -> PResult<Tracee> {
        let (ready_rd, ready_wr) = util::pipe()?;
        let (go_rd, go_wr) = util::pipe()?;
        let (ready_rd_raw, ready_wr_raw) = (ready_rd.as_raw_fd(), ready_wr.as_raw_fd());
        let (go_rd_raw, go_wr_raw) = (go_rd.as_raw_fd(), go_wr.as_raw_fd());
        // The child works on raw fd numbers: the closure is dropped in the
        // parent, which must keep its OwnedFds.
        let pid = fork_fn(move || {
            // SAFETY: closing this process's copies of the parent's ends.
            unsafe {
                libc::close(ready_rd_raw);
                libc::close(go_wr_raw);
            }
            let err = setup();
            // SAFETY: writing 4 bytes from a local buffer to our pipe end.
            unsafe { libc::write(ready_wr_raw, err.to_le_bytes().as_ptr().cast(), 4) };
            // SAFETY: closing our copy of the ready pipe.
            unsafe { libc::close(ready_wr_raw) };
            if err != 0 {
                return EXIT_SETUP_FAILED;
            }
            let mut b = [0u8; 1];
            // SAFETY: read into a 1-byte buffer we own.
            let n = unsafe { libc::read(go_rd_raw, b.as_mut_ptr().cast(), 1) };
            match n {
                1 => {}
                0 => return EXIT_READ_EOF,
                _ if Errno::last() == Errno::EINTR => return EXIT_READ_EINTR,
                _ => return EXIT_READ_ERROR,
            }
            verify()
        })?;
        drop(ready_wr);
        drop(go_rd);
        let t = Tracee {
            pid,
            go: Some(go_wr),
            reaped: false,
        };
        let mut buf = [0u8; 4];
        read_exact_timeout(&ready_rd, &mut buf, STEP)?;
        let err = i32::from_le_bytes(buf);
        if err != 0 {
            return Err(Fail::call("helper process setup", Errno::from_raw(err)));
        }
        Ok(t)
    }

    /// A helper with no setup that exits 0 once released.
    pub fn plain() -> PResult<Tracee> {
        Self::spawn(|| 0, || 0)
    }

    /// Lets the helper leave its read(2) and run its check.
    pub fn release(&mut self) -> PResult<()> {
        let fd = self
            .go
            .take()
            .ok_or_else(|| Fail::error("write", "helper already released"))?;
        write_all(fd.as_fd(), b"g")
    }

    /// Waits for the helper's exit code.
    pub fn wait(&mut self) -> PResult<util::Exit> {
        let r = util::wait_exit(self.pid, STEP);
        self.reaped = true;
        r
    }

    /// PTRACE_SEIZE with `options`, PTRACE_INTERRUPT, and wait for the stop.
    pub fn seize_stop(&self, options: i32) -> PResult<()> {
        sys::ptrace::seize(self.pid, options).map_err(ptrace_fail)?;
        sys::ptrace::interrupt(self.pid).map_err(ptrace_fail)?;
        wait_stop(self.pid, STEP)?;
        Ok(())
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if !self.reaped {
            util::kill_and_reap(self.pid);
        }
    }
}

/// Waits (bounded) for a ptrace stop of `pid`; returns the raw wait status.
pub(crate) fn wait_stop(pid: i32, timeout: Duration) -> PResult<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes one int.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
        if r == pid {
            if libc::WIFSTOPPED(status) {
                return Ok(status);
            }
            return Err(Fail::error(
                "waitpid",
                "the tracee exited instead of stopping",
            ));
        }
        if r == -1 && Errno::last() != Errno::EINTR {
            return Err(Fail::call("waitpid", Errno::last()));
        }
        if Instant::now() >= deadline {
            return Err(Fail::error("waitpid", "the tracee did not stop in time"));
        }
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// ptrace failures: an unknown request or option (EIO, EINVAL) means the
/// kernel lacks it.
pub(crate) fn ptrace_fail(e: sys::Error) -> Fail {
    let f = Fail::call(e.call, e.errno);
    if matches!(e.errno, Errno::EIO | Errno::EINVAL) {
        f.into_missing()
    } else {
        f
    }
}
