//! Helpers shared by the probes: failure classification, child processes with
//! bounded waits, small file and /proc readers.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::report::{Outcome, Status};

/// Why a probe step did not succeed.
#[derive(Debug, Clone)]
pub(crate) struct Fail {
    pub status: Status,
    pub detail: String,
    pub call: String,
    pub errno: Option<Errno>,
}

pub(crate) type PResult<T> = Result<T, Fail>;

/// errnos that mean "not available here" rather than "something broke".
pub(crate) fn means_missing(e: Errno) -> bool {
    matches!(
        e,
        Errno::ENOSYS
            | Errno::EOPNOTSUPP
            | Errno::ENOPROTOOPT
            | Errno::EAFNOSUPPORT
            | Errno::EPROTONOSUPPORT
            | Errno::EPERM
            | Errno::EACCES
    )
}

fn errno_text(e: Errno) -> &'static str {
    e.desc()
}

impl Fail {
    /// A failed call, classified by its errno.
    pub fn call(call: impl Into<String>, errno: Errno) -> Self {
        let status = if means_missing(errno) {
            Status::Missing
        } else {
            Status::Error
        };
        Self {
            status,
            detail: errno_text(errno).to_string(),
            call: call.into(),
            errno: Some(errno),
        }
    }

    /// A failed call that means the feature is missing, whatever the errno.
    pub fn missing_call(call: impl Into<String>, errno: Errno, detail: impl Into<String>) -> Self {
        Self {
            status: Status::Missing,
            detail: detail.into(),
            call: call.into(),
            errno: Some(errno),
        }
    }

    /// The feature is not there (no failing call to name, or a wrong result).
    pub fn missing(call: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status: Status::Missing,
            detail: detail.into(),
            call: call.into(),
            errno: None,
        }
    }

    /// The probe found something it cannot explain.
    pub fn error(call: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status: Status::Error,
            detail: detail.into(),
            call: call.into(),
            errno: None,
        }
    }

    /// Replaces the human-readable detail.
    pub fn because(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// Marks the failure as "missing".
    pub fn into_missing(mut self) -> Self {
        self.status = Status::Missing;
        self
    }

    pub fn into_outcome(self) -> Outcome {
        let o = match self.status {
            Status::Missing => Outcome::missing(self.detail),
            _ => Outcome::error(self.detail),
        };
        o.with_call(self.call, self.errno)
    }
}

impl From<sys::Error> for Fail {
    fn from(e: sys::Error) -> Self {
        Fail::call(e.call, e.errno)
    }
}

/// Folds a probe step's result into an outcome.
pub(crate) fn outcome(r: PResult<Outcome>) -> Outcome {
    r.unwrap_or_else(Fail::into_outcome)
}

/// Names the call behind a `nix` or `std::io` error.
pub(crate) trait Call<T> {
    fn call(self, name: &str) -> PResult<T>;
}

impl<T> Call<T> for nix::Result<T> {
    fn call(self, name: &str) -> PResult<T> {
        self.map_err(|e| Fail::call(name, e))
    }
}

impl<T> Call<T> for std::io::Result<T> {
    fn call(self, name: &str) -> PResult<T> {
        self.map_err(|e| match e.raw_os_error() {
            Some(n) => Fail::call(name, Errno::from_raw(n)),
            None => Fail::error(name, e.to_string()),
        })
    }
}

/// Turns a raw `-1`-on-error libc return value into a result.
pub(crate) fn cvt(name: &str, ret: libc::c_long) -> PResult<libc::c_long> {
    if ret == -1 {
        Err(Fail::call(name, Errno::last()))
    } else {
        Ok(ret)
    }
}

/// A pipe with both ends close-on-exec.
pub(crate) fn pipe() -> PResult<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).call("pipe2")
}

/// Writes all of `buf` to `fd`, retrying on EINTR.
pub(crate) fn write_all(fd: impl AsFd, mut buf: &[u8]) -> PResult<()> {
    while !buf.is_empty() {
        match nix::unistd::write(fd.as_fd(), buf) {
            Ok(0) => return Err(Fail::error("write", "wrote 0 bytes")),
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Fail::call("write", e)),
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes from `fd`, waiting at most `timeout`.
pub(crate) fn read_exact_timeout(fd: impl AsFd, buf: &mut [u8], timeout: Duration) -> PResult<()> {
    let deadline = Instant::now() + timeout;
    let mut got = 0;
    while got < buf.len() {
        wait_readable(fd.as_fd(), deadline)?;
        match nix::unistd::read(fd.as_fd(), &mut buf[got..]) {
            Ok(0) => return Err(Fail::error("read", "peer closed the pipe early")),
            Ok(n) => got += n,
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
            Err(e) => return Err(Fail::call("read", e)),
        }
    }
    Ok(())
}

/// Waits until `fd` is readable (or hung up), at most until `deadline`.
pub(crate) fn wait_readable(fd: std::os::fd::BorrowedFd, deadline: Instant) -> PResult<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Fail::error(
                "poll",
                "timed out waiting for a helper process",
            ));
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, count 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return Ok(());
        }
        if n < 0 && Errno::last() != Errno::EINTR {
            return Err(Fail::call("poll", Errno::last()));
        }
    }
}

/// Forks a child that runs `f` and exits with its return value. The child
/// dies with its parent. Only for probe processes, which are single-threaded.
pub(crate) fn fork_fn(f: impl FnOnce() -> i32) -> PResult<i32> {
    // SAFETY: probe units run in single-threaded processes (see runner), so
    // the child may run arbitrary code; it leaves only through _exit.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(Fail::call("fork", Errno::last())),
        0 => {
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
            crate::runner::close_result_fd();
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(120);
            // SAFETY: _exit never returns and runs no destructors or atexit handlers.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(pid),
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
}

/// Waits for child `pid` to exit, at most `timeout`; kills it past that.
pub(crate) fn wait_exit(pid: i32, timeout: Duration) -> PResult<Exit> {
    let deadline = Instant::now() + timeout;
    let pidfd = sys::pidfd::pidfd_open(pid).ok();
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes one int.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return Ok(Exit::Code(libc::WEXITSTATUS(status)));
            }
            if libc::WIFSIGNALED(status) {
                return Ok(Exit::Signal(libc::WTERMSIG(status)));
            }
            continue; // a stop: keep waiting for the exit
        }
        if r == -1 && Errno::last() != Errno::EINTR {
            return Err(Fail::call("waitpid", Errno::last()));
        }
        if Instant::now() >= deadline {
            kill_and_reap(pid);
            return Err(Fail::error(
                "waitpid",
                format!(
                    "helper process did not exit within {} ms",
                    timeout.as_millis()
                ),
            ));
        }
        match &pidfd {
            Some(fd) => {
                let _ = wait_readable(
                    fd.as_fd(),
                    deadline.min(Instant::now() + Duration::from_millis(50)),
                );
            }
            None => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

/// Waits for child `pid`'s exit and requires exit code 0; other codes are
/// turned into failures by `explain`.
pub(crate) fn expect_exit_zero(
    pid: i32,
    timeout: Duration,
    what: &str,
    explain: impl FnOnce(i32) -> Fail,
) -> PResult<()> {
    match wait_exit(pid, timeout)? {
        Exit::Code(0) => Ok(()),
        Exit::Code(c) => Err(explain(c)),
        Exit::Signal(s) => Err(Fail::error(
            what,
            format!("helper process killed by signal {s}"),
        )),
    }
}

/// SIGKILLs child `pid` and reaps it.
pub(crate) fn kill_and_reap(pid: i32) {
    // SAFETY: kill and waitpid with integer arguments on our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut st = 0;
        while libc::waitpid(pid, &mut st, libc::__WALL) == -1 && Errno::last() == Errno::EINTR {}
    }
}

/// Reads a small text file, trimmed.
pub(crate) fn read_trim(path: &str) -> PResult<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .call(&format!("read {path}"))
}

/// The page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// An anonymous private mapping that is unmapped on drop.
pub(crate) struct Mapping {
    pub addr: u64,
    pub len: usize,
}

impl Mapping {
    pub fn anon(len: usize, prot: i32, flags: i32) -> PResult<Self> {
        // SAFETY: a fresh anonymous mapping chosen by the kernel.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                flags | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Fail::call("mmap", Errno::last()));
        }
        // Probes count pages one by one: no (multi-size) transparent huge
        // pages that would populate neighbours of a touched page.
        // SAFETY: advice on the mapping just created.
        unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
        Ok(Self {
            addr: p as u64,
            len,
        })
    }

    /// Writes `byte` into page `i` (the mapping must be writable).
    pub fn touch(&self, i: usize, byte: u8) {
        let off = i * page_size();
        assert!(off < self.len);
        // SAFETY: inside our own writable mapping.
        unsafe { std::ptr::write_volatile((self.addr as usize + off) as *mut u8, byte) };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; nothing refers to it any more.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// Hex formatting for JSON facts.
pub(crate) fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// A value in a shared anonymous page, written by forked helper processes
/// and read by the probe after they exit.
pub(crate) struct Shared<T: Copy> {
    ptr: *mut T,
}

impl<T: Copy + Default> Shared<T> {
    pub fn new() -> PResult<Self> {
        let len = std::mem::size_of::<T>().max(1);
        // SAFETY: a fresh shared anonymous mapping chosen by the kernel.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Fail::call("mmap(MAP_SHARED)", Errno::last()));
        }
        let s = Self { ptr: p.cast() };
        s.set(T::default());
        Ok(s)
    }

    pub fn get(&self) -> T {
        // SAFETY: the mapping holds a T (page-aligned, initialised in new()).
        unsafe { std::ptr::read_volatile(self.ptr) }
    }

    pub fn set(&self, v: T) {
        // SAFETY: as in get(); writers are sequenced by fork/wait.
        unsafe { std::ptr::write_volatile(self.ptr, v) }
    }
}

impl<T: Copy> Drop for Shared<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in new().
        unsafe { libc::munmap(self.ptr.cast(), std::mem::size_of::<T>().max(1)) };
    }
}

/// The errno of a failed raw call, as stored by helper processes in a
/// `Shared` slot (0 = success).
pub(crate) fn last_errno() -> i32 {
    Errno::last() as i32
}

/// readlink of a /proc namespace link, e.g. `ns_link("self", "net")`.
pub(crate) fn ns_link(pid: &str, ns: &str) -> PResult<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .map(|p| p.to_string_lossy().into_owned())
        .call(&format!("readlink /proc/{pid}/ns/{ns}"))
}
