//! ptrace: seize/interrupt, register sets, signal masks and queues, rseq,
//! syscall info, syscall injection, seccomp filters.

use nix::errno::Errno;
use sys::ptrace as pt;

use super::tracee::{ptrace_fail, Tracee};
use crate::feature::Feature::{self, *};
use crate::report::Outcome;
use crate::runner::Unit;
use crate::util::{self, hex, Exit, Fail, PResult};

pub(crate) static UNIT: Unit = Unit {
    name: "ptrace",
    features: &[
        PtraceSeize,
        PtraceRegs,
        PtraceXstate,
        PtraceSigmask,
        PtracePeeksiginfo,
        PtraceRseq,
        PtraceSyscallInfo,
        PtraceInject,
        PtraceSeccompFilter,
        PtraceSuspendSeccomp,
    ],
    run,
    cleanup: None,
};

const OPTS: i32 = pt::PTRACE_O_TRACESYSGOOD | pt::PTRACE_O_EXITKILL;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// Outcomes collected so far; features not reached get the failure that
/// stopped the sequence.
struct Results(Vec<(Feature, Outcome)>);

impl Results {
    fn set(&mut self, f: Feature, o: Outcome) {
        self.0.push((f, o));
    }
    fn set_r(&mut self, f: Feature, r: PResult<Outcome>) -> bool {
        let ok = r.is_ok();
        self.0.push((f, util::outcome(r)));
        ok
    }
    fn fill(&mut self, features: &[Feature], fail: Fail, needs: Option<Feature>) {
        for &f in features {
            if !self.0.iter().any(|(g, _)| *g == f) {
                let mut o = fail.clone().into_outcome();
                if let Some(n) = needs {
                    o.detail = Some(format!("needs {n}: {}", o.detail.unwrap_or_default()));
                }
                self.0.push((f, o));
            }
        }
    }
}

fn run() -> Vec<(Feature, Outcome)> {
    let mut r = Results(Vec::new());
    let core = &UNIT.features[..8];
    if let Err(f) = core_sequence(&mut r) {
        r.fill(core, f, None);
    }
    if let Err(f) = seccomp_sequence(&mut r) {
        r.fill(&[PtraceSeccompFilter, PtraceSuspendSeccomp], f, None);
    }
    r.0
}

fn sigbit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

fn xfeature_names(mask: u64) -> Vec<&'static str> {
    const NAMES: &[(u32, &str)] = &[
        (0, "x87"),
        (1, "sse"),
        (2, "avx"),
        (3, "mpx-bndregs"),
        (4, "mpx-bndcsr"),
        (5, "avx512-opmask"),
        (6, "avx512-zmm-hi256"),
        (7, "avx512-hi16-zmm"),
        (9, "pkru"),
        (11, "cet-user"),
        (17, "amx-tilecfg"),
        (18, "amx-tiledata"),
        (19, "apx"),
    ];
    NAMES
        .iter()
        .filter(|(b, _)| mask & (1 << b) != 0)
        .map(|(_, n)| *n)
        .collect()
}

fn core_sequence(r: &mut Results) -> PResult<()> {
    let mut t = Tracee::plain()?;
    let pid = t.pid;
    if let Err(f) = t.seize_stop(OPTS) {
        r.set(PtraceSeize, f.clone().into_outcome());
        r.fill(&UNIT.features[1..8], f, Some(PtraceSeize));
        return Ok(());
    }
    r.set(
        PtraceSeize,
        Outcome::ok("a running process seized and stopped with PTRACE_INTERRUPT"),
    );

    // General registers: read, write back, read again.
    let regs = pt::get_regs(pid).map_err(ptrace_fail);
    let regs_ok = r.set_r(
        PtraceRegs,
        regs.clone().and_then(|regs| {
            pt::set_regs(pid, &regs).map_err(ptrace_fail)?;
            let again = pt::get_regs(pid).map_err(ptrace_fail)?;
            if again.rip != regs.rip || again.rsp != regs.rsp {
                return Err(Fail::error(
                    "ptrace(PTRACE_SETREGSET, NT_PRSTATUS)",
                    "registers changed",
                ));
            }
            Ok(Outcome::ok(format!(
                "NT_PRSTATUS {} bytes",
                pt::PRSTATUS_SIZE
            )))
        }),
    );

    // Extended state: size and XCR0.
    r.set_r(
        PtraceXstate,
        (|| {
            let x = pt::get_xstate(pid).map_err(ptrace_fail)?;
            pt::set_xstate(pid, &x).map_err(ptrace_fail)?;
            let xcr0 = sys::cpu::xcr0();
            let exposed = sys::cpu::xstate_xfeatures(&x);
            let mask = exposed.or(xcr0).unwrap_or(0);
            let expected = sys::cpu::xsave_size();
            if expected.is_some_and(|e| e as usize != x.len()) {
                return Err(Fail::error(
                    "ptrace(PTRACE_GETREGSET, NT_X86_XSTATE)",
                    format!(
                        "{} bytes, CPUID 0xd says {}",
                        x.len(),
                        expected.unwrap_or(0)
                    ),
                ));
            }
            Ok(Outcome::ok(format!(
                "{} bytes, XCR0 {} ({})",
                x.len(),
                hex(mask),
                xfeature_names(mask).join(", ")
            ))
            .with("size", x.len())
            .with("xcr0", hex(xcr0.unwrap_or(0)))
            .with("xfeatures", hex(mask))
            .with("features", xfeature_names(mask)))
        })(),
    );

    // Signal mask, checked against /proc/PID/status.
    let extra = sigbit(libc::SIGWINCH) | sigbit(libc::SIGURG);
    let old_mask = pt::get_sigmask(pid).map_err(ptrace_fail);
    let mask_ok = r.set_r(
        PtraceSigmask,
        old_mask.clone().and_then(|m| {
            pt::set_sigmask(pid, m | extra).map_err(ptrace_fail)?;
            let status = util::read_trim(&format!("/proc/{pid}/status"))?;
            let blk = status
                .lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
            if blk != Some(m | extra) {
                return Err(Fail::error(
                    "ptrace(PTRACE_SETSIGMASK)",
                    "/proc/PID/status SigBlk does not show the new mask",
                ));
            }
            Ok(Outcome::ok("mask set and seen in /proc/PID/status"))
        }),
    );

    // Queued signals (both blocked, both ignored by default).
    r.set_r(
        PtracePeeksiginfo,
        (|| {
            if !mask_ok {
                return Err(Fail::error(
                    "ptrace(PTRACE_SETSIGMASK)",
                    "needs ptrace-sigmask",
                ));
            }
            // SAFETY: kill and tgkill with integer arguments, on our own child.
            unsafe {
                util::cvt(
                    "kill(SIGWINCH)",
                    libc::kill(pid, libc::SIGWINCH) as libc::c_long,
                )?;
                util::cvt(
                    "tgkill(SIGURG)",
                    libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGURG),
                )?;
            }
            let shared = pt::peek_siginfo(pid, true).map_err(ptrace_fail)?;
            let thread = pt::peek_siginfo(pid, false).map_err(ptrace_fail)?;
            let me = std::process::id() as i32;
            // SAFETY: kill(2) siginfos carry si_pid.
            let from_us =
                |i: &libc::siginfo_t, sig| i.si_signo == sig && unsafe { i.si_pid() } == me;
            if !shared.iter().any(|i| from_us(i, libc::SIGWINCH))
                || !thread.iter().any(|i| from_us(i, libc::SIGURG))
            {
                return Err(Fail::error(
                    "ptrace(PTRACE_PEEKSIGINFO)",
                    "queued signals not reported with their sender",
                ));
            }
            Ok(Outcome::ok(
                "process and thread queues read without dequeuing",
            ))
        })(),
    );
    if let Ok(m) = old_mask {
        let _ = pt::set_sigmask(pid, m);
    }

    r.set_r(
        PtraceRseq,
        pt::get_rseq_config(pid).map_err(ptrace_fail).map(|c| {
            if c.rseq_abi_pointer == 0 {
                Outcome::ok("works; this process has no rseq area registered")
            } else {
                Outcome::ok(format!(
                    "rseq area of {} bytes, signature {:#x}",
                    c.rseq_abi_size, c.signature
                ))
                .with("size", c.rseq_abi_size)
                .with("signature", hex(u64::from(c.signature)))
            }
        }),
    );

    let info_ok = r.set_r(
        PtraceSyscallInfo,
        pt::get_syscall_info(pid)
            .map_err(ptrace_fail)
            .and_then(|i| {
                let rip = regs
                    .as_ref()
                    .map(|r| r.rip)
                    .unwrap_or(i.instruction_pointer);
                if i.op != pt::SyscallOp::None
                    || i.arch != AUDIT_ARCH_X86_64
                    || i.instruction_pointer != rip
                {
                    return Err(Fail::error(
                        "ptrace(PTRACE_GET_SYSCALL_INFO)",
                        format!("unexpected answer at an interrupt stop: {i:?}"),
                    ));
                }
                Ok(Outcome::ok(
                    "describes stops; entry and exit stops drive syscall injection",
                ))
            }),
    );

    // Injection, then the tracee must resume exactly where it was.
    let inject = (|| {
        if !regs_ok || !info_ok {
            return Err(Fail::error(
                "inject",
                "needs ptrace-regs and ptrace-syscall-info",
            ));
        }
        let regs = regs.clone()?;
        let gadget = sys::inject::find_syscall_gadget(pid)?;
        let mut inj = sys::inject::Injector::new(pid, gadget).map_err(ptrace_fail)?;
        let got = inj.syscall(libc::SYS_getpid, [0; 6]).map_err(ptrace_fail)?;
        if got != i64::from(pid) {
            return Err(Fail::error(
                "injected getpid",
                format!("returned {got}, not {pid}"),
            ));
        }
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let addr = inj
            .syscall(libc::SYS_mmap, [0, 4096, prot, flags, u64::MAX, 0])
            .map_err(ptrace_fail)?;
        if addr <= 0 {
            return Err(Fail::call("injected mmap", Errno::from_raw(-addr as i32)));
        }
        let maps = util::read_trim(&format!("/proc/{pid}/maps"))?;
        if !maps.lines().any(|l| l.starts_with(&format!("{addr:x}-"))) {
            return Err(Fail::error(
                "injected mmap",
                "the mapping is not in /proc/PID/maps",
            ));
        }
        let un = inj
            .syscall(libc::SYS_munmap, [addr as u64, 4096, 0, 0, 0, 0])
            .map_err(ptrace_fail)?;
        if un != 0 {
            return Err(Fail::error("injected munmap", format!("returned {un}")));
        }
        inj.finish().map_err(ptrace_fail)?;
        let mut expected = regs;
        sys::inject::apply_syscall_restart(&mut expected);
        let now = pt::get_regs(pid).map_err(ptrace_fail)?;
        if (now.rip, now.rsp, now.rax, now.rdi, now.orig_rax)
            != (
                expected.rip,
                expected.rsp,
                expected.rax,
                expected.rdi,
                expected.orig_rax,
            )
        {
            return Err(Fail::error("inject", "registers not restored"));
        }
        pt::detach(pid, 0).map_err(ptrace_fail)?;
        t.release()?;
        match t.wait()? {
            Exit::Code(0) => Ok(Outcome::ok(format!(
                "getpid, mmap, munmap ran in the tracee through the vDSO syscall at {}; \
                 it resumed its interrupted read(2) unharmed",
                hex(gadget)
            ))),
            other => Err(Fail::error(
                "inject",
                format!("the tracee did not resume correctly afterwards: {other:?}"),
            )),
        }
    })();
    r.set_r(PtraceInject, inject);
    Ok(())
}

/// The filter: getppid() fails with EPERM, everything else is allowed.
fn filter() -> Vec<libc::sock_filter> {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            AUDIT_ARCH_X86_64,
            0,
            3,
        ),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::SYS_getppid as u32,
            0,
            1,
        ),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}

fn install_filter() -> i32 {
    let prog_insns = filter();
    let prog = libc::sock_fprog {
        len: prog_insns.len() as u16,
        filter: prog_insns.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integers, then with a valid sock_fprog.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
        {
            return util::last_errno();
        }
    }
    0
}

fn inject_getppid(pid: i32) -> PResult<i64> {
    let gadget = sys::inject::find_syscall_gadget(pid)?;
    let mut inj = sys::inject::Injector::new(pid, gadget).map_err(ptrace_fail)?;
    let v = inj
        .syscall(libc::SYS_getppid, [0; 6])
        .map_err(ptrace_fail)?;
    inj.finish().map_err(ptrace_fail)?;
    Ok(v)
}

fn seccomp_sequence(r: &mut Results) -> PResult<()> {
    let me = i64::from(std::process::id());
    let mut t = Tracee::spawn(install_filter, || {
        // Still filtered after everything.
        // SAFETY: getppid has no arguments.
        let v = unsafe { libc::syscall(libc::SYS_getppid) };
        if v == -1 && Errno::last() == Errno::EPERM {
            0
        } else {
            1
        }
    })
    .map_err(|f| {
        f.into_missing()
            .because("cannot install a seccomp filter in a helper process")
    })?;
    let pid = t.pid;
    t.seize_stop(OPTS)?;

    let want = filter();
    let read_back = pt::seccomp_get_filter(pid, 0)
        .map_err(ptrace_fail)
        .and_then(|p| {
            let p =
                p.ok_or_else(|| Fail::error("ptrace(PTRACE_SECCOMP_GET_FILTER)", "no filter 0"))?;
            let same = p.len() == want.len()
                && p.iter()
                    .zip(&want)
                    .all(|(a, b)| (a.code, a.jt, a.jf, a.k) == (b.code, b.jt, b.jf, b.k));
            if !same {
                return Err(Fail::error(
                    "ptrace(PTRACE_SECCOMP_GET_FILTER)",
                    "the program read back differs",
                ));
            }
            if pt::seccomp_get_filter(pid, 1)
                .map_err(ptrace_fail)?
                .is_some()
            {
                return Err(Fail::error(
                    "ptrace(PTRACE_SECCOMP_GET_FILTER)",
                    "a second filter appeared",
                ));
            }
            Ok(Outcome::ok(format!(
                "the {}-instruction filter read back exactly",
                want.len()
            )))
        });
    r.set_r(PtraceSeccompFilter, read_back);

    let suspend = (|| {
        let filtered = inject_getppid(pid)?;
        if filtered != -i64::from(libc::EPERM) {
            return Err(Fail::error(
                "injected getppid",
                format!("without suspension the filter should refuse it, got {filtered}"),
            ));
        }
        pt::detach(pid, 0).map_err(ptrace_fail)?;
        t.seize_stop(OPTS | pt::PTRACE_O_SUSPEND_SECCOMP)?;
        let passed = inject_getppid(pid)?;
        if passed != me {
            return Err(Fail::error(
                "injected getppid",
                format!("with PTRACE_O_SUSPEND_SECCOMP it returned {passed}, not {me}"),
            ));
        }
        pt::detach(pid, 0).map_err(ptrace_fail)?;
        t.release()?;
        match t.wait()? {
            Exit::Code(0) => Ok(Outcome::ok(
                "an injected syscall the filter refuses ran while seccomp was suspended; \
                 the filter holds again after detach",
            )),
            other => Err(Fail::error(
                "detach",
                format!("the tracee ended badly: {other:?}"),
            )),
        }
    })();
    r.set_r(PtraceSuspendSeccomp, suspend);
    Ok(())
}
