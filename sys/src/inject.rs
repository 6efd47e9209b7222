//! Running syscalls inside a stopped tracee thread.
//!
//! The thread is pointed at a `syscall` instruction (bytes `0f 05`) inside its
//! own vDSO: the vDSO image is the same in every process of a kernel, so the
//! gadget is found in our own vDSO and rebased, and nothing is written into the
//! tracee. The thread is then driven with `PTRACE_SYSCALL` through the
//! syscall-entry and syscall-exit stops, and `rax` is read at the exit stop;
//! in a task being restored (discarded should the tracer die), it is
//! single-stepped over the `syscall` instruction instead, one stop per call,
//! or runs to the `int3` of a restore trampoline, one stop per call or per
//! batch of calls.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::ptrace::{self, SyscallOp};

/// Size of one entry of a syscall batch table: the number, six arguments and
/// the result slot, 8 bytes each (see [`BATCH_CODE`]).
pub const BATCH_ENTRY: usize = 64;

/// A loop that runs a table of syscalls, for a restore trampoline. Entered
/// with `rbx` = address of the table, `r12` = number of entries; each entry
/// is [`BATCH_ENTRY`] bytes: nr, rdi, rsi, rdx, r10, r8, r9, result (u64 each).
/// It stores each call's `rax` in the entry's result slot and stops at the
/// first failing call (a result in -4095..=-1), leaving in `r13` the index it
/// reached (the entry count when every call succeeded), at its final `int3`.
pub const BATCH_CODE: [u8; 59] = [
    0x45, 0x31, 0xed, //                   xor    r13d, r13d
    // loop:
    0x4d, 0x39, 0xe5, //                   cmp    r13, r12
    0x73, 0x32, //                         jae    done
    0x48, 0x8b, 0x03, //                   mov    rax, [rbx]
    0x48, 0x8b, 0x7b, 0x08, //             mov    rdi, [rbx+0x8]
    0x48, 0x8b, 0x73, 0x10, //             mov    rsi, [rbx+0x10]
    0x48, 0x8b, 0x53, 0x18, //             mov    rdx, [rbx+0x18]
    0x4c, 0x8b, 0x53, 0x20, //             mov    r10, [rbx+0x20]
    0x4c, 0x8b, 0x43, 0x28, //             mov    r8, [rbx+0x28]
    0x4c, 0x8b, 0x4b, 0x30, //             mov    r9, [rbx+0x30]
    0x0f, 0x05, //                         syscall
    0x48, 0x89, 0x43, 0x38, //             mov    [rbx+0x38], rax
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // cmp    rax, -4095
    0x73, 0x09, //                         jae    done   (unsigned: an errno)
    0x48, 0x83, 0xc3, 0x40, //             add    rbx, 0x40
    0x49, 0xff, 0xc5, //                   inc    r13
    0xeb, 0xc9, //                         jmp    loop
    // done:
    0xcc, //                               int3
];

/// Offset in [`BATCH_CODE`] just past its `int3` (where the thread stops).
const BATCH_TRAP_OFFSET: u64 = BATCH_CODE.len() as u64;

/// The `syscall` instruction.
const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

/// Start and end address of the `[vdso]` mapping of `pid` (`"self"` allowed
/// through [`special_mapping_of`]).
pub fn vdso_range(pid: i32) -> Result<(u64, u64)> {
    special_mapping_of(&pid.to_string(), "[vdso]")
}

/// Start and end of the mapping named `name` (e.g. `"[vdso]"`) in
/// `/proc/<proc>/maps`; `ENOENT` when there is none.
pub fn special_mapping_of(proc: &str, name: &str) -> Result<(u64, u64)> {
    const CALL: &str = "read /proc/PID/maps";
    let f = std::fs::File::open(format!("/proc/{proc}/maps"))
        .map_err(|e| Error::new(CALL, io_errno(&e)))?;
    for line in BufReader::new(f).lines() {
        let line = line.map_err(|e| Error::new(CALL, io_errno(&e)))?;
        if line.split_whitespace().nth(5) != Some(name) {
            continue;
        }
        let range = line.split_whitespace().next().unwrap_or_default();
        let (s, e) = range
            .split_once('-')
            .ok_or(Error::new(CALL, Errno::EINVAL))?;
        let s = u64::from_str_radix(s, 16).map_err(|_| Error::new(CALL, Errno::EINVAL))?;
        let e = u64::from_str_radix(e, 16).map_err(|_| Error::new(CALL, Errno::EINVAL))?;
        return Ok((s, e));
    }
    Err(Error::new(CALL, Errno::ENOENT))
}

pub(crate) fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO)
}

/// Offset of the first `syscall` instruction in this process's vDSO (found
/// once: the vDSO image does not change while the process runs).
fn own_vdso_gadget_offset() -> Result<u64> {
    static OFFSET: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    if let Some(&off) = OFFSET.get() {
        return Ok(off);
    }
    let off = find_own_vdso_gadget_offset()?;
    Ok(*OFFSET.get_or_init(|| off))
}

fn find_own_vdso_gadget_offset() -> Result<u64> {
    let (start, end) = special_mapping_of("self", "[vdso]")?;
    // SAFETY: [start, end) is our own [vdso] mapping, readable and never
    // unmapped while we run (nothing in this crate unmaps our own vDSO).
    let image = unsafe { std::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
    image
        .windows(2)
        .position(|w| w == SYSCALL_INSN)
        .map(|off| off as u64)
        .ok_or(Error::new(
            "find syscall instruction in vDSO",
            Errno::ENOEXEC,
        ))
}

/// Address of a `syscall` instruction (bytes 0f 05) inside the vDSO of process
/// `pid`, found by locating the pattern in our own vDSO (same kernel, same vDSO
/// image) and rebasing to `pid`'s `[vdso]` start from /proc/PID/maps. The two
/// bytes are read back from the target to confirm; nothing is written.
pub fn find_syscall_gadget(pid: i32) -> Result<u64> {
    let off = own_vdso_gadget_offset()?;
    let (start, end) = vdso_range(pid)?;
    if start + off + 2 > end {
        return Err(Error::new(
            "find syscall instruction in vDSO",
            Errno::ENOEXEC,
        ));
    }
    let addr = start + off;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))
        .map_err(|e| Error::new("open /proc/PID/mem", io_errno(&e)))?;
    let mut bytes = [0u8; 2];
    mem.read_exact_at(&mut bytes, addr)
        .map_err(|e| Error::new("read /proc/PID/mem", io_errno(&e)))?;
    if bytes != SYSCALL_INSN {
        return Err(Error::new(
            "find syscall instruction in vDSO",
            Errno::ENOEXEC,
        ));
    }
    Ok(addr)
}

/// `-ERESTARTSYS`, `-ERESTARTNOINTR`, `-ERESTARTNOHAND`, `-ERESTART_RESTARTBLOCK`
/// (include/linux/errno.h): a syscall interrupted by a stop.
const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

/// Applies what the kernel does to a thread interrupted inside a syscall when
/// it resumes without running a signal handler: restart the syscall (`rip`
/// back over the 2-byte `syscall`, `rax = orig_rax`), or `restart_syscall(2)`
/// for `-ERESTART_RESTARTBLOCK`. Returns false (and changes nothing) when the
/// registers do not show an interrupted syscall.
pub fn apply_syscall_restart(regs: &mut libc::user_regs_struct) -> bool {
    if (regs.orig_rax as i64) < 0 {
        return false;
    }
    match -(regs.rax as i64) {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            regs.rax = regs.orig_rax;
            regs.rip -= 2;
            true
        }
        ERESTART_RESTARTBLOCK => {
            regs.rax = libc::SYS_restart_syscall as u64;
            regs.rip -= 2;
            true
        }
        _ => false,
    }
}

/// Runs syscalls inside a seized, stopped thread.
///
/// On creation it saves the thread's registers and signal mask. Each
/// `syscall()` blocks every blockable signal, so no handler can run while the
/// thread executes injected code (signals that arrive stay pending and are
/// delivered after the thread resumes), and afterwards puts the registers and
/// the mask back. Between two injected syscalls the thread therefore holds
/// its own registers and mask: should the tracer die (SIGKILL), the kernel
/// detaches the thread and it runs on as it was. Only while one injected
/// syscall is in flight (microseconds) does it hold injected state.
/// `finish()` (or drop) puts the registers and mask back a last time and
/// re-sends deferred stop signals.
///
/// If the thread was stopped inside an interruptible syscall (its saved `rax`
/// is `-ERESTART*`), the registers put back are those the kernel would have
/// produced on resuming it without a handler (see [`apply_syscall_restart`]):
/// the stop the thread ends in is a syscall-exit stop, from which the kernel no
/// longer applies the restart rule itself. The exact original registers stay
/// available through [`Injector::saved_regs`].
pub struct Injector {
    tid: i32,
    gadget: u64,
    saved: libc::user_regs_struct,
    saved_mask: u64,
    /// Stop signals (SIGSTOP, SIGTSTP, ...) that arrived during injection, sent
    /// again after the registers are restored.
    deferred: Vec<i32>,
    /// The gadget is `syscall; int3`: one stop per syscall instead of two.
    trap_after: bool,
    /// The thread's mask is the fully blocked one set for injection.
    blocked: bool,
    /// Single syscalls run by single-stepping over the `syscall` instruction
    /// (see [`Injector::set_step`]).
    step: bool,
    done: bool,
    /// The injected syscall under way has passed its entry stop.
    entered: bool,
    /// TID (in our PID namespace) of the thread or process the last injected
    /// syscall created, from its PTRACE_EVENT_CLONE/FORK/VFORK stop.
    last_child: Option<i32>,
    /// Every thread or process the injected calls created since the last
    /// [`Injector::take_children`], in the order of their events.
    children: Vec<i32>,
}

impl Injector {
    /// Prepares to inject into thread `tid` (seized by us and in a ptrace
    /// stop), using the `syscall` instruction at `gadget` in its address space.
    pub fn new(tid: i32, gadget: u64) -> Result<Self> {
        let saved = ptrace::get_regs(tid)?;
        let saved_mask = ptrace::get_sigmask(tid)?;
        Ok(Self {
            tid,
            gadget,
            saved,
            saved_mask,
            deferred: Vec::new(),
            trap_after: false,
            blocked: false,
            step: false,
            done: false,
            entered: false,
            last_child: None,
            children: Vec::new(),
        })
    }

    /// The TID of the thread (or PID of the process) the last injected
    /// syscall created, as the kernel reported it in the clone event (with
    /// PTRACE_O_TRACECLONE or TRACEFORK set): no search of /proc needed.
    pub fn last_child(&self) -> Option<i32> {
        self.last_child
    }

    /// Records the new task of a clone/fork/vfork event stop.
    fn note_event(&mut self, event: i32) {
        if matches!(
            event,
            libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK
        ) {
            self.last_child = ptrace::get_event_msg(self.tid).ok().map(|m| m as i32);
            if let Some(c) = self.last_child {
                self.children.push(c);
            }
        }
    }

    /// The TIDs (in our PID namespace) of every thread or process created by
    /// the calls injected since the last time this was asked, in creation
    /// order (a batch of clone3 calls reports one event per call).
    pub fn take_children(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.children)
    }

    /// The thread's registers as they were when the injector was created.
    pub fn saved_regs(&self) -> &libc::user_regs_struct {
        &self.saved
    }

    /// The thread's signal mask as it was when the injector was created.
    pub fn saved_sigmask(&self) -> u64 {
        self.saved_mask
    }

    /// Runs later syscalls at another `syscall` instruction (a restore
    /// trampoline mapped after the old one went away).
    pub fn set_gadget(&mut self, gadget: u64) {
        self.gadget = gadget;
        self.trap_after = false;
    }

    /// Runs later syscalls at `gadget`, which must hold `syscall` followed
    /// by `int3` (bytes 0f 05 cc): the thread runs to the breakpoint, one
    /// ptrace stop per syscall instead of the entry and exit stops. Such a
    /// gadget is a restore trampoline: the task is being rebuilt (and is
    /// discarded if the tracer dies), so its registers and mask are not put
    /// back between these syscalls, only by `finish`.
    pub fn set_trap_gadget(&mut self, gadget: u64) {
        self.gadget = gadget;
        self.trap_after = true;
    }

    /// Runs later single syscalls (at a gadget without a breakpoint after
    /// it) by single-stepping over the `syscall` instruction: one ptrace stop
    /// per syscall instead of its entry and exit. Only for a task that is
    /// discarded should the tracer die (a restored one): a tracer's death
    /// leaves the thread's single-step state set, and its next syscall would
    /// end in a SIGTRAP; a PTRACE_DETACH clears it.
    pub fn set_step(&mut self) {
        self.step = true;
    }

    /// The thread this injector drives.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// Runs syscall `nr` with `args` (rdi, rsi, rdx, r10, r8, r9) in the thread
    /// and returns the raw result (a negative errno on failure). Before it
    /// returns, the thread's own registers and signal mask are back in place
    /// (not at a restore trampoline: see [`Injector::set_trap_gadget`]).
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        self.take_over()?;
        let res = self.run_syscall(nr, args);
        if self.done || self.trap_after {
            return res;
        }
        // Put back even after a failure, so the thread never keeps injected state.
        let back = self.put_back();
        let ret = res?;
        back?;
        Ok(ret)
    }

    /// The first half of [`Injector::syscall`]: sets the thread going into
    /// syscall `nr` and returns at once, so that several threads (each with
    /// its own injector) run their calls at the same time;
    /// [`Injector::finish_syscall`] waits for the result and puts the
    /// thread's own registers and mask back. With syscall stops only (not at
    /// a restore trampoline, not single-stepping).
    pub fn start_syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<()> {
        if self.trap_after || self.step {
            return Err(Error::new(
                "a started syscall outside syscall-stop injection",
                Errno::EINVAL,
            ));
        }
        self.take_over()?;
        let started = self
            .set_call_regs(nr, args)
            .and_then(|()| ptrace::syscall(self.tid, 0));
        if let Err(e) = started {
            let _ = self.put_back();
            return Err(e);
        }
        Ok(())
    }

    /// Waits until the syscall [`Injector::start_syscall`] started has
    /// entered the kernel and lets it run on, without waiting for its end:
    /// with several threads, their calls run meanwhile.
    pub fn pass_entry(&mut self) -> Result<()> {
        let res = self.wait_syscall(true).map(|_| ());
        if res.is_err() && !self.done {
            let _ = self.put_back();
        }
        res
    }

    /// Waits for the syscall [`Injector::start_syscall`] started and returns
    /// its raw result, the thread's own state back in place.
    pub fn finish_syscall(&mut self) -> Result<i64> {
        let res = self.wait_syscall(false).map(|r| r.unwrap_or(0));
        if self.done {
            return res;
        }
        let back = self.put_back();
        let ret = res?;
        back?;
        Ok(ret)
    }

    /// Before an injected call: the thread is still there, and every signal
    /// it could take is blocked while the call runs.
    fn take_over(&mut self) -> Result<()> {
        if self.done {
            return Err(Error::new("injected syscall: thread exited", Errno::ESRCH));
        }
        if !self.blocked {
            ptrace::set_sigmask(self.tid, !0u64)?;
            self.blocked = true;
        }
        Ok(())
    }

    /// The thread's own registers (with an interrupted syscall set up to
    /// restart) and signal mask, as they are between injected syscalls.
    fn put_back(&mut self) -> Result<()> {
        let mut regs = self.saved;
        apply_syscall_restart(&mut regs);
        ptrace::set_regs(self.tid, &regs)?;
        ptrace::set_sigmask(self.tid, self.saved_mask)?;
        self.blocked = false;
        Ok(())
    }

    /// The thread's registers set for syscall `nr` at the gadget.
    fn set_call_regs(&mut self, nr: i64, args: [u64; 6]) -> Result<()> {
        let mut regs = self.saved;
        regs.rip = self.gadget;
        regs.orig_rax = u64::MAX; // no syscall-restart logic touches these registers
        regs.rax = nr as u64;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        ptrace::set_regs(self.tid, &regs)?;
        self.last_child = None;
        self.entered = false;
        Ok(())
    }

    fn run_syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        self.set_call_regs(nr, args)?;
        if self.trap_after {
            return self.run_to_trap();
        }
        if self.step {
            // One instruction, the `syscall`: the step's trap comes once
            // the syscall has returned, one stop instead of its entry and exit.
            return self.wait_trap(self.gadget + 2, true);
        }
        ptrace::syscall(self.tid, 0)?;
        Ok(self.wait_syscall(false)?.unwrap_or(0))
    }

    /// Follows a thread resumed into an injected syscall (with syscall
    /// stops) to the syscall's exit and returns its raw result; with
    /// `until_entry`, only until it has entered the kernel and been let go
    /// on (None).
    fn wait_syscall(&mut self, until_entry: bool) -> Result<Option<i64>> {
        loop {
            let status = waitpid(Pid::from_raw(self.tid), Some(WaitPidFlag::__WALL))
                .map_err(|e| Error::new("waitpid(injected syscall)", e))?;
            match status {
                WaitStatus::PtraceSyscall(_) => {
                    match ptrace::get_syscall_info(self.tid)?.op {
                        SyscallOp::Entry { .. } => {
                            self.entered = true;
                            ptrace::syscall(self.tid, 0)?;
                            if until_entry {
                                return Ok(None);
                            }
                            continue;
                        }
                        SyscallOp::Exit { .. } if self.entered => {
                            self.entered = false;
                            let regs = ptrace::get_regs(self.tid)?;
                            return Ok(Some(regs.rax as i64));
                        }
                        _ => {}
                    }
                    ptrace::syscall(self.tid, 0)?;
                }
                WaitStatus::Stopped(_, Signal::SIGTRAP) => {
                    // Without PTRACE_O_TRACESYSGOOD syscall stops are plain
                    // SIGTRAP stops: tell them apart by the syscall info.
                    match ptrace::get_syscall_info(self.tid)?.op {
                        SyscallOp::Entry { .. } => {
                            self.entered = true;
                            ptrace::syscall(self.tid, 0)?;
                            if until_entry {
                                return Ok(None);
                            }
                        }
                        SyscallOp::Exit { .. } if self.entered => {
                            self.entered = false;
                            let regs = ptrace::get_regs(self.tid)?;
                            return Ok(Some(regs.rax as i64));
                        }
                        // A real SIGTRAP: blocked signals cannot get here, so
                        // it was synchronous; pass it on.
                        _ => ptrace::syscall(self.tid, libc::SIGTRAP)?,
                    }
                }
                WaitStatus::Stopped(_, sig) => {
                    let pass = self.signal_to_pass(sig);
                    ptrace::syscall(self.tid, pass)?;
                }
                WaitStatus::PtraceEvent(_, _, event) => {
                    // Group-stop, seccomp or clone event: keep going.
                    self.note_event(event);
                    ptrace::syscall(self.tid, 0)?;
                }
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                    self.done = true;
                    return Err(Error::new("injected syscall: thread exited", Errno::ESRCH));
                }
                _ => ptrace::syscall(self.tid, 0)?,
            }
        }
    }

    /// A signal-delivery stop during injection. Blockable signals are
    /// blocked, so this is a stop signal or a synchronous fault: stop signals
    /// are kept for later (sent again by `finish`), anything else is passed
    /// through. Returns the signal to resume with.
    fn signal_to_pass(&mut self, sig: Signal) -> i32 {
        if matches!(
            sig,
            Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
        ) {
            self.deferred.push(sig as i32);
            0
        } else {
            sig as i32
        }
    }

    /// Runs the batch loop of a restore trampoline (see [`BATCH_CODE`]) at
    /// `entry` over the `count` entries of the table at `table` in the
    /// thread's memory, in one ptrace round trip. Returns the index the loop
    /// stopped at: `count` when every call succeeded, else the index of the
    /// first failing call (whose result slot holds its negative errno).
    pub fn run_batch(&mut self, entry: u64, table: u64, count: u64) -> Result<u64> {
        self.start_batch(entry, table, count)?;
        self.finish_batch(entry)
    }

    /// The first half of [`Injector::run_batch`]: sets the thread going
    /// through the table and returns at once, so that several threads can
    /// run their batches at the same time. [`Injector::finish_batch`] waits.
    pub fn start_batch(&mut self, entry: u64, table: u64, count: u64) -> Result<()> {
        if !self.trap_after {
            return Err(Error::new(
                "syscall batch outside a restore trampoline",
                Errno::EINVAL,
            ));
        }
        self.take_over()?;
        let mut regs = self.saved;
        regs.rip = entry;
        regs.orig_rax = u64::MAX;
        regs.rbx = table;
        regs.r12 = count;
        ptrace::set_regs(self.tid, &regs)?;
        self.last_child = None;
        ptrace::cont(self.tid, 0)
    }

    /// Waits for the batch [`Injector::start_batch`] started at `entry` to
    /// stop; returns the index it reached (see [`Injector::run_batch`]).
    pub fn finish_batch(&mut self, entry: u64) -> Result<u64> {
        self.wait_trap_resumed(entry + BATCH_TRAP_OFFSET, false)?;
        let regs = ptrace::get_regs(self.tid)?;
        Ok(regs.r13)
    }

    /// Runs from the gadget to the `int3` after its `syscall` and reads the result.
    fn run_to_trap(&mut self) -> Result<i64> {
        self.wait_trap(self.gadget + 3, false)
    }

    /// Resumes the thread until it stops with SIGTRAP at `trap_ip` (just
    /// past a breakpoint's `int3`, or, with `step`, past the single
    /// instruction it runs); returns its `rax`.
    fn wait_trap(&mut self, trap_ip: u64, step: bool) -> Result<i64> {
        if step {
            ptrace::singlestep(self.tid, 0)?;
        } else {
            ptrace::cont(self.tid, 0)?;
        }
        self.wait_trap_resumed(trap_ip, step)
    }

    /// `wait_trap` once the thread has been resumed.
    fn wait_trap_resumed(&mut self, trap_ip: u64, step: bool) -> Result<i64> {
        let resume = |tid: i32, sig: i32| {
            if step {
                ptrace::singlestep(tid, sig)
            } else {
                ptrace::cont(tid, sig)
            }
        };
        loop {
            let status = waitpid(Pid::from_raw(self.tid), Some(WaitPidFlag::__WALL))
                .map_err(|e| Error::new("waitpid(injected syscall)", e))?;
            match status {
                WaitStatus::Stopped(_, Signal::SIGTRAP) => {
                    let regs = ptrace::get_regs(self.tid)?;
                    if regs.rip == trap_ip {
                        // The trap's SIGTRAP is dropped: the next resume
                        // passes no signal.
                        return Ok(regs.rax as i64);
                    }
                    resume(self.tid, libc::SIGTRAP)?;
                }
                WaitStatus::Stopped(_, sig) => {
                    let pass = self.signal_to_pass(sig);
                    resume(self.tid, pass)?;
                }
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                    self.done = true;
                    return Err(Error::new("injected syscall: thread exited", Errno::ESRCH));
                }
                WaitStatus::PtraceEvent(_, _, event) => {
                    self.note_event(event);
                    resume(self.tid, 0)?;
                }
                _ => resume(self.tid, 0)?,
            }
        }
    }

    /// Puts the thread's registers and signal mask back and re-sends deferred
    /// stop signals. The thread stays in its ptrace stop.
    pub fn finish(mut self) -> Result<()> {
        self.restore()
    }

    fn restore(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.put_back()?;
        self.done = true;
        for &sig in &self.deferred {
            // SAFETY: getpid and tgkill take integers only.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    tgid_of(self.tid).unwrap_or(self.tid),
                    self.tid,
                    sig,
                )
            };
            if ret == -1 {
                return Err(Error::last("tgkill(deferred stop signal)"));
            }
        }
        Ok(())
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

/// The thread-group ID of thread `tid`, from /proc/TID/status.
fn tgid_of(tid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}
