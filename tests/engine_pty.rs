//! Terminals of the sandbox's own devpts across a dump and restore: pty
//! pairs with their indexes, line state and queued bytes, a session's
//! controlling terminal and its foreground group (the `pty` workload
//! checks each from inside).

mod common;

use std::fs;

use common::*;

/// Two pairs with a gap between their indexes, raw mode, window size,
/// lock, packet and exclusive modes, a controlling terminal (also opened
/// through /dev/tty) with a
/// foreground group other than the session leader's, bytes queued both
/// ways; all checked from inside after the restore, and the image says
/// what it holds.
#[test]
fn pty_pairs_ctty_and_queues() {
    let h = Harness::new("pty-pairs");
    let sb = h.start_c("pty", &[]);
    let ready = read_trimmed(&h.path("ready")).expect("ready");
    let idx: Vec<u64> = ready
        .split_whitespace()
        .map(|w| w.parse().expect("index"))
        .collect();
    let (image, restored) = h.dump_and_restore(&sb);
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(image.join("files.json")).expect("files.json"))
            .expect("JSON");
    let ptys = v["ptys"].as_array().expect("ptys in files.json");
    let got: Vec<u64> = ptys.iter().map(|p| p["index"].as_u64().unwrap()).collect();
    // D (canonical) and E (hung up) first, then A and C with a gap
    // between them.
    assert_eq!(got, [idx[0] - 2, idx[0] - 1, idx[0], idx[1]], "{ptys:?}");
    assert_eq!(idx[1], idx[0] + 2);
    let (d, e, a, c) = (&ptys[0], &ptys[1], &ptys[2], &ptys[3]);
    assert_eq!((&e["hangup"], &c["hangup"]), (&true.into(), &false.into()));
    assert_eq!(a["winsize"], serde_json::json!([37, 101, 800, 600]));
    assert_eq!(a["to_slave"].as_str().unwrap().len(), 600);
    assert_eq!(a["to_master"].as_str().unwrap().len(), 400);
    assert!(a["session"].is_i64());
    assert_eq!(c["locked"], true);
    assert_eq!(c["packet"], true);
    // The end-of-file is a 0 byte in a canonical queue.
    assert_eq!(d["to_slave"], hex("line1\nline2\n\0part"));
    let kinds: Vec<&str> = v["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["kind"].as_str())
        .collect();
    let count = |k: &str| kinds.iter().filter(|&&x| x == k).count();
    // Masters of A, C, D and E, the slaves of A and D, /dev/tty shared by
    // the child and the grandchild.
    assert_eq!((count("pty"), count("dev_tty")), (6, 1), "{kinds:?}");
    h.expect_pass(&restored);
}

/// A dump that leaves the workload running reads the queued bytes and puts
/// them back: the running workload sees them all, as does the restored copy.
#[test]
fn pty_leave_running_keeps_queues() {
    let h = Harness::new("pty-live");
    let sb = h.start_c("pty", &[]);
    let image = h.dump(&sb, &["--leave-running"]);
    h.expect_pass(&sb);
    for f in ["verdict-child", "verdict-grandchild"] {
        fs::remove_file(h.path(f)).expect("the first run's verdicts");
    }
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

/// A real terminal multiplexer: a tmux server (a daemon holding the pane's
/// pty master) with python reading lines on the pane's terminal. After a
/// dump and restore, keys sent through tmux reach python on the same
/// terminal (same size, same session), and its line counter goes on.
#[test]
fn tmux_pane_answers_after_restore() {
    let tmux = std::path::Path::new("/usr/bin/tmux");
    if !tmux.exists() {
        eprintln!("skipping tmux_pane_answers_after_restore: /usr/bin/tmux is not installed");
        return;
    }
    let h = Harness::new("pty-tmux");
    let script = h.path("pane.py");
    fs::write(
        &script,
        "import os, sys\n\
         def state():\n\
         \x20   c, r = os.get_terminal_size(0)\n\
         \x20   ctty = os.tcgetpgrp(0) == os.getpgrp() and os.getsid(0) == os.getpid()\n\
         \x20   return f'{c}x{r} ctty={ctty}'\n\
         print('ready', state(), flush=True)\n\
         n = 0\n\
         for line in sys.stdin:\n\
         \x20   n += 1\n\
         \x20   print('got', n, line.strip(), state(), flush=True)\n",
    )
    .expect("writing the pane's program");
    let py = python3();
    let cmd = format!("{} {}", py.display(), script.display());
    let sb = h.run(&[
        "/usr/bin/tmux",
        "-S",
        "/tmp/stasis-tmux",
        "new-session",
        "-d",
        "-x",
        "91",
        "-y",
        "27",
        &cmd,
    ]);
    let tm = |name: &str, args: &[&str]| -> String {
        let mut a = vec![
            "exec",
            name,
            "--",
            "/usr/bin/tmux",
            "-S",
            "/tmp/stasis-tmux",
        ];
        a.extend_from_slice(args);
        text(&h.stasis(&a).stdout)
    };
    let pane = |name: &str| tm(name, &["capture-pane", "-p"]);
    wait_until(
        "the pane's program",
        READY_TIMEOUT,
        || pane(&sb).contains("ready 91x27 ctty=True"),
        || pane(&sb) + &h.logs(&sb),
    );
    tm(&sb, &["send-keys", "one", "Enter"]);
    wait_until(
        "the first line",
        READY_TIMEOUT,
        || pane(&sb).contains("got 1 one 91x27 ctty=True"),
        || pane(&sb),
    );
    let (_image, restored) = h.dump_and_restore(&sb);
    assert!(pane(&restored).contains("got 1 one"), "{}", pane(&restored));
    tm(&restored, &["send-keys", "two", "Enter"]);
    wait_until(
        "a line typed after the restore",
        READY_TIMEOUT,
        || pane(&restored).contains("got 2 two 91x27 ctty=True"),
        || pane(&restored) + &h.logs(&restored),
    );
}

/// A terminal of the host that reached a process of the tree (here a host
/// pty opened through /proc/PID/fd/0 of a `stasis exec` process whose stdin
/// it is) is refused by name; the workload runs on untouched.
#[test]
fn refuses_host_terminal() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let h = Harness::new("pty-host");
    let dir = h.dir.display().to_string();
    let sb = h.run(&[
        "/bin/sh",
        "-c",
        "d=$1; while [ ! -s $d/execpid ]; do sleep 0.01; done; \
         exec 7<>/proc/$(cat $d/execpid)/fd/0; [ -t 7 ] && echo tty > $d/ready; \
         while :; do sleep 0.05; done",
        "sh",
        &dir,
    ]);
    // SAFETY: posix_openpt returns a new fd or -1.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(m >= 0, "posix_openpt");
    // SAFETY: `m` is ours.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: unlockpt and ptsname on our master.
    let slave_path = unsafe {
        assert_eq!(libc::unlockpt(master.as_raw_fd()), 0);
        std::ffi::CStr::from_ptr(libc::ptsname(master.as_raw_fd()))
            .to_string_lossy()
            .into_owned()
    };
    let slave = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave_path)
        .expect("the host pty's slave");
    let script = format!(
        "echo $$ > {dir}/execpid.tmp && mv {dir}/execpid.tmp {dir}/execpid; exec sleep 1000"
    );
    let mut exec = h
        .command()
        .args(["exec", &sb, "--", "/bin/sh", "-c", &script])
        .stdin(std::process::Stdio::from(slave))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("stasis exec");
    h.wait_ready(&sb);
    let image = h.image_path();
    let out = h.dump_raw(&sb, &image, &[]);
    let _ = exec.kill();
    let _ = exec.wait();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        err.contains("fd 7") && err.contains("terminal of the host"),
        "{}",
        describe(&out)
    );
    assert!(
        !image.join("manifest.json").exists(),
        "a refused dump left an image"
    );
    assert!(h.ps_lists(&sb), "sandbox {sb} is gone after a refused dump");
    drop(master);
}

/// An image whose pty index is beyond the bound, or whose pty has no master
/// description, is refused before anything is made.
#[test]
fn refuses_bad_pty_records() {
    let h = Harness::new("pty-bad");
    let sb = h.start_c("pty", &[]);
    let image = h.dump(&sb, &[]);
    type Edit = fn(&mut serde_json::Value);
    let edits: [(Edit, &str); 2] = [
        (|v| v["ptys"][3]["index"] = 5000.into(), "index 5000"),
        (
            |v| {
                for f in v["files"].as_array_mut().unwrap() {
                    if f["kind"] == "pty" && f["master"] == true {
                        f["master"] = false.into();
                    }
                }
            },
            "master descriptions",
        ),
    ];
    for (edit, words) in edits {
        let copy = h.image_path();
        copy_image(&image, &copy);
        edit_image_json(&copy, "files.json", edit);
        let name = h.new_name("bad");
        let out = h.restore_raw(&copy, &name);
        assert!(!out.status.success(), "{}", describe(&out));
        assert!(text(&out.stderr).contains(words), "{}", describe(&out));
        assert!(!h.ps_lists(&name), "a refused restore left sandbox {name}");
    }
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}
