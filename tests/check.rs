//! End-to-end tests of `stasis check`: run the binary, read its JSON, and
//! check it against what the kernel really does: a feature reported ok is
//! used here, independently of the probe code; a feature reported missing
//! is shown to fail here too, where that can be tried safely.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const STASIS: &str = env!("CARGO_BIN_EXE_stasis");

fn stasis(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(STASIS);
    cmd.args(args)
        .env("STASIS_STATE_DIR", state)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run stasis")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn features(report: &Value) -> HashMap<String, Value> {
    report["features"]
        .as_array()
        .expect("features array")
        .iter()
        .map(|f| (f["name"].as_str().unwrap().to_string(), f.clone()))
        .collect()
}

fn status(f: &Value) -> &str {
    f["status"].as_str().unwrap()
}

/// A `sleep` that has finished exec'ing (spawn returns while the kernel
/// may still be building the new image) and sleeps.
fn spawn_sleep() -> std::process::Child {
    let child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn sleep");
    let stat = format!("/proc/{}/stat", child.id());
    let asleep = wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&stat)
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('S'))
            })
            .unwrap_or(false)
    });
    if !asleep {
        kill(child);
        panic!("sleep did not start");
    }
    child
}

fn kill(mut c: std::process::Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Start of the first mapping of `pid` (the executable's ELF header).
fn first_mapping(pid: u32) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let first = maps.lines().next().unwrap();
    u64::from_str_radix(first.split('-').next().unwrap(), 16).unwrap()
}

fn mount_of(fstype: &str, opt: Option<&str>) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut post = post.split(' ');
        let t = post.next()?;
        let opts = post.nth(1).unwrap_or_default();
        (t == fstype && opt.is_none_or(|o| opts.split(',').any(|x| x == o)))
            .then(|| PathBuf::from(pre.split(' ').nth(4).unwrap()))
    })
}

fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

fn own_pagemap_entry(addr: u64) -> u64 {
    let f = std::fs::File::open("/proc/self/pagemap").unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, addr / 4096 * 8).unwrap();
    u64::from_ne_bytes(b)
}

fn cap_effective(bit: u32) -> bool {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = s
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap() & (1 << bit) != 0
}

/// Freezes a `sleep` in a new cgroup under `root` and checks the kernel's
/// answer, for cgroup v2 (`v2`) or the v1 freezer.
fn freeze_in_cgroup(root: &Path, v2: bool) {
    let dir = root.join(format!("stasis-test-{}-{}", std::process::id(), v2));
    std::fs::create_dir(&dir).unwrap();
    let child = spawn_sleep();
    std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
    let frozen = if v2 {
        std::fs::write(dir.join("cgroup.freeze"), "1").unwrap();
        wait_for(Duration::from_secs(2), || {
            std::fs::read_to_string(dir.join("cgroup.events"))
                .unwrap()
                .contains("frozen 1")
        })
    } else {
        std::fs::write(dir.join("freezer.state"), "FROZEN").unwrap();
        wait_for(Duration::from_secs(2), || {
            std::fs::read_to_string(dir.join("freezer.state"))
                .unwrap()
                .trim()
                == "FROZEN"
        })
    };
    if v2 {
        std::fs::write(dir.join("cgroup.freeze"), "0").unwrap();
    } else {
        std::fs::write(dir.join("freezer.state"), "THAWED").unwrap();
    }
    kill(child);
    assert!(wait_for(Duration::from_secs(2), || std::fs::remove_dir(
        &dir
    )
    .is_ok()));
    assert!(frozen, "cgroup under {} did not freeze", root.display());
}

/// clone3 with set_tid and ns_last_pid, from a Python helper process (it
/// forks without exec, which only a single-threaded process may do).
const PID_HELPER: &str = r#"
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def clone3(flags, tids):
    arr = (ctypes.c_int * max(len(tids), 1))(*tids)
    args = struct.pack("11Q", flags, 0, 0, 0, 17, 0, 0, 0,
                       ctypes.addressof(arr) if tids else 0, len(tids), 0)
    buf = ctypes.create_string_buffer(args, 88)
    r = libc.syscall(435, buf, ctypes.c_long(88))
    if r < 0:
        raise OSError(ctypes.get_errno(), "clone3")
    return r
pid = clone3(0x20000000, [1])
if pid == 0:
    try:
        if os.getpid() != 1:
            os._exit(2)
        c = clone3(0, [4242])
        if c == 0:
            os._exit(0 if os.getpid() == 4242 else 3)
        _, st = os.waitpid(c, 0)
        if c != 4242 or os.waitstatus_to_exitcode(st) != 0:
            os._exit(4)
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write("499")
        c = os.fork()
        if c == 0:
            os._exit(0)
        os.waitpid(c, 0)
        os._exit(0 if c == 500 else 5)
    except BaseException:
        os._exit(6)
_, st = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(st))
"#;

/// Uses `name` here, independently of the probe. Returns false when the
/// test has no independent check for it.
fn verify_ok(name: &str, f: &Value) -> bool {
    match name {
        "pidfd-open" | "pidfd-send-signal" => {
            let child = spawn_sleep();
            // SAFETY: pidfd_open/pidfd_send_signal take integers and a null siginfo.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) };
            assert!(fd >= 0, "pidfd_open");
            // SAFETY: as above.
            let r =
                unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, libc::SIGKILL, 0usize, 0) };
            assert_eq!(r, 0, "pidfd_send_signal");
            let mut child = child;
            assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
            // SAFETY: closing the fd we got.
            unsafe { libc::close(fd as i32) };
        }
        "pidfd-getfd" => {
            let child = spawn_sleep();
            // SAFETY: pidfd syscalls with integer arguments.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) };
            // SAFETY: as above.
            let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, fd, 0, 0) };
            assert!(dup >= 0, "pidfd_getfd of the child's stdin");
            // SAFETY: fstat into a zeroed struct; closing our fds.
            unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                assert_eq!(libc::fstat(dup as i32, &mut st), 0);
                assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFIFO);
                libc::close(dup as i32);
                libc::close(fd as i32);
            }
            kill(child);
        }
        "process-vm" => {
            let child = spawn_sleep();
            let addr = first_mapping(child.id());
            let mut buf = [0u8; 4];
            let local = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: 4,
            };
            let remote = libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: 4,
            };
            // SAFETY: one local iovec over `buf`, one remote iovec.
            let n = unsafe { libc::process_vm_readv(child.id() as i32, &local, 1, &remote, 1, 0) };
            assert_eq!(n, 4, "process_vm_readv");
            assert_eq!(&buf, b"\x7fELF");
            kill(child);
        }
        "proc-mem-write" => {
            let child = spawn_sleep();
            let addr = first_mapping(child.id());
            let mem = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(format!("/proc/{}/mem", child.id()))
                .unwrap();
            mem.write_all_at(b"\x7fELF", addr)
                .expect("write into a read-only mapping");
            kill(child);
        }
        "ptrace-seize" | "ptrace-xstate" => {
            let child = spawn_sleep();
            let pid = child.id() as i32;
            let mut buf = vec![0u8; 16384];
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: ptrace on our own child; waitpid writes one int; the
            // regset buffer is described by `iov`.
            unsafe {
                assert_eq!(libc::ptrace(0x4206, pid, 0, 0), 0, "PTRACE_SEIZE");
                assert_eq!(libc::ptrace(0x4207, pid, 0, 0), 0, "PTRACE_INTERRUPT");
                let mut st = 0;
                assert_eq!(libc::waitpid(pid, &mut st, libc::__WALL), pid);
                assert!(libc::WIFSTOPPED(st));
                assert_eq!(
                    libc::ptrace(0x4204, pid, 0x202, &mut iov),
                    0,
                    "GETREGSET NT_X86_XSTATE"
                );
            }
            if name == "ptrace-xstate" {
                assert_eq!(
                    iov.iov_len as u64,
                    f["data"]["size"].as_u64().unwrap(),
                    "xstate size"
                );
                let xf = u64::from_ne_bytes(buf[464..472].try_into().unwrap());
                assert_eq!(format!("{xf:#x}"), f["data"]["xfeatures"].as_str().unwrap());
            }
            kill(child);
        }
        "kcmp" => {
            let me = std::process::id();
            // SAFETY: kcmp with integers.
            assert_eq!(unsafe { libc::syscall(libc::SYS_kcmp, me, me, 1, 0, 0) }, 0);
        }
        "map-files" => {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            let range = maps
                .lines()
                .next()
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string();
            std::fs::File::open(format!("/proc/self/map_files/{range}")).expect("open map_files");
        }
        "pagemap" | "pagemap-pfn" => {
            let b = Box::new([1u8; 4096]);
            let addr = std::hint::black_box(b.as_ptr()) as u64;
            let e = own_pagemap_entry(addr);
            assert!(e & (1 << 63) != 0, "present bit");
            if name == "pagemap-pfn" {
                assert!(e & ((1 << 55) - 1) != 0, "PFN");
            }
        }
        "soft-dirty" => {
            let b = Box::new([1u8; 8192]);
            std::fs::write("/proc/self/clear_refs", "4").unwrap();
            let p = std::hint::black_box(b.as_ptr()) as *mut u8;
            // SAFETY: writing into our own box.
            unsafe { std::ptr::write_volatile(p, 2) };
            assert!(
                own_pagemap_entry(p as u64) & (1 << 55) != 0,
                "soft-dirty bit"
            );
        }
        "cap-sys-admin" => assert!(cap_effective(21)),
        "cap-sys-ptrace" => assert!(cap_effective(19)),
        "cap-net-admin" => assert!(cap_effective(12)),
        "cap-sys-resource" => assert!(cap_effective(24)),
        "cap-checkpoint-restore" => assert!(cap_effective(40)),
        "cap-setuid" => assert!(cap_effective(7)),
        "cap-setgid" => assert!(cap_effective(6)),
        "vdso-layout" => {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            let mine: Vec<(String, u64)> = maps
                .lines()
                .filter_map(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    let name = *cols.get(5)?;
                    ["[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]"]
                        .contains(&name)
                        .then(|| {
                            let (s, e) = cols[0].split_once('-').unwrap();
                            let len = u64::from_str_radix(e, 16).unwrap()
                                - u64::from_str_radix(s, 16).unwrap();
                            (name.to_string(), len / 4096)
                        })
                })
                .collect();
            let reported: Vec<(String, u64)> = f["data"]["mappings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap().to_string(),
                        m["pages"].as_u64().unwrap(),
                    )
                })
                .collect();
            assert_eq!(mine, reported, "special mappings: names, sizes and order");
        }
        "pid-max" => {
            let host: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert_eq!(f["data"]["host"].as_u64(), Some(host));
        }
        "clone3-set-tid" | "ns-last-pid" | "ns-pid" => {
            let Ok(out) = Command::new("python3").args(["-c", PID_HELPER]).output() else {
                return false;
            };
            assert!(
                out.status.success(),
                "clone3/ns_last_pid helper: {:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        "ns-net" | "ns-uts" | "ns-ipc" | "ns-mnt" | "ns-cgroup" | "ns-time" | "ns-user" => {
            let flag = match name {
                "ns-net" => "--net",
                "ns-uts" => "--uts",
                "ns-ipc" => "--ipc",
                "ns-mnt" => "--mount",
                "ns-cgroup" => "--cgroup",
                "ns-time" => "--time",
                _ => "--user",
            };
            let Ok(st) = Command::new("unshare")
                .args([flag, "--fork", "true"])
                .status()
            else {
                return false;
            };
            assert!(st.success(), "unshare {flag}");
        }
        "cgroup-freezer" => match mount_of("cgroup2", None) {
            Some(m) => freeze_in_cgroup(&m, true),
            _ => freeze_in_cgroup(
                &mount_of("cgroup", Some("freezer")).expect("a freezer"),
                false,
            ),
        },
        "ns-user-unprivileged" => {
            let Ok(st) = Command::new("setpriv")
                .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
                .args(["unshare", "--user", "--map-root-user", "true"])
                .status()
            else {
                return false;
            };
            assert!(st.success(), "user namespace as nobody");
        }
        "pagemap-scan" => {
            use std::os::fd::AsRawFd;
            let b = Box::new([1u8; 8192]);
            let start = (std::hint::black_box(b.as_ptr()) as u64 + 4095) & !4095;
            let mut regions = [0u64; 3 * 4];
            // struct pm_scan_arg: size, flags, start, end, walk_end, vec,
            // vec_len, max_pages, category_inverted, category_mask,
            // category_anyof_mask, return_mask (PAGE_IS_PRESENT = 8).
            let mut arg: [u64; 12] = [
                96,
                0,
                start,
                start + 4096,
                0,
                regions.as_mut_ptr() as u64,
                4,
                0,
                0,
                8,
                0,
                8,
            ];
            let pm = std::fs::File::open("/proc/self/pagemap").unwrap();
            // SAFETY: PAGEMAP_SCAN with a valid pm_scan_arg pointing at `regions`.
            let n = unsafe { libc::ioctl(pm.as_raw_fd(), 0xc060_6610, arg.as_mut_ptr()) };
            assert_eq!(n, 1, "one present region");
            assert_eq!((regions[0], regions[1]), (start, start + 4096));
        }
        "cgroup-freeze-v2" => {
            freeze_in_cgroup(&mount_of("cgroup2", None).expect("cgroup2 mount"), true)
        }
        "cgroup-freezer-v1" => freeze_in_cgroup(
            &mount_of("cgroup", Some("freezer")).expect("freezer mount"),
            false,
        ),
        "memfd" => {
            // SAFETY: memfd_create with a valid C string; closing the fd.
            unsafe {
                let fd = libc::memfd_create(c"stasis-test".as_ptr(), 3);
                assert!(fd >= 0);
                libc::close(fd);
            }
        }
        "tcp-repair" => {
            use std::os::fd::AsRawFd;
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let on = 1i32;
            // SAFETY: setsockopt with a valid int.
            let r = unsafe {
                libc::setsockopt(
                    c.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_REPAIR,
                    (&on as *const i32).cast(),
                    4,
                )
            };
            assert_eq!(r, 0, "TCP_REPAIR on an established socket");
            let off = 0i32;
            // SAFETY: as above.
            unsafe {
                libc::setsockopt(
                    c.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_REPAIR,
                    (&off as *const i32).cast(),
                    4,
                )
            };
        }
        "so-peek-off" => {
            use std::os::fd::AsRawFd;
            let (_a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            let zero = 0i32;
            // SAFETY: setsockopt with a valid int (SO_PEEK_OFF = 42).
            let r = unsafe {
                libc::setsockopt(
                    b.as_raw_fd(),
                    libc::SOL_SOCKET,
                    42,
                    (&zero as *const i32).cast(),
                    4,
                )
            };
            assert_eq!(r, 0);
        }
        "userfaultfd" => {
            // SAFETY: userfaultfd with flags; closing the fd.
            unsafe {
                let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC);
                assert!(fd >= 0, "userfaultfd");
                libc::close(fd as i32);
            }
        }
        _ => return false,
    }
    true
}

/// Shows here that a feature reported missing really fails. Returns false
/// when that cannot be tried safely from the test.
fn verify_missing(name: &str) -> bool {
    match name {
        "soft-dirty" => {
            let b = Box::new([1u8; 8192]);
            let p = std::hint::black_box(b.as_ptr()) as *mut u8;
            let _ = std::fs::write("/proc/self/clear_refs", "4");
            // SAFETY: writing into our own box.
            unsafe { std::ptr::write_volatile(p, 2) };
            assert_eq!(
                own_pagemap_entry(p as u64) & (1 << 55),
                0,
                "soft-dirty bit set after all"
            );
        }
        "mm-set-mm-field" => {
            let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .collect();
            let arg_start: u64 = fields[48 - 3].parse().unwrap();
            // SAFETY: prctl with integers; setting arg_start to its current value.
            let r = unsafe { libc::prctl(libc::PR_SET_MM, 8, arg_start, 0, 0) };
            assert_eq!(r, -1, "single-field PR_SET_MM accepted");
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EPERM)
            );
        }
        "cap-sys-resource" => assert!(!cap_effective(24)),
        "cap-checkpoint-restore" => assert!(!cap_effective(40)),
        "cap-net-admin" => assert!(!cap_effective(12)),
        _ => return false,
    }
    true
}

#[test]
fn json_report_matches_what_the_kernel_does() {
    let state = tempfile::tempdir().unwrap();
    let out = stasis(state.path(), &["check", "--json"], &[]);
    let report = json(&out);
    assert_eq!(report["schema"], 1);
    let list = json(&stasis(state.path(), &["check", "--list", "--json"], &[]));
    let feats = features(&report);
    assert_eq!(
        feats.len(),
        list.as_array().unwrap().len(),
        "every listed feature is reported"
    );

    let mut all_required_ok = true;
    for item in list.as_array().unwrap() {
        let name = item["name"].as_str().unwrap();
        let f = &feats[name];
        assert_eq!(f["required"], item["required"], "{name}: required flag");
        assert!(f["description"].as_str().is_some_and(|d| !d.is_empty()));
        match status(f) {
            "ok" => assert!(f.get("fix").is_none(), "{name}: fix on an ok feature"),
            "missing" | "error" => {
                assert!(
                    f["fix"].as_str().is_some_and(|s| !s.is_empty()),
                    "{name}: no fix hint"
                );
                assert!(f["detail"].as_str().is_some(), "{name}: no detail");
            }
            other => panic!("{name}: status {other}"),
        }
        if f["required"] == true && status(f) != "ok" {
            all_required_ok = false;
        }
    }
    assert_eq!(report["ok"], all_required_ok);
    assert_eq!(
        out.status.code(),
        Some(if all_required_ok { 0 } else { 1 }),
        "exit code"
    );

    let (mut verified, mut unverified) = (Vec::new(), Vec::new());
    let mut names: Vec<_> = feats.keys().cloned().collect();
    names.sort();
    for name in names {
        let f = &feats[&name];
        let checked = match status(f) {
            "ok" => verify_ok(&name, f),
            "missing" => verify_missing(&name),
            _ => false,
        };
        if checked {
            verified.push(format!("{name} ({})", status(f)));
        } else {
            unverified.push(name);
        }
    }
    eprintln!("verified independently: {}", verified.join(", "));
    eprintln!("not verified here: {}", unverified.join(", "));
    assert!(
        verified.len() >= 20,
        "too few features verified: {verified:?}"
    );
}

#[test]
fn capability_summary_follows_the_features() {
    let state = tempfile::tempdir().unwrap();
    let report = json(&stasis(state.path(), &["check", "--json"], &[]));
    let feats = features(&report);
    let ok = |n: &str| status(&feats[n]) == "ok";
    let caps: HashMap<String, Value> = report["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c.clone()))
        .collect();
    let inc = &caps["incremental-dump"];
    assert_eq!(
        inc["supported"] == "yes",
        ok("soft-dirty") || ok("dirty-tracking")
    );
    if !ok("soft-dirty") && ok("dirty-tracking") {
        assert_eq!(inc["via"], serde_json::json!(["dirty-tracking"]));
        assert_eq!(
            inc["unavailable_alternatives"],
            serde_json::json!(["soft-dirty"])
        );
    }
    let restore = &caps["restore-exact-pids"];
    let needs = [
        "clone3-set-tid",
        "mm-set-mm-map",
        "ptrace-inject",
        "vdso-layout",
        "process-vm",
    ];
    assert_eq!(
        restore["supported"] == "yes",
        needs.iter().all(|n| ok(n)) && ok("ns-pid")
    );
    if restore["supported"] == "yes" && !ok("mm-set-mm-field") {
        assert!(restore["missing_not_needed"]
            .as_array()
            .unwrap()
            .contains(&Value::from("mm-set-mm-field")));
    }
    // The single-field PR_SET_MM ops are not what restore depends on.
    assert!(!feats["mm-set-mm-field"]["capabilities"]
        .as_array()
        .unwrap()
        .contains(&Value::from("restore-exact-pids")));
    for c in caps.values() {
        let blocked = c.get("blocked_by").and_then(Value::as_array);
        if c["supported"] == "no" {
            let blocked = blocked.expect("an unsupported capability names what blocks it");
            assert!(blocked.iter().all(|b| !ok(b.as_str().unwrap())));
        }
    }
}

#[test]
fn unknown_feature_is_a_usage_error_with_close_matches() {
    let state = tempfile::tempdir().unwrap();
    let out = stasis(state.path(), &["check", "--feature", "ptrace-xstat"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown feature \"ptrace-xstat\""), "{err}");
    assert!(err.contains("ptrace-xstate"), "no close match in: {err}");
    assert!(out.stdout.is_empty());

    let out = stasis(
        state.path(),
        &["check", "--feature", "kcmp", "--feature", "qqqqqqqqqqqq"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--list"));

    let out = stasis(state.path(), &["check", "--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn list_names_every_feature_once() {
    let state = tempfile::tempdir().unwrap();
    let out = stasis(state.path(), &["check", "--list"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let list = json(&stasis(state.path(), &["check", "--list", "--json"], &[]));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(names.len() >= 50);
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "duplicate names");
    for n in &names {
        assert!(
            text.lines().any(|l| l.split_whitespace().next() == Some(n)),
            "{n} not in --list"
        );
    }
    for n in [
        "ns-pid",
        "clone3-set-tid",
        "ptrace-xstate",
        "pagemap-scan",
        "soft-dirty",
        "dirty-tracking",
        "mm-set-mm-map",
        "vdso-layout",
        "cgroup-freeze-v2",
        "cgroup-freezer-v1",
        "tcp-repair",
        "cap-sys-resource",
    ] {
        assert!(names.contains(&n), "{n} missing from --list");
    }
}

#[test]
fn selected_features_only() {
    let state = tempfile::tempdir().unwrap();
    let out = stasis(
        state.path(),
        &[
            "check",
            "--json",
            "--feature",
            "kcmp",
            "--feature",
            "memfd",
            "--feature",
            "kcmp",
        ],
        &[],
    );
    let report = json(&out);
    let mut names: Vec<_> = features(&report).into_keys().collect();
    names.sort();
    assert_eq!(names, ["kcmp", "memfd"]);
    for c in report["capabilities"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        assert!(
            ["dump", "memfd-files"].contains(&name),
            "unrelated capability {name}"
        );
    }
    assert_eq!(
        report["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "dump")
            .unwrap()["supported"],
        "unknown"
    );
    let kcmp_ok = status(&features(&report)["kcmp"]) == "ok";
    assert_eq!(out.status.code(), Some(if kcmp_ok { 0 } else { 1 }));
}

#[test]
fn a_hanging_or_crashing_probe_is_reported_not_fatal() {
    let state = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let out = stasis(
        state.path(),
        &[
            "check",
            "--json",
            "--timeout-ms",
            "300",
            "--feature",
            "kcmp",
            "--feature",
            "memfd",
            "--feature",
            "ns-uts",
        ],
        &[("STASIS_CHECK_FAULT", "kcmp:hang,memfd:crash")],
    );
    let took = start.elapsed();
    let report = json(&out);
    let f = features(&report);
    assert_eq!(status(&f["kcmp"]), "error");
    assert!(
        f["kcmp"]["detail"].as_str().unwrap().contains("300 ms"),
        "{}",
        f["kcmp"]
    );
    assert_eq!(status(&f["memfd"]), "error");
    assert!(
        f["memfd"]["detail"].as_str().unwrap().contains("signal 11"),
        "{}",
        f["memfd"]
    );
    // Another unit is not affected by them.
    assert_eq!(status(&f["ns-uts"]), "ok");
    assert_eq!(out.status.code(), Some(1), "kcmp is required");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn cached_results_are_reused_within_a_boot() {
    let state = tempfile::tempdir().unwrap();
    let fresh = json(&stasis(state.path(), &["check", "--json"], &[]));
    assert_eq!(fresh["cached"], false);
    assert!(state.path().join("probe-cache/report.json").is_file());
    let cached = json(&stasis(state.path(), &["check", "--json", "--cached"], &[]));
    assert_eq!(cached["cached"], true);
    assert_eq!(cached["features"], fresh["features"]);
    let one = json(&stasis(
        state.path(),
        &["check", "--json", "--cached", "--feature", "soft-dirty"],
        &[],
    ));
    assert_eq!(one["cached"], true);
    assert_eq!(one["features"][0], features(&fresh)["soft-dirty"]);
}

#[test]
fn table_output_is_plain_without_a_terminal() {
    let state = tempfile::tempdir().unwrap();
    let out = stasis(state.path(), &["check"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\x1b'), "colour codes on a pipe");
    let req = text.find("\nRequired\n").expect("Required section");
    let opt = text.find("\nOptional\n").expect("Optional section");
    let caps = text.find("\nCapabilities\n").expect("Capabilities section");
    assert!(req < opt && opt < caps);
    let report = json(&stasis(state.path(), &["check", "--json"], &[]));
    for (name, f) in features(&report) {
        let pos = text
            .find(&format!(" {name} "))
            .unwrap_or_else(|| panic!("{name} not in table"));
        assert_eq!(
            f["required"] == true,
            pos < opt,
            "{name} in the wrong section"
        );
    }
}

#[test]
fn the_library_probes_through_the_binary_from_a_threaded_process() {
    // This test process has several threads: the library must not fork
    // here, and runs the stasis binary instead.
    let opts = probe::Options {
        helper: Some(STASIS.into()),
        ..Default::default()
    };
    let report =
        probe::check_with(&[probe::Feature::Kcmp, probe::Feature::VdsoLayout], &opts).unwrap();
    let names: Vec<_> = report.features.iter().map(|f| f.name).collect();
    assert_eq!(names, [probe::Feature::Kcmp, probe::Feature::VdsoLayout]);
    let state = tempfile::tempdir().unwrap();
    let cli = json(&stasis(
        state.path(),
        &[
            "check",
            "--json",
            "--feature",
            "kcmp",
            "--feature",
            "vdso-layout",
        ],
        &[],
    ));
    for r in &report.features {
        assert_eq!(r.status().as_str(), status(&features(&cli)[r.name.name()]));
    }
}
