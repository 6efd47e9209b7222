//! Running syscalls inside a ptrace-stopped task, with a scratch page for the
//! structures they read and write. Built on `sys::inject`, which runs one
//! syscall at a `syscall` instruction already in the task (its vDSO, or the
//! restore trampoline), so nothing is written into the task's code.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

use sys::inject::Injector;

use crate::error::{Error, Result};
use crate::image::PAGE_SIZE;

pub struct Remote {
    /// Host TID of the task.
    pub tid: i32,
    inj: Option<Injector>,
    mem: File,
    scratch: Option<(u64, u64)>,
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
            mem,
            scratch: None,
        })
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

    /// Runs a syscall; a failure becomes an error naming `what`.
    pub fn call(&mut self, what: &str, nr: i64, args: [u64; 6]) -> Result<u64> {
        let tid = self.tid;
        let r = self.syscall_raw(nr, args).map_err(|e| Error::Process {
            pid: tid,
            reason: format!("{what}: {e}"),
        })?;
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

    /// Address of a scratch area of at least `len` bytes, mapped on first use.
    pub fn scratch(&mut self, len: u64) -> Result<u64> {
        if let Some((addr, have)) = self.scratch {
            if have >= len {
                return Ok(addr);
            }
            self.call(
                "munmap(scratch)",
                libc::SYS_munmap,
                [addr, have, 0, 0, 0, 0],
            )?;
            self.scratch = None;
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

    /// Uses an area the caller mapped as scratch space (at restore, the trampoline's data page).
    pub fn adopt_scratch(&mut self, addr: u64, len: u64) {
        self.scratch = Some((addr, len));
    }

    /// Forgets the scratch area without unmapping it (the caller unmaps it).
    pub fn drop_scratch(&mut self) {
        self.scratch = None;
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

    /// Switches to the restore trampoline: `syscall; int3` at `gadget`.
    pub fn set_trap_gadget(&mut self, gadget: u64) {
        self.inj
            .as_mut()
            .expect("injector present until finish")
            .set_trap_gadget(gadget);
    }

    /// Unmaps the scratch area and gives the task its registers back.
    pub fn finish(mut self) -> Result<()> {
        if let Some((addr, len)) = self.scratch.take() {
            self.call("munmap(scratch)", libc::SYS_munmap, [addr, len, 0, 0, 0, 0])?;
        }
        if let Some(inj) = self.inj.take() {
            inj.finish()?;
        }
        Ok(())
    }

    /// Leaves the task's registers as the injector last left them (restore
    /// sets the final registers itself).
    pub fn abandon(mut self) {
        if let Some(inj) = self.inj.take() {
            std::mem::forget(inj);
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
