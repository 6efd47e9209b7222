//! Dump and restore of simple workloads: a C counter, a forking shell loop, a
//! python3 loop; `--leave-running`; one image restored twice side by side.

mod common;

use common::*;

/// The counter goes on from where it was dumped: DIR/count, rewritten by the
/// workload every 32 steps, goes past its value at the dump; the workload's
/// own checks (counter against its shadow copy, memory map, mounts) pass; and
/// what it prints after the restore is in the restored sandbox's log.
#[test]
fn counter_loop() {
    let h = Harness::new("counter");
    let sb = h.start_c("counter", &[]);
    let image = h.dump(&sb, &[]);
    let at_dump = read_number(&h.path("count")).expect("DIR/count after the dump");
    let restored = h.restore(&image);
    let after = h.wait_count_above(&restored, at_dump);
    let v = h.expect_pass(&restored);
    let final_count: u64 = verdict_field(&v, "count")
        .and_then(|c| c.parse().ok())
        .expect("count= in the verdict");
    assert!(
        final_count >= after && after > at_dump,
        "the counter went {at_dump} (dump) -> {after} -> {final_count} (verdict)"
    );
    // Its stdout still goes to its sandbox's log.
    let logs = h.logs(&restored);
    assert!(
        logs.contains(&format!("counter: stopping at {final_count}")),
        "the restored workload's stdout is not in its log:\n{logs}"
    );
}

/// A shell that forks on every step: its loop variable goes on from where it
/// stopped (the workload fails if `i` restarts), and DIR/seq, appended once
/// per step, reads 1, 2, 3, ... with nothing lost or repeated across the dump.
#[test]
fn shell_loop_forking_children() {
    let h = Harness::new("shloop");
    let sb = h.start(&[
        "/bin/sh".as_ref(),
        "-c".as_ref(),
        SHELL_LOOP.as_ref(),
        "sh".as_ref(),
        h.dir.as_os_str(),
    ]);
    let image = h.dump(&sb, &[]);
    let at_dump = read_number(&h.path("count")).expect("DIR/count after the dump");
    let restored = h.restore(&image);
    h.wait_count_above(&restored, at_dump + 5);
    let v = h.expect_pass(&restored);
    let n: u64 = verdict_field(&v, "count")
        .and_then(|c| c.parse().ok())
        .expect("count= in the verdict");
    let seq = std::fs::read_to_string(h.path("seq")).expect("DIR/seq");
    let lines: Vec<&str> = seq.lines().collect();
    for (k, line) in lines.iter().enumerate() {
        assert_eq!(
            line.trim(),
            (k + 1).to_string(),
            "line {} of DIR/seq (dumped at step {at_dump}) is {line:?}",
            k + 1
        );
    }
    assert_eq!(
        lines.len() as u64,
        n,
        "DIR/seq has {} steps, the shell says {n}",
        lines.len()
    );
}

/// A python3 interpreter with a counter, a dict, a list and a checksum.
#[test]
fn python_loop() {
    let h = Harness::new("python");
    let sb = h.start(&[
        python3().as_os_str(),
        python_workload().as_os_str(),
        h.dir.as_os_str(),
    ]);
    let image = h.dump(&sb, &[]);
    let at_dump = read_number(&h.path("count")).expect("DIR/count after the dump");
    let restored = h.restore(&image);
    h.wait_count_above(&restored, at_dump);
    let v = h.expect_pass(&restored);
    let n: u64 = verdict_field(&v, "count")
        .and_then(|c| c.parse().ok())
        .expect("count= in the verdict");
    assert!(
        n > at_dump,
        "python counter {n} is not past its value at the dump, {at_dump}"
    );
}

/// `--leave-running`: the original keeps counting and passes; the image,
/// restored while the original still runs, passes as well.
#[test]
fn leave_running() {
    let h = Harness::new("leave");
    let sb = h.start_c("counter", &[]);
    let image = h.dump(&sb, &["--leave-running"]);
    assert!(
        h.ps_lists(&sb),
        "sandbox {sb} is gone after dump --leave-running"
    );
    let at_dump = read_number(&h.path("count")).expect("DIR/count after the dump");
    h.wait_count_above(&sb, at_dump);
    let restored = h.restore(&image);
    assert!(
        h.ps_lists(&sb),
        "sandbox {sb} is gone after the restore of its image"
    );
    let original = h.expect_pass(&sb);
    // Only the restored copy writes DIR/count from now on.
    std::fs::remove_file(h.path("count")).expect("removing DIR/count");
    h.wait_count_above(&restored, 0);
    let copy = h.expect_pass(&restored);
    let count = |v: &str| -> u64 {
        verdict_field(v, "count")
            .and_then(|c| c.parse().ok())
            .expect("count= in the verdict")
    };
    assert!(
        count(&original) > at_dump && count(&copy) > at_dump,
        "both went on from the dump at {at_dump}: original {original:?}, copy {copy:?}"
    );
}

/// One image restored twice, side by side: the two copies are independent.
/// Each is given its own token (SIGUSR1 + DIR/cmd), kept by the workload in its
/// heap and in a shared anonymous page; each must come back with its own
/// token in both places: a shared page restored as shared between the two
/// copies would show the other copy's token.
#[test]
fn restored_twice_side_by_side() {
    let h = Harness::new("twice");
    let sb = h.start_c("counter", &[]);
    let image = h.dump(&sb, &[]);
    let a = h.restore(&image);
    let b = h.restore(&image);
    for (name, token) in [(&a, "tokenA"), (&b, "tokenB")] {
        std::fs::write(h.path("cmd"), token).expect("writing DIR/cmd");
        h.signal(name, "USR1");
        let ack = h.path(&format!("ack-{token}"));
        wait_until(
            &format!("{} (sandbox {name})", ack.display()),
            VERDICT_TIMEOUT,
            || ack.exists(),
            || h.logs(name),
        );
    }
    let va = h.expect_pass(&a);
    let vb = h.expect_pass(&b);
    assert_eq!(
        verdict_field(&va, "token"),
        Some("tokenA"),
        "copy {a}: {va}"
    );
    assert_eq!(
        verdict_field(&vb, "token"),
        Some("tokenB"),
        "copy {b}: {vb}"
    );
}

/// README's first command: `stasis demo` runs the whole cycle and says the
/// count went on from the dump's.
#[test]
fn demo_runs_the_whole_cycle() {
    let h = Harness::new("demo");
    let out = h.stasis(["demo"]);
    let said = text(&out.stdout);
    assert!(
        out.status.success(),
        "stasis demo failed: {}",
        describe(&out)
    );
    assert!(
        said.contains("the count went on from"),
        "stasis demo did not say the count went on: {said}"
    );
}
