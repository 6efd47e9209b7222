//! Stopping the sandbox's tree for a dump: freeze the cgroup, find every
//! process and thread, PTRACE_SEIZE + PTRACE_INTERRUPT each, thaw, and wait
//! until every thread reports its ptrace stop. And the way back: detach with
//! the registers the threads had, or kill.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// One thread held in a ptrace stop.
#[derive(Debug)]
pub struct SeizedThread {
    /// Host TID.
    pub tid: i32,
    /// TID in the sandbox's PID namespace.
    pub ns_tid: i32,
    /// A signal that arrived while stopping the thread: given back at release
    /// and recorded as pending in the image.
    pub deferred_signal: Option<i32>,
    /// The job-control stop signal (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU) of a
    /// thread found in group-stop: its process was stopped.
    pub group_stop: Option<i32>,
}

/// One process of the tree.
#[derive(Debug)]
pub struct SeizedProcess {
    pub pid: i32,
    pub ns_pid: i32,
    pub ns_ppid: i32,
    pub ns_pgid: i32,
    pub ns_sid: i32,
    /// Zombie: its exit status (wait status encoding); not traced.
    pub zombie: Option<i32>,
    pub threads: Vec<SeizedThread>,
    pub pidfd: Option<OwnedFd>,
}

/// The stopped tree, parents before children.
pub struct Seized {
    pub procs: Vec<SeizedProcess>,
    released: bool,
    /// Killed, not let go, unless released (`kill_on_drop`).
    kill_on_drop: bool,
}

/// Options of every seized thread. PTRACE_O_SUSPEND_SECCOMP: the syscalls
/// stasis injects are not subject to the workload's seccomp filters (at dump
/// while they are in force, at restore once they are installed again).
/// Where the kernel or stasis's own privileges refuse the suspension
/// (stasis itself under seccomp, no CONFIG_CHECKPOINT_RESTORE), threads are
/// seized without it and a workload with filters is refused.
pub const SEIZE_OPTIONS: i32 = libc::PTRACE_O_TRACESYSGOOD | sys::ptrace::PTRACE_O_SUSPEND_SECCOMP;

static OPTIONS: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(SEIZE_OPTIONS);

/// The options threads are seized with in this process.
pub fn options() -> i32 {
    OPTIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether seized threads have their seccomp filters suspended.
pub fn seccomp_suspended() -> bool {
    options() & sys::ptrace::PTRACE_O_SUSPEND_SECCOMP != 0
}

fn seize_thread(tid: i32) -> std::result::Result<(), sys::Error> {
    match sys::ptrace::seize(tid, options()) {
        Err(e)
            if seccomp_suspended()
                && matches!(
                    e.errno,
                    nix::errno::Errno::EPERM | nix::errno::Errno::EINVAL
                ) =>
        {
            let plain = options() & !sys::ptrace::PTRACE_O_SUSPEND_SECCOMP;
            sys::ptrace::seize(tid, plain)?;
            tracing::debug!(
                "PTRACE_O_SUSPEND_SECCOMP refused ({e}): seccomp filters stay in force"
            );
            OPTIONS.store(plain, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        r => r,
    }
}

fn proc_err(pid: i32, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Process {
        pid,
        reason: format!("{what}: {e}"),
    }
}

/// Children of every thread of `pid`.
fn children_of(pid: i32) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| proc_err(pid, "listing threads", e))?;
    for t in tasks.flatten() {
        let path = t.path().join("children");
        if let Ok(s) = std::fs::read_to_string(&path) {
            out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn thread_ids(pid: i32) -> Result<Vec<i32>> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| proc_err(pid, "listing threads", e))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    // The main thread first.
    if let Some(i) = tids.iter().position(|&t| t == pid) {
        tids.swap(0, i);
    }
    Ok(tids)
}

/// What discovery needs of /proc/PID/status: state, parent, and the PID,
/// process group and session in the innermost namespace.
struct StatusIds {
    state: char,
    ppid: i32,
    ns_pid: i32,
    ns_pgid: i32,
    ns_sid: i32,
}

/// Reads /proc/`pid`/status once, keeping only the fields `StatusIds` holds.
fn status_ids(pid: i32) -> Result<StatusIds> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| proc_err(pid, "reading status", e))?;
    let last = |v: &str| v.split_whitespace().last()?.parse::<i32>().ok();
    let (mut state, mut ppid, mut ns) = (None, None, [None; 3]);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "State" => state = value.trim_start().chars().next(),
            "PPid" => ppid = value.trim().parse().ok(),
            "NSpid" => ns[0] = last(value),
            "NSpgid" => ns[1] = last(value),
            "NSsid" => ns[2] = last(value),
            _ => {}
        }
    }
    match (state, ppid, ns) {
        (Some(state), Some(ppid), [Some(ns_pid), Some(ns_pgid), Some(ns_sid)]) => Ok(StatusIds {
            state,
            ppid,
            ns_pid,
            ns_pgid,
            ns_sid,
        }),
        _ => Err(proc_err(
            pid,
            "reading status",
            "State, PPid or NS* ids missing",
        )),
    }
}

/// Walks the tree below `init_pid` (host PID of the sandbox's init), parents
/// before children. The tree must be frozen, so it cannot change under us.
/// One read of each process's status (and of each other thread's), its
/// thread list and its threads' children lists.
pub fn discover(init_pid: i32) -> Result<Vec<SeizedProcess>> {
    let mut procs = Vec::new();
    // Host PID -> PID in the sandbox, of the processes found so far (a
    // parent is always found before its children).
    let mut ns_of: std::collections::HashMap<i32, i32> = std::collections::HashMap::new();
    let mut queue: Vec<i32> = children_of(init_pid)?;
    let mut i = 0;
    while i < queue.len() {
        let pid = queue[i];
        i += 1;
        let st = status_ids(pid)?;
        let ns_ppid = if st.ppid == init_pid {
            1
        } else {
            match ns_of.get(&st.ppid) {
                Some(&p) => p,
                None => status_ids(st.ppid)?.ns_pid,
            }
        };
        ns_of.insert(pid, st.ns_pid);
        let zombie = if st.state == 'Z' {
            let stat = procfs::process::Process::new(pid)
                .and_then(|p| p.stat())
                .map_err(|e| proc_err(pid, "reading stat", e))?;
            Some(stat.exit_code.unwrap_or(0))
        } else {
            None
        };
        let threads = if zombie.is_some() {
            Vec::new()
        } else {
            thread_ids(pid)?
                .into_iter()
                .map(|tid| -> Result<SeizedThread> {
                    let ns_tid = if tid == pid {
                        st.ns_pid
                    } else {
                        std::fs::read_to_string(format!("/proc/{tid}/status"))
                            .map_err(|e| proc_err(tid, "reading thread status", e))?
                            .lines()
                            .find_map(|l| l.strip_prefix("NSpid:"))
                            .and_then(|v| v.split_whitespace().last()?.parse().ok())
                            .unwrap_or(0)
                    };
                    Ok(SeizedThread {
                        tid,
                        ns_tid,
                        deferred_signal: None,
                        group_stop: None,
                    })
                })
                .collect::<Result<_>>()?
        };
        if zombie.is_none() {
            queue.extend(children_of(pid)?);
        }
        procs.push(SeizedProcess {
            pid,
            ns_pid: st.ns_pid,
            ns_ppid,
            ns_pgid: st.ns_pgid,
            ns_sid: st.ns_sid,
            zombie,
            threads,
            pidfd: None,
        });
    }
    Ok(procs)
}

impl Seized {
    /// Seizes and interrupts every thread of `procs` (the tree must be frozen),
    /// returning once the caller may thaw. `wait_stops` finishes the job.
    pub fn seize(mut procs: Vec<SeizedProcess>) -> Result<Self> {
        let mut seized: Vec<i32> = Vec::new();
        let res = (|| -> Result<()> {
            for p in &mut procs {
                if p.zombie.is_some() {
                    continue;
                }
                p.pidfd = Some(sys::pidfd::pidfd_open(p.pid)?);
                for t in &p.threads {
                    seize_thread(t.tid).map_err(|e| {
                        proc_err(p.pid, &format!("PTRACE_SEIZE thread {}", t.tid), e)
                    })?;
                    seized.push(t.tid);
                    sys::ptrace::interrupt(t.tid).map_err(|e| {
                        proc_err(p.pid, &format!("PTRACE_INTERRUPT thread {}", t.tid), e)
                    })?;
                }
            }
            Ok(())
        })();
        if let Err(e) = res {
            for tid in seized {
                let _ = sys::ptrace::detach(tid, 0);
            }
            return Err(e);
        }
        Ok(Seized {
            procs,
            released: false,
            kill_on_drop: false,
        })
    }

    /// Dropped without `release`, the processes are killed rather than let
    /// go: a restored process half rebuilt (its old code unmapped, its new
    /// layout incomplete) must never run.
    pub fn kill_on_drop(&mut self) {
        self.kill_on_drop = true;
    }

    /// Waits for every thread's ptrace stop (after the thaw under cgroup v1).
    /// `alone`: stasis has no other thread waiting for its own tracees, so
    /// SIGCHLD (through a signalfd) tells when to look again; otherwise
    /// another thread could take the signal, and the wait polls.
    pub fn wait_stops(&mut self, timeout: Duration, alone: bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let events = if alone { ChildEvents::new() } else { None };
        for p in &mut self.procs {
            for t in &mut p.threads {
                wait_stop(p.pid, t, deadline, events.as_ref())
                    .map_err(|e| proc_err(p.pid, &format!("stopping thread {}", t.tid), e))?;
            }
        }
        Ok(())
    }

    /// Adds threads that were created (and auto-attached) while the process
    /// was held, so that `release` lets them go with the rest.
    pub fn adopt_threads(&mut self, pid: i32, tids: &[i32]) {
        if let Some(p) = self.procs.iter_mut().find(|p| p.pid == pid) {
            p.threads.extend(tids.iter().map(|&tid| SeizedThread {
                tid,
                ns_tid: 0,
                deferred_signal: None,
                group_stop: None,
            }));
        }
    }

    pub fn threads(&self) -> usize {
        self.procs.iter().map(|p| p.threads.len()).sum()
    }

    /// Detaches every thread, giving back deferred signals. The registers must
    /// already be what the threads are to run on with.
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        let mut first_err = None;
        for p in &self.procs {
            for t in &p.threads {
                if let Err(e) = sys::ptrace::detach(t.tid, 0) {
                    first_err.get_or_insert(proc_err(
                        p.pid,
                        &format!("detaching thread {}", t.tid),
                        e,
                    ));
                    continue;
                }
                if let Some(sig) = t.deferred_signal {
                    // SAFETY: tgkill takes plain integers; an error only means the thread is gone.
                    unsafe { libc::syscall(libc::SYS_tgkill, p.pid, t.tid, sig) };
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Sends SIGKILL to every process of the tree (after a successful dump)
    /// and returns at once: no thread runs again, and the kernel frees their
    /// memory and ends them after this. Each killed thread stays this
    /// process's tracee until this process collects it or exits (the CLI
    /// exits right after a dump).
    pub fn kill_and_leave(mut self) {
        self.released = true;
        for p in &self.procs {
            if let Some(fd) = &p.pidfd {
                let _ = sys::pidfd::pidfd_send_signal(std::os::fd::AsFd::as_fd(fd), libc::SIGKILL);
            }
        }
    }

    /// Kills every process of the tree (after a successful dump), and
    /// collects each traced thread's end so nothing stays attached to us.
    pub fn kill(mut self) {
        self.released = true;
        for p in &self.procs {
            if let Some(fd) = &p.pidfd {
                let _ = sys::pidfd::pidfd_send_signal(std::os::fd::AsFd::as_fd(fd), libc::SIGKILL);
            }
        }
        // Free their memory from here too, beside their own exits (best
        // effort: only the teardown's speed depends on it).
        for p in &self.procs {
            if let Some(fd) = &p.pidfd {
                let _ = sys::pidfd::process_mrelease(std::os::fd::AsFd::as_fd(fd));
            }
        }
        for p in &self.procs {
            // A thread group's leader reports its end only after the other
            // threads are collected: leader last.
            for t in p.threads.iter().rev() {
                // Until the tracer has seen a tracee die it stays a zombie,
                // and init cannot finish. Bounded: SIGKILL is not blockable.
                loop {
                    match waitpid(Pid::from_raw(t.tid), Some(WaitPidFlag::__WALL)) {
                        Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_) => break,
                        Ok(_) => {
                            let _ = sys::ptrace::cont(t.tid, 0);
                        }
                    }
                }
            }
        }
    }

    pub fn by_ns_pid(&self) -> BTreeMap<i32, usize> {
        self.procs
            .iter()
            .enumerate()
            .map(|(i, p)| (p.ns_pid, i))
            .collect()
    }
}

impl Drop for Seized {
    fn drop(&mut self) {
        if !self.released {
            for p in &self.procs {
                if self.kill_on_drop {
                    // Threads cloned by the restore but not adopted yet are
                    // tracees too: every thread the process has.
                    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{}/task", p.pid))
                        .map(|d| {
                            d.flatten()
                                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                                .collect()
                        })
                        .unwrap_or_default();
                    tids.extend(p.threads.iter().map(|t| t.tid));
                    tids.sort_unstable();
                    tids.dedup();
                    // SAFETY: kill takes plain integers; an error only means
                    // the process is gone. SIGKILL ends a tracee in its stop.
                    unsafe { libc::kill(p.pid, libc::SIGKILL) };
                    // Its parent hears of its exit only once its tracer has
                    // collected it: each thread is waited for here.
                    // Stops reported before the kill come first.
                    for &tid in &tids {
                        for _ in 0..64 {
                            let mut status = 0;
                            // SAFETY: waitpid on a tracee of this thread;
                            // ECHILD when it is not one (any more).
                            let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
                            if r < 0 || libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                                break;
                            }
                        }
                    }
                    continue;
                }
                for t in &p.threads {
                    let _ = sys::ptrace::detach(t.tid, 0);
                    if let Some(sig) = t.deferred_signal {
                        // SAFETY: tgkill takes plain integers; an error only means the thread is gone.
                        unsafe { libc::syscall(libc::SYS_tgkill, p.pid, t.tid, sig) };
                    }
                }
            }
        }
    }
}

/// SIGCHLD as a file descriptor: a tracer is sent SIGCHLD whenever a tracee
/// stops, so waiting for stops is a poll with a deadline, not a sleep loop.
/// SIGCHLD stays blocked while it exists; the old mask comes back on drop.
struct ChildEvents {
    fd: OwnedFd,
    old: libc::sigset_t,
}

impl ChildEvents {
    fn new() -> Option<Self> {
        // SAFETY: sigset operations on local sets, sigprocmask on this
        // (single) thread, and signalfd creating a new fd we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) != 0 {
                return None;
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if fd < 0 {
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                return None;
            }
            Some(ChildEvents {
                fd: std::os::fd::FromRawFd::from_raw_fd(fd),
                old,
            })
        }
    }

    /// Waits until a SIGCHLD arrives or `until`, then drains what arrived.
    fn wait(&self, until: Instant) {
        use std::os::fd::AsRawFd;
        let left = until.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let mut buf = [0u8; 128 * 8];
        // SAFETY: poll on one pollfd we own; read drains into our buffer.
        unsafe {
            libc::poll(&mut pfd, 1, left.as_millis().clamp(1, 100) as i32);
            while libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) > 0 {}
        }
    }
}

impl Drop for ChildEvents {
    fn drop(&mut self) {
        // SAFETY: restoring the mask saved in `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

fn wait_stop(
    tgid: i32,
    t: &mut SeizedThread,
    deadline: Instant,
    events: Option<&ChildEvents>,
) -> std::result::Result<(), String> {
    loop {
        let st = waitpid(
            Pid::from_raw(t.tid),
            Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG),
        )
        .map_err(|e| format!("waitpid: {e}"))?;
        match st {
            WaitStatus::PtraceEvent(_, sig, ev) if ev == libc::PTRACE_EVENT_STOP => {
                // A group-stop reports its stop signal; the stop
                // PTRACE_INTERRUPT asked for reports SIGTRAP.
                let signo = sig as i32;
                if matches!(
                    signo,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                ) {
                    t.group_stop = Some(signo);
                }
                return Ok(());
            }
            WaitStatus::PtraceEvent(_, sig, _) | WaitStatus::Stopped(_, sig) => {
                // A signal-delivery stop: the signal is off the thread's
                // queues. Queue it again at once (it stays pending, blocked
                // while stasis injects, and is recorded with the pending
                // signals), so that it is not lost should stasis die before
                // releasing the thread; only if that fails is it kept here.
                // The pending interrupt stops the thread before it could
                // take the signal again (the kernel handles ptrace traps
                // before it dequeues signals).
                let signo = sig as i32;
                if signo != libc::SIGTRAP && signo != libc::SIGSTOP {
                    // SAFETY: tgkill takes plain integers.
                    let rc = unsafe { libc::syscall(libc::SYS_tgkill, tgid, t.tid, signo) };
                    if rc != 0 {
                        t.deferred_signal = Some(signo);
                    }
                }
                sys::ptrace::cont(t.tid, 0).map_err(|e| format!("PTRACE_CONT: {e}"))?;
            }
            WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                return Err("exited while being stopped".into())
            }
            WaitStatus::StillAlive => {
                if Instant::now() > deadline {
                    return Err("did not stop in time".into());
                }
                match events {
                    Some(ev) => ev.wait(deadline),
                    None => std::thread::sleep(Duration::from_micros(200)),
                }
            }
            other => return Err(format!("unexpected wait status {other:?}")),
        }
    }
}
