//! `Launch::Custom` as restore uses it: init runs a closure that forks the
//! workload itself; init then supervises it like a command. Also the library's
//! freeze/thaw, status, lock and wait. Runs without the test harness: creating
//! a sandbox forks, which needs a single-threaded process.

use std::fs;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use sandbox::{Error, InitContext, Launch, Profile, Sandbox, Status};

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut profile = Profile::default();
    profile.cgroup.parent = format!("stasis-tests/custom-{}", std::process::id());
    let captured = String::from("data captured by the closure");

    let launch = Launch::Custom(Box::new(move |ctx: &InitContext| {
        // SAFETY: init is single-threaded; the child only writes and waits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            ctx.close_inherited_fds(&[]);
            for fd in ctx.init_fds() {
                // SAFETY: closing init's own fds in the child.
                unsafe { libc::close(*fd) };
            }
            // SAFETY: stdio from the context's fds, owned by this process.
            unsafe {
                libc::setsid();
                libc::dup2(ctx.devnull_fd, 0);
                libc::dup2(ctx.log_fd, 1);
                libc::dup2(ctx.log_fd, 2);
            }
            // Init blocks every signal; the workload takes SIGTERM as it comes.
            // SAFETY: an initialised, empty mask.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            }
            // SAFETY: fd 1 is the log, dup'ed above; ManuallyDrop keeps it open.
            let mut out = std::mem::ManuallyDrop::new(unsafe { fs::File::from_raw_fd(1) });
            // SAFETY: getpid has no arguments.
            let me = unsafe { libc::getpid() };
            let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let _ = writeln!(out, "pid={me} host={} {} READY", host.trim(), captured);
            loop {
                // SAFETY: pause until a signal ends the process.
                unsafe { libc::pause() };
            }
        }
        Ok(pid)
    }));

    let mut sb = Sandbox::create(dir.path(), Some("custom"), &profile, launch).expect("create");
    assert_eq!(sb.workload_ns_pid(), Some(2));
    let host_pid = sb.workload_pid().expect("workload's host PID");
    assert_ne!(host_pid, 2);
    wait_for("READY in the log", || {
        fs::read_to_string(sb.log_path())
            .unwrap_or_default()
            .contains("READY")
    });
    let log = fs::read_to_string(sb.log_path()).unwrap();
    assert!(
        log.contains("pid=2 host=custom data captured by the closure READY"),
        "{log}"
    );

    // Library freeze/thaw, as dump uses it.
    assert_eq!(sb.status().unwrap(), Status::Running);
    sb.cgroup().freeze().expect("freeze");
    assert!(sb.cgroup().is_frozen().unwrap());
    assert_eq!(sb.status().unwrap(), Status::Frozen);
    let procs = sb.cgroup().procs().unwrap();
    assert!(
        procs.contains(&host_pid) && procs.contains(&sb.init_pid()),
        "{procs:?}"
    );
    sb.cgroup().thaw().expect("thaw");
    assert_eq!(sb.status().unwrap(), Status::Running);

    // One operation at a time.
    let guard = sb.lock_exclusive().unwrap();
    let other = Sandbox::open(dir.path(), "custom").unwrap();
    assert!(matches!(other.lock_exclusive(), Err(Error::Locked(_))));
    drop(guard);
    assert!(other.lock_exclusive().is_ok());

    // SIGTERM goes through init to the workload (default action: die).
    sb.signal(libc::SIGTERM).unwrap();
    let code = sb.wait().unwrap();
    assert_eq!(code, 128 + libc::SIGTERM);
    assert!(matches!(sb.status().unwrap(), Status::Exited(Some(_))));
    let dirs = sb.cgroup().dirs();
    assert!(dirs.iter().all(|d| !d.exists()), "cgroup left: {dirs:?}");
    sb.remove().unwrap();
    assert!(!dir.path().join("custom").exists());

    // A failing closure: an error, and nothing left behind.
    let launch = Launch::Custom(Box::new(|_: &InitContext| {
        Err("image is corrupt".to_string())
    }));
    match Sandbox::create(dir.path(), Some("broken"), &profile, launch) {
        Err(Error::Launch(m)) => assert_eq!(m, "image is corrupt"),
        other => panic!("expected a launch error, got {other:?}"),
    }
    assert!(!dir.path().join("broken").exists());
    for d in dirs {
        let _ = fs::remove_dir(d.parent().unwrap());
        let _ = fs::remove_dir(d.parent().unwrap().parent().unwrap());
    }
    println!("test custom_launch ... ok");
}
