//! A process tree with a zombie, a session and a process group.

mod common;

use std::fs;

use common::*;

fn ids(h: &Harness, file: &str) -> [i32; 4] {
    let s = read_trimmed(&h.path(file)).unwrap_or_else(|| panic!("DIR/{file} is missing"));
    let v: Vec<i32> = s
        .split_whitespace()
        .map(|x| x.parse().expect("a number"))
        .collect();
    v.try_into().unwrap_or_else(|_| panic!("DIR/{file}: {s:?}"))
}

/// Three levels (root, a session leader with a child, a group leader) and a
/// zombie with exit status 7. Each process checks from inside that its PID,
/// parent, process group and session are what they were, and the zombie is
/// reaped after restore with its status. Here the harness also compares what
/// each process wrote before the dump with what it wrote after the restore,
/// and checks the shape of the tree.
#[test]
fn tree_with_zombie_session_and_group() {
    let h = Harness::new("tree");
    let sb = h.start_c("tree", &[]);
    let (_image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);

    let roles = ["root", "a", "a1", "b"];
    for role in roles {
        assert_eq!(
            ids(&h, &format!("ids-{role}")),
            ids(&h, &format!("ids-after-{role}")),
            "{role}: pid ppid pgid sid before the dump, then after the restore"
        );
    }
    let [root, _, _, root_sid] = ids(&h, "ids-root");
    let [a, a_ppid, a_pgid, a_sid] = ids(&h, "ids-a");
    let [_, a1_ppid, a1_pgid, a1_sid] = ids(&h, "ids-a1");
    let [b, b_ppid, b_pgid, b_sid] = ids(&h, "ids-b");
    assert_eq!(
        (a_ppid, a_pgid, a_sid),
        (root, a, a),
        "a is root's child and leads its session"
    );
    assert_eq!(
        (a1_ppid, a1_pgid, a1_sid),
        (a, a, a),
        "a1 is a's child in a's session"
    );
    assert_eq!(
        (b_ppid, b_pgid, b_sid),
        (root, b, root_sid),
        "b leads its group in root's session"
    );
    let zombie: i32 = read_trimmed(&h.path("zombie"))
        .and_then(|s| s.parse().ok())
        .expect("DIR/zombie");
    assert!(zombie > 0 && ![root, a, b].contains(&zombie));
    assert!(
        fs::metadata(h.path("verdict-a")).is_ok(),
        "a wrote no verdict"
    );
}
