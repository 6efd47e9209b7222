//! End-to-end tests of `stasis run`, `ps`, `logs`, `kill`, `rm` and `exec`:
//! each drives the built binary with its own state directory and unique
//! names, and the workloads check their own state from inside and print
//! PASS or FAIL.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

struct Env {
    dir: tempfile::TempDir,
    /// Cgroup parent used by every profile of this test, so that leftovers can be looked for.
    cgroup_parent: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

impl Env {
    fn new(tag: &str) -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
            cgroup_parent: format!("stasis-tests/{}", unique(tag)),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_stasis"));
        c.env("STASIS_STATE_DIR", self.state_dir());
        c.stdin(Stdio::null());
        c
    }

    fn stasis(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run stasis")
    }

    /// Writes a profile (plus this test's cgroup parent) and returns its path.
    fn profile(&self, name: &str, body: &str) -> PathBuf {
        let p = self.dir.path().join(format!("{name}.toml"));
        let text = if body.contains("[cgroup]") {
            body.replace(
                "[cgroup]",
                &format!("[cgroup]\nparent = \"{}\"", self.cgroup_parent),
            )
        } else {
            format!("{body}\n[cgroup]\nparent = \"{}\"\n", self.cgroup_parent)
        };
        fs::write(&p, text).unwrap();
        p
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.state_dir().join(name).join("log")).unwrap_or_default()
    }

    fn wait_log(&self, name: &str, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            // Looked at before the log: an exit after that cannot hide output.
            let exited = self.state_dir().join(name).join("exit.json").exists();
            let l = self.log(name);
            if l.contains(needle) {
                return l;
            }
            assert!(
                !exited,
                "{name} exited without {needle:?} in its log: {l:?}"
            );
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?} in the log of {name}: {l:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ps(&self) -> Vec<serde_json::Value> {
        let o = self.stasis(&["ps", "--json"]);
        assert!(o.status.success(), "ps: {}", text(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("ps --json output")
    }

    fn ps_entry(&self, name: &str) -> serde_json::Value {
        self.ps()
            .into_iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in ps"))
    }

    fn wait_exited(&self, name: &str) -> serde_json::Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let e = self.ps_entry(name);
            if e["state"] == "exited" {
                return e;
            }
            assert!(Instant::now() < deadline, "{name} did not exit: {e}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Paths of every cgroup made under this test's cgroup parent.
    fn leftover_cgroups(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for root in cgroup_roots() {
            let d = root.join(&self.cgroup_parent);
            if let Ok(rd) = fs::read_dir(&d) {
                out.extend(
                    rd.filter_map(|e| e.ok())
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.path()),
                );
            }
        }
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Best effort: stop whatever a failed test left running, then drop the
        // test's (empty) cgroup parents.
        if let Ok(names) = fs::read_dir(self.state_dir()) {
            for n in names.filter_map(|e| e.ok()) {
                let name = n.file_name().to_string_lossy().to_string();
                let _ = self.stasis(&["rm", "--force", &name]);
            }
        }
        for root in cgroup_roots() {
            let d = root.join(&self.cgroup_parent);
            let _ = fs::remove_dir(&d);
            let _ = fs::remove_dir(d.parent().unwrap());
        }
    }
}

/// Mount points of the cgroup hierarchies a sandbox uses.
fn cgroup_roots() -> Vec<PathBuf> {
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut v = Vec::new();
    for l in mi.lines() {
        let (pre, post) = l.split_once(" - ").unwrap();
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        let opts = post.get(2).copied().unwrap_or("");
        if post[0] == "cgroup2"
            || (post[0] == "cgroup"
                && opts
                    .split(',')
                    .any(|o| matches!(o, "memory" | "pids" | "freezer")))
        {
            v.push(PathBuf::from(pre[4]));
        }
    }
    v
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn host_link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A 10.x.y.0/24 subnet for this test run, used only inside the test's sandbox
/// and on the veth's host end.
fn subnet() -> (u8, u8) {
    let n = std::process::id() as usize + COUNTER.fetch_add(1, Ordering::SeqCst) as usize * 7919;
    (200 + (n % 50) as u8, (n / 50 % 250) as u8 + 1)
}

#[test]
fn workload_is_pid_2_and_sees_only_its_sandbox() {
    let t = Env::new("pid");
    let p = t.profile("p", "");
    let name = unique("pid");
    let o = t.stasis(&[
        "run",
        "--name",
        &name,
        "--profile",
        p.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        // Inside: $$ is 2, /proc lists exactly init (1), sh (2) and ps.
        r#"echo "pid=$$"; ps -e -o pid=,comm= > /tmp/ps.txt; cat /tmp/ps.txt;
           n=$(wc -l < /tmp/ps.txt); one=$(awk '$1==1' /tmp/ps.txt | wc -l);
           if [ "$$" = 2 ] && [ "$n" = 3 ] && [ "$one" = 1 ]; then echo PASS; else echo "FAIL: pid $$, $n processes"; fi"#,
    ]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out} {}", text(&o.stderr));
    assert!(out.contains("PASS"), "{out}");
    assert!(out.contains("stasis-init"), "PID 1 is stasis's init: {out}");
}

#[test]
fn hostname_is_name_or_profile() {
    let t = Env::new("host");
    let name = unique("host");
    let p = t.profile("p", "");
    let o = t.stasis(&[
        "run",
        "--name",
        &name,
        "--profile",
        p.to_str().unwrap(),
        "hostname",
    ]);
    assert_eq!(text(&o.stdout).trim(), name);
    let p = t.profile("h", "hostname = \"box-from-profile\"\n");
    let o = t.stasis(&["run", "--profile", p.to_str().unwrap(), "hostname"]);
    assert_eq!(text(&o.stdout).trim(), "box-from-profile");
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host.trim(), "box-from-profile");
}

#[test]
fn loopback_up_and_nothing_else_without_veth() {
    let t = Env::new("lo");
    let p = t.profile("p", "");
    let o = t.stasis(&[
        "run",
        "--profile",
        p.to_str().unwrap(),
        "sh",
        "-c",
        r#"links=$(ip -o link show | awk -F': ' '{print $2}' | tr '\n' ' ');
           up=$(ip -o link show lo | grep -c '[<,]UP[,>]');
           ping=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(); c=socket.create_connection(s.getsockname()); print("ok")');
           if [ "$links" = "lo " ] && [ "$up" = 1 ] && [ "$ping" = ok ]; then echo PASS; else echo "FAIL: links [$links] up $up ping $ping"; fi"#,
    ]);
    let out = text(&o.stdout);
    assert!(out.contains("PASS"), "{out} {}", text(&o.stderr));
}

const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7777))
s.listen()
print("READY", flush=True)
c, peer = s.accept()
data = c.recv(100)
c.sendall(b"pong:" + socket.gethostname().encode() + b":" + peer[0].encode())
print("served", peer[0], data.decode(), flush=True)
"#;

#[test]
fn veth_server_reachable_from_host() {
    let t = Env::new("veth");
    let (a, b) = subnet();
    let name = unique("veth");
    let p = t.profile(
        "p",
        &format!(
            "[network.veth]\naddress = \"10.{a}.{b}.2/24\"\nhost_address = \"10.{a}.{b}.1/24\"\n\
             routes = [{{ destination = \"default\", gateway = \"10.{a}.{b}.1\" }}]\n"
        ),
    );
    fs::write(t.dir.path().join("server.py"), SERVER).unwrap();
    let bind = format!(
        "[[mounts.bind]]\nsource = \"{}\"\ntarget = \"/srv\"\nreadonly = true\n",
        t.dir.path().display()
    );
    let p2 = t.profile(
        "p2",
        &format!(
            "{}\n{bind}",
            fs::read_to_string(&p)
                .unwrap()
                .split("[cgroup]")
                .next()
                .unwrap()
        ),
    );
    let o = t.stasis(&[
        "run",
        "-d",
        "--name",
        &name,
        "--profile",
        p2.to_str().unwrap(),
        "python3",
        "/srv/server.py",
        &format!("10.{a}.{b}.2"),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    t.wait_log(&name, "READY");
    let e = t.ps_entry(&name);
    let veth = e["veth_host"].as_str().unwrap().to_string();
    assert!(host_link_exists(&veth));
    // The read-only bind is read-only inside.
    let o = t.stasis(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "touch /srv/x 2>/dev/null && echo writable || echo PASS",
    ]);
    assert!(text(&o.stdout).contains("PASS"), "{}", text(&o.stdout));
    let addr = SocketAddrV4::new(Ipv4Addr::new(10, a, b, 2), 7777);
    let mut c = TcpStream::connect_timeout(&addr.into(), TIMEOUT).expect("connect to the sandbox");
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.write_all(b"ping").unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, format!("pong:{name}:10.{a}.{b}.1"));
    t.wait_log(&name, "served");
    let e = t.wait_exited(&name);
    assert_eq!(e["exit_code"], 0);
    assert!(!host_link_exists(&veth), "veth {veth} left behind");
}

#[test]
fn tmp_and_dev_shm_are_private() {
    let t = Env::new("tmp");
    let marker = format!("/tmp/{}", unique("host-marker"));
    fs::write(&marker, "host").unwrap();
    let inside = unique("inside-marker");
    let p = t.profile("p", "");
    let o = t.stasis(&[
        "run",
        "--profile",
        p.to_str().unwrap(),
        "sh",
        "-c",
        &format!(
            r#"t=$(stat -f -c %T /tmp); s=$(stat -f -c %T /dev/shm); n=$(ls -A /tmp | wc -l);
               echo x > /tmp/{inside}; echo y > /dev/shm/{inside};
               if [ "$t" = tmpfs ] && [ "$s" = tmpfs ] && [ "$n" = 0 ] && [ ! -e {marker} ]; then echo PASS; else echo "FAIL: $t $s $n"; fi"#
        ),
    ]);
    let _ = fs::remove_file(&marker);
    assert!(text(&o.stdout).contains("PASS"), "{}", text(&o.stdout));
    assert!(!Path::new("/tmp").join(&inside).exists());
    assert!(!Path::new("/dev/shm").join(&inside).exists());
}

fn freeze_stops_and_thaw_resumes(freezer: &str) {
    freeze_and_thaw(freezer, false)
}

/// `via_cli`: through `stasis freeze` and `stasis thaw` instead of the
/// cgroup files.
fn freeze_and_thaw(freezer: &str, via_cli: bool) {
    let t = Env::new("frz");
    let name = unique("frz");
    let p = t.profile("p", &format!("[cgroup]\nfreezer = \"{freezer}\"\n"));
    let o = t.stasis(&[
        "run",
        "-d",
        "--name",
        &name,
        "--profile",
        p.to_str().unwrap(),
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/counter; done",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let e = t.ps_entry(&name);
    assert_eq!(e["freezer"], freezer);
    let init = e["init_pid"].as_i64().unwrap();
    // Seen from the host through init's root.
    let counter = PathBuf::from(format!("/proc/{init}/root/tmp/counter"));
    let read = || -> u64 {
        fs::read_to_string(&counter)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    wait_until("the counter to start", || read() > 10);
    let cg: Vec<PathBuf> = e["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| PathBuf::from(v.as_str().unwrap()))
        .collect();
    let (ctl, frozen_file, frozen_val, thaw_val) = if freezer == "v2" {
        let d = cg
            .iter()
            .find(|d| d.join("cgroup.freeze").exists())
            .unwrap();
        (
            d.join("cgroup.freeze"),
            d.join("cgroup.events"),
            "frozen 1",
            "0",
        )
    } else {
        let d = cg
            .iter()
            .find(|d| d.join("freezer.state").exists())
            .unwrap();
        (
            d.join("freezer.state"),
            d.join("freezer.state"),
            "FROZEN",
            "THAWED",
        )
    };
    if via_cli {
        let o = t.stasis(&["freeze", &name]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    } else {
        fs::write(&ctl, if freezer == "v2" { "1" } else { "FROZEN" }).unwrap();
    }
    wait_until("the kernel to report frozen", || {
        let done = fs::read_to_string(&frozen_file)
            .unwrap()
            .contains(frozen_val);
        if !done && freezer == "v1" && !via_cli {
            // v1 stays FREEZING while a task was busy (a fork, say): writing
            // FROZEN again retries them.
            let _ = fs::write(&ctl, "FROZEN");
        }
        done
    });
    assert_eq!(t.ps_entry(&name)["state"], "frozen");
    let a = read();
    // An observation window: a running loop advances thousands of times in it.
    std::thread::sleep(Duration::from_millis(300));
    let b = read();
    assert_eq!(a, b, "the counter moved while frozen");
    if via_cli {
        let o = t.stasis(&["thaw", &name]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    } else {
        fs::write(&ctl, thaw_val).unwrap();
    }
    wait_until("the counter to move again", || read() > b);
    assert_eq!(t.ps_entry(&name)["state"], "running");
    let o = t.stasis(&["rm", "--force", &name]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        t.leftover_cgroups().is_empty(),
        "{:?}",
        t.leftover_cgroups()
    );
}

#[test]
fn freeze_and_thaw_commands() {
    if !cgroup_roots()
        .iter()
        .any(|r| r.join("cgroup.controllers").exists())
    {
        eprintln!("skipping freeze_and_thaw_commands: no cgroup2 hierarchy mounted");
        return;
    }
    freeze_and_thaw("v2", true);
}

#[test]
fn freeze_v2() {
    if !cgroup_roots()
        .iter()
        .any(|r| r.join("cgroup.controllers").exists())
    {
        eprintln!("skipping freeze_v2: no cgroup2 hierarchy mounted");
        return;
    }
    freeze_stops_and_thaw_resumes("v2");
}

#[test]
fn freeze_v1() {
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let has_v1_freezer = mi.lines().any(|l| {
        l.split_once(" - ").is_some_and(|(_, post)| {
            let f: Vec<&str> = post.split(' ').collect();
            f[0] == "cgroup"
                && f.get(2)
                    .is_some_and(|o| o.split(',').any(|o| o == "freezer"))
        })
    });
    if !has_v1_freezer {
        eprintln!("skipping freeze_v1: no v1 freezer controller mounted");
        return;
    }
    freeze_stops_and_thaw_resumes("v1");
}

#[test]
fn logs_hold_stdout_and_stderr() {
    let t = Env::new("logs");
    let name = unique("logs");
    let p = t.profile("p", "");
    let o = t.stasis(&[
        "run",
        "-d",
        "--name",
        &name,
        "--profile",
        p.to_str().unwrap(),
        "sh",
        "-c",
        "echo one; echo two >&2; read x || echo stdin-is-empty; [ -t 1 ] || echo no-tty; echo three",
    ]);
    assert!(o.status.success());
    // `logs -f` follows until the sandbox ends.
    let o = t.stasis(&["logs", "-f", &name]);
    assert_eq!(text(&o.stdout), "one\ntwo\nstdin-is-empty\nno-tty\nthree\n");
    let o = t.stasis(&["logs", &name]);
    assert_eq!(text(&o.stdout), "one\ntwo\nstdin-is-empty\nno-tty\nthree\n");
}

#[test]
fn exit_codes_and_signals() {
    let t = Env::new("exit");
    let p = t.profile("p", "");
    let pp = p.to_str().unwrap();
    let o = t.stasis(&["run", "--profile", pp, "sh", "-c", "exit 42"]);
    assert_eq!(o.status.code(), Some(42));
    let o = t.stasis(&["run", "--profile", pp, "sh", "-c", "kill -KILL $$"]);
    assert_eq!(o.status.code(), Some(137));

    // Foreground: SIGTERM to stasis reaches the workload.
    let name = unique("fg");
    let child = t
        .cmd()
        .args([
            "run",
            "--name",
            &name,
            "--profile",
            pp,
            "sh",
            "-c",
            "trap 'echo got-TERM; exit 7' TERM; echo READY; while :; do sleep 0.05; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    t.wait_log(&name, "READY");
    // SAFETY: sending SIGTERM to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert!(text(&out.stdout).contains("got-TERM"));

    // Detached: `stasis kill` with a chosen signal.
    let name = unique("det");
    let o = t.stasis(&[
        "run",
        "-d",
        "--name",
        &name,
        "--profile",
        pp,
        "sh",
        "-c",
        "trap 'echo got-USR1; exit 9' USR1; echo READY; while :; do sleep 0.05; done",
    ]);
    assert!(o.status.success());
    assert_eq!(text(&o.stdout).trim(), name);
    t.wait_log(&name, "READY");
    let o = t.stasis(&["kill", "--signal", "USR1", &name]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let e = t.wait_exited(&name);
    assert_eq!(e["exit_code"], 9);
    assert!(t.log(&name).contains("got-USR1"));

    let name = unique("k9");
    t.stasis(&[
        "run",
        "-d",
        "--name",
        &name,
        "--profile",
        pp,
        "sleep",
        "1000",
    ]);
    let o = t.stasis(&["kill", "-s", "KILL", &name]);
    assert!(o.status.success());
    let e = t.wait_exited(&name);
    assert_eq!(e["exit_code"], 137);
    assert_eq!(e["signal"], 9);
}

#[test]
fn cleanup_after_kill() {
    let t = Env::new("ck");
    let (a, b) = subnet();
    let name = unique("ck");
    let p = t.profile(
        "p",
        &format!(
            "[network.veth]\naddress = \"10.{a}.{b}.2/24\"\nhost_address = \"10.{a}.{b}.1/24\"\n"
        ),
    );
    let o = t.stasis(&[
        "run",
        "-d",
        "--name",
        &name,
        "--profile",
        p.to_str().unwrap(),
        "sh",
        "-c",
        "sleep 1000 & sleep 1000",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let e = t.ps_entry(&name);
    let veth = e["veth_host"].as_str().unwrap().to_string();
    let cgroups: Vec<String> = e["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(host_link_exists(&veth));
    assert!(cgroups.iter().all(|c| Path::new(c).exists()));
    let init = e["init_pid"].as_i64().unwrap();
    let o = t.stasis(&["rm", &name]);
    assert!(
        !o.status.success(),
        "rm of a running sandbox must be refused"
    );
    let o = t.stasis(&["kill", "--signal", "KILL", &name]);
    assert!(o.status.success());
    t.wait_exited(&name);
    let o = t.stasis(&["rm", &name]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!t.state_dir().join(&name).exists());
    assert!(!host_link_exists(&veth), "veth left");
    for c in &cgroups {
        assert!(!Path::new(c).exists(), "cgroup {c} left");
    }
    // init is gone (or a zombie waiting for the host's PID 1 to reap it).
    let st = fs::read_to_string(format!("/proc/{init}/stat")).unwrap_or_default();
    assert!(
        st.is_empty() || !st.contains("(stasis-init) S"),
        "init {init} still alive: {st}"
    );
    assert!(t.leftover_cgroups().is_empty());
}

/// A workload that made cgroups of its own below its sandbox's (as a
/// container runtime or systemd inside would) and moved processes into
/// them: `rm --force` kills those processes too and removes every cgroup
/// directory, deepest first, in every hierarchy.
#[test]
fn rm_force_removes_the_workloads_own_cgroups() {
    let t = Env::new("cgkids");
    let name = unique("cgkids");
    let p = t.profile("p", "");
    let o = t.stasis(&[
        "run",
        "-d",
        "--name",
        &name,
        "--profile",
        p.to_str().unwrap(),
        "sh",
        "-c",
        "sleep 1000 & sleep 1000 & wait",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let e = t.ps_entry(&name);
    let cgroups: Vec<PathBuf> = e["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| PathBuf::from(v.as_str().unwrap()))
        .collect();
    // The workload's sleeps (children of its shell, PID 2 of the sandbox).
    let workload = e["workload_pid"].as_i64().unwrap();
    let mut kids = Vec::new();
    wait_until("the workload's two sleeps", || {
        kids = fs::read_to_string(format!("/proc/{workload}/task/{workload}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        kids.len() == 2
    });
    // Child cgroups two deep in every hierarchy, one sleep in each level.
    for c in &cgroups {
        let deep = c.join("inner").join("deeper");
        fs::create_dir_all(&deep).unwrap();
        fs::write(c.join("inner").join("cgroup.procs"), &kids[0]).unwrap();
        fs::write(deep.join("cgroup.procs"), &kids[1]).unwrap();
    }
    let o = t.stasis(&["rm", "--force", &name]);
    assert!(o.status.success(), "rm --force: {}", text(&o.stderr));
    for c in &cgroups {
        assert!(!c.exists(), "cgroup {} left", c.display());
    }
    for k in &kids {
        let st = fs::read_to_string(format!("/proc/{k}/stat")).unwrap_or_default();
        assert!(
            st.is_empty() || st.contains(") Z"),
            "process {k} of a child cgroup still runs: {st}"
        );
    }
    assert!(t.leftover_cgroups().is_empty());
    assert!(!t.state_dir().join(&name).exists());
}

/// What a creator and its watcher both killed may leave: a sandbox's
/// cgroup, with its processes, and no state directory. `ps` lists the name
/// as incomplete, `rm` refuses while processes are in it, `rm --force`
/// kills them and removes the cgroup; the name is free again.
#[test]
fn cgroup_without_state_is_listed_and_removed() {
    let t = Env::new("orphan");
    let name = unique("orphan");
    // The default cgroup parent: what `rm` of a name without state looks at.
    let o = t.stasis(&["run", "-d", "--name", &name, "sleep", "1000"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let e = t.ps_entry(&name);
    let cgroups: Vec<PathBuf> = e["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| PathBuf::from(v.as_str().unwrap()))
        .collect();
    let workload = e["workload_pid"].as_i64().unwrap();
    fs::remove_dir_all(t.state_dir().join(&name)).unwrap();
    let e = t.ps_entry(&name);
    assert_eq!(e["state"], "incomplete", "{e}");
    let o = t.stasis(&["rm", &name]);
    assert!(
        !o.status.success(),
        "rm without --force of a cgroup holding processes"
    );
    assert!(text(&o.stderr).contains("--force"), "{}", text(&o.stderr));
    let o = t.stasis(&["rm", "--force", &name]);
    assert!(o.status.success(), "rm --force: {}", text(&o.stderr));
    for c in &cgroups {
        assert!(!c.exists(), "cgroup {} left", c.display());
    }
    let st = fs::read_to_string(format!("/proc/{workload}/stat")).unwrap_or_default();
    assert!(
        st.is_empty() || st.contains(") Z"),
        "the workload runs on: {st}"
    );
    assert!(!t.ps().iter().any(|e| e["name"] == name.as_str()));
    let o = t.stasis(&["run", "-d", "--name", &name, "true"]);
    assert!(
        o.status.success(),
        "the name is not free: {}",
        text(&o.stderr)
    );
}

#[test]
fn cleanup_after_failed_start() {
    let t = Env::new("cf");
    let (a, b) = subnet();
    let name = unique("cf");
    // Fails late: after the cgroup, the namespaces and the veth exist.
    let p = t.profile(
        "p",
        &format!(
            "[network.veth]\nhost_name = \"stf{}\"\naddress = \"10.{a}.{b}.2/24\"\n\
             [[mounts.bind]]\nsource = \"/nonexistent-{name}\"\ntarget = \"/nonexistent-{name}\"\n",
            COUNTER.fetch_add(1, Ordering::SeqCst) + std::process::id() % 100000 * 100
        ),
    );
    let veth = fs::read_to_string(&p)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("host_name = \"")
                .map(|r| r.trim_end_matches('"').to_string())
        })
        .unwrap();
    let o = t.stasis(&[
        "run",
        "--name",
        &name,
        "--profile",
        p.to_str().unwrap(),
        "true",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("mounts.bind"), "{err}");
    assert!(!t.state_dir().join(&name).exists(), "state dir left");
    assert!(!host_link_exists(&veth), "veth left");
    assert!(
        t.leftover_cgroups().is_empty(),
        "{:?}",
        t.leftover_cgroups()
    );

    // A command that does not exist: 127, and nothing left either.
    let o = t.stasis(&[
        "run",
        "--name",
        &name,
        "--profile",
        t.profile("q", "").to_str().unwrap(),
        "no-such-command-xyz",
    ]);
    assert_eq!(o.status.code(), Some(127));
    assert!(text(&o.stderr).contains("command not found: no-such-command-xyz"));
    assert!(!t.state_dir().join(&name).exists());
    assert!(t.leftover_cgroups().is_empty());
}

#[test]
fn two_sandboxes_side_by_side() {
    let t = Env::new("two");
    let p = t.profile("p", "");
    let names = [unique("a"), unique("b")];
    for n in &names {
        let o = t.stasis(&[
            "run",
            "-d",
            "--name",
            n,
            "--profile",
            p.to_str().unwrap(),
            "sh",
            "-c",
            "echo $$ > /tmp/pid; echo READY; exec sleep 1000",
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let mut nets = Vec::new();
    for n in &names {
        t.wait_log(n, "READY");
        let e = t.ps_entry(n);
        assert_eq!(e["state"], "running");
        assert_eq!(e["workload_ns_pid"], 2);
        let init = e["init_pid"].as_i64().unwrap();
        assert_eq!(
            fs::read_to_string(format!("/proc/{init}/root/tmp/pid"))
                .unwrap()
                .trim(),
            "2"
        );
        nets.push(fs::read_link(format!("/proc/{init}/ns/net")).unwrap());
        let o = t.stasis(&["exec", n, "--", "hostname"]);
        assert_eq!(text(&o.stdout).trim(), n);
    }
    assert_ne!(nets[0], nets[1]);
    assert_ne!(nets[0], fs::read_link("/proc/self/ns/net").unwrap());
    for n in &names {
        let o = t.stasis(&["rm", "--force", n]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    assert!(t.leftover_cgroups().is_empty());
}

#[test]
fn taken_name_is_refused_before_anything_starts() {
    let t = Env::new("taken");
    let p = t.profile("p", "");
    let name = unique("taken");
    let o = t.stasis(&[
        "run",
        "-d",
        "--name",
        &name,
        "--profile",
        p.to_str().unwrap(),
        "sleep",
        "1000",
    ]);
    assert!(o.status.success());
    let before = t.ps_entry(&name);
    let marker = t.dir.path().join("must-not-exist");
    let o = t.stasis(&[
        "run",
        "--name",
        &name,
        "--profile",
        p.to_str().unwrap(),
        "touch",
        marker.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("is taken"), "{}", text(&o.stderr));
    assert!(!marker.exists());
    let after = t.ps_entry(&name);
    assert_eq!(before["init_pid"], after["init_pid"]);
    assert_eq!(after["state"], "running");
}

#[test]
fn exec_enters_namespaces_and_cgroup() {
    let t = Env::new("exec");
    let p = t.profile("p", "");
    let name = unique("exec");
    let o = t.stasis(&[
        "run",
        "-d",
        "--name",
        &name,
        "--profile",
        p.to_str().unwrap(),
        "sh",
        "-c",
        "echo inside > /tmp/f; echo READY; exec sleep 1000",
    ]);
    assert!(o.status.success());
    t.wait_log(&name, "READY");
    let o = t.stasis(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        r#"f=$(cat /tmp/f); ps -e -o comm= > /tmp/ps; cg=$(grep '^0::' /proc/self/cgroup);
           if [ "$f" = inside ]; then echo "ok f"; fi;
           echo "procs=$(sort /tmp/ps | tr '\n' ' ') cg=$cg host=$(hostname)"; exit 5"#,
    ]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(5), "{out} {}", text(&o.stderr));
    assert!(out.contains("ok f"), "{out}");
    // Only the sandbox's processes: init, the workload, and this command.
    assert!(out.contains("procs=ps sh sleep stasis-init "), "{out}");
    assert!(out.contains("cg=0::/"), "{out}");
    assert!(out.contains(&format!("host={name}")), "{out}");
    let o = t.stasis(&["exec", &name, "--", "no-such-command-xyz"]);
    assert_eq!(o.status.code(), Some(127));
}

#[test]
fn bad_profile_names_key_file_and_line() {
    let t = Env::new("prof");
    let p = t.dir.path().join("bad.toml");
    fs::write(&p, "[mounts]\ntmp = true\nnot_a_key = 3\n").unwrap();
    let o = t.stasis(&["run", "--profile", p.to_str().unwrap(), "true"]);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(
        e.contains("bad.toml") && e.contains("line 3") && e.contains("not_a_key"),
        "{e}"
    );
    fs::write(&p, "[cgroup]\npids_max = \"many\"\n").unwrap();
    let o = t.stasis(&["run", "--profile", p.to_str().unwrap(), "true"]);
    let e = text(&o.stderr);
    assert!(e.contains("line 2") && e.contains("pids_max"), "{e}");
    assert!(!t.state_dir().exists() || fs::read_dir(t.state_dir()).unwrap().next().is_none());
}

#[test]
fn process_settings_apply() {
    let t = Env::new("proc");
    let p = t.profile(
        "p",
        r#"
[process]
cwd = "/tmp"
user = 65534
group = 65534
groups = [65533]
capabilities = ["CAP_NET_BIND_SERVICE"]
pass_env = ["STASIS_TEST_PASSED", "STASIS_TEST_UNSET"]
[process.env]
PATH = "/usr/bin:/bin"
FOO = "bar baz"
[process.rlimits]
nofile = { soft = 256, hard = 512 }
"#,
    );
    let o = t
        .cmd()
        .env("STASIS_TEST_PASSED", "yes")
        .env("STASIS_TEST_NOT_PASSED", "leak")
        .args([
            "run",
            "--profile",
            p.to_str().unwrap(),
            "sh",
            "-c",
            r#"echo "uid=$(id -u) gid=$(id -g) groups=$(id -G) cwd=$(pwd) nofile=$(ulimit -n)/$(ulimit -Hn)";
               grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status | tr -s '\t' ' ';
               env | grep -v '^PWD=' | grep -v '^SHLVL=' | grep -v '^_=' | sort"#,
        ])
        .output()
        .unwrap();
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out} {}", text(&o.stderr));
    assert!(
        out.contains("uid=65534 gid=65534 groups=65534 65533 cwd=/tmp nofile=256/512"),
        "{out}"
    );
    // CAP_NET_BIND_SERVICE is bit 10.
    assert!(out.contains("CapEff: 0000000000000400"), "{out}");
    assert!(out.contains("CapBnd: 0000000000000400"), "{out}");
    assert!(out.contains("NoNewPrivs: 1"), "{out}");
    let env: Vec<&str> = out
        .lines()
        .filter(|l| l.contains('=') && !l.contains(' ') || l.starts_with("FOO="))
        .collect();
    assert_eq!(
        env,
        vec![
            "FOO=bar baz",
            "PATH=/usr/bin:/bin",
            "STASIS_TEST_PASSED=yes"
        ],
        "{out}"
    );
}

#[test]
fn pivot_root_into_a_root_directory() {
    let t = Env::new("root");
    let root = t.dir.path().join("rootfs");
    fs::create_dir(&root).unwrap();
    let mut binds = String::new();
    for d in ["/usr", "/bin", "/lib", "/lib64", "/etc"] {
        if Path::new(d).exists() {
            binds.push_str(&format!(
                "[[mounts.bind]]\nsource = \"{d}\"\ntarget = \"{d}\"\nreadonly = true\n"
            ));
        }
    }
    let p = t.profile(
        "p",
        &format!("[mounts]\nroot = \"{}\"\n{binds}", root.display()),
    );
    let name = unique("root");
    let o = t.stasis(&[
        "run",
        "--name",
        &name,
        "--profile",
        p.to_str().unwrap(),
        "sh",
        "-c",
        r#"top=$(ls / | tr '\n' ' '); mnt=$(awk '{print $5}' /proc/self/mountinfo | sort | tr '\n' ' ');
           echo "top=$top"; echo "mounts=$mnt";
           if [ ! -e /work ] && [ "$(cat /proc/1/comm)" = stasis-init ] && touch /tmp/ok && ! touch /etc/x 2>/dev/null; then echo PASS; else echo FAIL; fi"#,
    ]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out} {}", text(&o.stderr));
    assert!(out.contains("PASS"), "{out}");
    // Only the profile's mounts and the sandbox's own /dev, nothing of the
    // host's tree.
    let mounts = out.lines().find_map(|l| l.strip_prefix("mounts=")).unwrap();
    for m in mounts.split_whitespace() {
        assert!(
            [
                "/", "/usr", "/bin", "/lib", "/lib64", "/etc", "/proc", "/tmp", "/dev", "/dev/pts",
                "/dev/shm"
            ]
            .contains(&m),
            "unexpected mount {m}: {out}"
        );
    }
}

/// 30 forks cannot all succeed under pids_max = 16.
const LIMIT_SCRIPT: &str = r#"
import os, time
ok = 0
for i in range(30):
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        time.sleep(1000)
        os._exit(0)
    ok += 1
n = sum(1 for d in os.listdir('/proc') if d.isdigit())
print(f'forked={ok} procs={n}', flush=True)
print('READY', flush=True)
time.sleep(1000)
"#;

#[test]
fn cgroup_limits_and_counting() {
    let t = Env::new("lim");
    let name = unique("lim");
    let p = t.profile("p", "[cgroup]\nmemory_max = \"64M\"\npids_max = 16\n");
    let o = t.stasis(&[
        "run",
        "-d",
        "--name",
        &name,
        "--profile",
        p.to_str().unwrap(),
        "python3",
        "-c",
        LIMIT_SCRIPT,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let log = t.wait_log(&name, "READY");
    let line = log.lines().find(|l| l.starts_with("forked=")).unwrap();
    let nums: Vec<u32> = line
        .split(' ')
        .map(|kv| kv.split_once('=').unwrap().1.parse().unwrap())
        .collect();
    assert!(nums[0] < 30 && nums[1] <= 16, "under pids_max = 16: {log}");
    let e = t.ps_entry(&name);
    assert!(e["memory_bytes"].as_u64().unwrap() > 0, "{e}");
    assert!(e["processes"].as_u64().unwrap() >= 2, "{e}");
    let dirs: Vec<PathBuf> = e["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| PathBuf::from(v.as_str().unwrap()))
        .collect();
    let read_any = |files: &[&str]| -> Vec<String> {
        dirs.iter()
            .flat_map(|d| files.iter().map(move |f| d.join(f)))
            .filter_map(|p| fs::read_to_string(p).ok())
            .map(|s| s.trim().to_string())
            .collect()
    };
    assert!(read_any(&["pids.max"]).contains(&"16".to_string()));
    assert!(read_any(&["memory.max", "memory.limit_in_bytes"]).contains(&(64u64 << 20).to_string()));
    let o = t.stasis(&["rm", "--force", &name]);
    assert!(o.status.success());
    assert!(t.leftover_cgroups().is_empty());
}

#[test]
fn pure_cgroup2_host() {
    // A host whose only hierarchy is cgroup2, made by hiding the v1
    // hierarchies in a private mount namespace around `stasis run`.
    let roots = cgroup_roots();
    let Some(unified) = roots
        .iter()
        .find(|r| r.join("cgroup.controllers").exists())
        .cloned()
    else {
        eprintln!("skipping pure_cgroup2_host: no cgroup2 hierarchy mounted");
        return;
    };
    if Command::new("unshare").arg("--version").output().is_err() {
        eprintln!("skipping pure_cgroup2_host: no unshare(1)");
        return;
    }
    let t = Env::new("v2only");
    let name = unique("v2only");
    let p = t.profile("p", "");
    let o = Command::new("unshare")
        .env("STASIS_STATE_DIR", t.state_dir())
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"awk '$9 == "cgroup" {print $5}' /proc/self/mountinfo | while read m; do umount "$m" || exit 1; done; exec "$@""#,
            "sh",
            env!("CARGO_BIN_EXE_stasis"),
            "run",
            "-d",
            "--name",
            &name,
            "--profile",
            p.to_str().unwrap(),
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/counter; done",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let e = t.ps_entry(&name);
    let dirs: Vec<PathBuf> = e["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| PathBuf::from(v.as_str().unwrap()))
        .collect();
    assert_eq!(dirs.len(), 1, "one cgroup2 directory only: {e}");
    assert!(dirs[0].starts_with(&unified), "{e}");
    assert_eq!(e["freezer"], "v2");
    let init = e["init_pid"].as_i64().unwrap();
    let counter = PathBuf::from(format!("/proc/{init}/root/tmp/counter"));
    let read = || -> u64 {
        fs::read_to_string(&counter)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    wait_until("the counter to start", || read() > 10);
    fs::write(dirs[0].join("cgroup.freeze"), "1").unwrap();
    wait_until("frozen 1", || {
        fs::read_to_string(dirs[0].join("cgroup.events"))
            .unwrap()
            .contains("frozen 1")
    });
    assert_eq!(t.ps_entry(&name)["state"], "frozen");
    fs::write(dirs[0].join("cgroup.freeze"), "0").unwrap();
    let o = t.stasis(&["rm", "--force", &name]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!dirs[0].exists());
}

/// A pty opened on the host: (master, its slave's path).
fn host_pty() -> (std::os::fd::OwnedFd, String) {
    use std::os::fd::FromRawFd;
    // SAFETY: posix_openpt returns a new fd or -1; it is owned below.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
    // SAFETY: `m` was just opened and is owned by nobody else.
    let master = unsafe { std::os::fd::OwnedFd::from_raw_fd(m) };
    let mut buf = [0 as libc::c_char; 64];
    // SAFETY: grantpt/unlockpt on our master; ptsname_r writes at most
    // buf.len() bytes, NUL included.
    unsafe {
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        assert_eq!(libc::ptsname_r(m, buf.as_mut_ptr(), buf.len()), 0);
    }
    // SAFETY: ptsname_r wrote a NUL-terminated string into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    (master, name)
}

/// Checks from inside: no terminal of the host can be opened (the test
/// holds one open, so its number exists on the host), /dev holds only the
/// devices a sandbox gets, nothing can be added to it, and /dev/ptmx gives
/// a pty of the sandbox's own devpts instance that works.
const DEV_SCRIPT: &str = r#"
import os, stat, sys
host_pts, host_dev, expected = sys.argv[1], int(sys.argv[2]), sorted(sys.argv[3].split(','))
fails = []
tty_majors = set([2, 3, 4, 5, 166, 188, 204] + list(range(136, 144)))
for p in [host_pts, '/dev/console', '/dev/tty0', '/dev/tty1', '/dev/ttyS0', '/dev/pts/0', '/dev/pts/1']:
    try:
        fd = os.open(p, os.O_RDWR | os.O_NOCTTY)
        os.close(fd)
        fails.append('opened ' + p)
    except OSError:
        pass
names = sorted(os.listdir('/dev'))
if names != expected:
    fails.append('/dev holds %s, not %s' % (names, expected))
if os.listdir('/dev/pts') != ['ptmx']:
    fails.append('/dev/pts holds %s' % os.listdir('/dev/pts'))
for root, dirs, files in os.walk('/dev'):
    for n in files:
        p = os.path.join(root, n)
        st = os.lstat(p)
        if stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in tty_majors \
                and p not in ('/dev/tty', '/dev/pts/ptmx'):
            fails.append('terminal device ' + p)
pts_dev = os.stat('/dev/pts').st_dev
if pts_dev == host_dev:
    fails.append("/dev/pts is the host's devpts")
try:
    os.mknod('/dev/x', stat.S_IFCHR | 0o600, os.makedev(5, 1))
    fails.append('a node could be made in /dev')
except OSError:
    pass
m, s = os.openpty()
name = os.ttyname(s)
if not name.startswith('/dev/pts/') or os.fstat(s).st_dev != pts_dev:
    fails.append('the pty %s is not of the sandbox devpts' % name)
os.write(m, b'ping\n')
if os.read(s, 16) != b'ping\n':
    fails.append('the pty does not pass data')
with open('/dev/null', 'w') as f:
    f.write('x')
with open('/dev/urandom', 'rb') as f:
    if len(f.read(16)) != 16:
        fails.append('/dev/urandom')
print('FAIL: ' + '; '.join(fails) if fails else 'PASS', flush=True)
"#;

#[test]
fn dev_is_own_without_host_terminals() {
    let t = Env::new("dev");
    let (_master, host_pts) = host_pty();
    assert!(Path::new(&host_pts).exists(), "{host_pts}");
    use std::os::unix::fs::MetadataExt;
    let host_dev = fs::metadata("/dev/pts").unwrap().dev();
    let mut expected = vec![
        "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
        "urandom", "zero",
    ];
    if Path::new("/dev/userfaultfd").exists() {
        expected.push("userfaultfd");
    }
    let p = t.profile("p", "");
    let o = t.stasis(&[
        "run",
        "--profile",
        p.to_str().unwrap(),
        "python3",
        "-c",
        DEV_SCRIPT,
        &host_pts,
        &host_dev.to_string(),
        &expected.join(","),
    ]);
    let out = text(&o.stdout);
    assert!(out.lines().any(|l| l == "PASS"), "{out}{}", text(&o.stderr));

    // A device the profile lists is there too; the host's terminals cannot be listed.
    let extra = ["fuse", "loop-control", "kvm"]
        .into_iter()
        .find(|d| Path::new("/dev").join(d).exists());
    if let Some(d) = extra {
        let p = t.profile("extra", &format!("[mounts]\ndevices = [\"{d}\"]\n"));
        let o = t.stasis(&[
            "run",
            "--profile",
            p.to_str().unwrap(),
            "sh",
            "-c",
            &format!("[ -c /dev/{d} ] && [ ! -e /dev/console ] && echo PASS || echo FAIL"),
        ]);
        assert!(text(&o.stdout).contains("PASS"), "{}", text(&o.stdout));
    } else {
        eprintln!(
            "no /dev/fuse, /dev/loop-control or /dev/kvm here: the profile's devices are not tried"
        );
    }
    for bad in ["pts/0", "console", "ttyS0", "../etc/passwd"] {
        let p = t.profile("bad", &format!("[mounts]\ndevices = [\"{bad}\"]\n"));
        let o = t.stasis(&["run", "--profile", p.to_str().unwrap(), "true"]);
        let e = text(&o.stderr);
        assert!(
            !o.status.success() && e.contains("mounts.devices") && e.contains(bad),
            "devices = [{bad:?}]: {e}"
        );
    }
}
