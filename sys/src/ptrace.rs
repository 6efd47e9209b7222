//! ptrace requests beyond what `nix` wraps: register sets (`NT_PRSTATUS`,
//! `NT_X86_XSTATE`), signal masks, queued siginfos, rseq configuration, seccomp
//! filters and syscall info. Every function acts on thread `tid`, which must be
//! traced by the calling thread and (except for `seize`, `interrupt`) stopped.

use std::ffi::c_void;
use std::mem::{size_of, MaybeUninit};

use nix::errno::Errno;

use crate::error::{Error, Result};

// Requests (include/uapi/linux/ptrace.h).
pub const PTRACE_SEIZE: u32 = 0x4206;
pub const PTRACE_INTERRUPT: u32 = 0x4207;
pub const PTRACE_LISTEN: u32 = 0x4208;
pub const PTRACE_PEEKSIGINFO: u32 = 0x4209;
pub const PTRACE_GETSIGMASK: u32 = 0x420a;
pub const PTRACE_SETSIGMASK: u32 = 0x420b;
pub const PTRACE_SECCOMP_GET_FILTER: u32 = 0x420c;
pub const PTRACE_SECCOMP_GET_METADATA: u32 = 0x420d;
pub const PTRACE_GET_SYSCALL_INFO: u32 = 0x420e;
pub const PTRACE_GET_RSEQ_CONFIGURATION: u32 = 0x420f;
pub const PTRACE_GETREGSET: u32 = 0x4204;
pub const PTRACE_SETREGSET: u32 = 0x4205;

// Options (include/uapi/linux/ptrace.h).
pub const PTRACE_O_TRACESYSGOOD: i32 = 1;
pub const PTRACE_O_TRACEFORK: i32 = 1 << 1;
pub const PTRACE_O_TRACEVFORK: i32 = 1 << 2;
pub const PTRACE_O_TRACECLONE: i32 = 1 << 3;
pub const PTRACE_O_TRACEEXEC: i32 = 1 << 4;
pub const PTRACE_O_TRACEEXIT: i32 = 1 << 6;
pub const PTRACE_O_TRACESECCOMP: i32 = 1 << 7;
pub const PTRACE_O_EXITKILL: i32 = 1 << 20;
pub const PTRACE_O_SUSPEND_SECCOMP: i32 = 1 << 21;

/// `PTRACE_EVENT_STOP` (include/uapi/linux/ptrace.h): group-stop or
/// `PTRACE_INTERRUPT` stop of a seized tracee, reported as `status >> 16`.
pub const PTRACE_EVENT_STOP: i32 = 128;
/// `PTRACE_PEEKSIGINFO_SHARED` (include/uapi/linux/ptrace.h).
pub const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;

// ELF note types (include/uapi/linux/elf.h).
pub const NT_PRSTATUS: u32 = 1;
pub const NT_PRFPREG: u32 = 2;
pub const NT_X86_XSTATE: u32 = 0x202;

// `ptrace_syscall_info.op` (include/uapi/linux/ptrace.h).
pub const PTRACE_SYSCALL_INFO_NONE: u8 = 0;
pub const PTRACE_SYSCALL_INFO_ENTRY: u8 = 1;
pub const PTRACE_SYSCALL_INFO_EXIT: u8 = 2;
pub const PTRACE_SYSCALL_INFO_SECCOMP: u8 = 3;

/// Size of `user_regs_struct` on x86_64 (the `NT_PRSTATUS` regset).
pub const PRSTATUS_SIZE: usize = size_of::<libc::user_regs_struct>();
const _: () = assert!(PRSTATUS_SIZE == 216);

/// Raw ptrace call; returns the kernel's return value.
///
/// # Safety
/// `addr` and `data` must be what `request` expects: valid pointers to
/// correctly sized buffers where the request reads or writes memory.
unsafe fn raw(
    call: &'static str,
    request: u32,
    tid: i32,
    addr: *mut c_void,
    data: *mut c_void,
) -> Result<libc::c_long> {
    Errno::clear();
    // SAFETY: forwarded from the caller's contract.
    let ret = unsafe { libc::ptrace(request as _, tid, addr, data) };
    if ret == -1 {
        let errno = Errno::last();
        // PEEK requests may legitimately return -1; they clear errno first.
        if errno != Errno::UnknownErrno {
            return Err(Error::new(call, errno));
        }
    }
    Ok(ret)
}

/// `PTRACE_SEIZE`: attach to `tid` without stopping it, with `PTRACE_O_*` options.
pub fn seize(tid: i32, options: i32) -> Result<()> {
    // SAFETY: SEIZE takes no pointer; `data` carries the options.
    unsafe {
        raw(
            "ptrace(PTRACE_SEIZE)",
            PTRACE_SEIZE,
            tid,
            std::ptr::null_mut(),
            options as usize as *mut c_void,
        )
    }?;
    Ok(())
}

/// `PTRACE_INTERRUPT`: stop a seized tracee (it reports a `PTRACE_EVENT_STOP`).
pub fn interrupt(tid: i32) -> Result<()> {
    // SAFETY: INTERRUPT takes no pointers.
    unsafe {
        raw(
            "ptrace(PTRACE_INTERRUPT)",
            PTRACE_INTERRUPT,
            tid,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    }?;
    Ok(())
}

/// `PTRACE_DETACH`, delivering signal `sig` (0 for none).
pub fn detach(tid: i32, sig: i32) -> Result<()> {
    resume("ptrace(PTRACE_DETACH)", libc::PTRACE_DETACH, tid, sig)
}

/// `PTRACE_CONT`, delivering signal `sig` (0 for none).
pub fn cont(tid: i32, sig: i32) -> Result<()> {
    resume("ptrace(PTRACE_CONT)", libc::PTRACE_CONT, tid, sig)
}

/// `PTRACE_SINGLESTEP`: resume for one instruction, delivering `sig` (0 for
/// none); the thread stops with SIGTRAP after it. A `syscall` instruction
/// counts as one: the stop comes once the syscall has returned.
pub fn singlestep(tid: i32, sig: i32) -> Result<()> {
    resume(
        "ptrace(PTRACE_SINGLESTEP)",
        libc::PTRACE_SINGLESTEP,
        tid,
        sig,
    )
}

/// A request that lets the thread go (detach, continue, step) with signal
/// `sig` delivered (0 for none).
fn resume(what: &'static str, req: u32, tid: i32, sig: i32) -> Result<()> {
    // SAFETY: these requests take no pointers; `data` is the signal number.
    unsafe {
        raw(
            what,
            req,
            tid,
            std::ptr::null_mut(),
            sig as usize as *mut c_void,
        )
    }?;
    Ok(())
}

/// `PTRACE_SYSCALL`: resume until the next syscall entry or exit, delivering
/// signal `sig` (0 for none).
pub fn syscall(tid: i32, sig: i32) -> Result<()> {
    // SAFETY: SYSCALL takes no pointers; `data` is the signal number.
    unsafe {
        raw(
            "ptrace(PTRACE_SYSCALL)",
            libc::PTRACE_SYSCALL,
            tid,
            std::ptr::null_mut(),
            sig as usize as *mut c_void,
        )
    }?;
    Ok(())
}

/// `PTRACE_SETOPTIONS`: replaces the tracee's `PTRACE_O_*` options.
pub fn set_options(tid: i32, options: i32) -> Result<()> {
    // SAFETY: SETOPTIONS takes no pointers; `data` carries the options.
    unsafe {
        raw(
            "ptrace(PTRACE_SETOPTIONS)",
            libc::PTRACE_SETOPTIONS,
            tid,
            std::ptr::null_mut(),
            options as usize as *mut c_void,
        )
    }?;
    Ok(())
}

/// `PTRACE_GETSIGINFO`: the siginfo of the signal that caused the current stop.
pub fn get_siginfo(tid: i32) -> Result<libc::siginfo_t> {
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: the kernel writes one siginfo_t into `info`.
    unsafe {
        raw(
            "ptrace(PTRACE_GETSIGINFO)",
            libc::PTRACE_GETSIGINFO,
            tid,
            std::ptr::null_mut(),
            info.as_mut_ptr().cast(),
        )
    }?;
    // SAFETY: zero-initialised and then filled by the kernel; siginfo_t is POD.
    Ok(unsafe { info.assume_init() })
}

/// `PTRACE_GETEVENTMSG`.
pub fn get_event_msg(tid: i32) -> Result<u64> {
    let mut msg: libc::c_ulong = 0;
    // SAFETY: the kernel writes one unsigned long into `msg`.
    unsafe {
        raw(
            "ptrace(PTRACE_GETEVENTMSG)",
            libc::PTRACE_GETEVENTMSG,
            tid,
            std::ptr::null_mut(),
            (&mut msg as *mut libc::c_ulong).cast(),
        )
    }?;
    Ok(msg)
}

/// `PTRACE_GETREGSET` of note type `nt` into `buf`; returns the length the
/// kernel filled.
pub fn get_regset(tid: i32, nt: u32, buf: &mut [u8]) -> Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, valid for writes of its length; the kernel
    // writes at most iov_len bytes and updates iov_len.
    unsafe {
        raw(
            "ptrace(PTRACE_GETREGSET)",
            PTRACE_GETREGSET,
            tid,
            nt as usize as *mut c_void,
            (&mut iov as *mut libc::iovec).cast(),
        )
    }?;
    Ok(iov.iov_len)
}

/// `PTRACE_SETREGSET` of note type `nt` from `buf`.
pub fn set_regset(tid: i32, nt: u32, buf: &[u8]) -> Result<()> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, valid for reads of its length; SETREGSET
    // only reads from it.
    unsafe {
        raw(
            "ptrace(PTRACE_SETREGSET)",
            PTRACE_SETREGSET,
            tid,
            nt as usize as *mut c_void,
            (&mut iov as *mut libc::iovec).cast(),
        )
    }?;
    Ok(())
}

/// General-purpose registers (`GETREGSET NT_PRSTATUS`).
pub fn get_regs(tid: i32) -> Result<libc::user_regs_struct> {
    let mut regs = MaybeUninit::<libc::user_regs_struct>::zeroed();
    // SAFETY: the slice covers exactly the zeroed `regs` storage.
    let buf =
        unsafe { std::slice::from_raw_parts_mut(regs.as_mut_ptr().cast::<u8>(), PRSTATUS_SIZE) };
    let len = get_regset(tid, NT_PRSTATUS, buf)?;
    if len != PRSTATUS_SIZE {
        return Err(Error::new(
            "ptrace(PTRACE_GETREGSET, NT_PRSTATUS)",
            Errno::EIO,
        ));
    }
    // SAFETY: fully initialised (zeroed, then written by the kernel); POD.
    Ok(unsafe { regs.assume_init() })
}

/// Sets the general-purpose registers (`SETREGSET NT_PRSTATUS`).
pub fn set_regs(tid: i32, regs: &libc::user_regs_struct) -> Result<()> {
    // SAFETY: `regs` is a plain-old-data struct of PRSTATUS_SIZE bytes.
    let buf = unsafe {
        std::slice::from_raw_parts(
            (regs as *const libc::user_regs_struct).cast::<u8>(),
            PRSTATUS_SIZE,
        )
    };
    set_regset(tid, NT_PRSTATUS, buf)
}

/// The extended register state (`GETREGSET NT_X86_XSTATE`) in standard XSAVE
/// format, as long as the kernel makes it (its length follows XCR0: 2440 bytes
/// for x87, SSE, AVX and PKRU, XCR0 0x207, on an AMD EPYC).
pub fn get_xstate(tid: i32) -> Result<Vec<u8>> {
    let size = crate::cpu::xsave_max_size().unwrap_or(0).max(4096) as usize;
    let mut buf = vec![0u8; size];
    let len = get_regset(tid, NT_X86_XSTATE, &mut buf)?;
    buf.truncate(len);
    Ok(buf)
}

/// Sets the extended register state (`SETREGSET NT_X86_XSTATE`).
pub fn set_xstate(tid: i32, xstate: &[u8]) -> Result<()> {
    set_regset(tid, NT_X86_XSTATE, xstate)
}

/// The thread's blocked-signal mask (`PTRACE_GETSIGMASK`), bit `n-1` for signal `n`.
pub fn get_sigmask(tid: i32) -> Result<u64> {
    let mut mask: u64 = 0;
    // SAFETY: addr is the size of the kernel sigset (8); the kernel writes 8
    // bytes into `mask`.
    unsafe {
        raw(
            "ptrace(PTRACE_GETSIGMASK)",
            PTRACE_GETSIGMASK,
            tid,
            size_of::<u64>() as *mut c_void,
            (&mut mask as *mut u64).cast(),
        )
    }?;
    Ok(mask)
}

/// Sets the thread's blocked-signal mask (`PTRACE_SETSIGMASK`); SIGKILL and
/// SIGSTOP are silently left unblocked by the kernel.
pub fn set_sigmask(tid: i32, mask: u64) -> Result<()> {
    let mut mask = mask;
    // SAFETY: addr is the size of the kernel sigset (8); the kernel reads 8
    // bytes from `mask`.
    unsafe {
        raw(
            "ptrace(PTRACE_SETSIGMASK)",
            PTRACE_SETSIGMASK,
            tid,
            size_of::<u64>() as *mut c_void,
            (&mut mask as *mut u64).cast(),
        )
    }?;
    Ok(())
}

/// `struct ptrace_peeksiginfo_args` (include/uapi/linux/ptrace.h).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PeekSiginfoArgs {
    pub off: u64,
    pub flags: u32,
    pub nr: i32,
}

/// PTRACE_PEEKSIGINFO: all queued siginfos of the thread queue (shared=false)
/// or the process queue (shared=true), oldest first. Does not dequeue them.
pub fn peek_siginfo(tid: i32, shared: bool) -> Result<Vec<libc::siginfo_t>> {
    const BATCH: usize = 32;
    let mut out = Vec::new();
    loop {
        let mut args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: BATCH as i32,
        };
        let mut batch = [MaybeUninit::<libc::siginfo_t>::zeroed(); BATCH];
        // SAFETY: `args` is a valid ptrace_peeksiginfo_args; `batch` has room
        // for `nr` siginfos.
        let n = unsafe {
            raw(
                "ptrace(PTRACE_PEEKSIGINFO)",
                PTRACE_PEEKSIGINFO,
                tid,
                (&mut args as *mut PeekSiginfoArgs).cast(),
                batch.as_mut_ptr().cast(),
            )
        }? as usize;
        for info in batch.iter().take(n) {
            // SAFETY: zeroed then (for the first n) filled by the kernel; POD.
            out.push(unsafe { info.assume_init() });
        }
        if n < BATCH {
            return Ok(out);
        }
    }
}

/// `struct ptrace_rseq_configuration` (include/uapi/linux/ptrace.h), without
/// the trailing padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct RawRseqConfig {
    rseq_abi_pointer: u64,
    rseq_abi_size: u32,
    signature: u32,
    flags: u32,
    pad: u32,
}

/// `PTRACE_GET_RSEQ_CONFIGURATION`: the thread's registered rseq area (a zero
/// pointer and size when none is registered).
pub fn get_rseq_config(tid: i32) -> Result<RseqConfig> {
    let mut conf = RawRseqConfig::default();
    // SAFETY: addr is the buffer size; the kernel writes at most that many
    // bytes into `conf`.
    unsafe {
        raw(
            "ptrace(PTRACE_GET_RSEQ_CONFIGURATION)",
            PTRACE_GET_RSEQ_CONFIGURATION,
            tid,
            size_of::<RawRseqConfig>() as *mut c_void,
            (&mut conf as *mut RawRseqConfig).cast(),
        )
    }?;
    Ok(RseqConfig {
        rseq_abi_pointer: conf.rseq_abi_pointer,
        rseq_abi_size: conf.rseq_abi_size,
        signature: conf.signature,
        flags: conf.flags,
    })
}

/// PTRACE_SECCOMP_GET_FILTER: the `index`-th seccomp filter's BPF instructions
/// (0 is the first installed, the oldest); `Ok(None)` past the last one. Fails with
/// `EINVAL` when the thread is not in filter mode, `EACCES` without
/// CAP_SYS_ADMIN, `EMEDIUMTYPE` when the kernel lacks CONFIG_CHECKPOINT_RESTORE.
pub fn seccomp_get_filter(tid: i32, index: u64) -> Result<Option<Vec<libc::sock_filter>>> {
    const CALL: &str = "ptrace(PTRACE_SECCOMP_GET_FILTER)";
    // SAFETY: with a null data pointer the kernel only returns the count.
    let count = match unsafe {
        raw(
            CALL,
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            index as usize as *mut c_void,
            std::ptr::null_mut(),
        )
    } {
        Ok(n) => n as usize,
        Err(e) if e.errno == Errno::ENOENT => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut prog = vec![
        libc::sock_filter {
            code: 0,
            jt: 0,
            jf: 0,
            k: 0
        };
        count
    ];
    // SAFETY: `prog` has room for `count` instructions, the count the kernel
    // just reported for this filter (filters are immutable once installed).
    let n = unsafe {
        raw(
            CALL,
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            index as usize as *mut c_void,
            prog.as_mut_ptr().cast(),
        )
    }? as usize;
    prog.truncate(n);
    Ok(Some(prog))
}

/// What `PTRACE_GET_SYSCALL_INFO` reports for the current stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallOp {
    /// Not a syscall stop.
    None,
    /// Syscall-entry stop.
    Entry { nr: u64, args: [u64; 6] },
    /// Syscall-exit stop.
    Exit { rval: i64, is_error: bool },
    /// `PTRACE_EVENT_SECCOMP` stop.
    Seccomp {
        nr: u64,
        args: [u64; 6],
        ret_data: u32,
    },
}

/// `struct ptrace_syscall_info` (include/uapi/linux/ptrace.h), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallInfo {
    /// `AUDIT_ARCH_*` of the syscall (`AUDIT_ARCH_X86_64` = 0xc000003e).
    pub arch: u32,
    pub instruction_pointer: u64,
    pub stack_pointer: u64,
    pub op: SyscallOp,
}

#[repr(C)]
struct RawSyscallInfo {
    op: u8,
    pad: [u8; 3],
    arch: u32,
    instruction_pointer: u64,
    stack_pointer: u64,
    // Union of entry {nr, args[6]}, exit {rval, is_error}, seccomp {nr, args[6], ret_data}.
    data: [u64; 8],
}

/// `PTRACE_GET_SYSCALL_INFO` for the current stop.
pub fn get_syscall_info(tid: i32) -> Result<SyscallInfo> {
    let mut raw_info = RawSyscallInfo {
        op: 0,
        pad: [0; 3],
        arch: 0,
        instruction_pointer: 0,
        stack_pointer: 0,
        data: [0; 8],
    };
    // SAFETY: addr is the buffer size; the kernel writes at most that many
    // bytes into `raw_info`.
    unsafe {
        raw(
            "ptrace(PTRACE_GET_SYSCALL_INFO)",
            PTRACE_GET_SYSCALL_INFO,
            tid,
            size_of::<RawSyscallInfo>() as *mut c_void,
            (&mut raw_info as *mut RawSyscallInfo).cast(),
        )
    }?;
    let d = raw_info.data;
    let args = [d[1], d[2], d[3], d[4], d[5], d[6]];
    let op = match raw_info.op {
        PTRACE_SYSCALL_INFO_ENTRY => SyscallOp::Entry { nr: d[0], args },
        PTRACE_SYSCALL_INFO_EXIT => SyscallOp::Exit {
            rval: d[0] as i64,
            is_error: d[1] & 0xff != 0,
        },
        PTRACE_SYSCALL_INFO_SECCOMP => SyscallOp::Seccomp {
            nr: d[0],
            args,
            ret_data: d[7] as u32,
        },
        _ => SyscallOp::None,
    };
    Ok(SyscallInfo {
        arch: raw_info.arch,
        instruction_pointer: raw_info.instruction_pointer,
        stack_pointer: raw_info.stack_pointer,
        op,
    })
}

/// `PTRACE_PEEKDATA`: one word of the tracee's memory at `addr`.
pub fn peek_data(tid: i32, addr: u64) -> Result<u64> {
    // SAFETY: PEEKDATA reads the tracee's memory; it takes no pointer into ours.
    let word = unsafe {
        raw(
            "ptrace(PTRACE_PEEKDATA)",
            libc::PTRACE_PEEKDATA,
            tid,
            addr as *mut c_void,
            std::ptr::null_mut(),
        )
    }?;
    Ok(word as u64)
}

/// `PTRACE_POKEDATA`: writes one word into the tracee's memory at `addr`
/// (works on read-only mappings too, through a private copy).
pub fn poke_data(tid: i32, addr: u64, word: u64) -> Result<()> {
    // SAFETY: POKEDATA writes the tracee's memory; `data` is the value itself.
    unsafe {
        raw(
            "ptrace(PTRACE_POKEDATA)",
            libc::PTRACE_POKEDATA,
            tid,
            addr as *mut c_void,
            word as *mut c_void,
        )
    }?;
    Ok(())
}
