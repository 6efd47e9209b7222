//! Multi-threaded processes: every thread comes back with its TID, registers,
//! thread-local storage, signal mask and alternate stack, and goes on running.

mod common;

use common::*;

fn threads(n: usize) {
    let h = Harness::new(&format!("threads{n}"));
    let sb = h.start_c("threads", &[&n.to_string()]);
    let tids_before = read_trimmed(&h.path("tids")).expect("DIR/tids");
    let image = h.dump(&sb, &[]);
    let inspect = h.inspect_json(&image);
    let listed = inspect["processes"][0]["threads"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    assert_eq!(
        listed,
        n + 1,
        "inspect lists {listed} threads, the workload had {}",
        n + 1
    );
    let restored = h.restore(&image);
    let v = h.expect_pass(&restored);
    assert!(v.starts_with("PASS"), "{v}");
    // The workload checked its TIDs itself; the file it wrote before the dump
    // still names them.
    assert_eq!(
        read_trimmed(&h.path("tids")).unwrap_or_default(),
        tids_before
    );
}

#[test]
fn thirty_two_threads() {
    threads(32);
}

#[test]
fn two_hundred_threads() {
    threads(200);
}
