//! Running syscalls inside a ptrace-stopped task, with a scratch area for the
//! structures they read and write. Built on `sys::inject`, which runs one
//! syscall at a `syscall` instruction already in the task (its vDSO, or the
//! restore trampoline), so nothing is written into the task's code, and which
//! gives the thread its own registers and signal mask back after every call.
//!
//! The scratch area is taken from the thread's own stack, below the 128-byte
//! red zone under its stack pointer: the x86-64 ABI lets the kernel write a
//! signal frame there at any moment, so no program can keep anything there.
//! The bytes are saved first and put back by `finish` all the same. This
//! adds no mapping to the task, so a `stasis dump` killed mid-collection
//! leaves its memory map as it was. The stack is used only where it is
//! recognisably a stack, with room below the red zone inside the same memory
//! area (the area is never grown): the process's `[stack]`, or a thread stack
//! as glibc and musl make them (an anonymous private read-write area right
//! above its inaccessible guard area). Otherwise (a thread running on a stack
//! of its own making, such as a coroutine's or a Go goroutine's, or a stack
//! with no room left) the area is mapped with an injected `mmap` and unmapped
//! by `finish`: a dump killed while it exists leaves that one page mapped.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use sys::inject::Injector;

use crate::error::{Error, Result};
use crate::image::PAGE_SIZE;

/// One call of a syscall batch (see [`Remote::batch`]).
#[derive(Debug, Clone)]
pub struct BatchCall {
    /// What the call does, for the error if it fails.
    pub what: String,
    pub nr: i64,
    pub args: [u64; 6],
    /// A failure is not an error: the batch goes on after it.
    pub may_fail: bool,
}

/// Where a restore trampoline runs syscall batches: the loop's entry, its
/// table (room for `cap` entries) and a data area for the structures the
/// calls point to.
#[derive(Debug, Clone, Copy)]
pub struct BatchSite {
    pub entry: u64,
    pub table: u64,
    pub cap: usize,
    pub data: u64,
    pub data_len: u64,
}

/// Calls gathered to run as one batch (see [`Remote::batch`]), with the
/// bytes they read from the task's memory, placed in the site's data area.
pub struct Staged {
    site: BatchSite,
    calls: Vec<BatchCall>,
    data: Vec<u8>,
    results: Vec<i64>,
}

impl Staged {
    pub fn new(site: BatchSite) -> Self {
        Staged {
            site,
            calls: Vec::new(),
            data: Vec::new(),
            results: Vec::new(),
        }
    }

    /// Places `bytes` (8-byte aligned) in the data area and returns their
    /// address in the task. When the area is full, what is staged runs
    /// first (in `r`) and the area starts over.
    pub fn put(&mut self, r: &mut Remote, bytes: &[u8]) -> Result<u64> {
        self.put_with(r, bytes.len(), |_| bytes.to_vec())
    }

    /// Like `put`, for `len` bytes that `make` builds knowing their address.
    pub fn put_with(
        &mut self,
        r: &mut Remote,
        len: usize,
        make: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64> {
        let len = len as u64;
        if len > self.site.data_len {
            return Err(Error::Process {
                pid: r.tid,
                reason: format!(
                    "{len} bytes of syscall arguments do not fit in {} bytes of scratch",
                    self.site.data_len
                ),
            });
        }
        let mut at = (self.data.len() as u64).div_ceil(8) * 8;
        if at + len > self.site.data_len {
            self.run(r)?;
            at = 0;
        }
        let bytes = make(self.site.data + at);
        debug_assert_eq!(bytes.len() as u64, len);
        self.data.resize(at as usize, 0);
        self.data.extend_from_slice(&bytes);
        Ok(self.site.data + at)
    }

    /// Stages a call whose failure is an error naming `what`.
    pub fn call(&mut self, what: impl Into<String>, nr: i64, args: [u64; 6]) {
        self.calls.push(BatchCall {
            what: what.into(),
            nr,
            args,
            may_fail: false,
        });
    }

    /// Stages a call whose failure is ignored.
    pub fn call_may_fail(&mut self, what: impl Into<String>, nr: i64, args: [u64; 6]) {
        self.calls.push(BatchCall {
            what: what.into(),
            nr,
            args,
            may_fail: true,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Runs the calls staged so far in `r`'s thread, in order; the first
    /// failure of a call that may not fail is an error naming the call (and
    /// the thread). Their results are kept for `finish`.
    pub fn run(&mut self, r: &mut Remote) -> Result<()> {
        let calls = std::mem::take(&mut self.calls);
        let data = std::mem::take(&mut self.data);
        if calls.is_empty() {
            return Ok(());
        }
        if !data.is_empty() {
            r.write_mem(self.site.data, &data)?;
        }
        let got = r.batch(self.site.entry, self.site.table, self.site.cap, &calls)?;
        self.results.extend(got);
        Ok(())
    }

    /// Writes the staged data and sets `r`'s thread running through the
    /// calls without waiting (several threads, each with a site of its own,
    /// can run at once); `wait` finishes.
    pub fn start(&mut self, r: &mut Remote) -> Result<()> {
        if self.calls.is_empty() {
            return Ok(());
        }
        if !self.data.is_empty() {
            r.write_mem(self.site.data, &self.data)?;
        }
        r.batch_start(self.site.entry, self.site.table, self.site.cap, &self.calls)
    }

    /// Waits for the calls `start` set going (and runs the rest of them);
    /// returns the results of every call staged since `new`.
    pub fn wait(mut self, r: &mut Remote) -> Result<Vec<i64>> {
        let calls = std::mem::take(&mut self.calls);
        if !calls.is_empty() {
            let got = r.batch_wait(self.site.entry, self.site.table, self.site.cap, &calls)?;
            self.results.extend(got);
        }
        Ok(self.results)
    }

    /// Runs what is still staged and returns the results of every call
    /// staged since `new`, in order.
    pub fn finish(mut self, r: &mut Remote) -> Result<Vec<i64>> {
        self.run(r)?;
        Ok(self.results)
    }
}

pub struct Remote {
    /// Host TID of the task.
    pub tid: i32,
    inj: Option<Injector>,
    /// /proc/TID/mem, shared with the `sibling`s of the same address space.
    mem: Rc<File>,
    scratch: Option<(u64, u64)>,
    /// The scratch area is on the thread's stack: the bytes it held.
    stack_saved: Option<Vec<u8>>,
    /// The process's memory areas as the caller last read them, shared by
    /// the threads of one process (its maps list every thread's stack, so
    /// reading it again for each thread would grow with the square of the
    /// thread count). None: read /proc/TID/maps when needed.
    areas: Option<Rc<Vec<MapsArea>>>,
}

/// Scratch requests the collectors make: the structures they read are at
/// most 32 bytes.
pub const SMALL_SCRATCH: u64 = 64;
/// x86-64 red zone below the stack pointer, which leaf functions may use.
const RED_ZONE: u64 = 128;
/// The most scratch space taken from a stack.
const STACK_SCRATCH_MAX: u64 = 1024;

/// One line of /proc/TID/maps: start, end, permissions, path.
pub type MapsArea = (u64, u64, String, String);

/// The areas of /proc/TID/maps: start, end, permissions, path.
pub fn maps_areas(tid: i32) -> Option<Vec<MapsArea>> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/maps")).ok()?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (s, e) = w.next()?.split_once('-')?;
        let perms = w.next()?.to_string();
        let path = w.nth(3).unwrap_or("").to_string();
        out.push((
            u64::from_str_radix(s, 16).ok()?,
            u64::from_str_radix(e, 16).ok()?,
            perms,
            path,
        ));
    }
    Some(out)
}

/// Where `len` bytes of scratch space fit below the red zone under `rsp`, if
/// the area holding `rsp` is a stack with room inside it.
fn stack_scratch_at(areas: &[MapsArea], rsp: u64, len: u64) -> Option<u64> {
    let top = rsp.checked_sub(RED_ZONE)? & !63;
    let addr = top.checked_sub(len)? & !63;
    let i = areas.iter().position(|a| a.0 <= rsp && rsp < a.1)?;
    let (start, _, perms, path) = &areas[i];
    if perms != "rw-p" || addr < *start {
        return None;
    }
    let is_stack = path == "[stack]"
        || (path.is_empty()
            && i > 0
            && areas[i - 1].1 == *start
            && areas[i - 1].2 == "---p"
            && areas[i - 1].3.is_empty());
    is_stack.then_some(addr)
}

impl Remote {
    /// Takes control of a seized, stopped task. `gadget` is the address of a
    /// `syscall` instruction mapped in it.
    pub fn new(tid: i32, gadget: u64) -> Result<Self> {
        let mem = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{tid}/mem"))
            .map_err(|e| Error::Process {
                pid: tid,
                reason: format!("opening /proc/{tid}/mem: {e}"),
            })?;
        Ok(Remote {
            tid,
            inj: Some(Injector::new(tid, gadget)?),
            mem: Rc::new(mem),
            scratch: None,
            stack_saved: None,
            areas: None,
        })
    }

    /// Takes control of another seized, stopped thread of the same process,
    /// reaching its memory through this one's /proc/TID/mem (no open per thread).
    pub fn sibling(&self, tid: i32, gadget: u64) -> Result<Self> {
        Ok(Remote {
            tid,
            inj: Some(Injector::new(tid, gadget)?),
            mem: Rc::clone(&self.mem),
            scratch: None,
            stack_saved: None,
            areas: None,
        })
    }

    /// The host TIDs of the threads (or processes) the injected calls
    /// created since the last time this was asked, in creation order.
    pub fn take_children(&mut self) -> Vec<i32> {
        self.inj
            .as_mut()
            .map(|i| i.take_children())
            .unwrap_or_default()
    }

    /// Looks for stack scratch space in `areas` (the process's memory areas,
    /// current as long as they are unchanged) instead of reading the maps.
    pub fn use_areas(&mut self, areas: Rc<Vec<MapsArea>>) {
        self.areas = Some(areas);
    }

    /// Registers the task had when we took control (restored by `finish`).
    pub fn saved_regs(&self) -> libc::user_regs_struct {
        *self
            .inj
            .as_ref()
            .expect("injector present until finish")
            .saved_regs()
    }

    /// Signal mask the task had when we took control.
    pub fn saved_sigmask(&self) -> u64 {
        self.inj
            .as_ref()
            .expect("injector present until finish")
            .saved_sigmask()
    }

    /// The host TID of the thread the last injected clone created (see
    /// `Injector::last_child`).
    pub fn last_child(&self) -> Option<i32> {
        self.inj.as_ref().and_then(|i| i.last_child())
    }

    /// Runs a syscall, returning its raw result (negative errno on failure).
    pub fn syscall_raw(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        Ok(self
            .inj
            .as_mut()
            .expect("injector present until finish")
            .syscall(nr, args)?)
    }

    /// Runs `f` on the injector; its error becomes one naming `what`.
    fn inject<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Injector) -> sys::Result<T>,
    ) -> Result<T> {
        let tid = self.tid;
        f(self.inj.as_mut().expect("injector present until finish")).map_err(|e| Error::Process {
            pid: tid,
            reason: format!("{what}: {e}"),
        })
    }

    /// A syscall's raw result: a negative errno becomes an error naming `what`.
    fn checked(&self, what: &str, r: i64) -> Result<u64> {
        if (-4095..0).contains(&r) {
            return Err(Error::Process {
                pid: self.tid,
                reason: format!(
                    "{what} in the task failed: {}",
                    std::io::Error::from_raw_os_error((-r) as i32)
                ),
            });
        }
        Ok(r as u64)
    }

    /// Runs one syscall in each of `rs` (threads of one process, say), all
    /// at the same time: every thread is set going, then each is let on past
    /// its syscall's entry stop, then each is waited for at the exit, so the
    /// two ptrace stops of each call overlap across the threads instead of
    /// adding up. `args(i)` gives the arguments of `rs[i]`'s call. Every
    /// thread started is waited for (its own state back) even when another
    /// fails; the first failure is the error.
    pub fn call_all(
        rs: &mut [Remote],
        what: &str,
        nr: i64,
        args: impl Fn(usize) -> [u64; 6],
    ) -> Result<Vec<u64>> {
        let mut first_err = None;
        let mut started = 0;
        for (i, r) in rs.iter_mut().enumerate() {
            if let Err(e) = r.inject(what, |inj| inj.start_syscall(nr, args(i))) {
                first_err = Some(e);
                break;
            }
            started += 1;
        }
        // A thread whose entry failed has its own state back already.
        let mut entered = vec![false; started];
        for (i, r) in rs[..started].iter_mut().enumerate() {
            match r.inject(what, |inj| inj.pass_entry()) {
                Ok(()) => entered[i] = true,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let mut out = Vec::with_capacity(started);
        for (i, r) in rs[..started].iter_mut().enumerate() {
            if !entered[i] {
                continue;
            }
            match r
                .inject(what, |inj| inj.finish_syscall())
                .and_then(|v| r.checked(what, v))
            {
                Ok(v) => out.push(v),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Runs a syscall; a failure becomes an error naming `what`.
    pub fn call(&mut self, what: &str, nr: i64, args: [u64; 6]) -> Result<u64> {
        let r = self.inject(what, |inj| inj.syscall(nr, args))?;
        self.checked(what, r)
    }

    /// Runs `calls` in order through the batch loop of a restore trampoline
    /// (`sys::inject::BATCH_CODE` at `entry`), with the table at `table`
    /// (room for `cap` entries): one ptrace round trip per `cap` calls.
    /// A failing call stops the batch; when it `may_fail` the batch goes on
    /// after it, else the error names its `what`. Returns every result.
    pub fn batch(
        &mut self,
        entry: u64,
        table: u64,
        cap: usize,
        calls: &[BatchCall],
    ) -> Result<Vec<i64>> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        self.batch_start(entry, table, cap, calls)?;
        self.batch_wait(entry, table, cap, calls)
    }

    /// Writes the first table of `calls` (up to `cap`) and sets the thread
    /// running through it without waiting, so that several threads run
    /// their batches at once; `batch_wait`, with the same arguments, waits
    /// and runs the rest.
    pub fn batch_start(
        &mut self,
        entry: u64,
        table: u64,
        cap: usize,
        calls: &[BatchCall],
    ) -> Result<()> {
        let chunk = &calls[..cap.min(calls.len())];
        let mut bytes = Vec::with_capacity(chunk.len() * sys::inject::BATCH_ENTRY);
        for c in chunk {
            bytes.extend_from_slice(&(c.nr as u64).to_le_bytes());
            for a in c.args {
                bytes.extend_from_slice(&a.to_le_bytes());
            }
            bytes.extend_from_slice(&0u64.to_le_bytes());
        }
        self.write_mem(table, &bytes)?;
        let r = self
            .inj
            .as_mut()
            .expect("injector present until finish")
            .start_batch(entry, table, chunk.len() as u64);
        r.map_err(|e| self.batch_err(chunk, e))
    }

    /// The injector's failure to run a batch, named by its first call.
    fn batch_err(&self, chunk: &[BatchCall], e: impl std::fmt::Display) -> Error {
        Error::Process {
            pid: self.tid,
            reason: format!("syscall batch from {}: {e}", chunk[0].what),
        }
    }

    /// Waits for the table `batch_start` started, then runs what is left of
    /// `calls`; returns every result (see `batch`).
    pub fn batch_wait(
        &mut self,
        entry: u64,
        table: u64,
        cap: usize,
        calls: &[BatchCall],
    ) -> Result<Vec<i64>> {
        use sys::inject::BATCH_ENTRY;
        let tid = self.tid;
        let chunk = &calls[..cap.min(calls.len())];
        let reached = self
            .inj
            .as_mut()
            .expect("injector present until finish")
            .finish_batch(entry);
        let reached = reached.map_err(|e| self.batch_err(chunk, e))? as usize;
        if reached > chunk.len() {
            return Err(Error::Process {
                pid: tid,
                reason: format!(
                    "syscall batch of {} calls stopped at index {reached}",
                    chunk.len()
                ),
            });
        }
        let ran = (reached + 1).min(chunk.len());
        let back = self.read_mem(table, ran * BATCH_ENTRY)?;
        let mut results: Vec<i64> = (0..ran)
            .map(|k| {
                let at = k * BATCH_ENTRY + BATCH_ENTRY - 8;
                i64::from_le_bytes(back[at..at + 8].try_into().expect("8 bytes"))
            })
            .collect();
        let next = if reached == chunk.len() {
            reached
        } else {
            let failed = &chunk[reached];
            if !failed.may_fail {
                return Err(Error::Process {
                    pid: tid,
                    reason: format!(
                        "{} in the task failed: {}",
                        failed.what,
                        std::io::Error::from_raw_os_error((-results[reached]) as i32)
                    ),
                });
            }
            reached + 1
        };
        results.extend(self.batch(entry, table, cap, &calls[next..])?);
        Ok(results)
    }

    /// Address of a scratch area of at least `len` bytes: on the thread's
    /// stack where it can be (see the module's documentation), else mapped
    /// with an injected `mmap` on first use.
    pub fn scratch(&mut self, len: u64) -> Result<u64> {
        if let Some((addr, have)) = self.scratch {
            if have >= len {
                return Ok(addr);
            }
            self.release_scratch()?;
        }
        if len <= STACK_SCRATCH_MAX {
            let size = len.div_ceil(64).max(1) * 64;
            let rsp = self.saved_regs().rsp;
            let found = match &self.areas {
                Some(areas) => stack_scratch_at(areas, rsp, size),
                None => maps_areas(self.tid).and_then(|a| stack_scratch_at(&a, rsp, size)),
            };
            if let Some(addr) = found {
                let saved = self.read_mem(addr, size as usize)?;
                self.stack_saved = Some(saved);
                self.scratch = Some((addr, size));
                return Ok(addr);
            }
            tracing::debug!(
                "thread {}: no room on a stack at {rsp:#x}, scratch space is mapped",
                self.tid
            );
        }
        let size = len.div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE;
        let addr = self.call(
            "mmap(scratch)",
            libc::SYS_mmap,
            [
                0,
                size,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
        self.scratch = Some((addr, size));
        Ok(addr)
    }

    /// Whether the scratch area is on the thread's stack (not a mapping).
    pub fn scratch_on_stack(&self) -> bool {
        self.stack_saved.is_some()
    }

    /// Gives the scratch area back: the stack's bytes put back, or the
    /// mapping unmapped.
    fn release_scratch(&mut self) -> Result<()> {
        let Some((addr, len)) = self.scratch.take() else {
            return Ok(());
        };
        match self.stack_saved.take() {
            Some(saved) => self.write_mem(addr, &saved),
            None => self
                .call("munmap(scratch)", libc::SYS_munmap, [addr, len, 0, 0, 0, 0])
                .map(|_| ()),
        }
    }

    /// Uses an area the caller mapped as scratch space (at restore, the trampoline's data page).
    pub fn adopt_scratch(&mut self, addr: u64, len: u64) {
        self.scratch = Some((addr, len));
        self.stack_saved = None;
    }

    /// Forgets the scratch area without unmapping it (the caller unmaps it).
    pub fn drop_scratch(&mut self) {
        self.scratch = None;
        self.stack_saved = None;
    }

    pub fn write_mem(&self, addr: u64, bytes: &[u8]) -> Result<()> {
        self.mem
            .write_all_at(bytes, addr)
            .map_err(|e| Error::Process {
                pid: self.tid,
                reason: format!("writing {} bytes at {addr:#x}: {e}", bytes.len()),
            })
    }

    pub fn read_mem(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.mem
            .read_exact_at(&mut buf, addr)
            .map_err(|e| Error::Process {
                pid: self.tid,
                reason: format!("reading {len} bytes at {addr:#x}: {e}"),
            })?;
        Ok(buf)
    }

    /// Runs later syscalls at `gadget` stopping at syscall entry and exit
    /// (needed for a syscall that unmaps the trampoline it runs from).
    pub fn set_gadget(&mut self, gadget: u64) {
        self.inj
            .as_mut()
            .expect("injector present until finish")
            .set_gadget(gadget);
    }

    /// Runs later single syscalls by single-stepping over the `syscall`
    /// instruction, one stop each (see `Injector::set_step`: only for a task
    /// that is discarded should stasis die, i.e. at restore).
    pub fn set_step(&mut self) {
        self.inj
            .as_mut()
            .expect("injector present until finish")
            .set_step();
    }

    /// Switches to the restore trampoline: `syscall; int3` at `gadget`.
    pub fn set_trap_gadget(&mut self, gadget: u64) {
        self.inj
            .as_mut()
            .expect("injector present until finish")
            .set_trap_gadget(gadget);
    }

    /// Gives the scratch area back (the stack's bytes put back, or the
    /// mapping unmapped) and the task its registers and signal mask.
    pub fn finish(mut self) -> Result<()> {
        self.release_scratch()?;
        if let Some(inj) = self.inj.take() {
            inj.finish()?;
        }
        Ok(())
    }

    /// Leaves the task's registers as the injector last left them (restore
    /// sets the final registers itself).
    pub fn abandon(mut self) {
        self.drop_scratch();
        if let Some(inj) = self.inj.take() {
            std::mem::forget(inj);
        }
    }
}

impl Drop for Remote {
    /// Without `finish` (an error on the way): the stack's bytes go back all
    /// the same; the injector puts the registers back as it drops.
    fn drop(&mut self) {
        if self.stack_saved.is_some() {
            let _ = self.release_scratch();
        }
    }
}

/// Writes `s` as a NUL-terminated C string at `at` in the task: returns `at`.
pub fn put_cstr(r: &mut Remote, at: u64, s: &str) -> Result<u64> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.push(0);
    r.write_mem(at, &bytes)?;
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::Pid;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// A `sleep` seized and stopped, with a trampoline (`syscall; int3`, the
    /// batch loop at offset 16, a table page after it) mapped in it.
    fn traced_sleep() -> (std::process::Child, Remote, u64) {
        let child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        let stat = format!("/proc/{pid}/stat");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&stat)
            .unwrap_or_default()
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('S'))
        {
            assert!(Instant::now() < deadline, "sleep did not start");
            std::thread::sleep(Duration::from_millis(1));
        }
        sys::ptrace::seize(
            pid,
            sys::ptrace::PTRACE_O_TRACESYSGOOD | sys::ptrace::PTRACE_O_EXITKILL,
        )
        .unwrap();
        sys::ptrace::interrupt(pid).unwrap();
        let st = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)).unwrap();
        assert!(matches!(st, WaitStatus::PtraceEvent(..)), "stop: {st:?}");
        let mut r = Remote::new(pid, sys::inject::find_syscall_gadget(pid).unwrap()).unwrap();
        let at = r
            .call(
                "mmap(trampoline)",
                libc::SYS_mmap,
                [
                    0,
                    2 * PAGE_SIZE,
                    (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64,
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                    u64::MAX,
                    0,
                ],
            )
            .unwrap();
        r.write_mem(at, &[0x0f, 0x05, 0xcc]).unwrap();
        r.write_mem(at + 16, &sys::inject::BATCH_CODE).unwrap();
        r.set_trap_gadget(at);
        (child, r, at)
    }

    fn call(what: &str, nr: i64, a0: u64, may_fail: bool) -> BatchCall {
        BatchCall {
            what: what.into(),
            nr,
            args: [a0, 0, 0, 0, 0, 0],
            may_fail,
        }
    }

    /// Batches split into tables of `cap` entries, go on after a failure
    /// that may fail, and stop with an error naming the first call that may not.
    #[test]
    fn batch_runs_in_chunks_and_names_the_failing_call() {
        let (mut child, mut r, at) = traced_sleep();
        let pid = r.tid;
        let bad = u64::from(u32::MAX >> 1);
        let calls = vec![
            call("getpid", libc::SYS_getpid, 0, false),
            call("close of a closed fd", libc::SYS_close, bad, true),
            call("getppid", libc::SYS_getppid, 0, false),
            call("getpid again", libc::SYS_getpid, 0, false),
            call("getpid thrice", libc::SYS_getpid, 0, false),
        ];
        let got = r.batch(at + 16, at + PAGE_SIZE, 2, &calls).unwrap();
        let me = i64::from(std::process::id() as i32);
        let p = i64::from(pid);
        assert_eq!(got, vec![p, -i64::from(libc::EBADF), me, p, p]);

        let calls = vec![
            call("getpid", libc::SYS_getpid, 0, false),
            call("close of fd 2147483647", libc::SYS_close, bad, false),
            call("getpid after", libc::SYS_getpid, 0, false),
        ];
        let err = r
            .batch(at + 16, at + PAGE_SIZE, 64, &calls)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("close of fd 2147483647") && err.contains("Bad file descriptor"),
            "error does not name the failing call: {err}"
        );
        r.abandon();
        let _ = child.kill();
        // Reaped through its ptrace stops.
        while !matches!(
            waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)),
            Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_)
        ) {}
    }
}
