//! Tests against the running kernel. Tracees are real programs started with
//! fork+exec (`std::process::Command`); the only children forked without exec
//! run nothing but raw syscalls before `_exit`.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::inject::{apply_syscall_restart, find_syscall_gadget, Injector};
use crate::{clone3, cpu, kcmp, mm, pidfd, ptrace, uffd};

/// A `sleep` that has finished exec'ing and sleeps (spawn can return while
/// the kernel is still building the new image).
/// Callers reap it with waitpid (it is a ptrace tracee), not Child::wait.
#[allow(clippy::zombie_processes)]
fn spawn_sleep(secs: &str) -> Child {
    let mut child = Command::new("sleep")
        .arg(secs)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn sleep");
    let stat = format!("/proc/{}/stat", child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = std::fs::read_to_string(&stat).unwrap_or_default();
        if s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('S'))
        {
            return child;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sleep did not start");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Seizes `pid`, interrupts it and waits for the PTRACE_EVENT_STOP.
fn seize_and_stop(pid: i32) {
    ptrace::seize(
        pid,
        ptrace::PTRACE_O_TRACESYSGOOD | ptrace::PTRACE_O_EXITKILL,
    )
    .unwrap();
    ptrace::interrupt(pid).unwrap();
    let st = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)).unwrap();
    assert!(
        matches!(st, WaitStatus::PtraceEvent(_, _, ptrace::PTRACE_EVENT_STOP)),
        "unexpected stop {st:?}"
    );
}

/// Kills `pid` and reaps it (also reaps through ptrace stops).
fn kill_and_reap(pid: i32) {
    // SAFETY: kill takes integers only.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn regs_bytes(r: &libc::user_regs_struct) -> Vec<u8> {
    // SAFETY: user_regs_struct is plain integers, no padding.
    unsafe {
        std::slice::from_raw_parts(
            (r as *const libc::user_regs_struct).cast::<u8>(),
            ptrace::PRSTATUS_SIZE,
        )
    }
    .to_vec()
}

fn maps_have(pid: i32, addr: u64) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines().any(|l| {
        let (s, e) = l
            .split_whitespace()
            .next()
            .unwrap()
            .split_once('-')
            .unwrap();
        let (s, e) = (
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
        );
        s <= addr && addr < e
    })
}

#[test]
fn inject_getpid_mmap_munmap_and_restore() {
    let child = spawn_sleep("1");
    let pid = child.id() as i32;
    let started = Instant::now();
    seize_and_stop(pid);

    let gadget = find_syscall_gadget(pid).unwrap();
    let before = ptrace::get_regs(pid).unwrap();
    let mask_before = ptrace::get_sigmask(pid).unwrap();
    let mut inj = Injector::new(pid, gadget).unwrap();
    assert_eq!(regs_bytes(inj.saved_regs()), regs_bytes(&before));

    let got = inj.syscall(libc::SYS_getpid, [0; 6]).unwrap();
    assert_eq!(got, i64::from(pid), "injected getpid");

    let addr = inj
        .syscall(
            libc::SYS_mmap,
            [
                0,
                4096,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )
        .unwrap();
    assert!(
        addr > 0 && addr % 4096 == 0,
        "injected mmap returned {addr}"
    );
    assert!(
        maps_have(pid, addr as u64),
        "mapping at {addr:#x} not in maps"
    );
    let r = inj
        .syscall(libc::SYS_munmap, [addr as u64, 4096, 0, 0, 0, 0])
        .unwrap();
    assert_eq!(r, 0, "injected munmap");
    assert!(
        !maps_have(pid, addr as u64),
        "mapping at {addr:#x} still in maps"
    );
    let bad = inj
        .syscall(libc::SYS_close, [u64::from(u32::MAX >> 1), 0, 0, 0, 0, 0])
        .unwrap();
    assert_eq!(bad, -i64::from(libc::EBADF), "errors come back as -errno");
    inj.finish().unwrap();

    // The registers are back, with the interrupted nanosleep set up to
    // restart as the kernel would have done.
    let mut expected = before;
    apply_syscall_restart(&mut expected);
    assert_eq!(
        regs_bytes(&ptrace::get_regs(pid).unwrap()),
        regs_bytes(&expected)
    );
    assert_eq!(ptrace::get_sigmask(pid).unwrap(), mask_before);

    // Resumed, the tracee finishes its sleep normally.
    ptrace::detach(pid, 0).unwrap();
    let st = waitpid(Pid::from_raw(pid), None).unwrap();
    assert_eq!(
        st,
        WaitStatus::Exited(Pid::from_raw(pid), 0),
        "sleep after injection"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "sleep was cut short"
    );
    drop(child);
}

/// Calls started in several tracees at once (start, pass the entry, finish)
/// each return their own tracee's result, leave its registers and mask as
/// they were, and the tracees go on as before.
#[test]
fn injected_calls_overlapping_in_several_tracees() {
    let children: Vec<Child> = (0..3).map(|_| spawn_sleep("1")).collect();
    let pids: Vec<i32> = children.iter().map(|c| c.id() as i32).collect();
    let mut injs = Vec::new();
    let mut before = Vec::new();
    for &pid in &pids {
        seize_and_stop(pid);
        let gadget = find_syscall_gadget(pid).unwrap();
        before.push((
            ptrace::get_regs(pid).unwrap(),
            ptrace::get_sigmask(pid).unwrap(),
        ));
        injs.push(Injector::new(pid, gadget).unwrap());
    }
    for _ in 0..2 {
        for inj in injs.iter_mut() {
            inj.start_syscall(libc::SYS_getpid, [0; 6]).unwrap();
        }
        for inj in injs.iter_mut() {
            inj.pass_entry().unwrap();
        }
        for (inj, &pid) in injs.iter_mut().zip(&pids) {
            assert_eq!(inj.finish_syscall().unwrap(), i64::from(pid));
        }
    }
    for ((inj, &pid), (regs, mask)) in injs.into_iter().zip(&pids).zip(&before) {
        inj.finish().unwrap();
        let mut expected = *regs;
        apply_syscall_restart(&mut expected);
        assert_eq!(
            regs_bytes(&ptrace::get_regs(pid).unwrap()),
            regs_bytes(&expected)
        );
        assert_eq!(ptrace::get_sigmask(pid).unwrap(), *mask);
        ptrace::detach(pid, 0).unwrap();
    }
    for (pid, child) in pids.into_iter().zip(children) {
        let st = waitpid(Pid::from_raw(pid), None).unwrap();
        assert_eq!(
            st,
            WaitStatus::Exited(Pid::from_raw(pid), 0),
            "sleep after injection"
        );
        drop(child);
    }
}

#[test]
fn a_signal_arriving_during_injection_is_kept_for_the_tracee() {
    let child = spawn_sleep("30");
    let pid = child.id() as i32;
    seize_and_stop(pid);
    let mask = ptrace::get_sigmask(pid).unwrap();
    let gadget = find_syscall_gadget(pid).unwrap();
    let mut inj = Injector::new(pid, gadget).unwrap();
    // SAFETY: kill with integer arguments, on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    assert_eq!(
        inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(),
        i64::from(pid)
    );
    inj.finish().unwrap();
    assert_eq!(ptrace::get_sigmask(pid).unwrap(), mask);
    let queued = ptrace::peek_siginfo(pid, true).unwrap();
    assert!(
        queued.iter().any(|i| i.si_signo == libc::SIGUSR1),
        "SIGUSR1 lost"
    );
    // Released, the tracee receives it: sleep dies of SIGUSR1 (reported to
    // us first as a signal-delivery stop, which we pass on).
    ptrace::cont(pid, 0).unwrap();
    let st = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)).unwrap();
    assert_eq!(
        st,
        WaitStatus::Stopped(Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1)
    );
    ptrace::detach(pid, libc::SIGUSR1).unwrap();
    let st = waitpid(Pid::from_raw(pid), None).unwrap();
    assert_eq!(
        st,
        WaitStatus::Signaled(Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1, false)
    );
    drop(child);
}

/// Between two injected syscalls the thread holds its own registers and
/// signal mask, so a tracer killed there leaves nothing of the injection in
/// it. Also measures what putting them back costs per call.
#[test]
fn between_injected_syscalls_the_thread_holds_its_own_state() {
    let child = spawn_sleep("30");
    let pid = child.id() as i32;
    seize_and_stop(pid);
    let before = ptrace::get_regs(pid).unwrap();
    let mask_before = ptrace::get_sigmask(pid).unwrap();
    let mut expected = before;
    apply_syscall_restart(&mut expected);
    let gadget = find_syscall_gadget(pid).unwrap();
    let mut inj = Injector::new(pid, gadget).unwrap();
    assert_eq!(
        ptrace::get_sigmask(pid).unwrap(),
        mask_before,
        "creating the injector changed the signal mask"
    );
    const CALLS: u32 = 2000;
    let t = Instant::now();
    for _ in 0..CALLS {
        assert_eq!(
            inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(),
            i64::from(pid)
        );
    }
    let per_call = t.elapsed() / CALLS;
    assert_eq!(
        regs_bytes(&ptrace::get_regs(pid).unwrap()),
        regs_bytes(&expected),
        "registers between injected syscalls"
    );
    assert_eq!(
        ptrace::get_sigmask(pid).unwrap(),
        mask_before,
        "signal mask between injected syscalls"
    );
    // What the put-back adds to each call: SETREGS and two SETSIGMASK.
    let t = Instant::now();
    for _ in 0..CALLS {
        ptrace::set_sigmask(pid, !0u64).unwrap();
        ptrace::set_regs(pid, &expected).unwrap();
        ptrace::set_sigmask(pid, mask_before).unwrap();
    }
    let put_back = t.elapsed() / CALLS;
    eprintln!("injected getpid: {per_call:?} per call, of which {put_back:?} keep the thread's own state between calls");
    assert!(
        put_back < Duration::from_micros(50),
        "putting the state back costs {put_back:?} per call"
    );
    inj.finish().unwrap();
    ptrace::detach(pid, 0).unwrap();
    kill_and_reap(pid);
    drop(child);
}

#[test]
fn regsets_sigmask_siginfo_rseq_syscall_info() {
    let child = spawn_sleep("30");
    let pid = child.id() as i32;
    seize_and_stop(pid);

    let xstate = ptrace::get_xstate(pid).unwrap();
    let expected = cpu::xsave_size().unwrap() as usize;
    eprintln!(
        "xstate: {} bytes, XCR0 {:#x}",
        xstate.len(),
        cpu::xcr0().unwrap()
    );
    assert_eq!(xstate.len(), expected, "NT_X86_XSTATE size vs CPUID 0xd");
    assert_eq!(cpu::xstate_xfeatures(&xstate), cpu::xcr0());
    ptrace::set_xstate(pid, &xstate).unwrap();
    assert_eq!(ptrace::get_xstate(pid).unwrap(), xstate);

    let regs = ptrace::get_regs(pid).unwrap();
    ptrace::set_regs(pid, &regs).unwrap();

    let usr1 = 1u64 << (libc::SIGUSR1 - 1);
    let mask = ptrace::get_sigmask(pid).unwrap();
    ptrace::set_sigmask(pid, mask | usr1).unwrap();
    assert_eq!(ptrace::get_sigmask(pid).unwrap(), mask | usr1);

    assert!(ptrace::peek_siginfo(pid, true).unwrap().is_empty());
    // SAFETY: kill takes integers only.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    let queued = ptrace::peek_siginfo(pid, true).unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].si_signo, libc::SIGUSR1);
    // SAFETY: a kill(2) siginfo carries si_pid.
    assert_eq!(unsafe { queued[0].si_pid() }, std::process::id() as i32);
    assert!(ptrace::peek_siginfo(pid, false).unwrap().is_empty());

    let rseq = ptrace::get_rseq_config(pid).unwrap();
    if rseq.rseq_abi_pointer != 0 {
        assert!(rseq.rseq_abi_size >= 32);
        assert_ne!(rseq.signature, 0);
    }

    let info = ptrace::get_syscall_info(pid).unwrap();
    assert_eq!(info.op, ptrace::SyscallOp::None);
    assert_eq!(info.instruction_pointer, regs.rip);

    // No seccomp filter in sleep: EINVAL (not in filter mode).
    let e = ptrace::seccomp_get_filter(pid, 0).unwrap_err();
    assert_eq!(e.errno, Errno::EINVAL);

    kill_and_reap(pid);
    drop(child);
}

#[test]
fn pidfd_and_kcmp() {
    let mut child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let fd = pidfd::pidfd_open(pid).unwrap();
    pidfd::pidfd_send_signal(fd.as_fd(), 0).unwrap();
    let dup = pidfd::pidfd_getfd(fd.as_fd(), 0).unwrap();
    let ft = std::fs::File::from(dup).metadata().unwrap().file_type();
    use std::os::unix::fs::FileTypeExt;
    assert!(ft.is_fifo(), "child's stdin is a pipe");
    let me = std::process::id() as i32;
    assert!(kcmp::kcmp(me, me, kcmp::KcmpType::Vm, 0, 0)
        .unwrap()
        .is_equal());
    assert!(!kcmp::kcmp(me, pid, kcmp::KcmpType::Vm, 0, 0)
        .unwrap()
        .is_equal());
    pidfd::pidfd_send_signal(fd.as_fd(), libc::SIGKILL).unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(
        pidfd::pidfd_send_signal(fd.as_fd(), 0).unwrap_err().errno,
        Errno::ESRCH
    );
}

/// clone3 followed at once by execve of `sh -c script` in the child (the
/// fork+exec pattern, sound in a multithreaded test process: the child only
/// calls execve and _exit, with everything allocated beforehand). Returns
/// the child's PID as the parent sees it and its exit code.
fn clone3_exec_sh(flags: u64, set_tid: &[i32], script: &str) -> Result<(i32, i32), crate::Error> {
    use std::ffi::CString;
    let sh = CString::new("/bin/sh").unwrap();
    let args = [
        sh.clone(),
        CString::new("-c").unwrap(),
        CString::new(script).unwrap(),
    ];
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: the child only calls execve and _exit (async-signal-safe) on
    // memory prepared before the clone.
    let pid = unsafe { clone3::clone3(flags, libc::SIGCHLD as u64, set_tid) }?;
    if pid == 0 {
        // SAFETY: execve with NUL-terminated argv/envp arrays; _exit never returns.
        unsafe {
            libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    match waitpid(Pid::from_raw(pid), None).unwrap() {
        WaitStatus::Exited(_, code) => Ok((pid, code)),
        other => panic!("clone3 child: {other:?}"),
    }
}

#[test]
fn clone3_set_tid_in_new_pid_namespace() {
    // PID 1 in a fresh PID namespace, chosen through set_tid.
    let (_, code) = clone3_exec_sh(libc::CLONE_NEWPID as u64, &[1], "test $$ -eq 1").unwrap();
    assert_eq!(code, 0, "$$ in the new namespace is 1");

    // Two levels at once: 1 in a new namespace and a chosen PID in ours.
    let me = std::process::id() as i32;
    let mut done = false;
    for candidate in (0..50).map(|i| 20_000 + (me * 7 + i * 131) % 10_000) {
        match clone3_exec_sh(libc::CLONE_NEWPID as u64, &[1, candidate], "test $$ -eq 1") {
            Ok((pid, code)) => {
                assert_eq!(pid, candidate, "PID in the parent namespace");
                assert_eq!(code, 0, "PID 1 in the new namespace");
                done = true;
                break;
            }
            Err(e) if e.errno == Errno::EEXIST => continue,
            Err(e) => panic!("nested set_tid: {e}"),
        }
    }
    assert!(done, "no free PID found for the nested set_tid test");

    // A PID that is taken: EEXIST, and no child is created.
    let e = clone3_exec_sh(0, &[me], "exit 0").unwrap_err();
    assert_eq!(e.errno, Errno::EEXIST);
}

#[test]
fn pagemap_scan_reports_present_pages() {
    let page = 4096usize;
    // SAFETY: a fresh private anonymous mapping, unmapped at the end.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            16 * page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let base = base as u64;
    for i in [0u64, 1, 2, 3, 8] {
        // SAFETY: inside the mapping created above.
        unsafe { *((base + i * page as u64) as *mut u8) = 1 };
    }
    let pm = std::fs::File::open("/proc/self/pagemap").unwrap();
    let regions = mm::pagemap_scan(
        pm.as_fd(),
        base,
        base + 16 * page as u64,
        mm::PAGE_IS_PRESENT,
        mm::PAGE_IS_PRESENT,
    )
    .unwrap();
    let p = page as u64;
    assert_eq!(
        regions,
        vec![
            mm::PageRegion {
                start: base,
                end: base + 4 * p,
                categories: mm::PAGE_IS_PRESENT
            },
            mm::PageRegion {
                start: base + 8 * p,
                end: base + 9 * p,
                categories: mm::PAGE_IS_PRESENT
            },
        ]
    );
    // SAFETY: unmapping the region mapped above, no references remain.
    unsafe { libc::munmap(base as *mut libc::c_void, 16 * page) };
}

#[test]
fn uffd_wp_async_dirty_tracking() {
    let page = 4096u64;
    let len = 8 * page;
    // SAFETY: a fresh private anonymous mapping, unmapped at the end.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as u64;
    let fd = uffd::userfaultfd(libc::O_CLOEXEC | uffd::UFFD_USER_MODE_ONLY).unwrap();
    let want = uffd::UFFD_FEATURE_WP_ASYNC | uffd::UFFD_FEATURE_WP_UNPOPULATED;
    let got = uffd::api(fd.as_fd(), want).unwrap();
    assert_eq!(got & want, want);
    uffd::register(fd.as_fd(), base, len, uffd::UFFDIO_REGISTER_MODE_WP).unwrap();
    uffd::writeprotect(fd.as_fd(), base, len, true).unwrap();
    // SAFETY: inside the mapping; WP_ASYNC resolves the write fault in-kernel.
    unsafe { *((base + 5 * page) as *mut u8) = 7 };
    let pm = std::fs::File::open("/proc/self/pagemap").unwrap();
    let written = mm::pagemap_scan(
        pm.as_fd(),
        base,
        base + len,
        mm::PAGE_IS_WRITTEN,
        mm::PAGE_IS_WRITTEN,
    )
    .unwrap();
    assert_eq!(
        written,
        vec![mm::PageRegion {
            start: base + 5 * page,
            end: base + 6 * page,
            categories: mm::PAGE_IS_WRITTEN
        }]
    );
    uffd::unregister(fd.as_fd(), base, len).unwrap();
    // SAFETY: unmapping the region mapped above.
    unsafe { libc::munmap(base as *mut libc::c_void, len as usize) };
}

#[test]
fn mm_map_size_and_vdso_remap_needs_unmapped_vdso() {
    assert_eq!(mm::prctl_mm_map_size().unwrap(), 104);
    let e = mm::arch_map_vdso_64(0x7000_0000_0000).unwrap_err();
    assert_eq!(e.errno, Errno::EEXIST, "a vDSO is already mapped");
}

#[test]
fn error_names_call_and_errno() {
    let e = pidfd::pidfd_open(-5).unwrap_err();
    assert_eq!(e.call, "pidfd_open");
    assert_eq!(e.to_string(), format!("pidfd_open: {}", Errno::EINVAL));
}

/// The batch loop of a restore trampoline runs a table of syscalls in one
/// ptrace round trip, stores each result and stops at the first failing call,
/// reporting its index; a later batch from the same trampoline runs to its end.
#[test]
fn syscall_batch_runs_a_table_and_stops_at_the_first_failure() {
    use crate::inject::{BATCH_CODE, BATCH_ENTRY};
    use std::os::unix::fs::FileExt;

    let child = spawn_sleep("30");
    let pid = child.id() as i32;
    seize_and_stop(pid);
    let mut inj = Injector::new(pid, find_syscall_gadget(pid).unwrap()).unwrap();
    let tramp = inj
        .syscall(
            libc::SYS_mmap,
            [
                0,
                2 * 4096,
                (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )
        .unwrap() as u64;
    assert!(
        tramp > 0 && tramp.is_multiple_of(4096),
        "trampoline mmap: {tramp}"
    );
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .unwrap();
    // `syscall; int3` first (single calls), the loop at offset 16.
    mem.write_all_at(&[0x0f, 0x05, 0xcc], tramp).unwrap();
    mem.write_all_at(&BATCH_CODE, tramp + 16).unwrap();
    inj.set_trap_gadget(tramp);
    let table = tramp + 4096;
    let sentinel = 0x5a5a_5a5a_u64;
    let write_table = |calls: &[(i64, [u64; 6])]| {
        let mut b = Vec::new();
        for (nr, args) in calls {
            b.extend_from_slice(&(*nr as u64).to_le_bytes());
            for a in args {
                b.extend_from_slice(&a.to_le_bytes());
            }
            b.extend_from_slice(&sentinel.to_le_bytes());
        }
        mem.write_all_at(&b, table).unwrap();
    };
    let results = |n: usize| -> Vec<i64> {
        let mut b = vec![0u8; n * BATCH_ENTRY];
        mem.read_exact_at(&mut b, table).unwrap();
        (0..n)
            .map(|k| {
                let at = k * BATCH_ENTRY + 56;
                i64::from_le_bytes(b[at..at + 8].try_into().unwrap())
            })
            .collect()
    };

    let bad_fd = u64::from(u32::MAX >> 1);
    write_table(&[
        (libc::SYS_getpid, [0; 6]),
        (
            libc::SYS_mmap,
            [
                0,
                4096,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        ),
        (libc::SYS_close, [bad_fd, 0, 0, 0, 0, 0]),
        (libc::SYS_getpid, [0; 6]),
    ]);
    let reached = inj.run_batch(tramp + 16, table, 4).unwrap();
    assert_eq!(reached, 2, "the batch stops at the failing close");
    let got = results(4);
    assert_eq!(got[0], i64::from(pid), "getpid in the batch");
    let area = got[1] as u64;
    assert!(
        area > 0 && area.is_multiple_of(4096),
        "mmap in the batch: {}",
        got[1]
    );
    assert!(maps_have(pid, area), "batch mmap at {area:#x} not in maps");
    assert_eq!(got[2], -i64::from(libc::EBADF), "the failing call's errno");
    assert_eq!(got[3] as u64, sentinel, "no call ran after the failure");

    // Single calls still work at the same trampoline between batches.
    assert_eq!(
        inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(),
        i64::from(pid)
    );

    write_table(&[
        (libc::SYS_munmap, [area, 4096, 0, 0, 0, 0]),
        (libc::SYS_getppid, [0; 6]),
    ]);
    assert_eq!(inj.run_batch(tramp + 16, table, 2).unwrap(), 2, "all ran");
    let got = results(2);
    assert_eq!(got[0], 0, "munmap in the batch");
    assert_eq!(got[1], i64::from(std::process::id() as i32), "getppid");
    assert!(!maps_have(pid, area), "batch munmap left {area:#x} mapped");
    // An empty table runs nothing.
    assert_eq!(inj.run_batch(tramp + 16, table, 0).unwrap(), 0);
    inj.finish().unwrap();
    kill_and_reap(pid);
    drop(child);
}

#[test]
fn procmap_query_names_the_vdso_and_misses_a_hole() {
    // SAFETY: getauxval reads this process's auxiliary vector.
    let vdso = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    assert_ne!(vdso, 0, "no vDSO in the auxiliary vector");
    let maps = std::fs::File::open("/proc/self/maps").unwrap();
    let (start, end, name) = match mm::procmap_query(maps.as_fd(), vdso) {
        Ok(Some(area)) => area,
        Ok(None) => panic!("no area at the vDSO {vdso:#x}"),
        Err(e) if e.errno == Errno::ENOTTY => {
            println!("skipping: the kernel lacks PROCMAP_QUERY");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(start, vdso);
    assert!(end > start);
    assert_eq!(name, "[vdso]");
    // The listed area agrees.
    let text = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = format!("{start:x}-{end:x} ");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&line) && l.ends_with("[vdso]")),
        "{line} not listed"
    );
    // Page 0 is never mapped.
    assert_eq!(mm::procmap_query(maps.as_fd(), 0).unwrap(), None);
}
