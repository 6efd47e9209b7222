//! A dump that is interrupted must leave the workload as it was.
//!
//! - SIGINT, SIGTERM and SIGHUP are held (blocked) while a dump runs and
//!   looked for between its steps ([`check`]): one that arrived turns into
//!   [`Error::Interrupted`], and the dump rolls back like after any other
//!   error (threads detached with their own registers and masks, sandbox
//!   thawed, partial image removed).
//! - SIGKILL cannot be held. The kernel detaches the traced threads itself;
//!   the injector keeps each thread's own registers and mask in place between
//!   injected syscalls (see `sys::inject`), and the scratch space is on the
//!   thread's stack (see `remote`). What the kernel does not undo, a frozen
//!   cgroup and a partial image, is undone by a [`Guard`]: a small process
//!   forked before the freeze that waits on a pipe from the dump, and on
//!   end-of-file without the dump's word that all is in order, thaws the
//!   sandbox and removes the partial image.
//! - [`pause_at`] is a fault-injection hook for the tests
//!   (`STASIS_TEST_PAUSE_AT=<phase>:<ready file>`, see docs/reliability.md).

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};

/// The signals a dump holds and answers with a rollback.
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The environment variable of the fault-injection hook.
pub const PAUSE_ENV: &str = "STASIS_TEST_PAUSE_AT";

fn sigset(sigs: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// The name of a signal, for messages.
pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGUSR1 => "SIGUSR1".into(),
        n => format!("signal {n}"),
    }
}

/// Waits up to `timeout` (None: for ever, Some(ZERO): a poll) for one of
/// `sigs`, which must be blocked; returns the one taken.
fn take_signal(sigs: &[i32], timeout: Option<Duration>) -> Option<i32> {
    let set = sigset(sigs);
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    loop {
        // SAFETY: sigtimedwait with a valid set, a null siginfo pointer and
        // either a null or a valid timespec.
        let r = unsafe {
            libc::sigtimedwait(
                &set,
                std::ptr::null_mut(),
                ts.as_ref().map_or(std::ptr::null(), |t| t as *const _),
            )
        };
        if r > 0 {
            return Some(r);
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
}

/// Holds the stop signals for as long as it lives. On drop, stop signals
/// that arrived after the image was complete are taken (the dump finished
/// and reports success) and the old mask comes back.
pub struct HeldSignals {
    old: libc::sigset_t,
}

impl HeldSignals {
    pub fn hold() -> Self {
        // With the fault-injection hook armed, SIGUSR1 (its "go on") is held
        // too, from the start: threads the dump starts later inherit the
        // mask, so the signal can only be taken by the paused thread, never
        // delivered with its default action (the end of the process) to a
        // thread that is not waiting for it.
        let mut sigs = STOP_SIGNALS.to_vec();
        if crate::faults::pause_spec().is_some() {
            sigs.push(libc::SIGUSR1);
        }
        let set = sigset(&sigs);
        // SAFETY: a zeroed sigset_t is a valid out-buffer; pthread_sigmask
        // with valid set pointers.
        let old = unsafe {
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            old
        };
        HeldSignals { old }
    }
}

impl Drop for HeldSignals {
    fn drop(&mut self) {
        while let Some(sig) = take_signal(&STOP_SIGNALS, Some(Duration::ZERO)) {
            tracing::warn!(
                "{} arrived after the image was complete: the dump finished",
                signal_name(sig)
            );
        }
        // SAFETY: restoring the mask saved in `hold`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// `Err(Interrupted)` when a stop signal arrived since the last check.
pub fn check() -> Result<()> {
    match take_signal(&STOP_SIGNALS, Some(Duration::ZERO)) {
        Some(sig) => Err(Error::Interrupted(signal_name(sig))),
        None => Ok(()),
    }
}

/// The fault-injection hook. When `STASIS_TEST_PAUSE_AT` is
/// `<phase>:<ready file>` and `phase` is the one named, writes the ready file
/// (this process's PID and the guard's, space-separated) and waits: SIGKILL
/// ends the dump there, SIGINT/SIGTERM/SIGHUP interrupt it (a rollback), and
/// SIGUSR1 lets it go on. Does nothing otherwise.
pub fn pause_at(phase: &str, guard: Option<&Guard>) -> Result<()> {
    pause(phase, guard, None::<fn() -> Result<()>>)
}

/// [`pause_at`] for a phase where the dump has work that cannot wait (the
/// write faults of a workload running again): `serve` runs in a loop while
/// paused (it waits for its work a millisecond at most), and its error ends
/// the pause.
pub fn pause_serving(phase: &str, serve: impl FnMut() -> Result<()>) -> Result<()> {
    pause(phase, None, Some(serve))
}

fn pause(
    phase: &str,
    guard: Option<&Guard>,
    mut serve: Option<impl FnMut() -> Result<()>>,
) -> Result<()> {
    let Some((want, ready)) = crate::faults::pause_spec() else {
        return Ok(());
    };
    if !crate::faults::PHASES.contains(&want.as_str()) {
        return Err(Error::Other(format!(
            "{PAUSE_ENV}: unknown phase {want:?} (one of {})",
            crate::faults::PHASES.join(", ")
        )));
    }
    if want != phase {
        return Ok(());
    }
    let mut sigs = STOP_SIGNALS.to_vec();
    sigs.push(libc::SIGUSR1);
    let set = sigset(&sigs);
    // SAFETY: blocking signals of this thread with a valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let tmp = ready.with_extension("tmp");
    let text = format!("{} {}\n", std::process::id(), guard.map_or(0, |g| g.pid));
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, ready))
        .map_err(crate::error::io(format!("writing {}", ready.display())))?;
    tracing::warn!("{PAUSE_ENV}: paused at {phase}");
    let sig = match serve.as_mut() {
        None => take_signal(&sigs, None),
        Some(serve) => loop {
            if let Some(sig) = take_signal(&sigs, Some(Duration::ZERO)) {
                break Some(sig);
            }
            serve()?;
        },
    };
    match sig {
        Some(libc::SIGUSR1) | None => Ok(()),
        Some(sig) => Err(Error::Interrupted(signal_name(sig))),
    }
}

/// What the guard undoes when the dump dies without a word.
pub struct GuardTask<'a> {
    pub cgroup: &'a sandbox::cgroup::Cgroup,
    /// What is left of the sandbox once a complete dump killed it: the guard
    /// finishes it when told to ([`Guard::hand_over`]).
    pub ending: sandbox::Ending,
    pub sandbox: &'a str,
    pub image_dir: &'a Path,
    /// The dump made the image directory (the guard removes it, not only
    /// the files in it).
    pub created_dir: bool,
}

/// A process that outlives a killed dump just long enough to thaw the
/// sandbox and remove the partial image. See the module's documentation.
pub struct Guard {
    pub pid: i32,
    pipe: Option<OwnedFd>,
}

/// The byte the dump sends when it ends in order (success or a rollback it
/// did itself).
const ALL_DONE: u8 = b'D';
/// The byte the dump sends when it is complete and the sandbox killed: the
/// guard stays to remove the sandbox's cgroup once the killed processes
/// have exited.
const FINISH_ENDING: u8 = b'E';

/// Longest the guard waits for a killed sandbox's processes to exit.
const ENDING_TIMEOUT: Duration = Duration::from_secs(60);

impl Guard {
    /// Forks the guard. Call only while this process is single-threaded.
    pub fn start(task: &GuardTask<'_>) -> Result<Guard> {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two fds into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(crate::error::io("pipe for the dump's guard")(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: both fds were just created and are ours alone.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: stasis is single-threaded while it dumps (no library starts
        // threads), so the child may run any code; it ends with _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(crate::error::io("fork of the dump's guard")(
                std::io::Error::last_os_error(),
            ));
        }
        if pid == 0 {
            drop(wr);
            let code = guard_main(rd, task);
            // SAFETY: ending the forked child without running the parent's
            // exit handlers or destructors.
            unsafe { libc::_exit(code) };
        }
        drop(rd);
        Ok(Guard {
            pid,
            pipe: Some(wr),
        })
    }

    /// The dump ended in order: the guard exits without touching anything.
    /// The dump is complete and its sandbox killed
    /// ([`sandbox::Sandbox::kill_and_leave`]): the guard finishes the
    /// sandbox's ending on its own, without this process waiting for it.
    pub fn hand_over(mut self) {
        if let Some(fd) = self.pipe.take() {
            let mut f = std::fs::File::from(fd);
            let _ = f.write_all(&[FINISH_ENDING]);
        }
    }

    pub fn disarm(mut self) {
        if let Some(fd) = self.pipe.take() {
            let mut f = std::fs::File::from(fd);
            let _ = f.write_all(&[ALL_DONE]);
        }
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
    }
}

fn guard_main(rd: OwnedFd, task: &GuardTask<'_>) -> i32 {
    // SAFETY: in the forked child: ignoring signals, moving the pipe to fd 3
    // and closing every other inherited fd above stderr (the sandbox's lock,
    // pidfds, image files), so the guard holds nothing of the dump's.
    unsafe {
        for sig in STOP_SIGNALS.iter().chain(&[libc::SIGUSR1, libc::SIGPIPE]) {
            libc::signal(*sig, libc::SIG_IGN);
        }
        let set = sigset(&[]);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        if rd.as_raw_fd() != 3 {
            libc::dup2(rd.as_raw_fd(), 3);
        }
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
    std::mem::forget(rd);
    let mut b = [0u8; 1];
    let n = loop {
        // SAFETY: reading one byte from fd 3 (the pipe) into a local buffer.
        let n = unsafe { libc::read(3, b.as_mut_ptr().cast(), 1) };
        if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break n;
        }
    };
    if n == 1 && b[0] == ALL_DONE {
        return 0;
    }
    if n == 1 && b[0] == FINISH_ENDING {
        // Nobody reads what is said from here on: the dump has returned.
        // SAFETY: redirecting stderr to /dev/null (so that whoever reads the
        // dump's stderr is not held until the ending is finished).
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 {
                libc::dup2(null, 2);
                libc::close(null);
            }
        }
        return i32::from(task.ending.finish(ENDING_TIMEOUT).is_err());
    }
    // The dump died without a word.
    let mut said = Vec::new();
    if task.cgroup.thaw().is_ok() {
        said.push(format!("sandbox {} thawed", task.sandbox));
    }
    let complete = task.image_dir.join("manifest.json").exists();
    if !complete {
        if let Ok(entries) = std::fs::read_dir(task.image_dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        if task.created_dir {
            let _ = std::fs::remove_dir(task.image_dir);
        }
        said.push(format!(
            "partial image {} removed",
            task.image_dir.display()
        ));
    }
    eprintln!("stasis: the dump ended abruptly: {}", said.join(", "));
    0
}
