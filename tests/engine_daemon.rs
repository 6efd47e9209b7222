//! Programs that daemonize themselves: the sandbox lives on in the server
//! they leave behind, `ps` names it as the main process, and dump and
//! restore bring back the shapes daemons leave (sessions and groups whose
//! leaders are gone or live elsewhere). Also the sandbox's log, which
//! travels with the image and goes on after the restore.

mod common;

use std::path::Path;

use common::*;

fn ids(h: &Harness, file: &str) -> [i32; 4] {
    let s = read_trimmed(&h.path(file)).unwrap_or_else(|| panic!("DIR/{file} is missing"));
    let v: Vec<i32> = s
        .split_whitespace()
        .map(|x| x.parse().expect("a number"))
        .collect();
    v.try_into().unwrap_or_else(|_| panic!("DIR/{file}: {s:?}"))
}

/// `stasis ps --json`'s entry for sandbox `name`.
fn ps_entry(h: &Harness, name: &str) -> serde_json::Value {
    h.ps_json()
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name).cloned())
        .unwrap_or_else(|| panic!("stasis ps does not list {name}"))
}

/// Waits until `stasis ps` reports sandbox `name` exited; returns its entry.
fn wait_exited(h: &Harness, name: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until(
        &format!("sandbox {name} to end"),
        VERDICT_TIMEOUT,
        || {
            last = ps_entry(h, name);
            last["state"] == "exited"
        },
        || h.logs(name),
    );
    last
}

fn command_of(e: &serde_json::Value) -> Vec<String> {
    e["command"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A server that double-forks as nginx does: the sandbox's first process
/// forks and exits, its child makes a session, forks the server and more,
/// and exits. The sandbox stays up with the server as its main process;
/// dumped and restored, every process (the server, a worker in its
/// grandparent's session, a group led by a live sibling, a process of
/// init's in a session whose leader lives elsewhere) checks from inside
/// that its PID, parent (init for the reparented ones), group and session
/// are what they were, and the server its counter. The sandbox ends once
/// its last process has, with the server's status.
#[test]
fn daemon_double_fork() {
    let h = Harness::new("daemon");
    let argv = h.c_argv("daemon", &[]);
    let sb = h.start(&argv);

    // (b's parent, the launcher, may be gone before b looks.)
    let [b, _, b_pgid, b_sid] = ids(&h, "ids-b");
    let [d, d_ppid, d_pgid, d_sid] = ids(&h, "ids-d");
    let [e, e_ppid, e_pgid, e_sid] = ids(&h, "ids-e");
    let [_, f_ppid, f_pgid, f_sid] = ids(&h, "ids-f");
    let [w1, w1_ppid, w1_pgid, w1_sid] = ids(&h, "ids-w1");
    let [_, w2_ppid, w2_pgid, w2_sid] = ids(&h, "ids-w2");
    let [_, y_ppid, y_pgid, y_sid] = ids(&h, "ids-y");
    assert_eq!((b_pgid, b_sid), (b, b), "b made a session");
    assert_eq!(
        (d_ppid, d_pgid, d_sid),
        (1, b, b),
        "the server is init's child in b's session and group, both leaderless"
    );
    assert_eq!((e_ppid, e_pgid, e_sid), (1, e, b), "e leads its group");
    assert_eq!((f_ppid, f_pgid, f_sid), (1, e, b), "f is in e's group");
    assert_eq!((w1_ppid, w1_pgid, w1_sid), (d, w1, w1), "w1 made a session");
    assert_eq!(
        (w2_ppid, w2_pgid, w2_sid),
        (w1, b, b),
        "w2 is in its grandparent's session"
    );
    assert_eq!(
        (y_ppid, y_pgid, y_sid),
        (1, w1, w1),
        "y is init's child in w1's session, whose leader lives elsewhere"
    );

    // The launcher is gone, the sandbox runs on in the server.
    let ps = ps_entry(&h, &sb);
    assert_eq!(ps["state"], "running", "{ps}");
    assert_eq!(
        ps["workload_ns_pid"], d,
        "the server is the main process: {ps}"
    );
    assert_eq!(ps["main_adopted"], true, "{ps}");

    let at_dump = h.wait_count_above(&sb, 0);
    let (_image, restored) = h.dump_and_restore(&sb);
    let ps = ps_entry(&h, &restored);
    assert_eq!(ps["state"], "running", "{ps}");
    assert_eq!(ps["workload_ns_pid"], d, "{ps}");
    assert_eq!(ps["main_adopted"], true, "{ps}");
    let argv: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(command_of(&ps), argv, "the restored sandbox's command");
    h.wait_count_above(&restored, at_dump);

    // SIGTERM reaches every root left: d, e, f and y.
    let v = h.expect_pass(&restored);
    for role in ["d", "e", "f", "w1", "w2", "y"] {
        assert_eq!(
            ids(&h, &format!("ids-{role}")),
            ids(&h, &format!("ids-after-{role}")),
            "{role}: pid ppid pgid sid before the dump, then after the restore"
        );
    }
    let count: u64 = verdict_field(&v, "count")
        .and_then(|c| c.parse().ok())
        .expect("count= in the verdict");
    assert!(count > at_dump, "the counter went {at_dump} -> {count}");
    let ended = wait_exited(&h, &restored);
    assert_eq!(ended["exit_code"], 0, "the server's status: {ended}");
}

/// redis-server with `--daemonize yes` (fork, the parent exits, the child
/// makes a session): the sandbox stays up with redis as its main process,
/// its keys are there after a dump and restore, and `stasis kill` stops it,
/// which ends the sandbox with redis's status.
#[test]
fn redis_daemonize_yes() {
    let server = Path::new("/usr/bin/redis-server");
    if !server.exists() {
        eprintln!("skipping redis_daemonize_yes: /usr/bin/redis-server is not installed");
        return;
    }
    let h = Harness::new("redis-daemon");
    let sb = h.run(&[
        "/usr/bin/redis-server",
        "--port",
        "6379",
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "yes",
        "--pidfile",
        "/tmp/redis.pid",
    ]);
    let cli = |name: &str, args: &[&str]| -> String {
        let mut a = vec!["exec", name, "--", "/usr/bin/redis-cli", "-p", "6379"];
        a.extend_from_slice(args);
        let out = h.stasis(&a);
        text(&out.stdout).trim().to_string()
    };
    wait_until(
        "redis to answer PING",
        READY_TIMEOUT,
        || cli(&sb, &["PING"]) == "PONG",
        || h.logs(&sb),
    );
    let n = 10_000;
    let script = format!("for i=1,{n} do redis.call('SET','key:'..i,'value-'..(i*7919)) end");
    assert_eq!(cli(&sb, &["EVAL", &script, "0"]), "");
    assert_eq!(cli(&sb, &["DBSIZE"]), n.to_string());

    let ps = ps_entry(&h, &sb);
    let init = ps["init_pid"].as_i64().expect("init_pid");
    let pid: i64 = std::fs::read_to_string(format!("/proc/{init}/root/tmp/redis.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("redis's pidfile");
    assert_eq!(ps["state"], "running", "{ps}");
    assert_eq!(
        ps["workload_ns_pid"], pid,
        "redis is the main process: {ps}"
    );
    assert_eq!(ps["main_adopted"], true, "{ps}");
    // Dump an idle server: the clients' connections must be closed on
    // redis's side first (CLOSE_WAIT is refused).
    wait_until(
        "redis to close its client connections",
        READY_TIMEOUT,
        || {
            std::fs::read_to_string(format!("/proc/{init}/net/tcp"))
                .map(|t| {
                    !t.lines().skip(1).any(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        f.len() > 3 && f[1].ends_with(":18EB") && f[3] != "0A"
                    })
                })
                .unwrap_or(false)
        },
        || h.logs(&sb),
    );

    let (_image, restored) = h.dump_and_restore(&sb);
    assert_eq!(cli(&restored, &["DBSIZE"]), n.to_string());
    assert_eq!(
        cli(&restored, &["GET", "key:77"]),
        format!("value-{}", 77 * 7919)
    );
    assert_eq!(cli(&restored, &["SET", "after", "restore"]), "OK");
    let ps = ps_entry(&h, &restored);
    assert_eq!(ps["state"], "running", "{ps}");
    assert_eq!(ps["workload_ns_pid"], pid, "{ps}");
    assert_eq!(command_of(&ps)[0], "/usr/bin/redis-server", "{ps}");

    h.signal(&restored, "TERM");
    let ended = wait_exited(&h, &restored);
    assert_eq!(ended["exit_code"], 0, "redis's status: {ended}");
}

/// The log written before the dump comes with the image: the restored
/// sandbox's `stasis logs` shows it, and what the restored workload writes
/// is appended. The workload checks from inside, by reading its own stdout's
/// file, that the log holds its 200 lines from before the dump, in order,
/// and then the one it wrote after. A damaged log in the image is refused
/// before anything runs.
#[test]
fn log_travels_with_the_image() {
    let h = Harness::new("logs");
    let argv = h.c_argv("logcheck", &[]);
    let sb = h.start(&argv);
    let token = read_trimmed(&h.path("ready")).expect("DIR/ready");
    let before = text(&h.stasis(["logs", &sb]).stdout);
    assert_eq!(before.lines().count(), 200, "{before}");
    assert!(before.ends_with(&format!("log line 200 of {token}\n")));

    let image = h.dump(&sb, &[]);
    let restored = h.restore(&image);
    assert_eq!(
        text(&h.stasis(["logs", &restored]).stdout),
        before,
        "the restored sandbox's log starts as the dumped one ended"
    );
    let ps = ps_entry(&h, &restored);
    let argv: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(command_of(&ps), argv, "ps shows the workload's command");
    h.expect_pass(&restored);
    let after = text(&h.stasis(["logs", &restored]).stdout);
    assert_eq!(after, format!("{before}after the restore: {token}\n"));

    // The log is checksummed like the rest of the image.
    let copy = h.root.join("damaged-log");
    copy_image(&image, &copy);
    flip_byte(&copy.join("log.img"), 5);
    let name = h.new_name("damaged");
    let out = h.restore_raw(&copy, &name);
    assert!(
        !out.status.success(),
        "a damaged log restored: {}",
        describe(&out)
    );
    assert!(
        text(&out.stderr).contains("log.img"),
        "the error names the file: {}",
        describe(&out)
    );
    assert!(!h.ps_lists(&name), "a refused restore left a sandbox");
}

/// The checks of both workloads can fail: run in a sandbox without a dump,
/// each says PASS, and FAIL with STASIS_TEST_CORRUPT=1 (one value changed
/// before its checks) in its environment.
#[test]
fn daemon_and_log_checks_can_fail() {
    for corrupt in [false, true] {
        for wl in ["daemon", "logcheck"] {
            let h = Harness::new(&format!("self-{wl}"));
            let profile = h.root.join("profile.toml");
            let env = if corrupt {
                "[process.env]\nSTASIS_TEST_CORRUPT = \"1\"\n"
            } else {
                ""
            };
            std::fs::write(&profile, env).expect("writing the profile");
            let sb = run_with_profile(&h, &profile, &h.c_argv(wl, &[]));
            h.wait_ready(&sb);
            h.signal(&sb, "TERM");
            let v = h.verdict(&sb);
            if corrupt {
                assert!(v.starts_with("FAIL: "), "corrupted {wl} says: {v}");
            } else {
                assert!(v.starts_with("PASS"), "{wl} says: {v}");
            }
        }
    }
}

/// Without a dump: a sandbox whose first process exits while another lives
/// stays up, `ps` names the survivor as its main process, and the sandbox
/// ends once that one has, with its status (not the first process's), in
/// `ps` and as `stasis run`'s exit code.
#[test]
fn sandbox_lives_while_any_process_does() {
    let h = Harness::new("lives-on");
    let stop = h.path("stop");
    let script = format!(
        "setsid /bin/sh -c 'echo $$ > {d}/.s; mv {d}/.s {d}/survivor; \
         while [ ! -e {stop} ]; do sleep 0.01; done; exit 5' & exit 3",
        d = h.dir.display(),
        stop = stop.display()
    );
    let name = h.new_name("fg");
    let mut fg = h
        .command()
        .args(["run", "--name", &name, "--", "/bin/sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("starting stasis run");
    let survivor = h.path("survivor");
    wait_until(
        "the survivor to start",
        READY_TIMEOUT,
        || survivor.exists(),
        || h.logs(&name),
    );
    let pid: i64 = read_number(&survivor).expect("DIR/survivor") as i64;
    wait_until(
        "the first process to exit and the survivor to be the main one",
        READY_TIMEOUT,
        || ps_entry(&h, &name)["workload_ns_pid"] == pid,
        || format!("{}\n{}", ps_entry(&h, &name), h.logs(&name)),
    );
    let ps = ps_entry(&h, &name);
    assert_eq!(ps["state"], "running", "{ps}");
    assert_eq!(ps["main_adopted"], true, "{ps}");
    std::fs::write(&stop, "").expect("writing DIR/stop");
    let ended = wait_exited(&h, &name);
    assert_eq!(
        ended["exit_code"], 5,
        "the last main process's status: {ended}"
    );
    let st = fg.wait().expect("waiting for stasis run");
    assert_eq!(st.code(), Some(5), "stasis run's exit code");
}
