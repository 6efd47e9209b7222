//! A watcher that removes a half-made sandbox when the process making it
//! dies (SIGKILL, a crash) before it said it was done.
//!
//! [`Guard::spawn`] forks a small process (the creator must still be
//! single-threaded) in a session of its own, deaf to the terminal's signals.
//! The creator tells it, one line each, what it makes as soon as it exists:
//! the state directory, the cgroup, init (PID and start time), the veth. The
//! watcher holds a pidfd of the creator. When the creator ends without having
//! sent "done", the watcher kills init (and with it the PID namespace and the
//! tree), empties and removes the cgroup, deletes the veth, removes the state
//! directory, says so on stderr and exits. [`Guard::disarm`] sends "done" and
//! reaps the watcher; a creator that fails on its own undoes its work itself
//! and then disarms.
//!
//! The watcher keeps the creator's stderr open until it is finished, so a
//! caller reading that stderr to its end also waits for the clean-up.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;
use crate::netlink::Rtnl;
use crate::{Error, Result};

/// Something made for the sandbox, reported to the watcher as it is made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Made {
    /// The sandbox's state directory (made by this creation, never a taken one).
    Dir(PathBuf),
    Cgroup(Cgroup),
    /// A state directory about to be made: removed only if it is still
    /// empty (the directory is told about before it exists, so that no
    /// instant leaves one the watcher does not know of).
    DirPlanned(PathBuf),
    /// The cgroup about to be made: those of its directories that exist and
    /// are empty are removed (a cgroup of the name that is in use is not).
    CgroupPlanned(Cgroup),
    /// Init's host PID and start time.
    Init {
        pid: i32,
        start: u64,
    },
    /// The veth's host end.
    Veth(String),
}

/// For the reliability tests: `STASIS_TEST_PAUSE_AT=<phase>:<readyfile>`
/// naming `phase` makes the creator write the ready file and wait there to
/// be killed (the engine's fault points, for the phases inside the sandbox
/// crate: `sandbox-cgroup`, the cgroup just made).
pub(crate) fn pause_point(phase: &str) {
    let Ok(v) = std::env::var("STASIS_TEST_PAUSE_AT") else {
        return;
    };
    let Some((want, ready)) = v.split_once(':') else {
        return;
    };
    if want != phase {
        return;
    }
    let tmp = format!("{ready}.stasis-tmp");
    if fs::write(&tmp, phase).is_ok() {
        let _ = fs::rename(&tmp, ready);
    }
    loop {
        // SAFETY: pause has no arguments; it returns only after a handled signal.
        unsafe { libc::pause() };
    }
}

/// The creator's end of the watcher (see the module docs).
#[derive(Debug)]
pub struct Guard {
    pid: i32,
    w: Option<File>,
}

const DONE: &[u8] = b"done\n";
const ABORT: &[u8] = b"abort\n";

impl Guard {
    /// Forks the watcher. The calling process must be single-threaded.
    pub fn spawn() -> Result<Guard> {
        let sys = |what: &str| {
            let what = what.to_string();
            move |source| Error::Sys { what, source }
        };
        let threads = crate::clone::thread_count().map_err(sys("count threads"))?;
        if threads != 1 {
            return Err(Error::Sys {
                what: "start the clean-up watcher".into(),
                source: io::Error::other(format!(
                    "the calling process has {threads} threads; the watcher can only be forked from a single-threaded process"
                )),
            });
        }
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two fds into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(sys("pipe")(io::Error::last_os_error()));
        }
        // SAFETY: both fds are new and ours.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: getpid has no preconditions.
        let creator = unsafe { libc::getpid() };
        // SAFETY: the process is single-threaded (checked above); the child
        // runs the watcher and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(sys("fork the clean-up watcher")(io::Error::last_os_error()));
        }
        if pid == 0 {
            drop(w);
            let code = watch(creator, r);
            // SAFETY: leaving the forked watcher without the creator's destructors.
            unsafe { libc::_exit(code) };
        }
        drop(r);
        Ok(Guard {
            pid,
            w: Some(File::from(w)),
        })
    }

    /// Tells the watcher about something just made.
    pub(crate) fn note(&self, made: &Made) {
        let mut line = serde_json::to_vec(made).expect("notes serialize");
        line.push(b'\n');
        if let Some(mut w) = self.w.as_ref() {
            // A watcher that is gone cannot be helped; the creator goes on.
            let _ = w.write_all(&line);
        }
    }

    /// The creation is complete (or undone by the creator itself): the
    /// watcher exits without touching anything, and is reaped.
    pub fn disarm(mut self) {
        self.finish(DONE);
    }

    fn finish(&mut self, msg: &[u8]) {
        if let Some(mut w) = self.w.take() {
            let _ = w.write_all(msg);
        }
        let mut st = 0;
        // SAFETY: reaping our own child, the watcher.
        unsafe { libc::waitpid(self.pid, &mut st, 0) };
    }
}

impl Drop for Guard {
    /// Dropped without `disarm` (an unwinding panic): clean up now.
    fn drop(&mut self) {
        if self.w.is_some() {
            self.finish(ABORT);
        }
    }
}

/// The watcher's body: returns its exit code.
fn watch(creator: i32, r: OwnedFd) -> i32 {
    // SAFETY: setsid and signal dispositions of this new single-threaded
    // process; SIG_IGN needs no handler.
    unsafe {
        libc::setsid();
        for s in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(s, libc::SIG_IGN);
        }
        libc::prctl(libc::PR_SET_NAME, c"stasis-guard".as_ptr(), 0, 0, 0);
    }
    // stdin and stdout to /dev/null; stderr stays for the report.
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        // SAFETY: dup2 onto our own stdio fds.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
    crate::init::close_fds_except(&[r.as_raw_fd()]);
    // The creator moves init into the new cgroup soon: let the grace
    // period of the cgroup migration lock pass while it reads its image.
    crate::cgroup::start_migration_grace_period();
    // SAFETY: pidfd_open takes a PID and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, creator, 0) };
    // SAFETY: getppid has no preconditions.
    let parent_alive = fd >= 0 && unsafe { libc::getppid() } == creator;
    let pidfd = (fd >= 0).then(|| {
        // SAFETY: a new fd returned by the kernel, ours.
        unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
    });
    let mut pipe = File::from(r);
    let mut buf = Vec::new();
    let mut made = Vec::new();
    let mut creator_gone = !parent_alive;
    loop {
        // Lines complete so far.
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            if line == DONE {
                return 0;
            }
            if line == ABORT {
                creator_gone = true;
                continue;
            }
            if let Ok(m) = serde_json::from_slice::<Made>(&line) {
                made.push(m);
            }
        }
        if creator_gone {
            // Whatever the creator wrote before it ended is in the pipe:
            // read it to the end (its copies of the write end are closed,
            // or will be once init drops the inherited one).
            if drain(&mut pipe, &mut buf) {
                continue;
            }
            break;
        }
        let mut p = vec![libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(fd) = &pidfd {
            p.push(libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: a valid array of pollfds for the duration of the call.
        let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            creator_gone = true;
            continue;
        }
        if p[0].revents != 0 {
            let mut chunk = [0u8; 4096];
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => creator_gone = true,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        if p.get(1).is_some_and(|x| x.revents != 0) {
            creator_gone = true;
        }
    }
    if made.is_empty() {
        return 0;
    }
    let removed = undo(&made);
    let mut err = io::stderr();
    let _ = writeln!(
        err,
        "stasis: the process making a sandbox ended before it was done; removed {}",
        removed.join(", ")
    );
    0
}

/// Reads what is left in the pipe without waiting for writers that may
/// still hold it (init holds an inherited copy until its launch returns):
/// true when something was read.
fn drain(pipe: &mut File, buf: &mut Vec<u8>) -> bool {
    let mut got = false;
    loop {
        let mut p = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        if unsafe { libc::poll(&mut p, 1, 0) } <= 0 || p.revents & libc::POLLIN == 0 {
            return got;
        }
        let mut chunk = [0u8; 4096];
        match pipe.read(&mut chunk) {
            Ok(0) | Err(_) => return got,
            Ok(k) => {
                buf.extend_from_slice(&chunk[..k]);
                got = true;
            }
        }
    }
}

/// Undoes what was made, in reverse order of making; returns what it removed.
fn undo(made: &[Made]) -> Vec<String> {
    let mut out = Vec::new();
    let cgroup = made.iter().find_map(|m| match m {
        Made::Cgroup(c) => Some(c.clone()),
        _ => None,
    });
    for m in made {
        if let Made::Init { pid, start } = m {
            if kill_init(*pid, *start, cgroup.as_ref()) {
                out.push(format!("init {pid} and its processes"));
            }
        }
    }
    if let Some(cg) = &cgroup {
        let _ = cg.kill_all();
        match cg.remove() {
            Ok(()) => out.push(format!(
                "cgroup {}",
                cg.dirs()
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
            Err(e) => out.push(format!("(not the cgroup: {e})")),
        }
    }
    for m in made {
        if let Made::CgroupPlanned(cg) = m {
            if cgroup.is_none() {
                for d in cg.remove_if_empty() {
                    out.push(format!("cgroup {}", d.display()));
                }
            }
        }
    }
    for m in made {
        if let Made::Veth(v) = m {
            if delete_veth(v) {
                out.push(format!("veth {v}"));
            } else {
                out.push(format!("(not veth {v})"));
            }
        }
    }
    for m in made {
        if let Made::DirPlanned(d) = m {
            let made_whole = made.iter().any(|x| matches!(x, Made::Dir(y) if y == d));
            if !made_whole && fs::remove_dir(d).is_ok() {
                out.push(format!("state directory {}", d.display()));
            }
        }
    }
    for m in made {
        if let Made::Dir(d) = m {
            match fs::remove_dir_all(d) {
                Ok(()) => out.push(format!("state directory {}", d.display())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => out.push(format!("(not {}: {e})", d.display())),
            }
        }
    }
    out
}

/// SIGKILL to init (checked by start time) and a bounded wait for its end;
/// the kernel then kills the rest of its PID namespace. False when it was
/// gone already.
fn kill_init(pid: i32, start: u64, cgroup: Option<&Cgroup>) -> bool {
    // SAFETY: pidfd_open takes a PID and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: a new fd returned by the kernel, ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    if crate::sandbox::start_time(pid) != Some(start) {
        return false;
    }
    // A frozen tree cannot die under the v1 freezer.
    if let Some(cg) = cgroup {
        let _ = cg.thaw();
    }
    // SAFETY: a pidfd we own, SIGKILL, no siginfo, no flags.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; the pidfd becomes readable when init has exited.
    unsafe { libc::poll(&mut p, 1, 10_000) };
    true
}

/// Deletes the veth's host end (gone already when its namespace went first)
/// and waits (bounded) until the host no longer lists it.
fn delete_veth(name: &str) -> bool {
    let Ok(mut nl) = Rtnl::open() else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match nl.link_index(name) {
            Ok(None) => return true,
            Ok(Some(_)) => {
                let _ = nl.delete_link(name);
            }
            Err(_) => return false,
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
