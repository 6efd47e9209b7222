//! A restore that fails, at any phase, leaves nothing behind: no process, no
//! cgroup (v1 or unified), no veth, no state directory, no mount; and its
//! error names the cause. Also when `stasis restore` itself is killed with
//! SIGKILL half-way (its watcher removes the half-made sandbox). The
//! phases are reached deterministically with `STASIS_TEST_PAUSE_AT` and
//! `STASIS_TEST_FAIL_AT` (docs/reliability.md).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

/// A profile with a veth on a /30 of its own (10.X.Y.0/30), so that a
/// leftover veth would show on the host.
fn veth_profile(h: &Harness) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let x = 150 + (std::process::id() % 40) as u8;
    let y = ((n * 4) % 256) as u8;
    let path = h.root.join("veth.toml");
    fs::write(
        &path,
        format!(
            "[network.veth]\naddress = \"10.{x}.{y}.2/30\"\nhost_address = \"10.{x}.{y}.1/30\"\n"
        ),
    )
    .expect("writing the profile");
    path
}

/// Runs the C workload `wl` in a sandbox with a veth, waits for it, dumps it
/// and waits until nothing of it runs any more. Returns the image.
fn veth_image(h: &Harness, wl: &str) -> PathBuf {
    veth_image_with(h, wl, &[])
}

/// `veth_image` of the C workload `wl` with arguments `args`.
fn veth_image_with(h: &Harness, wl: &str, args: &[&str]) -> PathBuf {
    let profile = veth_profile(h);
    let name = h.new_name("run");
    let out = h
        .command()
        .args(["run", "-d", "--name", &name, "--profile"])
        .arg(&profile)
        .arg("--")
        .args(h.c_argv(wl, args))
        .output()
        .expect("running stasis run");
    assert!(out.status.success(), "stasis run: {}", describe(&out));
    h.wait_ready(&name);
    let image = h.dump(&name, &[]);
    // The dumped sandbox's init exits on its own once its workload is gone.
    wait_until(
        "the dumped sandbox's processes to end",
        Duration::from_secs(20),
        || processes_mentioning(&h.root).is_empty(),
        || format!("{:?}", processes_mentioning(&h.root)),
    );
    image
}

/// Host processes whose command line mentions `path` (the image, the
/// workload's directory: a restored process and a half-restored one both
/// carry them). Nothing of the test process itself does.
fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let mut found = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) {
            found.push(format!("{pid}: {cmd}"));
        }
    }
    found
}

/// Mount points of every cgroup hierarchy (v1 controllers and cgroup2).
fn cgroup_roots() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            let mount = pre.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mount))
        })
        .collect()
}

/// Cgroup directories (up to three levels under each hierarchy's root)
/// named after sandbox `name` (`NAME` or `NAME-HASH`).
fn cgroups_named(name: &str) -> Vec<PathBuf> {
    let prefix = format!("{name}-");
    let mut found = Vec::new();
    let mut level: Vec<PathBuf> = cgroup_roots();
    for _ in 0..3 {
        let mut next = Vec::new();
        for d in &level {
            let Ok(rd) = fs::read_dir(d) else { continue };
            for e in rd.filter_map(|e| e.ok()) {
                if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    continue;
                }
                let f = e.file_name().to_string_lossy().into_owned();
                if f == name || f.starts_with(&prefix) {
                    found.push(e.path());
                }
                next.push(e.path());
            }
        }
        level = next;
    }
    found
}

/// The host end's name of a sandbox's veth when the profile does not name
/// it and the state directory is not the default one: `st-` and twelve hex
/// digits of the FNV-1a hash of the sandbox's state directory.
fn veth_name(h: &Harness, name: &str) -> String {
    let dir = fs::canonicalize(&h.state)
        .expect("state directory")
        .join(name);
    let mut x: u64 = 0xcbf29ce484222325;
    for b in dir.to_string_lossy().bytes() {
        x ^= b as u64;
        x = x.wrapping_mul(0x100000001b3);
    }
    format!("st-{}", &format!("{x:016x}")[..12])
}

fn link_exists(veth: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("running ip link");
    assert!(out.status.success(), "ip link: {}", describe(&out));
    text(&out.stdout).lines().any(|l| {
        l.split(':')
            .nth(1)
            .is_some_and(|n| n.trim().split('@').next() == Some(veth))
    })
}

fn mountinfo() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .map(|l| l.to_string())
        .collect()
}

/// What is on the host before a restore: compared with what is after.
struct Before {
    mounts: Vec<String>,
}

fn before() -> Before {
    Before {
        mounts: mountinfo(),
    }
}

/// Everything of sandbox `name` still on the host after a failed restore.
/// Mounts: new lines of the host's mountinfo that mention this test's files
/// or the sandbox (other tests of the machine may mount meanwhile).
fn leftovers(h: &Harness, name: &str, b: &Before) -> Vec<String> {
    let mut left = Vec::new();
    for p in processes_mentioning(&h.root) {
        left.push(format!("process {p}"));
    }
    for c in cgroups_named(name) {
        left.push(format!("cgroup {}", c.display()));
    }
    let veth = veth_name(h, name);
    if link_exists(&veth) {
        left.push(format!("veth {veth}"));
    }
    let dir = h.state.join(name);
    if dir.exists() {
        left.push(format!("state directory {}", dir.display()));
    }
    let root = h.root.to_string_lossy().into_owned();
    for m in mountinfo() {
        if !b.mounts.contains(&m) && (m.contains(&root) || m.contains(name)) {
            left.push(format!("mount {m}"));
        }
    }
    left
}

fn assert_nothing_left(h: &Harness, name: &str, b: &Before, what: &str) {
    let left = leftovers(h, name, b);
    assert!(left.is_empty(), "{what} left behind:\n{}", left.join("\n"));
}

/// Restores `image` as a new sandbox with `env` set; expects a failure whose
/// stderr holds every one of `words`, and nothing left behind.
fn failed_restore(h: &Harness, image: &Path, env: &[(&str, &str)], words: &[&str]) -> String {
    let name = h.new_name("failed");
    let b = before();
    let mut c = h.command();
    c.arg("restore").arg(image).args(["--name", &name, "-d"]);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("running stasis restore");
    assert!(
        !out.status.success(),
        "the restore succeeded: {}",
        describe(&out)
    );
    let err = text(&out.stderr);
    for w in words {
        assert!(
            err.contains(w),
            "the error does not mention {w:?}: {}",
            describe(&out)
        );
    }
    assert_nothing_left(h, &name, &b, "a failed restore");
    err
}

/// One byte flipped in the page file is caught by its checksum while the
/// memory restore reads it, before the restored tree runs: the half-made
/// sandbox is removed whole by the restore itself (the watcher has nothing to
/// remove: it says nothing), and nothing is left behind.
#[test]
fn corrupted_page_file_caught_before_anything_runs() {
    let h = Harness::new("rel-corrupt");
    let image = veth_image(&h, "counter");
    let copy = h.image_path();
    copy_image(&image, &copy);
    let pages = image_files(&copy, "pages-")
        .into_iter()
        .next()
        .expect("a page file");
    let len = fs::metadata(&pages).unwrap().len();
    flip_byte(&pages, len / 3 + 5);
    let err = failed_restore(
        &h,
        &copy,
        &[],
        &[
            "checksum mismatch",
            &pages.file_name().unwrap().to_string_lossy(),
        ],
    );
    assert!(
        !err.contains("removed"),
        "the sandbox was made before the check: {err}"
    );
    // The intact image restores under the same kind of profile.
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

/// A process large enough for two page files: a byte flipped in either is
/// caught (the error names the file), and the restore leaves nothing behind.
#[test]
fn corrupted_second_page_file_caught_before_anything_runs() {
    let h = Harness::new("rel-corrupt2");
    let image = veth_image_with(&h, "bigmem", &["48"]);
    for file in ["pages-2-1.img", "pages-2.img"] {
        let copy = h.image_path();
        copy_image(&image, &copy);
        let pages = copy.join(file);
        let len = fs::metadata(&pages)
            .unwrap_or_else(|e| panic!("{}: {e}", pages.display()))
            .len();
        // The two writers take 4 MiB stretches in turn: each file holds at
        // least one (how many depends on how the threads were scheduled).
        assert!(len >= 4 << 20, "{file} holds {len} bytes");
        flip_byte(&pages, len - 4096 + 17);
        let err = failed_restore(&h, &copy, &[], &["checksum mismatch", file]);
        assert!(!err.contains("removed"), "{err}");
    }
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

/// A file an fd referred to is gone at restore: refused before anything is
/// made (the host files the image depends on are checked first); the error
/// names the file and the process and fd that held it.
#[test]
fn missing_file_named_with_its_process_and_fd() {
    let h = Harness::new("rel-nofile");
    let image = veth_image(&h, "files");
    let data = h.path("data.dat");
    fs::remove_file(&data).expect("removing data.dat");
    failed_restore(
        &h,
        &image,
        &[],
        &[
            &data.to_string_lossy(),
            "process 2 fd 10",
            "No such file or directory",
        ],
    );
}

/// A PID that cannot be had. Restore always makes a fresh PID namespace
/// (its pid_max is 4194304, and larger PIDs are refused when the image is
/// read), so no PID of a valid image is ever taken; the test hook makes
/// init take the workload's PID itself before it forks the tree, so that
/// clone3(set_tid) really meets a PID in use.
#[test]
fn pid_taken_in_the_namespace() {
    let h = Harness::new("rel-pid");
    let image = veth_image(&h, "counter");
    failed_restore(
        &h,
        &image,
        &[("STASIS_TEST_FAIL_AT", "restore-pid-taken")],
        &["forking process 2 with its PID", "File exists", "taken"],
    );
}

/// A panic in the sandbox's init while it rebuilds the tree (whose stderr
/// is /dev/null): the restore fails with the panic's message and place, and
/// nothing is left.
#[test]
fn panic_in_init_reaches_the_user() {
    let h = Harness::new("rel-panic");
    let image = veth_image(&h, "counter");
    failed_restore(
        &h,
        &image,
        &[("STASIS_TEST_FAIL_AT", "restore-init-panic")],
        &["stasis-init failed", "panicked at", "a panic injected"],
    );
}

/// Kills `stasis restore` with SIGKILL once it has reached `phase`; its
/// watcher must remove everything; then the same image restores under the
/// same name and runs on.
fn sigkill_at(phase: &str) {
    let h = Harness::new(&format!("rel-kill-{phase}"));
    let image = veth_image(&h, "counter");
    let name = h.new_name("killed");
    let ready = h.root.join(format!("paused-{phase}"));
    let b = before();
    let mut child = h
        .command()
        .arg("restore")
        .arg(&image)
        .args(["--name", &name, "-d"])
        .env(
            "STASIS_TEST_PAUSE_AT",
            format!("{phase}:{}", ready.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting stasis restore");
    wait_until(
        &format!("stasis restore to pause at {phase}"),
        Duration::from_secs(30),
        || ready.exists(),
        String::new,
    );
    // The sandbox is there, half made (its veth comes after its cgroup).
    let veth = veth_name(&h, &name);
    let veth_made = phase != "sandbox-cgroup";
    assert_eq!(
        link_exists(&veth),
        veth_made,
        "veth {veth} while paused at {phase}"
    );
    assert!(
        !cgroups_named(&name).is_empty(),
        "no cgroup of {name} while paused at {phase}"
    );
    assert!(h.state.join(&name).exists());
    child.kill().expect("SIGKILL to stasis restore");
    // stderr ends when the watcher is done: it holds it until then.
    let out = child
        .wait_with_output()
        .expect("waiting for stasis restore");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL),
        "{}",
        describe(&out)
    );
    assert_nothing_left(&h, &name, &b, &format!("a restore killed at {phase}"));
    let err = text(&out.stderr);
    assert!(
        err.contains("ended before it was done; removed")
            && (err.contains(&veth) || !veth_made)
            && err.contains("cgroup"),
        "the watcher did not report its clean-up: {}",
        describe(&out)
    );
    // Nothing blocks the name, the veth or the PIDs: the image restores as
    // the same sandbox and its workload passes its own checks.
    let out = h.restore_raw(&image, &name);
    assert!(
        out.status.success(),
        "restore after the killed one: {}",
        describe(&out)
    );
    h.expect_pass(&name);
}

/// Killed right after the cgroup is made, before the watcher is told that
/// it exists (it was told beforehand that it would): nothing is left, the
/// name is free.
#[test]
fn sigkill_right_after_the_cgroup_is_made() {
    sigkill_at("sandbox-cgroup");
}

/// Killed while init forks the tree (inside Sandbox::create: no state.json yet).
#[test]
fn sigkill_while_the_sandbox_is_made() {
    sigkill_at("restore-launch");
}

/// Killed once the tree exists, before it is seized.
#[test]
fn sigkill_after_the_tree_is_forked() {
    sigkill_at("restore-tree");
}

/// Killed while a process is rebuilt (memory filled, registers not yet set),
/// with the tree under ptrace.
#[test]
fn sigkill_while_processes_are_rebuilt() {
    sigkill_at("restore-rebuild");
}

/// A restore under the name of a running sandbox is refused before
/// anything is made, and the running sandbox is untouched.
#[test]
fn name_in_use_refused() {
    let h = Harness::new("rel-name");
    let image = veth_image(&h, "counter");
    let taken = h.run(&["/bin/sleep", "1000"]);
    let veth = veth_name(&h, &taken);
    let out = h.restore_raw(&image, &taken);
    assert!(
        !out.status.success(),
        "restore under a taken name succeeded: {}",
        describe(&out)
    );
    assert!(
        text(&out.stderr).contains(&format!("`{taken}` is taken")),
        "{}",
        describe(&out)
    );
    assert!(
        !text(&out.stderr).contains("removed"),
        "something was made: {}",
        describe(&out)
    );
    // Nothing of the image runs; the running sandbox is as it was.
    assert!(processes_mentioning(&image).is_empty());
    assert!(!link_exists(&veth), "a veth was made for {taken}");
    let ps = h.ps_json();
    assert!(json_has_string(&ps, &taken), "{ps}");
    let st = h.stasis(["kill", &taken, "--signal", "KILL"]);
    assert!(st.status.success(), "{}", describe(&st));
}

/// An image file readable by others is refused, naming the file and mode.
#[test]
fn loose_file_mode_refused() {
    let h = Harness::new("rel-mode");
    let image = veth_image(&h, "counter");
    let copy = h.image_path();
    copy_image(&image, &copy);
    let pages = image_files(&copy, "pages-").into_iter().next().unwrap();
    fs::set_permissions(&pages, fs::Permissions::from_mode(0o644)).unwrap();
    failed_restore(
        &h,
        &copy,
        &[],
        &[&pages.file_name().unwrap().to_string_lossy(), "mode 644"],
    );
}

/// An image file owned by another user than root is refused, naming it.
#[test]
fn foreign_owner_refused() {
    let h = Harness::new("rel-owner");
    let image = veth_image(&h, "counter");
    let copy = h.image_path();
    copy_image(&image, &copy);
    let inv = copy.join("inventory.json");
    std::os::unix::fs::chown(&inv, Some(1000), Some(1000)).expect("chown");
    failed_restore(&h, &copy, &[], &["inventory.json", "owned by uid 1000"]);
    // The directory itself as well.
    std::os::unix::fs::chown(&inv, Some(0), Some(0)).expect("chown");
    std::os::unix::fs::chown(&copy, Some(1000), Some(1000)).expect("chown");
    failed_restore(&h, &copy, &[], &["owned by uid 1000"]);
}
