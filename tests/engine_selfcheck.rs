//! The workloads' own checks, without stasis: run directly, signalled with
//! SIGTERM, every workload must say PASS; with STASIS_TEST_CORRUPT=1 (one byte
//! or value of its state changed before the checks) it must say FAIL. This
//! proves that a PASS after a restore means something.

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {EXIT_TIMEOUT:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `argv` (whose last argument is the workload directory `dir`)
/// directly, waits for ready, sends SIGTERM and returns (verdict, exit code).
fn run_direct(argv: &[OsString], dir: &Path, corrupt: bool) -> (String, Option<i32>) {
    let what = format!("{argv:?} (corrupt: {corrupt})");
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if corrupt {
        cmd.env("STASIS_TEST_CORRUPT", "1");
    } else {
        cmd.env_remove("STASIS_TEST_CORRUPT");
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let ready = dir.join("ready");
    let deadline = Instant::now() + READY_TIMEOUT;
    while !ready.exists() {
        if let Some(st) = child.try_wait().expect("try_wait") {
            panic!("{what} exited ({st}) before it was ready");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} was not ready within {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill() with a live child's PID (not yet reaped, so not reused)
    // and a valid signal number touches no memory of ours.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, SIGTERM): {}",
        std::io::Error::last_os_error()
    );
    let status = wait_exit(&mut child, &what);
    let verdict = read_trimmed(&dir.join("verdict"))
        .unwrap_or_else(|| panic!("{what} wrote no verdict ({status})"));
    (verdict, status.code())
}

/// Checks the PASS and the FAIL path of one workload, each in a fresh directory.
fn selfcheck(tag: &str, argv: impl Fn(&Path) -> Vec<OsString>) {
    for corrupt in [false, true] {
        let h = Harness::new(&format!("self-{tag}"));
        let (v, code) = run_direct(&argv(&h.dir), &h.dir, corrupt);
        if corrupt {
            assert!(
                v.starts_with("FAIL: "),
                "{tag} with its state corrupted says: {v}"
            );
            assert_eq!(
                code,
                Some(1),
                "{tag} with its state corrupted: exit code ({v})"
            );
        } else {
            assert!(v == "PASS" || v.starts_with("PASS "), "{tag} says: {v}");
            assert_eq!(code, Some(0), "{tag}: exit code ({v})");
        }
        eprintln!("{tag} (corrupt: {corrupt}): {v}");
    }
}

fn c_workload(name: &str, args: &[&str]) -> impl Fn(&Path) -> Vec<OsString> {
    let bin = workload(name).into_os_string();
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    move |dir| {
        let mut v = vec![bin.clone()];
        v.extend(args.iter().cloned());
        v.push(dir.as_os_str().to_owned());
        v
    }
}

#[test]
fn selfcheck_counter() {
    selfcheck("counter", c_workload("counter", &[]));
}

#[test]
fn selfcheck_memory() {
    selfcheck("memory", c_workload("memory", &[]));
}

#[test]
fn selfcheck_memflags() {
    selfcheck("memflags", c_workload("memflags", &[]));
}

#[test]
fn selfcheck_memfdexec() {
    selfcheck("memfdexec", c_workload("memfdexec", &[]));
}

#[test]
fn selfcheck_membarrier() {
    selfcheck("membarrier", c_workload("membarrier", &[]));
}

#[test]
fn selfcheck_aio() {
    selfcheck("aio", c_workload("aio", &[]));
}

#[test]
fn selfcheck_bigmem() {
    // 64 MiB: the same code path as the 1 GiB test, quicker.
    selfcheck("bigmem", c_workload("bigmem", &["64"]));
}

#[test]
fn selfcheck_livemem() {
    selfcheck("livemem", c_workload("livemem", &["64", "2"]));
}

#[test]
fn selfcheck_pipe() {
    selfcheck("pipe", c_workload("pipe", &[]));
}

#[test]
fn selfcheck_files() {
    selfcheck("files", c_workload("files", &[]));
}

#[test]
fn selfcheck_tree() {
    selfcheck("tree", c_workload("tree", &[]));
}

#[test]
fn selfcheck_procattrs() {
    selfcheck("procattrs", c_workload("procattrs", &[]));
}

#[test]
fn selfcheck_stopped() {
    selfcheck("stopped", c_workload("stopped", &[]));
}

#[test]
fn selfcheck_netlink() {
    selfcheck("netlink", c_workload("netlink", &[]));
}

#[test]
fn selfcheck_signals() {
    selfcheck("signals", c_workload("signals", &[]));
}

#[test]
fn selfcheck_avx512() {
    if !cpu_has("avx512f") {
        eprintln!("skipping selfcheck_avx512: this CPU has no avx512f (see /proc/cpuinfo)");
        return;
    }
    selfcheck("avx512", c_workload("vecregs", &["avx512"]));
}

#[test]
fn selfcheck_avx2() {
    if !cpu_has("avx2") {
        eprintln!("skipping selfcheck_avx2: this CPU has no avx2 (see /proc/cpuinfo)");
        return;
    }
    selfcheck("avx2", c_workload("vecregs", &["avx2"]));
}

#[test]
fn selfcheck_refuse_socket() {
    selfcheck("socket", c_workload("refuse", &["socket"]));
}

#[test]
fn selfcheck_threads() {
    selfcheck("threads", c_workload("threads", &["8"]));
}

#[test]
fn selfcheck_refuse_io_uring() {
    selfcheck("io_uring", c_workload("refuse", &["io_uring"]));
}

#[test]
fn selfcheck_fds() {
    for mode in [
        "eventfd",
        "timerfd",
        "signalfd",
        "epoll",
        "memfd",
        "locks",
        "inotify",
        "pidfd",
        "maplocks",
        "hsperf",
        "refuse-pidfd",
        "refuse-epoll",
        "refuse-uffd",
        "refuse-inotify",
        "refuse-maplock",
        "pty",
    ] {
        selfcheck(&format!("fds-{mode}"), c_workload("fds", &[mode]));
    }
}

#[test]
fn selfcheck_many_fds() {
    selfcheck("manyfds", c_workload("manyfds", &["3000"]));
}

#[test]
fn selfcheck_deleted() {
    for mode in ["tmpfile", "ghost", "dirs"] {
        selfcheck(&format!("deleted-{mode}"), c_workload("deleted", &[mode]));
    }
}

#[test]
fn selfcheck_pty() {
    selfcheck("pty", c_workload("pty", &[]));
}

#[test]
fn selfcheck_shell_loop() {
    selfcheck("shloop", |dir| {
        vec![
            "/bin/sh".into(),
            "-c".into(),
            SHELL_LOOP.into(),
            "sh".into(),
            dir.into(),
        ]
    });
}

#[test]
fn selfcheck_python() {
    selfcheck("python", |dir| {
        vec![python3().into(), python_workload().into(), dir.into()]
    });
}

#[test]
fn selfcheck_unix() {
    selfcheck("unix", c_workload("unix", &[]));
}

#[test]
fn selfcheck_seqpacket() {
    selfcheck("seqpacket", c_workload("seqpacket", &[]));
}

#[test]
fn selfcheck_inet() {
    selfcheck("inet", c_workload("inet", &[]));
}

#[test]
fn selfcheck_httpserver() {
    selfcheck("httpserver", |dir| {
        vec![
            python3().into(),
            std::path::Path::new(WORKLOADS).join("httpserver.py").into(),
            "0".into(),
            dir.into(),
        ]
    });
}

#[test]
fn selfcheck_tcp_loopback() {
    selfcheck("tcp", c_workload("tcp", &["loopback"]));
}

#[test]
fn selfcheck_tcp_halfclosed() {
    selfcheck("tcp-half", c_workload("tcp", &["halfclosed"]));
}

#[test]
fn selfcheck_tcp_unaccepted() {
    selfcheck("tcp-unaccepted", c_workload("tcp", &["unaccepted"]));
}

/// `tcp server` needs its client: the steps of the tests, without a dump.
#[test]
fn selfcheck_tcp_server() {
    use common::tcp_client::{TcpClient, CLIENT_BYTES, MORE_BYTES};
    for corrupt in [false, true] {
        let h = Harness::new("self-tcp-server");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut cmd = Command::new(workload("tcp"));
        cmd.args(["server", &port.to_string()])
            .arg(&h.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if corrupt {
            cmd.env("STASIS_TEST_CORRUPT", "1");
        } else {
            cmd.env_remove("STASIS_TEST_CORRUPT");
        }
        let mut child = cmd.spawn().expect("starting tcp server");
        let mut client = TcpClient::connect(([127, 0, 0, 1], port).into());
        let ready = h.path("ready");
        let deadline = Instant::now() + READY_TIMEOUT;
        while !ready.exists() {
            assert!(
                child.try_wait().expect("try_wait").is_none(),
                "tcp server exited before it was ready"
            );
            assert!(
                Instant::now() < deadline,
                "tcp server was not ready in time"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let wrote = read_number(&ready).expect("ready holds a number") as usize;
        client.go_on(wrote);
        // SAFETY: kill() with a live child's PID and a valid signal.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        assert_eq!(
            client.last_line(),
            format!("OK {}", CLIENT_BYTES + MORE_BYTES)
        );
        let status = wait_exit(&mut child, "tcp server");
        let v = read_trimmed(&h.path("verdict")).expect("a verdict");
        if corrupt {
            assert!(v.starts_with("FAIL: "), "corrupted tcp server says: {v}");
            assert_eq!(status.code(), Some(1));
        } else {
            assert!(v.starts_with("PASS"), "tcp server says: {v}");
            assert_eq!(status.code(), Some(0));
        }
    }
}

#[test]
fn selfcheck_shmem() {
    selfcheck("shmem", c_workload("shmem", &[]));
}

#[test]
fn selfcheck_sysvipc() {
    selfcheck("sysvipc", c_workload("sysvipc", &[]));
}

#[test]
fn selfcheck_timers() {
    selfcheck("timers", c_workload("timers", &[]));
}

#[test]
fn selfcheck_seccomp() {
    selfcheck("seccomp", c_workload("seccomp", &[]));
}

#[test]
fn selfcheck_endure() {
    selfcheck("endure", c_workload("endure", &[]));
}

/// The expectations are this process's own credentials, which the workload
/// inherits when run directly.
#[test]
fn selfcheck_creds() {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let field = |key: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:\t")))
            .unwrap_or_else(|| panic!("no {key} in /proc/self/status"))
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let expect = format!(
        "uid={},gid={},inh={},prm={},eff={},bnd={},amb={},nnp={}",
        field("Uid"),
        field("Gid"),
        field("CapInh"),
        field("CapPrm"),
        field("CapEff"),
        field("CapBnd"),
        field("CapAmb"),
        field("NoNewPrivs")
    );
    selfcheck("creds", c_workload("creds", &[&expect]));
}

#[test]
fn selfcheck_intact() {
    for mode in ["plain", "forker", "uring-child"] {
        selfcheck(
            &format!("intact-{mode}"),
            c_workload("intact", &[mode, "4"]),
        );
    }
}
