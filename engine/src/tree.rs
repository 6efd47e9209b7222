//! The process tree: PIDs, parents, process groups, sessions and zombies.
//!
//! Restore forks the tree inside the new sandbox's init: init forks the roots
//! with clone3(set_tid = [pid]) and every restored process forks its own
//! children the same way, so PIDs, parents, getppid() and wait() are as they
//! were. Sessions and process groups follow the kernel's rules: a session is
//! only had by calling setsid() (it takes the caller's PID) or by being forked
//! into it; a group is made by setpgid(0, 0) and joined by setpgid(0, G) from
//! inside the same session while the group has a member.
//!
//! [`plan`] works out who forks whom and when:
//! - a session leader forks the children that stay in the session it was
//!   forked into (a process in its grandparent's session) before its
//!   setsid(), the others after;
//! - a process that leads a group makes it (setpgid(0, 0)) before forking;
//! - a process whose parent is init (a daemon reparented there) and whose
//!   session is not its own is forked by a *helper*: a process that exists
//!   only while the tree is forked. When the session's leader is gone, the
//!   helper takes the leader's PID and calls setsid(), so the session keeps
//!   its id; when the leader lives, the helper is a child of the leader with a
//!   PID no one else uses. A group whose leader is gone gets a helper with the
//!   leader's PID that makes the group (setpgid(0, 0)) in the right session.
//!   Helpers wait until every process has joined its group, then exit (their
//!   parents reap them); their children are then init's, as they were;
//! - a process whose group it neither leads nor inherits joins it, after
//!   every group of the tree has been made.
//!
//! Each process then puts its fds in place, reports on the ready pipe, and
//! waits to be seized and turned into the dumped process from outside. No
//! helper is left by the time init reports the tree forked.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::image::ProcessEntry;

/// Checks that the tree can be rebuilt (see [`plan`]).
pub fn check_rebuildable(procs: &[ProcessEntry]) -> Result<()> {
    plan(procs).map(|_| ())
}

/// What one process (or helper) does between its fork and being seized.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub zombie: Option<i32>,
    /// The parent as dumped (1: init); 0 for a helper.
    pub ppid: i32,
    /// Children forked before this process makes its session or group: they
    /// stay in the session it was forked into.
    pub early: Vec<usize>,
    /// Indexes of the other children (helpers included) in the plan list,
    /// forked once this process has made its session or group.
    pub children: Vec<usize>,
    /// (fd number in the process, fd holding the description, close-on-exec).
    pub fds: Vec<(i32, i32, bool)>,
    /// Makes its own process group (setpgid(0, 0)) before forking (a
    /// session leader gets it from setsid()).
    pub own_group: bool,
    /// A helper: forks its children, waits until every group is joined,
    /// then exits. Its `pgid` is 0 when it holds no group of its own.
    pub helper: bool,
    /// A session leader with a controlling terminal: the inherited fd of a
    /// slave description it takes with TIOCSCTTY right after setsid().
    pub ctty: Option<i32>,
    /// The leader of a terminal's foreground group: the inherited fd of a
    /// slave description on which it makes its group the foreground one
    /// (TIOCSPGRP) once it made the group.
    pub foreground: Option<i32>,
}

/// The whole tree's plan: every process of the image in image order, then
/// the helpers; `roots` are forked by init.
#[derive(Debug, Clone)]
pub struct TreePlan {
    pub plans: Vec<Plan>,
    pub roots: Vec<usize>,
    /// Whether the processes must wait for each other while the tree is
    /// forked (groups joined across branches, helpers).
    pub sync: bool,
}

/// The helpers being added to a plan.
struct Helpers {
    plans: Vec<Plan>,
    next_pid: i32,
    /// Session -> the plan that forks processes into it.
    provider: BTreeMap<i32, usize>,
    /// Helpers init forks.
    init_forks: Vec<usize>,
}

impl Helpers {
    fn add(&mut self, pid: i32, sid: i32, pgid: i32) -> usize {
        self.plans.push(Plan {
            pid,
            pgid,
            sid,
            zombie: None,
            ppid: 0,
            early: Vec::new(),
            children: Vec::new(),
            fds: Vec::new(),
            own_group: pgid == pid && sid != pid,
            helper: true,
            ctty: None,
            foreground: None,
        });
        self.plans.len() - 1
    }

    /// The plan that forks processes into session `s` (not 1): the session's
    /// helper, with its PID, when its leader is gone; else a helper with a
    /// fresh PID that the leader (`leader`, an index) forks after setsid().
    fn provide(&mut self, s: i32, leader: Option<usize>) -> usize {
        if let Some(&h) = self.provider.get(&s) {
            return h;
        }
        let h = match leader {
            Some(l) => {
                let h = self.add(self.next_pid, s, 0);
                self.next_pid += 1;
                self.plans[l].children.push(h);
                h
            }
            None => {
                let h = self.add(s, s, s);
                self.init_forks.push(h);
                h
            }
        };
        self.provider.insert(s, h);
        h
    }
}

fn unsupported(pid: i32, what: &str, detail: String) -> Error {
    Error::Unsupported {
        pid,
        what: what.into(),
        detail,
    }
}

/// Works out how to fork the tree so that every process gets its PID, parent,
/// session and process group back (see the module's documentation), or
/// names the process whose shape the kernel cannot give again.
pub fn plan(procs: &[ProcessEntry]) -> Result<TreePlan> {
    let index: BTreeMap<i32, usize> = procs.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
    if index.len() != procs.len() {
        return Err(Error::Other(
            "image: a PID appears twice in the tree".into(),
        ));
    }
    let live = |pid: i32| {
        index
            .get(&pid)
            .filter(|&&i| procs[i].zombie.is_none())
            .copied()
    };
    let mut plans: Vec<Plan> = procs
        .iter()
        .map(|e| Plan {
            pid: e.pid,
            pgid: e.pgid,
            sid: e.sid,
            zombie: e.zombie,
            ppid: e.ppid,
            early: Vec::new(),
            children: Vec::new(),
            fds: Vec::new(),
            own_group: false,
            helper: false,
            ctty: None,
            foreground: None,
        })
        .collect();
    let mut kids: Vec<Vec<usize>> = vec![Vec::new(); procs.len()];
    let mut roots = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        if p.ppid == 1 {
            roots.push(i);
            continue;
        }
        match index.get(&p.ppid) {
            Some(&pi) if procs[pi].zombie.is_none() => kids[pi].push(i),
            Some(_) => {
                return Err(Error::Other(format!(
                    "image: process {} has a zombie ({}) as its parent",
                    p.pid, p.ppid
                )))
            }
            None => {
                return Err(Error::Other(format!(
                    "process {}: parent {} is not in the tree",
                    p.pid, p.ppid
                )))
            }
        }
    }
    // Parents before children: every process's index is above its parent's.
    for (i, p) in procs.iter().enumerate() {
        if p.ppid != 1 && index[&p.ppid] >= i {
            return Err(Error::Other(format!(
                "image: process {} is listed before its parent {}",
                p.pid, p.ppid
            )));
        }
    }

    // Sessions and groups: who leads, who holds them.
    let mut group_session: BTreeMap<i32, i32> = BTreeMap::new();
    for p in procs.iter().filter(|p| p.zombie.is_none()) {
        if p.pgid <= 0 || p.sid <= 0 {
            return Err(Error::Other(format!(
                "image: process {}: pgid {}, sid {}",
                p.pid, p.pgid, p.sid
            )));
        }
        if p.sid == p.pid && p.pgid != p.pid {
            return Err(unsupported(
                p.pid,
                "a session leader outside its own process group",
                format!("sid {}, pgid {}", p.sid, p.pgid),
            ));
        }
        match group_session.insert(p.pgid, p.sid) {
            Some(s) if s != p.sid => {
                return Err(unsupported(
                    p.pid,
                    "a process group spread over two sessions",
                    format!("group {} in sessions {s} and {}", p.pgid, p.sid),
                ))
            }
            _ => {}
        }
    }
    let mut sessions: BTreeSet<i32> = group_session.values().copied().collect();
    sessions.remove(&1);
    for &s in &sessions {
        match index.get(&s) {
            Some(&i) if procs[i].zombie.is_some() => {
                return Err(unsupported(
                    s,
                    "a session whose leader is a zombie",
                    format!("session {s}"),
                ))
            }
            Some(&i) if procs[i].sid != s => {
                return Err(unsupported(
                    s,
                    "a process outside the session its PID names",
                    format!("session {s}, its session {}", procs[i].sid),
                ))
            }
            _ => {}
        }
    }
    // Groups whose leader is gone get a helper; living leaders make theirs.
    let mut dead_groups = Vec::new();
    for (&g, &s) in &group_session {
        if g == 1 {
            if s != 1 {
                return Err(Error::Other(format!("image: group 1 in session {s}")));
            }
            continue;
        }
        match index.get(&g) {
            Some(&i) if procs[i].zombie.is_some() => {
                return Err(unsupported(
                    g,
                    "a process group whose leader is a zombie",
                    format!("group {g}"),
                ))
            }
            Some(&i) if procs[i].pgid != g || procs[i].sid != s => {
                return Err(unsupported(
                    g,
                    "a process that left the process group its PID names",
                    format!(
                        "group {g} (session {s}); its group {}, session {}",
                        procs[i].pgid, procs[i].sid
                    ),
                ))
            }
            Some(&i) => plans[i].own_group = procs[i].sid != g,
            None if g == s => {} // the session's helper makes it
            None => dead_groups.push((g, s)),
        }
    }

    // The session each process must be forked into (None: any, as it makes
    // its own and no child needs the one it was forked into), children first.
    let mut need: Vec<Option<i32>> = vec![None; procs.len()];
    for i in (0..procs.len()).rev() {
        let p = &procs[i];
        if p.zombie.is_some() {
            continue;
        }
        let leader = p.sid == p.pid;
        let mut inherited: Option<i32> = if leader { None } else { Some(p.sid) };
        for &c in &kids[i] {
            let Some(s) = need[c] else {
                plans[i].children.push(c);
                continue;
            };
            if s == p.sid {
                plans[i].children.push(c);
            } else if leader && inherited.is_none_or(|x| x == s) {
                inherited = Some(s);
                plans[i].early.push(c);
            } else {
                return Err(unsupported(
                    procs[c].pid,
                    "a process in a session that neither it, its parent nor its parent's ancestors were in",
                    format!("sid {s}, parent {} in session {}", p.pid, p.sid),
                ));
            }
        }
        need[i] = inherited;
    }

    // Helpers. Fresh PIDs (for helpers of sessions whose leader lives) lie
    // above every PID, group and session of the image.
    let next_pid = procs
        .iter()
        .flat_map(|p| [p.pid, p.pgid, p.sid])
        .max()
        .unwrap_or(1)
        + 1;
    let mut h = Helpers {
        plans,
        next_pid,
        provider: BTreeMap::new(),
        init_forks: Vec::new(),
    };
    let mut direct = Vec::new();
    for &r in &roots {
        match need[r] {
            Some(s) if s != 1 && procs[r].zombie.is_none() => {
                let p = h.provide(s, live(s));
                h.plans[p].children.push(r);
            }
            _ => direct.push(r),
        }
    }
    for &(g, s) in &dead_groups {
        let x = h.add(g, s, g);
        if s == 1 {
            h.init_forks.push(x);
        } else {
            let p = h.provide(s, live(s));
            h.plans[p].children.push(x);
        }
    }
    if h.next_pid >= crate::restore::PID_MAX_LIMIT {
        return Err(Error::Other(
            "no PID is free for a helper process above the tree's PIDs".into(),
        ));
    }
    let Helpers {
        plans, init_forks, ..
    } = h;
    let has_helpers = plans.len() > procs.len();
    // Joins: a process whose group is neither its own nor the one its
    // parent has when it forks it.
    let joins = procs.iter().enumerate().any(|(i, p)| {
        p.zombie.is_none()
            && p.pgid != p.pid
            && (p.ppid == 1 || {
                let pi = index[&p.ppid];
                procs[pi].pgid != p.pgid || plans[pi].early.contains(&i)
            })
    });
    let mut all_roots = direct;
    all_roots.extend(init_forks);
    Ok(TreePlan {
        plans,
        roots: all_roots,
        sync: has_helpers || joins,
    })
}

/// The error a restored process reports when its setup panicked.
pub const PANICKED: i32 = -1;

/// A record on the ready pipe: the process's PID and 0, or an errno.
pub const READY_RECORD: usize = 8;

fn report(ready_fd: i32, pid: i32, err: i32) {
    let mut rec = [0u8; READY_RECORD];
    rec[..4].copy_from_slice(&pid.to_le_bytes());
    rec[4..].copy_from_slice(&err.to_le_bytes());
    // SAFETY: writing 8 bytes of our buffer to the pipe (atomic below PIPE_BUF).
    unsafe { libc::write(ready_fd, rec.as_ptr().cast(), READY_RECORD) };
}

/// The pipes the processes wait on while the tree is forked (when
/// [`TreePlan::sync`]): `created` reaches end-of-file once every process has
/// made its own session or group (each holds its write end until then and
/// until it has forked its children, which inherit it), `joined` once every
/// process has joined its group. Nobody writes to them.
#[derive(Debug, Clone, Copy)]
struct Sync {
    created: [i32; 2],
    joined: [i32; 2],
}

impl Sync {
    fn new() -> std::result::Result<Sync, i32> {
        let mut created = [0i32; 2];
        let mut joined = [0i32; 2];
        // SAFETY: pipe2 writes two fds into each array.
        unsafe {
            if libc::pipe2(created.as_mut_ptr(), libc::O_CLOEXEC) < 0 {
                return Err(errno());
            }
            if libc::pipe2(joined.as_mut_ptr(), libc::O_CLOEXEC) < 0 {
                let e = errno();
                libc::close(created[0]);
                libc::close(created[1]);
                return Err(e);
            }
        }
        Ok(Sync { created, joined })
    }

    fn close_all(&self) {
        for fd in self.created.iter().chain(&self.joined) {
            close(*fd);
        }
    }
}

fn close(fd: i32) {
    // SAFETY: closing an fd of this process that it no longer uses.
    unsafe { libc::close(fd) };
}

/// Blocks until every write end of the pipe `fd` reads from is closed.
fn wait_eof(fd: i32) {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reading into a one-byte buffer of ours.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        if n == 0 || (n < 0 && errno() != libc::EINTR) {
            return;
        }
    }
}

/// Waits for a helper child to exit and reaps it.
fn reap(pid: i32) {
    let mut st = 0;
    // SAFETY: waiting for our own child; `st` is a valid out pointer.
    while unsafe { libc::waitpid(pid, &mut st, 0) } < 0 && errno() == libc::EINTR {}
}

/// Forks plan `idx` with its PID. Returns the child's PID in the parent; the
/// child never returns.
fn spawn(
    plans: &[Plan],
    idx: usize,
    ready_fd: i32,
    sync: Option<&Sync>,
) -> std::result::Result<i32, i32> {
    let p = &plans[idx];
    // SAFETY: the caller is single-threaded (the sandbox's init or a restored
    // process running this code); the child only runs `child_main`.
    let pid = unsafe { sys::clone3::clone3(0, libc::SIGCHLD as u64, &[p.pid]) }
        .map_err(|e| e.errno as i32)?;
    if pid == 0 {
        // A panic must not unwind into the forked copy of its parent's
        // code: it is reported as the process's failure.
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if p.helper {
                helper_main(plans, idx, ready_fd, sync)
            } else {
                child_main(plans, idx, ready_fd, sync)
            }
        }))
        .unwrap_or(PANICKED);
        report(ready_fd, p.pid, err);
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(1) };
    }
    Ok(pid)
}

/// What a clone3(set_tid) errno means for the PID asked for.
pub fn pid_hint(errno: i32) -> &'static str {
    match errno {
        libc::EEXIST => " (the PID is taken in the sandbox's PID namespace)",
        libc::EINVAL => " (the PID is beyond the PID namespace's pid_max)",
        _ => "",
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// setsid() or setpgid(0, 0) as the plan says, then the controlling
/// terminal and foreground group it sets up, if any.
fn make_own(p: &Plan) -> std::result::Result<(), i32> {
    // SAFETY: setsid/setpgid on ourselves.
    unsafe {
        if p.sid == p.pid {
            if libc::setsid() < 0 {
                return Err(errno());
            }
        } else if p.own_group && libc::setpgid(0, 0) < 0 {
            return Err(errno());
        }
    }
    if let Some(fd) = p.ctty {
        crate::files::tty::take_ctty(fd)?;
    }
    if let Some(fd) = p.foreground {
        crate::files::tty::set_foreground(fd)?;
    }
    Ok(())
}

/// Forks the children in `list`, noting the PIDs of the helpers among them.
/// On failure, the PID asked for and the errno.
fn fork_list(
    plans: &[Plan],
    list: &[usize],
    ready_fd: i32,
    sync: Option<&Sync>,
    helpers: &mut Vec<i32>,
) -> std::result::Result<(), (i32, i32)> {
    for &c in list {
        let pid = spawn(plans, c, ready_fd, sync).map_err(|e| (plans[c].pid, e))?;
        if plans[c].helper {
            helpers.push(pid);
        }
    }
    Ok(())
}

/// Body of a helper: makes its session or group, forks its children, waits
/// until every process has joined its group, reaps its own helpers and
/// exits. Returns an errno on failure.
fn helper_main(plans: &[Plan], idx: usize, ready_fd: i32, sync: Option<&Sync>) -> i32 {
    let p = &plans[idx];
    if let Err(e) = make_own(p) {
        return e;
    }
    let mut helpers = Vec::new();
    if let Err((_, e)) = fork_list(plans, &p.children, ready_fd, sync, &mut helpers) {
        return e;
    }
    if let Some(s) = sync {
        close(s.created[1]);
        close(s.joined[1]);
        wait_eof(s.joined[0]);
    }
    for h in helpers {
        reap(h);
    }
    // SAFETY: the helper's work is done; it leaves without running anything
    // of the parent's.
    unsafe { libc::_exit(0) }
}

/// Body of a restored process until it is seized. Returns an errno on failure.
fn child_main(plans: &[Plan], idx: usize, ready_fd: i32, sync: Option<&Sync>) -> i32 {
    let p = &plans[idx];
    if let Some(status) = p.zombie {
        become_zombie(status);
    }
    let mut helpers = Vec::new();
    if let Err((_, e)) = fork_list(plans, &p.early, ready_fd, sync, &mut helpers) {
        return e;
    }
    if let Err(e) = make_own(p) {
        return e;
    }
    if let Err((_, e)) = fork_list(plans, &p.children, ready_fd, sync, &mut helpers) {
        return e;
    }
    if let Some(s) = sync {
        close(s.created[1]);
    }
    // SAFETY: getpgid/setpgid on ourselves.
    if unsafe { libc::getpgid(0) } != p.pgid {
        if let Some(s) = sync {
            // Every group of the tree exists once every process made its own.
            wait_eof(s.created[0]);
        }
        // SAFETY: as above.
        if unsafe { libc::setpgid(0, p.pgid) } < 0 {
            return errno();
        }
    }
    if let Some(s) = sync {
        close(s.joined[1]);
        for &h in &helpers {
            reap(h);
        }
        s.close_all();
    }
    // SAFETY: getsid/getpgid on ourselves.
    if unsafe { libc::getsid(0) != p.sid || libc::getpgid(0) != p.pgid } {
        return libc::EPERM;
    }
    for &(target, src, cloexec) in &p.fds {
        let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
        // SAFETY: dup3 between fd numbers; no source is any process's target
        // (`files::FdPlan`), so none is overwritten before it is used.
        if unsafe { libc::dup3(src, target, flags) } < 0 {
            return errno();
        }
    }
    // Close everything else but the ready pipe.
    let mut keep: Vec<u32> = p.fds.iter().map(|f| f.0 as u32).collect();
    keep.push(ready_fd as u32);
    keep.sort_unstable();
    keep.dedup();
    let mut lo = 0u32;
    for &k in &keep {
        if k > lo {
            // SAFETY: close_range closes fds in [lo, k-1] of our own table.
            unsafe { libc::syscall(libc::SYS_close_range, lo, k - 1, 0) };
        }
        lo = k.saturating_add(1);
    }
    // SAFETY: as above, the rest of the table.
    unsafe { libc::syscall(libc::SYS_close_range, lo, u32::MAX, 0) };
    report(ready_fd, p.pid, 0);
    // SAFETY: closing our copy of the ready pipe; then wait to be seized.
    unsafe {
        libc::close(ready_fd);
        loop {
            libc::pause();
        }
    }
}

fn become_zombie(status: i32) -> ! {
    let termsig = status & 0x7f;
    // SAFETY: ending this process with the recorded status.
    unsafe {
        if termsig != 0 && termsig != 0x7f {
            libc::signal(termsig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, termsig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), termsig);
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        libc::_exit((status >> 8) & 0xff)
    }
}

/// Run in the sandbox's init: forks the roots of `tree` (processes whose
/// parent was init, and helpers) and waits until the helpers it forked are
/// gone, so that every process whose parent was init is init's child again.
/// Returns the PIDs of the image's processes whose parent was init.
pub fn fork_roots(tree: &TreePlan, ready_fd: i32) -> std::result::Result<Vec<i32>, String> {
    let plans = &tree.plans;
    let sync = if tree.sync {
        Some(Sync::new().map_err(|e| {
            format!(
                "pipes for forking the tree: {}",
                std::io::Error::from_raw_os_error(e)
            )
        })?)
    } else {
        None
    };
    let mut helpers = Vec::new();
    let forked = fork_list(plans, &tree.roots, ready_fd, sync.as_ref(), &mut helpers);
    if let Some(s) = &sync {
        s.close_all();
    }
    if let Err((pid, e)) = forked {
        return Err(format!(
            "forking process {pid} with its PID: {}{}",
            std::io::Error::from_raw_os_error(e),
            pid_hint(e)
        ));
    }
    for h in helpers {
        reap(h);
    }
    Ok(plans
        .iter()
        .filter(|p| !p.helper && p.ppid == 1)
        .map(|p| p.pid)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(pid: i32, ppid: i32, pgid: i32, sid: i32) -> ProcessEntry {
        ProcessEntry {
            pid,
            ppid,
            pgid,
            sid,
            zombie: None,
        }
    }

    fn helpers(t: &TreePlan) -> Vec<(i32, i32, i32)> {
        t.plans
            .iter()
            .filter(|p| p.helper)
            .map(|p| (p.pid, p.sid, p.pgid))
            .collect()
    }

    fn idx(t: &TreePlan, pid: i32) -> usize {
        t.plans.iter().position(|p| p.pid == pid).unwrap()
    }

    #[test]
    fn rebuildable_trees() {
        let t = plan(&[e(2, 1, 2, 2), e(3, 2, 2, 2), e(4, 3, 4, 2), e(5, 4, 4, 2)]).unwrap();
        assert!(helpers(&t).is_empty() && !t.sync);
        // A session leader outside its group; a group over two sessions; a
        // session a process's parent was never in.
        assert!(check_rebuildable(&[e(2, 1, 3, 2)]).is_err());
        assert!(check_rebuildable(&[e(2, 1, 2, 2), e(3, 1, 2, 3)]).is_err());
        assert!(check_rebuildable(&[e(2, 1, 2, 2), e(3, 2, 2, 2), e(4, 3, 4, 9)]).is_err());
    }

    #[test]
    fn double_fork_daemon() {
        // Session and group leader 4 gone; 5 reparented to init.
        let t = plan(&[e(5, 1, 4, 4), e(6, 5, 4, 4)]).unwrap();
        assert_eq!(helpers(&t), vec![(4, 4, 4)]);
        let h = idx(&t, 4);
        assert_eq!(t.roots, vec![h]);
        assert_eq!(t.plans[h].children, vec![idx(&t, 5)]);
        assert!(t.sync);
        // Group 7 gone too, in the same session.
        let t = plan(&[e(5, 1, 7, 4)]).unwrap();
        assert_eq!(helpers(&t), vec![(4, 4, 4), (7, 4, 7)]);
        assert!(t.plans[idx(&t, 7)].own_group);
        assert!(t.plans[idx(&t, 4)].children.contains(&idx(&t, 7)));
    }

    #[test]
    fn group_led_by_a_live_sibling() {
        let t = plan(&[e(2, 1, 2, 2), e(3, 2, 3, 2), e(4, 2, 3, 2)]).unwrap();
        assert!(helpers(&t).is_empty());
        assert!(t.plans[idx(&t, 3)].own_group && t.sync);
        // The same after their parent is gone: a helper holds session 2.
        let t = plan(&[e(3, 1, 3, 2), e(4, 1, 3, 2)]).unwrap();
        assert_eq!(helpers(&t), vec![(2, 2, 2)]);
        assert_eq!(t.plans[idx(&t, 2)].children.len(), 2);
    }

    #[test]
    fn session_of_a_live_leader_elsewhere() {
        // 3 is init's child in 2's session: a helper with a fresh PID, forked
        // by 2 after its setsid(), forks it.
        let t = plan(&[e(2, 1, 2, 2), e(3, 1, 3, 2)]).unwrap();
        assert_eq!(helpers(&t), vec![(4, 2, 0)]);
        assert!(t.plans[idx(&t, 2)].children.contains(&idx(&t, 4)));
        assert_eq!(t.plans[idx(&t, 4)].children, vec![idx(&t, 3)]);
        assert_eq!(t.roots, vec![idx(&t, 2)]);
    }

    #[test]
    fn grandparents_session() {
        // 4 stays in session 2 while its parent 3 made session 3: 3 forks it
        // before its setsid().
        let t = plan(&[e(2, 1, 2, 2), e(3, 2, 3, 3), e(4, 3, 2, 2)]).unwrap();
        assert!(helpers(&t).is_empty());
        assert_eq!(t.plans[idx(&t, 3)].early, vec![idx(&t, 4)]);
        assert_eq!(t.plans[idx(&t, 2)].children, vec![idx(&t, 3)]);
    }
}
